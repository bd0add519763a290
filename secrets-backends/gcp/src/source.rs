//! [`GcpSource`]: the [`SecretSource`] over Secret Manager.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::stream::BoxStream;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model::AccessSecretVersionResponse;
use keyrack_core::{
    Capabilities, Clock, Error, ErrorKind, Lease, Result, Secret, SecretRef, SecretSource,
    SecretValue, SourceEvent, Version, async_trait, fetch_each,
};
use tokio::sync::OnceCell;

use crate::auth::Auth;
use crate::errors::{credentials_error, from_gax, is_refused_token, with_retry_after_header};
use crate::name::{self, Defaults, Target};
use crate::rotation::Schedules;

/// References of one `fetch_many` read at once (the API has no batch read).
const FETCH_MANY_CONCURRENCY: usize = 8;

/// Settings of [`GcpSource`] that [`GcpBuilder`](crate::GcpBuilder) resolves.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) defaults: Defaults,
    pub(crate) endpoint: String,
    pub(crate) regional: HashMap<String, String>,
    pub(crate) timeout: Duration,
    pub(crate) auth: Auth,
    pub(crate) rotation_schedule: bool,
    pub(crate) clock: Arc<dyn Clock>,
    /// The application's client ([`GcpBuilder::with_client`](crate::GcpBuilder::with_client)),
    /// for every endpoint.
    pub(crate) client: Option<SecretManagerService>,
}

/// Google Secret Manager as a [`SecretSource`].
///
/// References:
/// - `gcp-sm://projects/<project>/secrets/<secret>[/versions/<version>]`;
/// - `gcp-sm://projects/<project>/locations/<location>/secrets/<secret>[/versions/<version>]`
///   for a regional secret, read from that location's endpoint
///   (`https://secretmanager.<location>.rep.googleapis.com`);
/// - `gcp-sm://<secret>[/versions/<version>]` with the builder's default project (and
///   location, if one is set).
///
/// A version is a number or an alias, given in the path or as `?version=<v>`; without one
/// `latest` is read. `#field` selects a member of a JSON value (the engine does it). Stages
/// (`?stage=`) are not a Secret Manager notion and are refused as `Unsupported`; any other
/// query parameter (a misspelt `?verison=`, say) is refused as `InvalidRef`.
///
/// **Reads** are AccessSecretVersion. The payload's `dataCrc32c` is checked; a payload whose
/// checksum does not match is refused with [`ErrorKind::Corrupted`] (the error quotes neither
/// checksum: both are derived from the value). The version of the result is the number in the
/// returned `name`, so reading `latest` after a new version was added reports a new version and
/// a handle emits `Rotated`; a response without a `name` gives a result without a version
/// (never the alias asked for, which would compare equal forever).
///
/// **No version probe.** Secret Manager's quotas are 90,000 AccessSecretVersion requests per
/// minute per project but only 600 metadata reads (GetSecret, GetSecretVersion,
/// ListSecretVersions): a probe on the metadata quota would run out long before the reads it is
/// meant to save. So the capability is not declared, and the engine's refresh reads the value
/// again, on the large quota, and compares versions.
///
/// **Rotation schedule.** For the same reason the secret's `expireTime` and
/// `rotation.nextRotationTime` (GetSecret) are read only with
/// [`with_rotation_schedule(true)`](crate::GcpBuilder::with_rotation_schedule), which is off by
/// default (GetSecret also needs `secretmanager.secrets.get`, which
/// `roles/secretmanager.secretAccessor` lacks). Off, results carry no expiry or rotation date
/// and refreshes keep the engine's interval. On, results of `latest` or an alias carry
/// [`Metadata::next_rotation`](keyrack_core::Metadata) (`nextRotationTime`: the engine checks
/// right after it) and [`Metadata::expires_at`](keyrack_core::Metadata) (`expireTime`, when the
/// secret is deleted), from a per-secret cache (shared by `latest` and aliases) that makes
/// GetSecret (on the secret's endpoint) only for the first read, after a read of a version newer
/// than any seen, once the cached `nextRotationTime` has passed (ten minutes on when it was
/// already past), or ⅔ of the way to the cached `expireTime`, where the engine checks;
/// pinned versions skip it. A failing GetSecret never fails the read (its result then has the
/// schedule read before, if any); a PERMISSION_DENIED is logged once at warn and not tried
/// again for that secret for an hour.
///
/// **Time limit.** A read, waiting for an access token included, is bounded by the builder's
/// [`with_timeout`](crate::GcpBuilder::with_timeout) and fails with [`ErrorKind::Timeout`]
/// (retryable) when it runs out. When it ran out still waiting for a token (a token endpoint
/// that never answers), the credentials are built again, so the next read starts a new
/// exchange. The GetSecret of the rotation schedule has a limit of its own of the same length,
/// and running out of it only leaves the result with the schedule read before (if any).
///
/// **Errors** (from the `google.rpc.Status` of the response): NOT_FOUND → `NotFound`,
/// PERMISSION_DENIED → `PermissionDenied`, UNAUTHENTICATED → `Unauthenticated`,
/// RESOURCE_EXHAUSTED → `Throttled` (retryable),
/// UNAVAILABLE and INTERNAL → `Unavailable` (retryable; AIP-194 allows retrying INTERNAL),
/// DEADLINE_EXCEEDED → `Timeout` (retryable), FAILED_PRECONDITION for a disabled version →
/// `Disabled` and for a destroyed one → `Deleted` (told apart by the state the message ends
/// with), INVALID_ARGUMENT → `InvalidRef`, anything else → `Backend`; an answer that is not a
/// Status (a proxy's page, the envelope without `status`) follows its HTTP status. The wait the
/// answer asks for is kept whatever the kind: `RetryInfo`'s delay, else `Retry-After` (seconds or
/// an HTTP-date, read against the builder's clock). A token that could not be obtained is
/// `Unauthenticated` (or `Unavailable` when the auth library says it is transient).
///
/// **Refused tokens.** When Secret Manager answers a read with UNAUTHENTICATED (a revoked
/// access token, say) or no token could be obtained (an exchange refused for good), the
/// credentials and the clients on them are built again, once per failing set of credentials,
/// by the next read, which obtains a new token (not sooner: new credentials ask for a token at
/// once, which would be a retry the client did not make, ahead of its backoff); with
/// [`with_workload_identity`](crate::GcpBuilder::with_workload_identity) the
/// [`IdentityToken`](keyrack_core::IdentityToken) is invalidated first, so the new exchange
/// sends a freshly read subject token. Credentials given with
/// [`with_credentials`](crate::GcpBuilder::with_credentials) cannot be rebuilt and are kept.
///
/// **Clients.** One SDK client per endpoint (global, and each location used), created at the
/// first read that needs it and sharing one set of credentials. Each makes one attempt per
/// request (the SDK's retry loop is off): the engine's backoff is the only retry loop.
///
/// **What is wiped.** The value handed to the engine is zeroized on drop, and it takes over the
/// payload buffer of the parsed response (no copy left behind). Not wiped: the HTTP body the SDK
/// parsed it from (the value in base64) and the TLS and connection buffers under it, which this
/// crate cannot reach; the subject token the auth library sends to STS is copied into its own
/// strings, and the access tokens it keeps are its own.
#[derive(Clone)]
pub struct GcpSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// The credentials in use, or why there are none.
    current: Mutex<Slot>,
    /// Numbers the generations, so a failure replaces the one that failed only.
    generations: std::sync::atomic::AtomicU64,
    /// Held while credentials are built again, so that concurrent failures of one generation
    /// build once.
    rebuilding: tokio::sync::Mutex<()>,
    /// Rotation schedules by secret (with `rotation_schedule` only).
    schedules: Schedules,
}

/// Where the credentials stand.
enum Slot {
    Ready(Arc<Generation>),
    /// Generation `failed` could not give a usable token: the next read builds new credentials.
    /// Not before: the auth library's refresh task starts with them and asks for a token at
    /// once, which would retry on the source's own, ahead of the client's backoff. The failed
    /// generation is let go (and its refresh task with it).
    Replace {
        failed: u64,
    },
    /// Shut down: the credentials (and the auth library's refresh task) are gone.
    Closed,
}

/// Credentials and the clients built on them. Replaced as a whole when the credentials must be
/// built again.
struct Generation {
    id: u64,
    credentials: google_cloud_auth::credentials::Credentials,
    clients: Mutex<HashMap<String, Arc<OnceCell<SecretManagerService>>>>,
}

impl Generation {
    /// Build the credentials on the blocking pool: a credentials file (or ADC's) is read from
    /// disk. The auth library starts its token refresh task in the runtime from there.
    async fn build(auth: &Auth, id: u64) -> Result<Self> {
        let auth = auth.clone();
        let credentials = tokio::task::spawn_blocking(move || auth.credentials())
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Backend,
                    format!("building Google credentials did not finish: {e}"),
                )
            })??;
        Ok(Generation {
            id,
            credentials,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Whether these credentials are still waiting for an access token (none yet, or the last
    /// one expired and its refresh has not answered).
    fn waiting_for_token(&self) -> bool {
        self.credentials
            .headers(Default::default())
            .now_or_never()
            .is_none()
    }
}

/// Why credentials are built again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renewal {
    /// A token was refused (by Secret Manager or at the exchange): the identity token is
    /// invalidated too.
    Refused,
    /// A read ran out of time waiting for a token: the exchange in flight is abandoned.
    TokenTimedOut,
}

fn shut_down() -> Error {
    Error::new(
        ErrorKind::Shutdown,
        "the Secret Manager source was shut down",
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for GcpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("GcpSource")
            .field("project", &c.defaults.project)
            .field("location", &c.defaults.location)
            .field("endpoint", &c.endpoint)
            .field("regional", &c.regional)
            .field("timeout", &c.timeout)
            .field("rotation_schedule", &c.rotation_schedule)
            .field("own_client", &c.client.is_some())
            .finish_non_exhaustive()
    }
}

impl GcpSource {
    pub(crate) async fn new(config: Config) -> Result<Self> {
        let first = Generation::build(&config.auth, 0).await?;
        Ok(GcpSource {
            inner: Arc::new(Inner {
                config,
                current: Mutex::new(Slot::Ready(Arc::new(first))),
                generations: std::sync::atomic::AtomicU64::new(1),
                rebuilding: tokio::sync::Mutex::new(()),
                schedules: Schedules::default(),
            }),
        })
    }

    /// The endpoint that serves `location` (`None`: the global one).
    pub fn endpoint_for(&self, location: Option<&str>) -> String {
        let c = &self.inner.config;
        match location {
            None => c.endpoint.clone(),
            Some(l) => c
                .regional
                .get(l)
                .cloned()
                .unwrap_or_else(|| name::regional_endpoint(l)),
        }
    }

    /// The SDK client for `endpoint` (built at first use), to write secrets or make calls this
    /// crate does not make. It makes one attempt per request, bounded by the builder's timeout
    /// once it has an access token (the time spent waiting for the token is not bounded there:
    /// wrap calls in [`tokio::time::timeout`] to bound it). With
    /// [`GcpBuilder::with_client`](crate::GcpBuilder::with_client) it is the application's
    /// client, whatever `endpoint`, with the application's retry policy and timeouts.
    pub async fn client(&self, endpoint: &str) -> Result<SecretManagerService> {
        let generation = self.generation().await?;
        self.client_of(&generation, endpoint).await
    }

    /// The current credentials and clients: built again first if the last ones failed (one
    /// build for concurrent reads).
    async fn generation(&self) -> Result<Arc<Generation>> {
        loop {
            let failed = match &*lock(&self.inner.current) {
                Slot::Ready(generation) => return Ok(generation.clone()),
                Slot::Closed => return Err(shut_down()),
                Slot::Replace { failed } => *failed,
            };
            let _one_at_a_time = self.inner.rebuilding.lock().await;
            if !matches!(&*lock(&self.inner.current), Slot::Replace { failed: f } if *f == failed) {
                continue;
            }
            let id = self
                .inner
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let fresh = Arc::new(Generation::build(&self.inner.config.auth, id).await?);
            tracing::debug!("built Secret Manager credentials again");
            let mut current = lock(&self.inner.current);
            // Shut down while building: the new credentials are dropped (and their task).
            if matches!(&*current, Slot::Replace { .. }) {
                *current = Slot::Ready(fresh);
            }
        }
    }

    async fn client_of(
        &self,
        generation: &Generation,
        endpoint: &str,
    ) -> Result<SecretManagerService> {
        if let Some(client) = &self.inner.config.client {
            return Ok(client.clone());
        }
        let cell = lock(&generation.clients)
            .entry(endpoint.to_owned())
            .or_default()
            .clone();
        let client = cell
            .get_or_try_init(|| async {
                // The process default provider is in place: `GcpBuilder::build` saw to it.
                SecretManagerService::builder()
                    .with_endpoint(endpoint)
                    .with_credentials(generation.credentials.clone())
                    .with_retry_policy(NeverRetry)
                    .with_attempt_timeout(self.inner.config.timeout)
                    .build()
                    .await
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("Secret Manager client for {endpoint}: {e}"),
                        )
                    })
            })
            .await?
            .clone();
        Ok(client)
    }

    /// Have the credentials (and the clients on them) built again, at the next read, after
    /// `failed` could not give a usable token: the auth library's token cache does not recover
    /// from a non-transient failure, keeps a token the service refuses until it nears expiry,
    /// and waits forever on an exchange that never answers. Only the generation that failed is
    /// replaced, once, so concurrent failures replace it once; after a refusal the identity
    /// token is invalidated (once too), so the new exchange reads it again. The new credentials
    /// are built when the client reads again, on its backoff: built now, they would ask for a
    /// token at once, a retry the client did not make.
    fn renew_credentials(&self, failed: &Arc<Generation>, why: Renewal) {
        let auth = &self.inner.config.auth;
        if !auth.rebuildable() {
            return;
        }
        {
            let mut current = lock(&self.inner.current);
            if !matches!(&*current, Slot::Ready(g) if g.id == failed.id) {
                return;
            }
            *current = Slot::Replace { failed: failed.id };
        }
        tracing::debug!(reason = ?why, "Secret Manager credentials to be built again at the next read");
        if why == Renewal::Refused
            && let Some(token) = auth.identity()
        {
            token.invalidate();
        }
    }

    async fn access(&self, target: &Target) -> Result<Secret> {
        let endpoint = self.endpoint_for(target.location.as_deref());
        let generation = self.generation().await?;
        let timeout = self.inner.config.timeout;
        // The SDK's attempt timeout starts after it has a token, and the auth library's token
        // exchange has no timeout of its own: this one bounds the whole read.
        let sent = tokio::time::timeout(timeout, async {
            let client = self.client_of(&generation, &endpoint).await?;
            Ok(client
                .access_secret_version()
                .set_name(&target.name)
                .send()
                .await)
        })
        .await;
        match sent {
            Ok(Ok(Ok(response))) => secret_from(response, &target.name),
            Ok(Ok(Err(e))) => {
                if is_refused_token(&e) || credentials_error(&e).is_some_and(|c| !c.is_transient())
                {
                    self.renew_credentials(&generation, Renewal::Refused);
                }
                let error = from_gax("AccessSecretVersion", &e);
                Err(with_retry_after_header(
                    error,
                    &e,
                    self.inner.config.clock.wall(),
                ))
            }
            Ok(Err(e)) => Err(e),
            Err(_elapsed) if generation.waiting_for_token() => {
                self.renew_credentials(&generation, Renewal::TokenTimedOut);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "Secret Manager AccessSecretVersion: timed out after {timeout:?} waiting \
                         for an access token"
                    ),
                ))
            }
            Err(_elapsed) => Err(Error::new(
                ErrorKind::Timeout,
                format!("Secret Manager AccessSecretVersion: timed out after {timeout:?}"),
            )),
        }
    }
}

impl GcpSource {
    /// `secret`, just read for `target`, with its secret's rotation schedule (GetSecret, when
    /// the cache cannot answer; see "Rotation schedule" on the type).
    async fn with_schedule(&self, target: &Target, secret: Secret) -> Secret {
        let config = &self.inner.config;
        let endpoint = self.endpoint_for(target.location.as_deref());
        let Ok(generation) = self.generation().await else {
            return secret;
        };
        let name = target.secret();
        self.inner
            .schedules
            .apply(name, secret, &*config.clock, config.timeout, || async {
                let client = self.client_of(&generation, &endpoint).await?;
                Ok(client.get_secret().set_name(name).send().await)
            })
            .await
    }
}

/// The secret in an AccessSecretVersion response for the version `name`.
pub(crate) fn secret_from(response: AccessSecretVersionResponse, name: &str) -> Result<Secret> {
    let payload = response.payload.ok_or_else(|| {
        Error::new(
            ErrorKind::Backend,
            "Secret Manager AccessSecretVersion: the response has no payload",
        )
    })?;
    if let Some(expected) = payload.data_crc32c
        && i64::from(crc32c::crc32c(&payload.data)) != expected
    {
        // Neither checksum is quoted: 32 bits of a short value (a PIN) are enough to find it.
        return Err(Error::new(
            ErrorKind::Corrupted,
            format!(
                "Secret Manager AccessSecretVersion of {name}: the payload does not match its \
                 CRC32C checksum; refusing it"
            ),
        ));
    }
    // Only the name the service returns says which version was read: the one asked for may be
    // an alias (`latest`).
    let version = name::version_of(&response.name).map(Version::new);
    // Taken over rather than copied: the SDK's buffer (when this response holds its only
    // reference, as a freshly parsed one does) becomes the value's, which wipes it when dropped,
    // instead of a copy being made and the buffer freed unwiped.
    let mut secret = Secret::new(SecretValue::from_bytes(Vec::from(payload.data)));
    if let Some(v) = version {
        secret = secret.versioned(v);
    }
    Ok(secret)
}

#[async_trait]
impl SecretSource for GcpSource {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.versions = true;
        caps.binary = true;
        // Google's own retry loop (google-cloud-gax's ExponentialBackoff, which this source turns
        // off in favour of the client's) waits at least 1 s before the first retry, doubling to
        // 60 s; so no retry sooner than a second.
        caps.retry_floor = Duration::from_secs(1);
        // Secret Manager's quotas: 90,000 access requests per minute per project.
        caps.request_budget = Some(keyrack_core::RequestBudget::new(
            90_000,
            Duration::from_secs(60),
        ));
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let target = name::resolve(r, &self.inner.config.defaults)?;
        let secret = self.access(&target).await?;
        if !self.inner.config.rotation_schedule || target.pinned() {
            return Ok(secret);
        }
        Ok(self.with_schedule(&target, secret).await)
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        fetch_each(self, refs, FETCH_MANY_CONCURRENCY).await
    }

    async fn version(&self, _r: &SecretRef) -> Result<Option<Version>> {
        // See "No version probe" on the type.
        Err(Error::unsupported(
            "Secret Manager has no cheap version probe (metadata reads have a 150x smaller quota)",
        ))
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(Error::unsupported("Secret Manager values have no leases"))
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(Error::unsupported("Secret Manager values have no leases"))
    }

    fn watch(&self, _r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        None
    }

    /// Drops the credentials and the clients on them, which ends the auth library's token
    /// refresh task (it exchanges or fetches a token again ahead of each access token's expiry).
    /// Reads afterwards fail with [`ErrorKind::Shutdown`]; a read in flight finishes with the
    /// credentials it holds.
    async fn shutdown(&self) {
        *lock(&self.inner.current) = Slot::Closed;
    }
}

#[cfg(test)]
mod tests {
    use google_cloud_secretmanager_v1::model::SecretPayload;

    use super::*;

    fn response(name: &str, data: &'static [u8], crc: i64) -> AccessSecretVersionResponse {
        AccessSecretVersionResponse::new()
            .set_name(name)
            .set_payload(SecretPayload::new().set_data(data).set_data_crc32c(crc))
    }

    // access_secret_version.documented.json (response.body): name
    // `projects/123/secrets/my_secret/versions/2`, data `a\n`, dataCrc32c 163439259.
    #[test]
    fn the_version_is_the_one_the_response_names() {
        let asked = "projects/123/secrets/my_secret/versions/latest";
        let s = secret_from(
            response(
                "projects/123/secrets/my_secret/versions/2",
                b"a\n",
                163439259,
            ),
            asked,
        )
        .unwrap();
        assert_eq!(s.expose_bytes(), b"a\n");
        assert_eq!(s.version(), Some(&Version::new("2")));
        // Without `name` the version read is unknown: not `latest`, which would compare equal
        // to every later read and hide a rotation.
        let s = secret_from(response("", b"a\n", 163439259), asked).unwrap();
        assert_eq!(s.expose_bytes(), b"a\n");
        assert_eq!(s.version(), None);
    }

    // access_secret_version.documented.json with dataCrc32c replaced by the checksum of another
    // short value (the checksum a corrupted payload's response would carry).
    #[test]
    fn a_checksum_mismatch_quotes_neither_checksum() {
        let claimed = i64::from(crc32c::crc32c(b"1234"));
        let e = secret_from(
            response("projects/1/secrets/pin/versions/1", b"4711", claimed),
            "projects/1/secrets/pin/versions/1",
        )
        .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Corrupted);
        let text = format!("{e} {e:?}");
        assert!(text.contains("CRC32C"), "{text}");
        for crc in [claimed.to_string(), crc32c::crc32c(b"4711").to_string()] {
            assert!(!text.contains(&crc), "a checksum in the error: {text}");
        }
        let e = secret_from(
            AccessSecretVersionResponse::new().set_name("projects/1/secrets/s/versions/1"),
            "projects/1/secrets/s/versions/1",
        )
        .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Backend);
    }
}
