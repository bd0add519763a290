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
//! The token is asked of the [`IdentityToken`](keyrack_core::IdentityToken) at every request,
//! never kept; after a 401 it is invalidated and the request retried once with a fresh token
//! (the kubelet may have rotated it). No value or token is logged or put into an error: server
//! messages kept in errors describe the request, never the data.
//!
//! Wiped when let go of: the body of a GET and the watch stream's lines, which hold the data in
//! base64 (and, in `kubectl apply`'s last-applied annotation, the whole manifest again), in
//! buffers that wipe what they release, move or outgrow; each chunk the HTTP client hands over,
//! once copied, when this crate holds its only reference; the data parsed from them, borrowed in
//! place (a zeroizing string only if the JSON escaped a character); the decoded values and the
//! JSON map made of them, in zeroize-on-drop
//! [`SecretValue`](keyrack_core::SecretValue)s sized up front. Not wiped: the HTTP client's,
//! hyper's and rustls's own buffers (TLS records, the connection's read buffer, a chunk that
//! shares it), which this crate cannot reach; serde_json's scratch buffer, used only for a
//! string with escapes (never base64 as the API server writes it); and the `Authorization`
//! header, which reqwest copies into its request.

mod api;
mod builder;
mod data;
#[cfg(fuzzing)]
pub(crate) mod fuzzing;
mod target;
mod tracked;
mod value;
mod watch;
mod wiping;

pub use builder::KubernetesSecretsBuilder;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use keyrack_core::{
    Backoff, Capabilities, Clock, Error, ErrorKind, Lease, Metadata, Result, Secret, SecretRef,
    SecretSource, SourceEvent, Version, fetch_each,
};

use api::{Api, SecretObject};
use data::Fingerprint;
use target::Target;
use tracked::{ReadStart, Tracked};
use value::value_of;

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
        // client-go's defaults for a client that does not set its own: 5 requests per second,
        // bursts of 10 (rest.Config's QPS and Burst).
        caps.request_budget = Some(keyrack_core::RequestBudget::per_second(5).with_burst(10));
        // See `version`: the client's look after its feed opens and its retries after a watch
        // reported a deletion need no request; any other check is the one GET a read is.
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
