//! [`GcpSource`]: the [`SecretSource`] over Secret Manager.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::BoxStream;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use secrets_core::{
    Capabilities, Error, ErrorKind, Lease, Result, Secret, SecretRef, SecretSource, SecretValue,
    SourceEvent, Version, async_trait, fetch_each,
};
use tokio::sync::OnceCell;

use crate::auth::Auth;
use crate::errors::{credentials_error, from_gax};
use crate::name::{self, Defaults, Target};

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
/// (`?stage=`) are not a Secret Manager notion and are refused as `Unsupported`.
///
/// **Reads** are AccessSecretVersion. The payload's `dataCrc32c` is checked; a payload whose
/// checksum does not match is refused with [`ErrorKind::Corrupted`]. The version of the result
/// is the number in the returned `name`, so reading `latest` after a new version was added
/// reports a new version and a handle emits `Rotated`.
///
/// **No version probe.** Secret Manager's quotas are 90,000 AccessSecretVersion requests per
/// minute per project but only 600 metadata reads (GetSecretVersion, ListSecretVersions): a
/// probe on the metadata quota would run out long before the reads it is meant to save. So
/// the capability is not declared, and the engine's refresh reads the value again, on the
/// large quota, and compares versions.
///
/// **Errors** (from the `google.rpc.Status` of the response): NOT_FOUND → `NotFound`,
/// PERMISSION_DENIED → `PermissionDenied`, UNAUTHENTICATED → `Unauthenticated`,
/// RESOURCE_EXHAUSTED → `Throttled` (retryable, with `RetryInfo`'s delay when sent),
/// UNAVAILABLE → `Unavailable` (retryable), DEADLINE_EXCEEDED → `Timeout` (retryable),
/// FAILED_PRECONDITION for a disabled version → `Disabled` and for a destroyed one → `Deleted`,
/// INVALID_ARGUMENT → `InvalidRef`, anything else → `Backend`. A token that could not be
/// obtained is `Unauthenticated` (or `Unavailable` when the auth library says it is transient).
///
/// **Clients.** One SDK client per endpoint (global, and each location used), created at the
/// first read that needs it and sharing one set of credentials. Each makes one attempt per
/// request (the SDK's retry loop is off): the engine's backoff is the only retry loop.
///
/// The SDK's response buffers are not zeroized; only the value handed to the engine is.
#[derive(Clone)]
pub struct GcpSource {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    current: Mutex<Arc<Generation>>,
}

/// Credentials and the clients built on them. Replaced as a whole when the credentials must be
/// built again.
struct Generation {
    credentials: google_cloud_auth::credentials::Credentials,
    clients: Mutex<HashMap<String, Arc<OnceCell<SecretManagerService>>>>,
}

impl Generation {
    fn new(auth: &Auth) -> Result<Self> {
        Ok(Generation {
            credentials: auth.credentials()?,
            clients: Mutex::new(HashMap::new()),
        })
    }
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
            .finish_non_exhaustive()
    }
}

impl GcpSource {
    pub(crate) fn new(config: Config) -> Result<Self> {
        let first = Generation::new(&config.auth)?;
        Ok(GcpSource {
            inner: Arc::new(Inner {
                config,
                current: Mutex::new(Arc::new(first)),
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
    /// crate does not make. It makes one attempt per request.
    pub async fn client(&self, endpoint: &str) -> Result<SecretManagerService> {
        Ok(self.client_of(endpoint).await?.1)
    }

    async fn client_of(&self, endpoint: &str) -> Result<(Arc<Generation>, SecretManagerService)> {
        let generation = lock(&self.inner.current).clone();
        let cell = lock(&generation.clients)
            .entry(endpoint.to_owned())
            .or_default()
            .clone();
        let client = cell
            .get_or_try_init(|| async {
                secrets_core::tls::ensure_crypto_provider();
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
        Ok((generation, client))
    }

    /// After a refused token: let the identity token re-read, and build the credentials (and
    /// the clients on them) again, since the auth library's token cache does not recover from a
    /// non-transient failure. Only the generation that failed is replaced, so concurrent
    /// failures rebuild once.
    fn renew_credentials(&self, failed: &Arc<Generation>) {
        let auth = &self.inner.config.auth;
        if let Some(token) = auth.identity() {
            token.invalidate();
        }
        if !auth.rebuildable() {
            return;
        }
        let mut current = lock(&self.inner.current);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match Generation::new(auth) {
            Ok(fresh) => {
                tracing::debug!("Secret Manager credentials refused; building them again");
                *current = Arc::new(fresh);
            }
            Err(e) => tracing::warn!(error = %e, "Secret Manager credentials could not be rebuilt"),
        }
    }

    async fn access(&self, target: &Target) -> Result<Secret> {
        let endpoint = self.endpoint_for(target.location.as_deref());
        let (generation, client) = self.client_of(&endpoint).await?;
        let response = match client
            .access_secret_version()
            .set_name(&target.name)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if credentials_error(&e).is_some_and(|c| !c.is_transient()) {
                    self.renew_credentials(&generation);
                }
                return Err(from_gax("AccessSecretVersion", &e));
            }
        };
        let payload = response.payload.ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                "Secret Manager AccessSecretVersion: the response has no payload",
            )
        })?;
        if let Some(expected) = payload.data_crc32c {
            let actual = crc32c::crc32c(&payload.data);
            if i64::from(actual) != expected {
                return Err(Error::new(
                    ErrorKind::Corrupted,
                    format!(
                        "Secret Manager AccessSecretVersion of {}: the payload's CRC32C is \
                         {actual}, the response says {expected}; refusing it",
                        target.name
                    ),
                ));
            }
        }
        let version = name::version_of(&response.name)
            .or_else(|| name::version_of(&target.name))
            .map(Version::new);
        let mut secret = Secret::new(SecretValue::copy_from_slice(&payload.data));
        if let Some(v) = version {
            secret = secret.versioned(v);
        }
        Ok(secret)
    }
}

#[async_trait]
impl SecretSource for GcpSource {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.versions = true;
        caps.binary = true;
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let target = name::resolve(r, &self.inner.config.defaults)?;
        self.access(&target).await
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
}
