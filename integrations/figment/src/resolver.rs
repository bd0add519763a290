//! Walking a figment's data, fetching each reference once, and merging the values back.

use std::collections::{HashMap, HashSet};
use std::fmt;

use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use futures_util::future::join_all;
use keyrack_core::{ErrorKind, SecretHandle, SecretRef, Secrets};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::error::{ConfigError, Problem, ProblemKind};
use crate::placeholder::{Placeholder, unescape};
use crate::redact;

/// The provider name resolved values carry in the figment ([`Figment::find_metadata`]).
pub const PROVIDER_NAME: &str = "keyrack secret reference";

/// Resolves the `secret:` references of a figment; [`live`](Self::live) names keys to keep as
/// handles instead of snapshots.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use figment::{Figment, providers::Serialized};
/// use keyrack_core::{Secrets, sources::MemorySource};
/// use keyrack_figment::{Resolver, SecretRefField};
///
/// let memory = MemorySource::new();
/// memory.set("db", r#"{"user":"app","password":"first"}"#);
/// let secrets = Secrets::builder().source("mem", memory.clone()).build()?;
/// let figment = Figment::from(Serialized::defaults(serde_json::json!({
///     "db": { "user": "secret:mem://db#user", "password": "secret:mem://db#password" }
/// })));
///
/// #[derive(serde::Deserialize)]
/// struct Db { user: String, password: SecretRefField }
///
/// let resolved = Resolver::new(&secrets).live("db.password").resolve(&figment).await?;
/// let db: Db = resolved.extract_inner("db")?;
/// assert_eq!(db.user, "app");
/// let password = resolved.handle("db.password").expect("a live key");
/// assert_eq!(password.current().expose_str()?, "first");
/// assert_eq!(db.password.reference().as_str(), "mem://db#password");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Resolver<'s> {
    secrets: &'s Secrets,
    live: Vec<String>,
    all_profiles: bool,
}

impl fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("live", &self.live)
            .field("all_profiles", &self.all_profiles)
            .finish_non_exhaustive()
    }
}

/// One placeholder found in the data.
struct Site {
    profile: Profile,
    key: Vec<String>,
    tag: Tag,
    reference: SecretRef,
    live: bool,
}

impl<'s> Resolver<'s> {
    /// A resolver fetching through `secrets`.
    pub fn new(secrets: &'s Secrets) -> Self {
        Resolver {
            secrets,
            live: Vec::new(),
            all_profiles: false,
        }
    }

    /// Keep the reference at `key` (dot-separated, `db.password`) live: its value is fetched and
    /// held by a [`SecretHandle`] that follows rotations ([`Resolved::handle`]), and the key keeps
    /// its `secret:` placeholder in the figment, so it deserializes into a
    /// [`SecretRefField`](crate::SecretRefField). In every profile that sets the key.
    pub fn live(mut self, key: impl Into<String>) -> Self {
        self.live.push(key.into());
        self
    }

    /// Resolve the references of every profile, not only those the selected profile reads
    /// (`default`, the selected one, `global`: the default), so that the resolved figment can be
    /// re-`select`ed. Off by default: a `prod` profile naming a source that is not registered
    /// in development must not fail a development start, nor be read with its credentials.
    pub fn all_profiles(mut self, all: bool) -> Self {
        self.all_profiles = all;
        self
    }

    /// Fetch every reference of `figment` that its selected profile reads (see
    /// [`all_profiles`](Self::all_profiles)), each distinct reference once, batched per source
    /// where the source can, and return the configuration with the values in place. Escaped
    /// literals (`secret::…`) are unescaped in every profile.
    ///
    /// Every failing key is reported ([`ConfigError::Secrets`]), not only the first.
    pub async fn resolve(&self, figment: &Figment) -> Result<Resolved, ConfigError> {
        let data = figment.data().map_err(|e| ConfigError::Load(Box::new(e)))?;
        let mut sites = Vec::new();
        let mut problems = Vec::new();
        let selected = figment.profile();
        for (profile, dict) in &data {
            let read =
                *profile == Profile::Default || *profile == Profile::Global || profile == selected;
            if !read && !self.all_profiles {
                continue;
            }
            for (k, v) in dict {
                let mut key = vec![k.clone()];
                self.walk(figment, profile, &mut key, v, &mut sites, &mut problems);
            }
        }
        self.check_live(figment, &mut problems);

        // Each distinct reference once: snapshots through one prefetch (batched per source),
        // live ones through one handle each.
        let mut snapshot_refs: Vec<SecretRef> = Vec::new();
        let mut live_refs: Vec<SecretRef> = Vec::new();
        let mut seen = HashSet::new();
        for site in &sites {
            if seen.insert((site.live, site.reference.clone())) {
                if site.live {
                    live_refs.push(site.reference.clone());
                } else {
                    snapshot_refs.push(site.reference.clone());
                }
            }
        }
        let registered = |r: &SecretRef| self.secrets.has_source(r.source());
        let fetch: Vec<SecretRef> = snapshot_refs
            .iter()
            .filter(|r| registered(r))
            .cloned()
            .collect();
        let fetched = self.secrets.prefetch(&fetch).await;
        let mut values: HashMap<SecretRef, Result<String, Failure>> = HashMap::new();
        for (r, result) in fetch.into_iter().zip(fetched) {
            let outcome = match result {
                Err(e) => Err(Failure::Fetch(e)),
                Ok(secret) => match secret.expose_str() {
                    Ok(text) => Ok(text.to_owned()),
                    Err(_) => Err(Failure::NotText),
                },
            };
            values.insert(r, outcome);
        }
        let live_fetch: Vec<SecretRef> = live_refs
            .iter()
            .filter(|r| registered(r))
            .cloned()
            .collect();
        let made = join_all(live_fetch.iter().map(|r| self.secrets.handle(r))).await;
        let mut handles: HashMap<SecretRef, SecretHandle> = HashMap::new();
        let mut live_failures: HashMap<SecretRef, Failure> = HashMap::new();
        for (r, result) in live_fetch.into_iter().zip(made) {
            // A live value never enters the figment, so it may be binary (a key, a keystore).
            match result {
                Ok(h) => {
                    handles.insert(r, h);
                }
                Err(e) => {
                    live_failures.insert(r, Failure::Fetch(e));
                }
            }
        }

        // Each failing key is its own problem, even when keys share a reference.
        let mut replaced: Vec<(&Site, &str)> = Vec::new();
        for site in &sites {
            let failure = if !registered(&site.reference) {
                Some(Failure::Unregistered)
            } else if site.live {
                live_failures.get(&site.reference).cloned()
            } else {
                match values.get(&site.reference) {
                    Some(Ok(text)) => {
                        replaced.push((site, text));
                        None
                    }
                    Some(Err(f)) => Some(f.clone()),
                    // Every registered snapshot reference was fetched above.
                    None => Some(Failure::Fetch(keyrack_core::Error::new(
                        ErrorKind::Backend,
                        "the reference was not fetched",
                    ))),
                }
            };
            if let Some(failure) = failure {
                problems.push(failure.problem(figment, site));
            }
        }
        if !problems.is_empty() {
            problems.sort_by(|a, b| (&a.profile, &a.key).cmp(&(&b.profile, &b.key)));
            return Err(ConfigError::Secrets(problems));
        }

        let resolved_keys: Vec<(Profile, String)> = replaced
            .iter()
            .map(|(s, _)| (s.profile.clone(), s.key.join(".")))
            .collect();
        let provider = ResolvedValues {
            data: overlay(&data, &replaced),
        };
        // The fetched texts were copied into the figment: wipe these copies now.
        for text in values.values_mut().flatten() {
            text.zeroize();
        }
        Ok(Resolved {
            figment: figment.clone().merge(provider),
            original: figment.clone(),
            handles,
            resolved_keys,
        })
    }

    fn walk(
        &self,
        figment: &Figment,
        profile: &Profile,
        key: &mut Vec<String>,
        value: &Value,
        sites: &mut Vec<Site>,
        problems: &mut Vec<Problem>,
    ) {
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    key.push(k.clone());
                    self.walk(figment, profile, key, v, sites, problems);
                    key.pop();
                }
            }
            Value::Array(_, items) => {
                for (i, v) in items.iter().enumerate() {
                    key.push(i.to_string());
                    self.walk(figment, profile, key, v, sites, problems);
                    key.pop();
                }
            }
            Value::String(tag, s) => match Placeholder::read(s) {
                Placeholder::Plain | Placeholder::Escaped(_) => {}
                Placeholder::Reference(Ok(reference)) => {
                    let live = self.is_live(key);
                    sites.push(Site {
                        profile: profile.clone(),
                        key: key.clone(),
                        tag: *tag,
                        reference,
                        live,
                    });
                }
                Placeholder::Reference(Err(e)) => problems.push(Problem {
                    profile: profile.clone(),
                    key: key.clone(),
                    metadata: figment.get_metadata(*tag).cloned(),
                    reference: None,
                    kind: ProblemKind::InvalidReference(e.kind().clone()),
                    cause: None,
                }),
            },
            _ => {}
        }
    }

    fn is_live(&self, key: &[String]) -> bool {
        self.live.iter().any(|l| {
            let mut parts = l.split('.');
            key.iter().all(|k| parts.next() == Some(k.as_str())) && parts.next().is_none()
        })
    }

    /// A key named live that is present (in the selected profile) but holds no reference.
    fn check_live(&self, figment: &Figment, problems: &mut Vec<Problem>) {
        for l in &self.live {
            let Ok(value) = figment.find_value(l) else {
                // Absent: the application's own extraction says whether it is required.
                continue;
            };
            let is_ref = matches!(
                &value,
                Value::String(_, s) if matches!(Placeholder::read(s), Placeholder::Reference(_))
            );
            if !is_ref {
                problems.push(Problem {
                    profile: figment.profile().clone(),
                    key: l.split('.').map(str::to_owned).collect(),
                    metadata: figment.get_metadata(value.tag()).cloned(),
                    reference: None,
                    kind: ProblemKind::NotAReference,
                    cause: None,
                });
            }
        }
    }
}

/// Resolve every `secret:` reference of `figment` through `secrets` to its value.
///
/// Shorthand for [`Resolver::new(secrets).resolve(figment)`](Resolver::resolve).
pub async fn resolve(figment: &Figment, secrets: &Secrets) -> Result<Resolved, ConfigError> {
    Resolver::new(secrets).resolve(figment).await
}

#[derive(Clone)]
enum Failure {
    Unregistered,
    NotText,
    Fetch(keyrack_core::Error),
}

impl Failure {
    fn problem(self, figment: &Figment, site: &Site) -> Problem {
        let (kind, cause) = match self {
            Failure::Unregistered => (
                ProblemKind::UnregisteredSource {
                    source: site.reference.source().to_owned(),
                },
                None,
            ),
            Failure::NotText => (ProblemKind::NotText, None),
            Failure::Fetch(e) => (ProblemKind::from_error(&e), Some(e)),
        };
        Problem {
            profile: site.profile.clone(),
            key: site.key.clone(),
            metadata: figment.get_metadata(site.tag).cloned(),
            reference: Some(site.reference.clone()),
            kind,
            cause,
        }
    }
}

/// The values to merge over the original: only the branches that change. Containers keep their
/// original tags (figment re-tags only untagged values), so their provenance stays; a resolved
/// value is left untagged and so is tagged with [`PROVIDER_NAME`]'s metadata; an unescaped
/// literal keeps its own tag. An array is replaced whole (figment's `merge` does not recurse
/// into arrays), its untouched items keeping their tags.
fn overlay(data: &Map<Profile, Dict>, replaced: &[(&Site, &str)]) -> Map<Profile, Dict> {
    let mut by_profile: HashMap<&Profile, HashMap<&[String], &str>> = HashMap::new();
    for (site, text) in replaced {
        by_profile
            .entry(&site.profile)
            .or_default()
            .insert(&site.key, text);
    }
    let mut out = Map::new();
    for (profile, dict) in data {
        let values = by_profile.remove(profile).unwrap_or_default();
        let mut key = Vec::new();
        let mut changed = Dict::new();
        for (k, v) in dict {
            key.push(k.clone());
            if let Some(v) = rewrite(&mut key, v, &values) {
                changed.insert(k.clone(), v);
            }
            key.pop();
        }
        if !changed.is_empty() {
            out.insert(profile.clone(), changed);
        }
    }
    out
}

/// `v` with its references and escapes rewritten, `None` when nothing under it changes.
fn rewrite(key: &mut Vec<String>, v: &Value, values: &HashMap<&[String], &str>) -> Option<Value> {
    match v {
        Value::Dict(tag, dict) => {
            let mut changed = Dict::new();
            for (k, item) in dict {
                key.push(k.clone());
                if let Some(item) = rewrite(key, item, values) {
                    changed.insert(k.clone(), item);
                }
                key.pop();
            }
            (!changed.is_empty()).then_some(Value::Dict(*tag, changed))
        }
        Value::Array(tag, items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut any = false;
            for (i, item) in items.iter().enumerate() {
                key.push(i.to_string());
                match rewrite(key, item, values) {
                    Some(new) => {
                        any = true;
                        out.push(new);
                    }
                    // Untouched items are kept whole (the array replaces the original).
                    None => out.push(item.clone()),
                }
                key.pop();
            }
            any.then_some(Value::Array(*tag, out))
        }
        Value::String(tag, s) => {
            if let Some(text) = values.get(key.as_slice()) {
                return Some(Value::String(Tag::Default, (*text).to_owned()));
            }
            match Placeholder::read(s) {
                Placeholder::Escaped(rest) => Some(Value::String(*tag, unescape(rest))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The provider merged over the original figment: only the resolved (and unescaped) values.
struct ResolvedValues {
    data: Map<Profile, Dict>,
}

impl Drop for ResolvedValues {
    fn drop(&mut self) {
        fn wipe(v: &mut Value) {
            match v {
                Value::String(_, s) => s.zeroize(),
                Value::Dict(_, d) => d.values_mut().for_each(wipe),
                Value::Array(_, items) => items.iter_mut().for_each(wipe),
                _ => {}
            }
        }
        self.data
            .values_mut()
            .flat_map(|d| d.values_mut())
            .for_each(wipe);
    }
}

impl Provider for ResolvedValues {
    fn metadata(&self) -> Metadata {
        // No `source`: figment's errors then read "for key `db.password` in keyrack secret
        // reference".
        Metadata::named(PROVIDER_NAME)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(self.data.clone())
    }
}

/// A configuration with its references resolved, and the handles of its live keys.
///
/// Its `Debug` lists the resolved keys, never their values. Extract through
/// [`extract`](Self::extract) and [`extract_inner`](Self::extract_inner): their errors never
/// quote a resolved value (figment's own type errors quote the string they found, which for a
/// resolved key is the secret). [`figment`](Self::figment) gives the figment itself: its
/// `Debug` prints every value, secrets included, and the values it holds are plain `String`s
/// until it is dropped, so extract what you need (into [`secrecy::SecretString`] fields where
/// the value is a secret) and drop it.
///
/// [`secrecy::SecretString`]: https://docs.rs/secrecy/latest/secrecy/type.SecretString.html
pub struct Resolved {
    figment: Figment,
    original: Figment,
    handles: HashMap<SecretRef, SecretHandle>,
    resolved_keys: Vec<(Profile, String)>,
}

impl Resolved {
    /// Deserialize the whole configuration (the selected profile), like
    /// [`Figment::extract`], with errors that never quote a resolved value.
    // The same error type as `Figment::extract`, so an application's `?` keeps working.
    #[allow(clippy::result_large_err)]
    pub fn extract<'a, T: Deserialize<'a>>(&self) -> figment::Result<T> {
        self.figment.extract().map_err(redact::error)
    }

    /// Deserialize the value at `key`, like [`Figment::extract_inner`], with errors that never
    /// quote a resolved value.
    #[allow(clippy::result_large_err)]
    pub fn extract_inner<'a, T: Deserialize<'a>>(&self, key: &str) -> figment::Result<T> {
        self.figment.extract_inner(key).map_err(redact::error)
    }

    /// The handle of a live key ([`Resolver::live`]), by the key's path in the selected
    /// profile: `None` when the key is not live or not set.
    pub fn handle(&self, key: &str) -> Option<SecretHandle> {
        let value = self.original.find_value(key).ok()?;
        let Value::String(_, s) = &value else {
            return None;
        };
        let Placeholder::Reference(Ok(r)) = Placeholder::read(s) else {
            return None;
        };
        self.handles.get(&r).cloned()
    }

    /// Every live reference's handle.
    pub fn handles(&self) -> impl Iterator<Item = (&SecretRef, &SecretHandle)> {
        self.handles.iter()
    }

    /// The keys whose references were replaced by their values, with their profiles.
    pub fn resolved_keys(&self) -> impl Iterator<Item = (&Profile, &str)> {
        self.resolved_keys.iter().map(|(p, k)| (p, k.as_str()))
    }

    /// The figment with the values in place. Its `Debug` prints them: do not log it.
    pub fn figment(&self) -> &Figment {
        &self.figment
    }

    /// The figment with the values in place, and the live handles. Its `Debug` prints the
    /// values: do not log it.
    pub fn into_parts(self) -> (Figment, HashMap<SecretRef, SecretHandle>) {
        (self.figment, self.handles)
    }
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("profile", &self.figment.profile().as_str())
            .field(
                "resolved",
                &self
                    .resolved_keys
                    .iter()
                    .map(|(p, k)| format!("{p}.{k}"))
                    .collect::<Vec<_>>(),
            )
            .field("live", &self.handles.keys().collect::<Vec<_>>())
            .finish()
    }
}
