//! [`KubernetesSecrets`]: `k8s://<namespace>/<name>[#<key>]`, a Secret read through the API
//! server with the pod's service-account token, and watched for changes.
//!
//! # What a secret's value is
//!
//! A Secret is a map of keys to bytes (`data`, base64 on the wire, decoded here). The value of
//! `k8s://apps/db-creds` is that map as a JSON object of strings, keys sorted:
//! `{"password":"s3cr3t","username":"admin"}`. `#password` then selects one key the way every
//! source's `#field` does (through [`Secret::field`], by the client), so a missing key is the same
//! [`ErrorKind::InvalidValue`] as a missing JSON field anywhere else. A key whose bytes are not
//! UTF-8 cannot be a JSON string, so it is left out of the map (the text keys stay readable
//! whatever the others hold, and the version still follows it); it is read alone, byte for
//! byte, with the parameter `?key=<key>` (`k8s://apps/tls-store?key=keystore.jks`).
//!
//! The version follows the data the reference reads, not the object's `resourceVersion`: a
//! label, an annotation or `kubectl apply`'s last-applied annotation gives the object a new
//! resourceVersion without changing a byte of the value, and must not rotate it. It is a digest
//! of the data (every key, or the one of `?key=`) keyed with random keys made for the source, so
//! it reveals nothing of a short value; it means nothing outside the process. Kubernetes keeps no
//! older versions, so `?version=` and `?stage=` are refused as unsupported. The version probe
//! needs no request while a watch can answer (see `version` on [`KubernetesSecrets`]) and otherwise
//! reads the Secret (there is no cheaper way to learn its data's version), keeping what it read
//! for the client's read that follows a changed version: a routine check is one GET.
//!
//! # Watching
//!
//! A handle on a `k8s://` secret is kept current by a watch of that one object
//! (`GET …/secrets?fieldSelector=metadata.name%3D<name>&watch=1&allowWatchBookmarks=true`). A
//! watch without a resume point starts at the most recent state as a *streaming list*
//! (`sendInitialEvents=true&resourceVersionMatch=NotOlderThan`, Kubernetes' `WatchList`
//! feature, beta and on by default since 1.32): its initial `ADDED` is compared with the last
//! read, and the `BOOKMARK` annotated `k8s.io/initial-events-end` that ends the initial events
//! shows a deletion too (the object is not among them), so a change or a deletion between the
//! read and the watch is reported rather than lost, without a read. A server without streaming
//! lists refuses them (422 `Invalid`); the source then watches the plain way and reads the
//! object once after each watch from the most recent state, for the deletion such a watch
//! cannot show; it asks once per source. (Resuming from the read's own resourceVersion would not
//! do: it is the revision of the object's last write, usually older than the history the server
//! keeps, and would be answered 410 every time.) `ADDED`/`MODIFIED` with new data make the client
//! re-read (and fire `Rotated`); with the same data (a metadata-only update) they only move the
//! resume point, as `BOOKMARK` does; `DELETED` reports the deletion. A stream the server ends
//! (`timeoutSeconds`, 5–10 min at random, as client-go does) is re-opened from the last change or
//! bookmark it delivered; when the server has compacted past that point (`ERROR` 410
//! `Expired`/`Gone` in the stream, or HTTP 410) the watch starts at the most recent state again,
//! as above. Failures back off (1 s doubling to 60 s, full jitter, honouring Retry-After and an
//! `ERROR` event's `retryAfterSeconds`), and so do repeated 410s and streams that end without
//! delivering anything.
//!
//! What that costs, as client-go's list and watch: a handle, one read and one watch (the
//! client's look right after it opens the feed is answered by the watch's first connection);
//! a 410, no read (one on a server without streaming lists); a change the watch reports, one
//! read; a deletion, none (the client's retries are answered from the open watch, which reports
//! a re-creation).

//! # Least privilege
//!
//! Neither reads nor watches list the namespace, so the service account needs no `list`, only
//! `get` and `watch` on the named Secrets:
//!
//! ```yaml
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: Role
//! metadata: { namespace: apps, name: read-db-creds }
//! rules:
//!   - apiGroups: [""]
//!     resources: ["secrets"]
//!     resourceNames: ["db-creds"]
//!     verbs: ["get", "watch"]
//! ---
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: RoleBinding
//! metadata: { namespace: apps, name: app-reads-db-creds }
//! roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-db-creds }
//! subjects: [{ kind: ServiceAccount, name: app, namespace: apps }]
//! ```
//!
//! A watch with `fieldSelector=metadata.name=<name>` is authorized against `resourceNames` like a
//! GET of that object. A Role without `watch` still works: handles fall back to the client's
//! interval checks, and the client tries the watch again (one refused request and a warning) at
//! each of them.
//!
//! # Credentials and secrecy
//!
//! The token is asked of the [`IdentityToken`] at every request, never kept; after a 401 it is
//! invalidated and the request retried once with a fresh token (the kubelet may have rotated it).
//! No value or token is logged or put into an error: server messages kept in errors describe the
//! request, never the data.
//!
//! Wiped when let go of: the body of a GET and the watch stream's lines, which hold the data in
//! base64 (and, in `kubectl apply`'s last-applied annotation, the whole manifest again), in
//! buffers that wipe what they release, move or outgrow; each chunk the HTTP client hands over,
//! once copied, when this crate holds its only reference; the data parsed from them, borrowed in
//! place (a zeroizing string only if the JSON escaped a character); the decoded values and the
//! JSON map made of them, in zeroize-on-drop [`SecretValue`]s sized up front. Not wiped: the HTTP
//! client's, hyper's and rustls's own buffers (TLS records, the connection's read buffer, a chunk
//! that shares it), which this crate cannot reach; serde_json's scratch buffer, used only for a
//! string with escapes (never base64 as the API server writes it); and the `Authorization`
//! header, which reqwest copies into its request.

mod api;
mod data;
mod tracked;
mod watch;
mod wiping;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use futures_util::stream::BoxStream;
use keyrack_core::{
    Backoff, Capabilities, Clock, Error, ErrorKind, IdentityToken, Lease, Metadata, Result, Secret,
    SecretRef, SecretSource, SecretValue, Selector, SourceEvent, SystemClock, Version, fetch_each,
};
use url::Url;

use api::{Api, SecretObject};
use data::{Data, Fingerprint};
use tracked::{ReadStart, Tracked};

/// Concurrent GETs in `fetch_many` (the API server has no batch read of named objects).
const FETCH_CONCURRENCY: usize = 8;
/// The query parameter that reads one key's raw bytes.
const KEY_PARAM: &str = "key";

/// The Kubernetes Secrets source: `k8s://<namespace>/<name>[#<key>]` (see the
/// [module documentation](self)).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use keyrack_core::{IdentityToken, Secrets};
/// use keyrack_k8s::{ProjectedToken, source::KubernetesSecrets};
///
/// let token: Arc<dyn IdentityToken> = Arc::new(ProjectedToken::service_account());
/// let k8s = KubernetesSecrets::builder()
///     .api_server("https://kubernetes.default.svc")
///     .ca_pem(std::fs::read("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")?)
///     .token(token)
///     .build()?;
/// let secrets = Secrets::builder().source("k8s", k8s).build()?;
/// let password = secrets.get_secret("k8s://apps/db-creds#password").await?;
/// # let _ = password;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubernetesSecrets {
    api: Api,
    clock: Arc<dyn Clock>,
    watch_backoff: Backoff,
    /// Makes versions from data.
    fingerprint: Fingerprint,
    /// Whether the API server serves streaming lists (cleared at its first refusal).
    streaming: Arc<AtomicBool>,
    /// What reads and watches saw of each target, and the watches of each.
    tracked: Tracked,
    /// What the version probe read, by target, for the read that follows it.
    probed: Arc<Mutex<HashMap<String, Probed>>>,
    /// Set by `shutdown`: the watches end.
    closed: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A read made by the version probe.
struct Probed {
    at: Instant,
    /// The target's watch reports when it was read: one since makes it stale.
    epoch: ReadStart,
    secret: Secret,
}

/// How long the version probe's read is kept for the client's read after it (made at once when
/// the version moved).
const PROBED_FOR: Duration = Duration::from_secs(1);

fn deleted(t: &Target) -> Error {
    Error::not_found(format!(
        "Secret `{}` was deleted (its open watch reports it if it is created again)",
        t.key()
    ))
}

impl fmt::Debug for KubernetesSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSecrets")
            .field("api_server", &self.api.base.as_str())
            .finish_non_exhaustive()
    }
}

impl KubernetesSecrets {
    /// A builder; `api_server`, `token` and (for any CA not in the platform's store) `ca_pem`
    /// are needed.
    pub fn builder() -> KubernetesSecretsBuilder {
        KubernetesSecretsBuilder::default()
    }

    /// GET the Secret and make what `t` reads of it, noting its state for watches and the
    /// version probe.
    async fn read(&self, t: &Target) -> Result<Secret> {
        let id = t.id();
        let start = self.tracked.read_starts(&id);
        let body = match self.api.get_secret(t).await {
            Ok(body) => body,
            Err(e) => {
                if e.kind() == &ErrorKind::NotFound {
                    self.tracked.read(&id, start, None);
                }
                return Err(e);
            }
        };
        let object = SecretObject::parse(&body)?;
        let value = value_of(&object, t)?;
        let version = self
            .fingerprint
            .version(object.data.as_ref(), t.key.as_deref());
        tracing::trace!(namespace = %t.namespace, name = %t.name, %version, resource_version = ?object.metadata.resource_version, "GET of the Secret");
        self.tracked.read(&id, start, Some(version.clone()));
        let mut meta = Metadata::default();
        meta.version = Some(version);
        Ok(Secret::with_metadata(value, meta))
    }

    /// Keep what the version probe read, for the read the client makes right after it when the
    /// version moved.
    fn keep_probed(&self, t: &Target, secret: Secret) {
        let mut probed = self.probed.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        probed.retain(|_, p| now.saturating_duration_since(p.at) <= PROBED_FOR);
        let epoch = self.tracked.read_starts(&t.id());
        probed.insert(
            t.id(),
            Probed {
                at: now,
                epoch,
                secret,
            },
        );
    }

    /// What the version probe read for `t` within the last second, unless a watch reported a
    /// change since.
    fn take_probed(&self, t: &Target) -> Option<Secret> {
        let mut probed = self.probed.lock().unwrap_or_else(|p| p.into_inner());
        let p = probed.remove(&t.id())?;
        let fresh = self.clock.now().saturating_duration_since(p.at) <= PROBED_FOR
            && self.tracked.read_starts(&t.id()) == p.epoch;
        fresh.then_some(p.secret)
    }
}

/// Builds a [`KubernetesSecrets`].
pub struct KubernetesSecretsBuilder {
    api_server: Option<String>,
    ca_pem: Option<Vec<u8>>,
    token: Option<Arc<dyn IdentityToken>>,
    clock: Arc<dyn Clock>,
    watch_backoff: Backoff,
    request_timeout: Duration,
}

impl Default for KubernetesSecretsBuilder {
    fn default() -> Self {
        KubernetesSecretsBuilder {
            api_server: None,
            ca_pem: None,
            token: None,
            clock: Arc::new(SystemClock),
            watch_backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for KubernetesSecretsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSecretsBuilder")
            .field("api_server", &self.api_server)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field("token", &self.token.as_ref().map(|_| "<IdentityToken>"))
            .field("watch_backoff", &self.watch_backoff)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl KubernetesSecretsBuilder {
    /// The pod's API server, CA bundle and service-account token ([`InCluster`](crate::InCluster)).
    pub fn in_cluster(self, cluster: &crate::InCluster) -> Self {
        self.api_server(cluster.api_server().as_str())
            .ca_pem(cluster.ca_pem().to_vec())
            .token(Arc::new(cluster.token().clone()))
    }

    /// The API server's URL (`https://kubernetes.default.svc`, `https://10.96.0.1:443`); `https`
    /// only, since every request carries the token.
    pub fn api_server(mut self, url: impl AsRef<str>) -> Self {
        self.api_server = Some(url.as_ref().to_owned());
        self
    }

    /// The PEM bundle of the CA(s) that issued the API server's certificate (the pod's
    /// `ca.crt`); when given, only these are trusted. Without it the platform's store is used.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The bearer token, asked for at every request (a [`ProjectedToken`](crate::ProjectedToken)
    /// in a pod).
    pub fn token(mut self, token: Arc<dyn IdentityToken>) -> Self {
        self.token = Some(token);
        self
    }

    /// The clock watches wait on between reconnections, and whose wall time reads a
    /// `Retry-After` given as an HTTP-date (the system clock by default).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Backoff between failed watch (re)connections (1 s doubling to 60 s, full jitter, by
    /// default); a throttling server's Retry-After is honoured on top.
    pub fn watch_backoff(mut self, backoff: Backoff) -> Self {
        self.watch_backoff = backoff;
        self
    }

    /// Bound on one GET (30 s by default). Watches are long-lived and bounded otherwise.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Checks the settings and builds the HTTP client.
    pub fn build(self) -> Result<KubernetesSecrets> {
        let config = |m: &str| Error::new(ErrorKind::Config, m.to_owned());
        let raw = self
            .api_server
            .ok_or_else(|| config("the API server URL is not set (`api_server`)"))?;
        let base = Url::parse(&raw).map_err(|e| {
            Error::new(ErrorKind::Config, "the API server URL is not a URL").with_cause(e)
        })?;
        if base.scheme() != "https" {
            return Err(config(
                "the API server URL must be https: every request carries the token",
            ));
        }
        let token = self
            .token
            .ok_or_else(|| config("no service-account token is set (`token`)"))?;
        keyrack_core::tls::ensure_crypto_provider();
        let mut client = reqwest::Client::builder()
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            // A redirect would carry the token elsewhere; the API server never redirects reads.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                Error::new(ErrorKind::Config, "the CA bundle is not PEM certificates").with_cause(e)
            })?;
            if certs.is_empty() {
                return Err(config("the CA bundle holds no certificate"));
            }
            client = client.tls_certs_only(certs);
        }
        let client = client.build().map_err(|e| {
            Error::new(ErrorKind::Config, "cannot build the HTTP client").with_cause(e)
        })?;
        Ok(KubernetesSecrets {
            api: Api {
                client,
                base,
                token,
                timeout: self.request_timeout,
                clock: self.clock.clone(),
            },
            clock: self.clock,
            watch_backoff: self.watch_backoff,
            fingerprint: Fingerprint::new(),
            streaming: Arc::new(AtomicBool::new(true)),
            tracked: Tracked::default(),
            probed: Arc::default(),
            closed: Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }
}

/// The object (and key) a reference names.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    namespace: String,
    name: String,
    key: Option<String>,
}

impl Target {
    fn parse(r: &SecretRef) -> Result<Target> {
        match r.selector() {
            Some(Selector::Version(_)) => {
                return Err(Error::unsupported(
                    "Kubernetes keeps no older versions of a Secret: remove `?version=`",
                ));
            }
            Some(_) => {
                return Err(Error::unsupported(
                    "Kubernetes Secrets have no stages: remove `?stage=`",
                ));
            }
            None => {}
        }
        // A misspelt `?key=` must not read the whole map.
        r.expect_params(&[KEY_PARAM])?;
        let key = r.param(KEY_PARAM);
        if let Some(key) = key {
            Part::Key.check(key)?;
        }
        let (namespace, name) = r.path().split_once('/').ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidRef,
                "a k8s:// reference is `k8s://<namespace>/<name>[#<key>]`",
            )
        })?;
        Part::Namespace.check(namespace)?;
        Part::Name.check(name)?;
        Ok(Target {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.map(str::to_owned),
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What the reference reads: the object, and the key when one is selected.
    fn id(&self) -> String {
        match &self.key {
            Some(k) => format!("{}/{}?{KEY_PARAM}={k}", self.namespace, self.name),
            None => self.key(),
        }
    }
}

/// A part of a reference, checked against Kubernetes' own rules before any request. Errors say
/// which part and which rule, never the part itself: a reference that does not check out may be
/// a value pasted in the wrong place.
#[derive(Clone, Copy)]
enum Part {
    /// A namespace name: an RFC 1123 label (at most 63 characters).
    Namespace,
    /// A Secret name: an RFC 1123 subdomain (at most 253 characters).
    Name,
    /// A key of `data` (`?key=`): at most 253 letters, digits, `-`, `_`, `.`.
    Key,
}

impl Part {
    fn what(self) -> &'static str {
        match self {
            Part::Namespace => "namespace",
            Part::Name => "Secret name",
            Part::Key => "`?key=` value",
        }
    }

    /// The longest the part may be (Kubernetes' validation: `IsDNS1123Label`,
    /// `IsDNS1123Subdomain`, `IsConfigMapKey`).
    fn max(self) -> usize {
        match self {
            Part::Namespace => 63,
            Part::Name | Part::Key => 253,
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Part::Namespace => {
                "lowercase letters, digits and `-`, starting and ending with a letter or digit"
            }
            Part::Name => {
                "lowercase letters, digits, `-` and `.`, each dot-separated part starting and \
                 ending with a letter or digit"
            }
            Part::Key => "letters, digits, `-`, `_` and `.`",
        }
    }

    fn valid(self, s: &str) -> bool {
        match self {
            Part::Namespace => is_dns_label(s),
            Part::Name => s.split('.').all(is_dns_label),
            Part::Key => s
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')),
        }
    }

    fn check(self, s: &str) -> Result<()> {
        let invalid = |m: String| Err(Error::new(ErrorKind::InvalidRef, m));
        let (what, max) = (self.what(), self.max());
        let len = s.chars().count();
        if len > max {
            return invalid(format!(
                "the {what} is {len} characters long; Kubernetes allows at most {max}"
            ));
        }
        if s.is_empty() {
            return invalid(format!("the {what} is empty"));
        }
        if !self.valid(s) {
            return invalid(format!(
                "the {what} is not one Kubernetes accepts ({}, at most {max})",
                self.rule()
            ));
        }
        Ok(())
    }
}

/// An RFC 1123 label: at most 63 lowercase letters, digits and `-`, not at either end.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Decode one `data` value into a zeroizing buffer (sized up front, so it never reallocates and
/// leaves a copy behind).
fn decode(key: &str, b64: &str) -> Result<SecretValue> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(base64::decoded_len_estimate(b64.len()));
    // The decoder's error names the offending byte, which is part of the value: dropped.
    engine
        .decode_vec(b64, &mut out)
        .map_err(|_| Error::new(ErrorKind::Backend, format!("key `{key}` is not base64")))?;
    Ok(SecretValue::from_bytes(out))
}

/// The value a reference reads: one key's bytes, or every key as a JSON object of strings.
fn value_of(object: &SecretObject<'_>, t: &Target) -> Result<SecretValue> {
    let empty = Data::new();
    let data = object.data.as_ref().unwrap_or(&empty);
    if let Some(key) = &t.key {
        let b64 = data.get(key.as_str()).ok_or_else(|| {
            Error::invalid_value(format!("key `{key}` is not in Secret `{}`", t.key()))
        })?;
        return decode(key, b64);
    }
    let mut decoded = BTreeMap::new();
    for (key, b64) in data {
        decoded.insert(key.as_ref(), decode(key, b64)?);
    }
    let mut texts = BTreeMap::new();
    let mut binary = Vec::new();
    for (key, value) in &decoded {
        // A JSON string cannot hold bytes that are not UTF-8: such a key is left out, so the
        // text keys stay readable (`#note` must not fail because of a keystore next to it).
        match std::str::from_utf8(value.expose_bytes()) {
            Ok(text) => {
                texts.insert(*key, text);
            }
            Err(_) => binary.push(*key),
        }
    }
    if !binary.is_empty() {
        tracing::debug!(namespace = %t.namespace, name = %t.name, keys = ?binary,
            "binary keys left out of the Secret's JSON map: read each with `?{KEY_PARAM}=<key>`");
    }
    // Measured first, so the buffer is allocated once and never leaves a copy of the value in
    // memory freed by a reallocation.
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, &texts).map_err(json_write_error)?;
    let mut json = Vec::with_capacity(counter.0);
    serde_json::to_writer(&mut json, &texts).map_err(json_write_error)?;
    Ok(SecretValue::from_bytes(json))
}

fn json_write_error(e: serde_json::Error) -> Error {
    // Writing strings into memory cannot fail; should it, serde's text is not kept.
    let _ = e;
    Error::new(ErrorKind::Backend, "cannot write the Secret's keys as JSON")
}

/// A writer that only counts.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn not_leased() -> Error {
    Error::unsupported("Kubernetes Secrets have no leases")
}

#[async_trait]
impl SecretSource for KubernetesSecrets {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.watch = true;
        // The API server's own guidance: API Priority and Fairness rejects with 429 and
        // `Retry-After: 1` (kubernetes/kubernetes#117734), and client-go's reflector backs off
        // from 800 ms; so no retry sooner than a second.
        caps.retry_floor = Duration::from_secs(1);
        // Answered from an open watch, without a request (see `version`): the client's look
        // after its feed opens, and its checks while the watch reports, cost nothing.
        caps.version_probe = true;
        // `binary` stays off: the unit a reference reads is the key map, JSON text. Binary keys
        // are readable with `?key=`, but a source must not declare what its plain form refuses.
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let annotate = |e: Error| e.with_ref(r);
        let t = Target::parse(r).map_err(annotate)?;
        let secret = match self.take_probed(&t) {
            Some(secret) => secret,
            None => self.read(&t).await.map_err(annotate)?,
        };
        tracing::debug!(secret = %r, version = ?secret.version(), "read Secret");
        // The client strips `#key` and selects it itself; a direct caller gets the same result.
        match r.field() {
            Some(f) => secret.field(f).map_err(annotate),
            None => Ok(secret),
        }
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        fetch_each(self, refs, FETCH_CONCURRENCY).await
    }

    /// Needs no request of its own in two cases. Right after a feed of the secret was made and
    /// before it connected (the client looks once when it opens a feed), the probe makes the
    /// watch's first connection and answers with the state its initial events show, which is at
    /// least as new as the call: the look costs the watch the handle needed anyway. And once an
    /// open watch has reported the Secret deleted, the probe answers `NotFound` from that (the
    /// watch reports a re-creation; the client's retries do not read a Secret that is gone).
    /// Otherwise it reads the Secret (there is no cheaper way to learn its data's version) and
    /// keeps the result a second for the read that follows a changed version.
    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        let annotate = |e: Error| e.with_ref(r);
        let t = Target::parse(r).map_err(annotate)?;
        let id = t.id();
        let watches = if *self.closed.borrow() {
            Vec::new()
        } else {
            self.tracked.watches(&id)
        };
        for watch in watches {
            // Locked: its feed is being polled, so it is connecting or connected already.
            let Ok(mut watch) = watch.try_lock() else {
                continue;
            };
            if watch.unconnected() && watch.look().await {
                return match self.tracked.latest(&id) {
                    Some(Some(version)) => Ok(Some(version)),
                    _ => Err(annotate(deleted(&t))),
                };
            }
        }
        if let Some(None) = self.tracked.vouched(&id) {
            return Err(annotate(deleted(&t)));
        }
        let secret = self.read(&t).await.map_err(annotate)?;
        let version = secret.version().cloned();
        self.keep_probed(&t, secret);
        Ok(version)
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(not_leased())
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(not_leased())
    }

    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        let t = match Target::parse(r) {
            Ok(t) => t,
            Err(e) => {
                let e = e.with_ref(r);
                return Some(Box::pin(futures_util::stream::once(async move { Err(e) })));
            }
        };
        Some(watch::watch(
            self.api.clone(),
            t,
            self.tracked.clone(),
            self.fingerprint.clone(),
            self.streaming.clone(),
            self.clock.clone(),
            self.watch_backoff,
            self.closed.subscribe(),
        ))
    }

    /// Ends the source's watches (their connections are let go, also of feeds still held) and
    /// makes feeds asked for afterwards end at once. Reads still work. The source runs no task
    /// of its own; the service-account token (a [`ProjectedToken`](crate::ProjectedToken)'s
    /// directory watch) belongs to whoever made it.
    async fn shutdown(&self) {
        self.closed.send_replace(true);
    }
}
