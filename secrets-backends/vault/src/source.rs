//! [`VaultSource`]: the `SecretSource` over Vault / OpenBao.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use keyrack_core::budget::CallRequests;
use keyrack_core::{
    Capabilities, Clock, Error, ErrorKind, Lease, Result, Secret, SecretRef, SecretSource,
    SecretValue, Selector, SourceEvent, Version, async_trait, fetch_each_within, timed_request,
};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::api::{Answer, Body, Envelope, parse};
use crate::mounts::{
    Detections, Engine, Mount, Mounts, UiMount, first_segment, lookup_failed_first,
};
use crate::session::{RETRY_FLOOR, Session};

/// Versions of issued secrets remembered (see [`Issued`]).
const ISSUED_CAPACITY: usize = 1024;

/// Secrets from Vault or OpenBao, addressed as `<name>://<path>`:
///
/// * KV v2 (`vault://secret/app/config`, `?version=3`): the secret's key/value map as a JSON
///   object (select keys with `#field`); version and creation time from its metadata; the version
///   probe reads only the metadata. A deleted or destroyed version is an
///   [`ErrorKind::Deleted`] error, never an empty value.
/// * KV v1 (`vault://kv1/app/config`): the map, unversioned.
/// * Any other path is read as is (`vault://database/creds/app`, `vault://aws/creds/deploy`):
///   `data` as a JSON object, with the lease (`lease_id`, `lease_duration`, `renewable`) kept;
///   leases are renewed and revoked through `sys/leases/renew` and `sys/leases/revoke`.
/// * A reference with parameters is a write (`vault://pki/issue/web?common_name=a.example.test`):
///   each fetch issues anew; a certificate's `expiration` becomes the value's expiry, its serial
///   number the version.
///
/// Parameters a path does not take are refused as [`ErrorKind::InvalidRef`], with a hint: any
/// on a KV path (only the `?version=` selector is), and on other paths a key that looks like a
/// misspelled selector (`?Version=`, `?Stage=`, `?stgae=`, `?versionId=`), which would otherwise
/// turn a read into a write.
///
/// Build one with [`VaultBuilder`](crate::VaultBuilder).
#[derive(Clone)]
pub struct VaultSource {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<Session>,
    mounts: Mounts,
    detections: Detections,
    clock: Arc<dyn Clock>,
    /// Last version issued per writing reference: the version probe answers it, so a routine
    /// check does not issue again (expiry drives re-issue).
    issued: Mutex<Issued>,
}

/// The version last issued per writing reference, bounded: expired entries go first, then the
/// oldest. A forgotten reference only costs its next routine check a new issue.
#[derive(Default)]
struct Issued {
    entries: HashMap<String, IssuedEntry>,
    next: u64,
}

struct IssuedEntry {
    version: Version,
    expires: Option<SystemTime>,
    order: u64,
}

impl Issued {
    fn insert(
        &mut self,
        key: String,
        version: Version,
        expires: Option<SystemTime>,
        now: SystemTime,
    ) {
        if !self.entries.contains_key(&key) && self.entries.len() >= ISSUED_CAPACITY {
            self.entries
                .retain(|_, e| e.expires.is_none_or(|at| at > now));
            if self.entries.len() >= ISSUED_CAPACITY
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.order)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.next += 1;
        self.entries.insert(
            key,
            IssuedEntry {
                version,
                expires,
                order: self.next,
            },
        );
    }

    fn get(&self, key: &str) -> Option<Version> {
        self.entries.get(key).map(|e| e.version.clone())
    }
}

impl std::fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSource")
            .field("address", &self.inner.session.http.address.as_str())
            .field("namespace", &self.inner.session.http.namespace)
            .finish()
    }
}

#[derive(Deserialize)]
struct Kv2Read<'a> {
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    metadata: Kv2VersionMeta,
}

#[derive(Deserialize, Default)]
struct Kv2VersionMeta {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl Kv2VersionMeta {
    fn gone(&self) -> Option<&'static str> {
        if self.destroyed {
            Some("this version was destroyed")
        } else if !self.deletion_time.is_empty() {
            Some("this version was deleted")
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
struct Kv2Metadata {
    current_version: u64,
    #[serde(default)]
    versions: HashMap<String, Kv2VersionMeta>,
}

/// What a PKI issue (or similar) answers besides the value.
#[derive(Deserialize, Default)]
struct IssuedMeta {
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    expiration: Option<u64>,
}

fn value_of(raw: &RawValue) -> SecretValue {
    SecretValue::copy_from_slice(raw.get().as_bytes())
}

/// Whether a parameter key looks like a misspelled selector (`Version`, `versionId`,
/// `stgae`, `Stage`): refused on writing paths, whose other parameters are the request body.
fn looks_like_selector(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace(['_', '-'], "");
    ["version", "stage"].iter().any(|s| {
        k.starts_with(s)
            || (k.len() == s.len()
                && k.bytes().zip(s.bytes()).filter(|(a, b)| a != b).count() == 2
                && {
                    let mut a: Vec<u8> = k.bytes().collect();
                    let mut b: Vec<u8> = s.bytes().collect();
                    a.sort_unstable();
                    b.sort_unstable();
                    a == b
                })
    })
}

/// Refuse parameters the engine does not take: none on KV paths (a KV read has only
/// `?version=`), and selector look-alikes on other paths (a parameter there makes the read a
/// write).
fn check_params(r: &SecretRef, engine: &Engine) -> Result<()> {
    match engine {
        Engine::Kv1 | Engine::Kv2 => r.expect_params(&[]),
        Engine::Other => {
            let known: Vec<&str> = r
                .params()
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !looks_like_selector(k))
                .collect();
            r.expect_params(&known)
        }
    }
}

fn no_selectors(r: &SecretRef, what: &str) -> Result<()> {
    if r.selector().is_some() {
        return Err(Error::unsupported(format!(
            "{what} has no versions or stages"
        )));
    }
    Ok(())
}

/// A KV v2 read's answer as a secret (a deleted or destroyed version is [`ErrorKind::Deleted`]).
pub(crate) fn kv2_secret(answer: &Answer) -> Result<Secret> {
    // A deleted or destroyed version answers 404 with its metadata in the body.
    let found = answer.status.is_success();
    if !found && answer.status != StatusCode::NOT_FOUND {
        return Err(answer.error());
    }
    let envelope = answer.envelope().unwrap_or_default();
    let read = match envelope.data {
        Some(raw) => parse::<Kv2Read<'_>>(raw.get(), "KV v2 answer")?,
        None if found => {
            return Err(Error::new(ErrorKind::Backend, "KV v2 answer without data"));
        }
        None => return Err(answer.error()),
    };
    if let Some(gone) = read.metadata.gone() {
        return Err(Error::new(ErrorKind::Deleted, gone));
    }
    let data = read
        .data
        .filter(|d| d.get() != "null")
        .ok_or_else(|| Error::new(ErrorKind::Deleted, "this version has no data"))?;
    let mut secret = Secret::new(value_of(data)).versioned(read.metadata.version.to_string());
    if let Ok(created) = humantime::parse_rfc3339_weak(&read.metadata.created_time) {
        secret = secret.created_at(created);
    }
    Ok(secret)
}

/// The version a KV v2 metadata answer says is served: the current one, or `pinned`.
pub(crate) fn kv2_served(answer: &Answer, pinned: Option<&str>) -> Result<Option<Version>> {
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let raw = answer
        .envelope()?
        .data
        .ok_or_else(|| Error::new(ErrorKind::Backend, "KV v2 metadata without data"))?;
    let meta = parse::<Kv2Metadata>(raw.get(), "KV v2 metadata")?;
    let served = pinned.map_or_else(|| meta.current_version.to_string(), str::to_owned);
    match meta.versions.get(&served) {
        Some(v) => {
            if let Some(gone) = v.gone() {
                return Err(Error::new(ErrorKind::Deleted, gone));
            }
        }
        None if pinned.is_some() => return Err(Error::not_found("no such version")),
        None => {}
    }
    Ok(Some(Version::from(served)))
}

/// A KV v1 read's answer as a secret.
pub(crate) fn kv1_secret(answer: &Answer) -> Result<Secret> {
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let raw = answer
        .envelope()?
        .data
        .ok_or_else(|| Error::not_found("no data at this path"))?;
    Ok(Secret::new(value_of(raw)))
}

/// The mount a `sys/internal/ui/mounts/<path>` answer describes; a refused or unknown one is
/// read as a plain logical path (mount `""`, [`Engine::Other`]).
pub(crate) fn mount_from(answer: &Answer) -> Result<Mount> {
    if !answer.status.is_success() {
        let e = answer.error();
        if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::NotFound) {
            // Not allowed to see the mount (or no mount): read the path as it is.
            return Ok(Mount {
                path: String::new(),
                engine: Engine::Other,
            });
        }
        return Err(e);
    }
    let envelope = answer.envelope()?;
    let raw = envelope
        .data
        .ok_or_else(|| Error::new(ErrorKind::Backend, "Vault's mount answer has no data"))?;
    Ok(Mount::from(parse::<UiMount>(
        raw.get(),
        "mount description",
    )?))
}

/// The secret a logical read or write answered at wall time `now`, and its certificate's expiry
/// (`expiration`), if any.
pub(crate) fn issued_secret(
    envelope: &Envelope<'_>,
    now: SystemTime,
) -> Result<(Secret, Option<SystemTime>)> {
    let raw = envelope
        .data
        .ok_or_else(|| Error::not_found("no data at this path"))?;
    let issued: IssuedMeta = serde_json::from_str(raw.get()).unwrap_or_default();
    let mut secret = Secret::new(value_of(raw)).created_at(now);
    if !envelope.lease_id.is_empty() {
        secret = secret
            .versioned(envelope.lease_id.as_str())
            .leased(Lease::new(
                envelope.lease_id.clone(),
                Duration::from_secs(envelope.lease_duration),
                envelope.renewable,
                now,
            ));
    } else if let Some(serial) = &issued.serial_number {
        secret = secret.versioned(serial.as_str());
    }
    // An expiry no `SystemTime` holds is no expiry (not a panic).
    let expires = issued
        .expiration
        .and_then(|exp| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp)));
    if let Some(at) = expires {
        secret = secret.expires_at(at);
    }
    Ok((secret, expires))
}

/// The lease `id` as a `sys/leases/*` answer describes it afterwards, at wall time `now`.
pub(crate) fn lease_from(answer: &Answer, id: &str, now: SystemTime) -> Result<Lease> {
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    let envelope = answer.envelope()?;
    for w in envelope.warnings.iter().flatten() {
        // "TTL of … exceeded the effective max_ttl …": the shortened TTL tells the client.
        tracing::debug!(warning = %w, "Vault warning on a lease call");
    }
    let id = if envelope.lease_id.is_empty() {
        id.to_owned()
    } else {
        envelope.lease_id.clone()
    };
    Ok(Lease::new(
        id,
        Duration::from_secs(envelope.lease_duration),
        envelope.renewable,
        now,
    ))
}

impl VaultSource {
    pub(crate) fn new(session: Arc<Session>, clock: Arc<dyn Clock>) -> Self {
        VaultSource {
            inner: Arc::new(Inner {
                session,
                mounts: Mounts::default(),
                detections: Detections::default(),
                clock,
                issued: Mutex::new(Issued::default()),
            }),
        }
    }

    /// Send a request with the current token; after a 403 caused by a dead token, log in again
    /// and send it once more. Also returns the generation of the token that got the answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Body>,
    ) -> Result<(Answer, u64)> {
        let session = &self.inner.session;
        let (token, generation) = session.token().await?;
        let answer = session
            .http
            .send(method.clone(), path, query, body, Some(&token))
            .await?;
        if answer.status != StatusCode::FORBIDDEN {
            return Ok((answer, generation));
        }
        match session.recover_from_forbidden(&token, generation).await? {
            Some((fresh, generation)) => {
                let answer = session
                    .http
                    .send(method, path, query, body, Some(&fresh))
                    .await?;
                Ok((answer, generation))
            }
            None => Ok((answer, generation)),
        }
    }

    /// The mount `path` lies under, and whether it came from the cache. Cold reads started
    /// together share one detection ([`Detections`]); a detection takes a place in the budget
    /// of the call that starts it, ahead of that call's read
    /// ([`needed_request`](keyrack_core::budget::needed_request)), as the login does.
    async fn mount(&self, path: &str) -> Result<(Mount, bool)> {
        if let Some(m) = self.inner.mounts.find(path, self.inner.clock.now()) {
            return Ok((m, true));
        }
        let shared = self
            .inner
            .detections
            .join(path, || {
                let (source, path) = (self.clone(), path.to_owned());
                let place = keyrack_core::budget::needed_request();
                async move {
                    place.await;
                    source.detect_mount(&path).await
                }
                .boxed()
            })
            .await;
        match shared {
            Some(outcome) => outcome.map(|m| (m, false)),
            None => {
                keyrack_core::budget::needed_request().await;
                self.detect_mount(path).await.map(|m| (m, false))
            }
        }
    }

    /// What every read of `refs` waits for, done before any read takes its place in the budget:
    /// the login, if there is no token yet, and the lookup of each mount not known yet (one per
    /// first path segment, eight at a time). Done by the reads themselves instead, the first
    /// reads' places come and go while they wait for the login and the lookup, and the reads
    /// then go at once: a fleet whose shares add up to a quota sends bursts past it.
    ///
    /// `Err` when no read can succeed: the login failed (each read would log in again). `Ok`
    /// with the first path segments whose lookup found Vault down, hung or throttling: their
    /// reads are not sent. Other lookup failures are left to the reads, which meet them on their
    /// own paths.
    async fn before_reads<'r>(
        &self,
        refs: &'r [SecretRef],
        requests: &CallRequests,
    ) -> Result<HashMap<&'r str, Error>> {
        if !self.inner.session.has_token() {
            // The login takes the call's first place, the reads places after it.
            timed_request(self.inner.session.token_within(requests)).await?;
        }
        let now = self.inner.clock.now();
        let mut segments = HashSet::new();
        let lookups: Vec<_> = refs
            .iter()
            .map(|r| r.path().trim_matches('/'))
            .filter(|path| self.inner.mounts.find(path, now).is_none())
            .filter(|path| segments.insert(first_segment(path)))
            .map(|path| async move { (first_segment(path), timed_request(self.mount(path)).await) })
            .collect();
        let outcomes: Vec<_> = futures_util::stream::iter(lookups)
            .buffer_unordered(8)
            .collect()
            .await;
        Ok(outcomes
            .into_iter()
            .filter_map(|(segment, outcome)| match outcome {
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::Throttled
                    ) =>
                {
                    Some((segment, e))
                }
                _ => None,
            })
            .collect())
    }

    /// Run `op` on the mount of `path`. When a cached mount's answer is one a remount would
    /// cause (404, 403, 405), the mount is detected again (at most once per mount and
    /// [`RECHECK_GAP`](crate::mounts::RECHECK_GAP)) and, if it changed, `op` runs again on it.
    async fn on_mount<'a, T, F, Fut>(&'a self, path: &'a str, op: F) -> Result<T>
    where
        F: Fn(Mount) -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let (mount, cached) = self.mount(path).await?;
        let result = op(mount.clone()).await;
        let remount_like = matches!(
            &result,
            Err(e) if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::Unsupported
            )
        );
        if !(cached
            && remount_like
            && self
                .inner
                .mounts
                .may_recheck(&mount.path, self.inner.clock.now()))
        {
            return result;
        }
        let fresh = self.detect_mount(path).await?;
        if fresh == mount {
            return result;
        }
        tracing::info!(mount = %fresh.path, "the Vault mount changed; read again");
        op(fresh).await
    }

    async fn detect_mount(&self, path: &str) -> Result<Mount> {
        let (answer, _) = self
            .call(
                Method::GET,
                &format!("sys/internal/ui/mounts/{path}"),
                &[],
                None,
            )
            .await?;
        let mount = mount_from(&answer)?;
        // A mount Vault would not describe (path `""`) is not remembered: the next read asks again.
        if mount.path.is_empty() {
            return Ok(mount);
        }
        self.inner
            .mounts
            .remember(mount.clone(), self.inner.clock.now());
        Ok(mount)
    }

    async fn kv2_read(&self, mount: &Mount, path: &str, r: &SecretRef) -> Result<Secret> {
        let version = match r.selector() {
            None => None,
            Some(Selector::Version(v)) => Some(v.as_str()),
            Some(_) => return Err(Error::unsupported("KV v2 has versions, not stages")),
        };
        let query: Vec<(&str, &str)> = version.map(|v| ("version", v)).into_iter().collect();
        let data_path = format!("{}data/{}", mount.path, mount.rest(path));
        let (answer, _) = self.call(Method::GET, &data_path, &query, None).await?;
        kv2_secret(&answer)
    }

    /// The version served (the current one, or the pinned one), from the metadata alone.
    async fn kv2_version(
        &self,
        mount: &Mount,
        path: &str,
        pinned: Option<&str>,
    ) -> Result<Option<Version>> {
        let meta_path = format!("{}metadata/{}", mount.path, mount.rest(path));
        let (answer, _) = self.call(Method::GET, &meta_path, &[], None).await?;
        kv2_served(&answer, pinned)
    }

    async fn kv1_read(&self, path: &str, r: &SecretRef) -> Result<Secret> {
        no_selectors(r, "KV v1")?;
        let (answer, _) = self.call(Method::GET, path, &[], None).await?;
        kv1_secret(&answer)
    }

    /// Any other path: a read, or a write when the reference has parameters.
    async fn logical(&self, path: &str, r: &SecretRef) -> Result<Secret> {
        no_selectors(r, "this path")?;
        let body = if r.params().is_empty() {
            None
        } else {
            let fields: serde_json::Map<String, serde_json::Value> = r
                .params()
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            Some(Body::json(&fields)?)
        };
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let mut replaced = false;
        loop {
            let (answer, generation) = self.call(method.clone(), path, &[], body.as_ref()).await?;
            if !answer.status.is_success() {
                return Err(answer.error());
            }
            let envelope = answer.envelope()?;
            // A lease issued under a token replaced while the request was under way dies with
            // that token, and the change feed already reported the new login: issue it again
            // under the new token (once; the old lease ends with its token).
            if !envelope.lease_id.is_empty()
                && !replaced
                && self.inner.session.generation() != generation
            {
                replaced = true;
                tracing::debug!(secret = %r, "issued under a token replaced meanwhile; issuing again");
                continue;
            }
            return self.secret_from(&envelope, r);
        }
    }

    fn secret_from(&self, envelope: &Envelope<'_>, r: &SecretRef) -> Result<Secret> {
        self.warn(envelope, r);
        let now = self.inner.clock.wall();
        let (secret, expires) = issued_secret(envelope, now)?;
        if !r.params().is_empty()
            && let Some(v) = secret.version()
        {
            self.lock_issued()
                .insert(r.as_str().to_owned(), v.clone(), expires, now);
        }
        Ok(secret)
    }

    fn lock_issued(&self) -> MutexGuard<'_, Issued> {
        self.inner.issued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warn(&self, envelope: &Envelope<'_>, r: &SecretRef) {
        for w in envelope.warnings.iter().flatten() {
            tracing::debug!(secret = %r, warning = %w, "Vault warning");
        }
    }

    /// A `sys/leases/*` call on the lease `id`: the lease as Vault describes it afterwards.
    async fn lease_call(&self, path: &str, id: &str, body: serde_json::Value) -> Result<Lease> {
        let (answer, _) = self
            .call(Method::PUT, path, &[], Some(&Body::json(&body)?))
            .await?;
        lease_from(&answer, id, self.inner.clock.wall())
    }
}

/// Requests per second a process may send to Vault unless told otherwise.
const DEFAULT_BUDGET: u32 = 1_000;

#[async_trait]
impl SecretSource for VaultSource {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.version_probe = true;
        caps.versions = true;
        caps.renew = true;
        caps.revoke = true;
        // The change feed reports new logins: leases of the old token must be re-issued.
        caps.watch = self.inner.session.can_login();
        caps.retry_floor = RETRY_FLOOR;
        // Vault documents no quota (its capacity is the operator's server). A ceiling far
        // above what one process needs, so that the budget adapts: a rate-limit quota's 429
        // cuts it as any backend's throttling does, where no budget would retry at full rate.
        caps.request_budget = Some(keyrack_core::RequestBudget::per_second(DEFAULT_BUDGET));
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let path = r.path().trim_matches('/');
        self.on_mount(path, |mount| async move {
            check_params(r, &mount.engine)?;
            match mount.engine {
                Engine::Kv2 => self.kv2_read(&mount, path, r).await,
                Engine::Kv1 => self.kv1_read(path, r).await,
                Engine::Other => self.logical(path, r).await,
            }
        })
        .await
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        let requests = CallRequests::new();
        let down = match self.before_reads(refs, &requests).await {
            Ok(down) => down,
            Err(e) => return refs.iter().map(|_| Err(e.clone())).collect(),
        };
        if down.is_empty() {
            return fetch_each_within(self, refs, 8, &requests).await;
        }
        // The reads under a mount whose lookup found Vault down are not sent; the rest are.
        let mut results: Vec<Option<Result<Secret>>> = refs
            .iter()
            .map(|r| {
                down.get(first_segment(r.path().trim_matches('/')))
                    .map(|e| Err(lookup_failed_first(e)))
            })
            .collect();
        let rest: Vec<SecretRef> = refs
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        let read = fetch_each_within(self, &rest, 8, &requests).await;
        for (slot, result) in results.iter_mut().filter(|s| s.is_none()).zip(read) {
            *slot = Some(result);
        }
        results.into_iter().flatten().collect()
    }

    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        let path = r.path().trim_matches('/');
        self.on_mount(path, |mount| async move {
            check_params(r, &mount.engine)?;
            match mount.engine {
                Engine::Kv2 => match r.selector() {
                    None => self.kv2_version(&mount, path, None).await,
                    Some(Selector::Version(v)) => self.kv2_version(&mount, path, Some(v)).await,
                    Some(_) => Err(Error::unsupported("KV v2 has versions, not stages")),
                },
                Engine::Other if !r.params().is_empty() => Ok(self.lock_issued().get(r.as_str())),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease> {
        let mut body = serde_json::json!({ "lease_id": lease.id });
        if let Some(inc) = increment {
            body["increment"] = inc.as_secs().into();
        }
        self.lease_call("sys/leases/renew", &lease.id, body).await
    }

    async fn revoke(&self, lease: &Lease) -> Result<()> {
        self.lease_call(
            "sys/leases/revoke",
            &lease.id,
            serde_json::json!({ "lease_id": lease.id }),
        )
        .await
        .map(|_| ())
    }

    fn watch(&self, _r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        if !self.inner.session.can_login() {
            return None;
        }
        let mut generations = self.inner.session.generations();
        generations.mark_unchanged();
        Some(
            futures_util::stream::unfold(generations, |mut rx: watch::Receiver<u64>| async move {
                rx.changed().await.ok()?;
                Some((Ok(SourceEvent::Resync), rx))
            })
            .boxed(),
        )
    }

    /// Stops the task that keeps the source's own token alive and waits until it has stopped.
    /// The keeper never starts again; direct calls still work (the conformance suite reads a
    /// source after a client it was registered with shut down), with whatever token they get.
    async fn shutdown(&self) {
        self.inner.session.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found while checking the `vault_answer` fuzz target's property (an expiry is
    /// representable): an `expiration` past what `SystemTime` holds panicked.
    #[test]
    fn an_expiration_past_time_is_no_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let envelope = |body: &'static str| parse::<Envelope<'static>>(body, "answer").unwrap();
        let e = envelope(r#"{"data":{"certificate":"c","expiration":18446744073709551615}}"#);
        let (secret, expires) = issued_secret(&e, now).unwrap();
        assert_eq!((secret.metadata().expires_at, expires), (None, None));
        let e = envelope(r#"{"data":{"certificate":"c","expiration":1900000000}}"#);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert_eq!(issued_secret(&e, now).unwrap().1, Some(at));
    }
}
