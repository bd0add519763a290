//! [`GcpBuilder`]: where the Secret Manager clients get their endpoints, defaults and
//! credentials.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_secretmanager_v1::client::SecretManagerService;
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::{Clock, Error, ErrorKind, Result, SystemClock};
use url::{Host, Url};

use crate::auth::{Auth, WorkloadIdentity};
use crate::name::Defaults;
use crate::source::{Config, GcpSource};

/// The global Secret Manager endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";

/// Builds a [`GcpSource`].
///
/// Two starting points:
/// - [`GcpBuilder::new`] reads nothing from the environment: choose credentials with one of
///   the `with_*` credential methods below.
/// - [`GcpBuilder::from_env`] uses Application Default Credentials and reads the default
///   project from the environment.
///
/// Credentials, the last one chosen wins:
/// - [`with_application_default_credentials`](Self::with_application_default_credentials):
///   the auth library's ADC — `GOOGLE_APPLICATION_CREDENTIALS` (a service-account key, an
///   `external_account` file for workload identity federation, …), then gcloud's
///   `application_default_credentials.json`, then the metadata server (GKE workload identity,
///   Compute Engine, Cloud Run);
/// - [`with_credentials_file`](Self::with_credentials_file): a `service_account` key or an
///   `external_account` (AIP-4117) JSON file;
/// - [`with_workload_identity`](Self::with_workload_identity): federation with a subject token
///   from an [`IdentityToken`](keyrack_core::IdentityToken), built from parameters;
/// - [`with_credentials`](Self::with_credentials): credentials built by the application;
/// - [`with_anonymous_credentials`](Self::with_anonymous_credentials): none (emulators, tests).
///
/// The SDK's own retries are turned off (one attempt per request, bounded by
/// [`with_timeout`](Self::with_timeout)): the engine's backoff, which honours throttling, is
/// the only retry loop, so a throttled fleet does not multiply its requests.
///
/// **This backend installs a process-wide rustls crypto provider** (ring's, or the one given
/// with [`with_crypto_provider`](Self::with_crypto_provider)) when [`build`](Self::build)
/// runs in a process that has none, unlike the other backends: the Google crates build their
/// own HTTP clients (`google-cloud-gax-internal`'s client for Secret Manager,
/// `google-cloud-auth`'s for STS and the metadata server) on reqwest without a provider, and
/// sign service-account JWTs with the process default's key provider, with no way to pass a
/// client or a provider; without a default they panic. An application that wants another
/// provider (aws-lc-rs for FIPS, say) installs it before building this source. Given the
/// application's own SDK client ([`with_client`](Self::with_client)), `build` installs
/// nothing.
#[derive(Debug)]
pub struct GcpBuilder {
    defaults: Defaults,
    endpoint: Option<String>,
    regional: HashMap<String, String>,
    timeout: Duration,
    auth: Option<Auth>,
    rotation_schedule: bool,
    clock: Arc<dyn Clock>,
    crypto_provider: Option<Arc<CryptoProvider>>,
    client: Option<SecretManagerService>,
}

impl Default for GcpBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GcpBuilder {
    /// A builder that reads nothing from the environment.
    pub fn new() -> Self {
        GcpBuilder {
            defaults: Defaults::default(),
            endpoint: None,
            regional: HashMap::new(),
            timeout: Duration::from_secs(30),
            auth: None,
            rotation_schedule: false,
            clock: Arc::new(SystemClock),
            crypto_provider: None,
            client: None,
        }
    }

    /// A builder on Application Default Credentials (see above for what they read), with the
    /// default project from `GOOGLE_CLOUD_PROJECT` when it is set.
    pub fn from_env() -> Self {
        let mut b = Self::new().with_application_default_credentials();
        if let Ok(project) = std::env::var("GOOGLE_CLOUD_PROJECT")
            && !project.is_empty()
        {
            b.defaults.project = Some(project);
        }
        b
    }

    /// The project of short references (`gcp-sm://<secret>`).
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.defaults.project = Some(project.into());
        self
    }

    /// The location of short references: with it, `gcp-sm://<secret>` names the regional
    /// secret `projects/<project>/locations/<location>/secrets/<secret>`.
    pub fn with_location(mut self, location: impl Into<String>) -> Self {
        self.defaults.location = Some(location.into());
        self
    }

    /// Send requests for global secrets to this endpoint instead of [`DEFAULT_ENDPOINT`]
    /// (Private Service Connect, a proxy, a test server). Requests carry a bearer token, so
    /// the URL must be `https`, except on a loopback host (`127.0.0.1`, `::1`, `localhost`);
    /// [`build`](Self::build) refuses others with [`ErrorKind::Config`].
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Send requests for secrets of `location` to this endpoint instead of
    /// `https://secretmanager.<location>.rep.googleapis.com`. Must be `https` except on a
    /// loopback host, as for [`with_endpoint`](Self::with_endpoint).
    pub fn with_regional_endpoint(
        mut self,
        location: impl Into<String>,
        url: impl Into<String>,
    ) -> Self {
        self.regional.insert(location.into(), url.into());
        self
    }

    /// Time limit of one read, the wait for an access token (its exchange at STS, say)
    /// included (30 s by default). A read that runs out fails with [`ErrorKind::Timeout`].
    /// With [`with_rotation_schedule`](Self::with_rotation_schedule), the GetSecret after a
    /// read has a limit of its own of the same length; running out of it only leaves the
    /// result with the schedule read before (if any).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether reads also learn the secret's rotation schedule (default `false`).
    ///
    /// When on, a read of `latest` or of an alias (pinned versions, `/versions/3` or
    /// `?version=3`, skip it) also makes GetSecret, on the same endpoint, unless the secret's
    /// cached schedule still holds, and its result carries
    /// [`Metadata::next_rotation`](keyrack_core::Metadata) from `rotation.nextRotationTime`
    /// (the engine checks right after it) and [`Metadata::expires_at`](keyrack_core::Metadata)
    /// from `expireTime` (the secret is deleted then: a hard expiry, so the engine reads the
    /// value again before it, and once it has passed without a replacement reports
    /// [`ErrorKind::Expired`]). The schedule is cached per secret (by its full name, location
    /// included: `latest` and aliases share it, the schedule being the secret's) and read again
    /// only when a read returns a version newer than any it has seen (a rotation happened; an
    /// alias at an older version is not one), once its `nextRotationTime` has passed (ten
    /// minutes after the read when it was already past: Google had not moved it on yet), and ⅔
    /// of the way from the read to its `expireTime` (where the engine checks such a value:
    /// a moved expiry is seen before the old one passes); concurrent reads of one secret wait
    /// for one GetSecret. A failing GetSecret never fails the read, whose result then carries
    /// the schedule read before, if any (an `expireTime` already past left out): a
    /// PERMISSION_DENIED is logged once at warn and GetSecret is not tried again for that
    /// secret for an hour; other failures are tried again at the next read. GetSecret (with the
    /// wait for another read's) is bounded by [`with_timeout`](Self::with_timeout) as well.
    ///
    /// Off by default because the schedule lives on the Secret resource, not on its versions:
    /// GetSecret is a metadata read, on the quota of 600 requests per minute per project
    /// (AccessSecretVersion has 90,000), so a fleet restarting at once could exhaust it; and it
    /// needs the permission `secretmanager.secrets.get` (in `roles/secretmanager.viewer`), which
    /// the usual `roles/secretmanager.secretAccessor` lacks.
    pub fn with_rotation_schedule(mut self, enabled: bool) -> Self {
        self.rotation_schedule = enabled;
        self
    }

    /// The clock the source reads time from (default [`SystemClock`]): when a cached rotation
    /// schedule is due to be read again, when a refused GetSecret may be tried
    /// again (see [`with_rotation_schedule`](Self::with_rotation_schedule)), and the wall time a
    /// `Retry-After` given as an HTTP-date is counted from. Request time
    /// limits ([`with_timeout`](Self::with_timeout)) are measured on Tokio's timer.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The rustls crypto provider to install as the process default if the process has none
    /// when [`build`](Self::build) runs (see above: the Google crates use only the process
    /// default). If the application installed a default already, the Google crates use that one
    /// and `provider` is not used (logged at warn level unless it is the installed one).
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = Some(provider);
        self
    }

    /// Send every request through `client`, an SDK client the application built: with its
    /// endpoint, credentials, retry policy, attempt timeout and transport, or a stub of its own
    /// (`SecretManagerService::from_stub`, to test against a fake in process). References with
    /// a location are read through it too, so give it that location's endpoint when they name
    /// one. [`with_timeout`](Self::with_timeout) still bounds each read. The client's own
    /// retries add requests the engine's budget and backoff do not see: build it with
    /// `with_retry_policy(NeverRetry)` as this crate does, or leave room for them.
    ///
    /// The endpoint, credentials and crypto provider options belong to the client:
    /// [`build`](Self::build) refuses them beside it with [`ErrorKind::Config`] (start from
    /// [`new`](Self::new), not [`from_env`](Self::from_env), which chooses credentials). With
    /// a client, `build` installs no process-wide crypto provider.
    pub fn with_client(mut self, client: SecretManagerService) -> Self {
        self.client = Some(client);
        self
    }

    /// Application Default Credentials, resolved by the auth library.
    pub fn with_application_default_credentials(mut self) -> Self {
        self.auth = Some(Auth::Adc);
        self
    }

    /// The JSON credentials file at `path`: a service-account key (`"type":
    /// "service_account"`) or an AIP-4117 external account (`"type": "external_account"`, e.g.
    /// workload identity federation reading a projected token file). The file is read at
    /// [`build`](Self::build), and again whenever the credentials are built again (after a
    /// refused token, or a read that timed out waiting for one; see [`GcpSource`]).
    pub fn with_credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Some(Auth::File(path.into()));
        self
    }

    /// Workload identity federation with a subject token from an
    /// [`IdentityToken`](keyrack_core::IdentityToken); see [`WorkloadIdentity`]. When a token
    /// is refused (at STS, or by Secret Manager) the
    /// [`IdentityToken`](keyrack_core::IdentityToken) is invalidated and the credentials are
    /// built again, so the next read exchanges a freshly read token.
    pub fn with_workload_identity(mut self, identity: WorkloadIdentity) -> Self {
        self.auth = Some(Auth::Workload(identity));
        self
    }

    /// Credentials the application built with `google_cloud_auth`.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.auth = Some(Auth::Given(credentials));
        self
    }

    /// Send no credentials (an emulator or test server).
    pub fn with_anonymous_credentials(mut self) -> Self {
        self.auth = Some(Auth::Anonymous);
        self
    }

    /// Resolve the configuration and build the source. Endpoints are checked here (an `http`
    /// URL to a host that is not loopback fails with [`ErrorKind::Config`]), and credentials
    /// are built (a missing or malformed credentials file fails now, with
    /// [`ErrorKind::Config`]); the SDK clients
    /// are built at the first read of each endpoint. Must run inside a Tokio runtime: the
    /// auth library refreshes tokens in a task.
    pub async fn build(self) -> Result<GcpSource> {
        if self.client.is_some() {
            return self.build_on_client().await;
        }
        install_process_provider(self.crypto_provider.clone());
        let auth = self.auth.ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "no Google credentials: use from_env (application default credentials), \
                 with_credentials_file, with_workload_identity, with_credentials or \
                 with_anonymous_credentials",
            )
        })?;
        let endpoint = self.endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        check_url("Secret Manager endpoint", &endpoint)?;
        for url in self.regional.values() {
            check_url("Secret Manager endpoint", url)?;
        }
        if let Some(url) = auth.token_url() {
            check_url("STS token URL", url)?;
        }
        GcpSource::new(Config {
            defaults: self.defaults,
            endpoint,
            regional: self.regional,
            timeout: self.timeout,
            auth,
            rotation_schedule: self.rotation_schedule,
            clock: self.clock,
            client: None,
        })
        .await
    }

    /// [`build`](Self::build) with the application's client: the options that belong to it
    /// are refused.
    async fn build_on_client(self) -> Result<GcpSource> {
        let beside = [
            (self.endpoint.is_some(), "with_endpoint"),
            (!self.regional.is_empty(), "with_regional_endpoint"),
            (
                self.auth.is_some(),
                "credentials (from_env or with_*_credentials)",
            ),
            (self.crypto_provider.is_some(), "with_crypto_provider"),
        ];
        if let Some((_, option)) = beside.iter().find(|(set, _)| *set) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "with_client: {option} cannot be set beside it (the client carries its \
                     endpoint, credentials and TLS)"
                ),
            ));
        }
        GcpSource::new(Config {
            defaults: self.defaults,
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            regional: HashMap::new(),
            timeout: self.timeout,
            // The client holds its credentials; these stay unused.
            auth: Auth::Anonymous,
            rotation_schedule: self.rotation_schedule,
            clock: self.clock,
            client: self.client,
        })
        .await
    }
}

/// Install `given` (else ring's provider) as the process default if there is none: the Google
/// crates take no provider and no client (see [`GcpBuilder`]). A race with another installer
/// is fine: a default exists either way.
fn install_process_provider(given: Option<Arc<CryptoProvider>>) {
    use std::sync::OnceLock;
    // `install_default` takes the provider by value: the installed `Arc` is a new one, so
    // remember which given one it came from.
    static INSTALLED_FROM: OnceLock<usize> = OnceLock::new();
    let given_address = given.as_ref().map(|p| Arc::as_ptr(p) as usize);
    match CryptoProvider::get_default() {
        Some(installed) => {
            if let Some(given) = &given
                && !Arc::ptr_eq(installed, given)
                && INSTALLED_FROM.get().copied() != given_address
            {
                tracing::warn!(
                    "with_crypto_provider: the process already has a default rustls crypto \
                     provider; the Google crates use it, not the one given"
                );
            }
        }
        None => {
            let provider = match given {
                Some(p) => Arc::unwrap_or_clone(p),
                None => keyrack_core::tls::rustls::crypto::ring::default_provider(),
            };
            if provider.install_default().is_ok()
                && let Some(address) = given_address
            {
                let _ = INSTALLED_FROM.set(address);
            }
        }
    }
}

/// Tokens are sent to `url`: it must be `https`, or `http` to a loopback host (a test server, a
/// local proxy).
fn check_url(what: &str, url: &str) -> Result<()> {
    let config = |why: &str| Error::new(ErrorKind::Config, format!("{what} `{url}`: {why}"));
    let parsed = Url::parse(url).map_err(|_| config("not a URL"))?;
    let loopback = match parsed.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(config("not an http(s) URL with a host")),
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(config(
            "plain http: bearer tokens must not travel unencrypted (use https; http is allowed \
             only for loopback hosts)",
        )),
        _ => Err(config("not an http(s) URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_without_credentials_is_a_config_error() {
        let e = GcpBuilder::new().build().await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(e.to_string().contains("credentials"), "{e}");
        GcpBuilder::new()
            .with_anonymous_credentials()
            .build()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_missing_or_unknown_credentials_file_is_a_config_error() {
        let e = GcpBuilder::new()
            .with_credentials_file("/nonexistent/creds.json")
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        let dir = std::env::temp_dir().join(format!("secrets-gcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("user.json");
        std::fs::write(
            &file,
            r#"{"type":"authorized_user","client_secret":"s3cr3t"}"#,
        )
        .unwrap();
        let e = GcpBuilder::new()
            .with_credentials_file(&file)
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        std::fs::write(&file, r#"{"type":"service_account","private_key":"s3cr3t"#).unwrap();
        let e = GcpBuilder::new()
            .with_credentials_file(&file)
            .build()
            .await
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains("s3cr3t"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn endpoints_global_regional_and_overridden() {
        let src = GcpBuilder::new()
            .with_anonymous_credentials()
            .with_regional_endpoint("eu-test1", "http://127.0.0.1:9")
            .build()
            .await
            .unwrap();
        assert_eq!(src.endpoint_for(None), DEFAULT_ENDPOINT);
        assert_eq!(
            src.endpoint_for(Some("europe-west1")),
            "https://secretmanager.europe-west1.rep.googleapis.com"
        );
        assert_eq!(src.endpoint_for(Some("eu-test1")), "http://127.0.0.1:9");
    }

    #[tokio::test]
    async fn plain_http_is_refused_except_on_loopback() {
        let b = || GcpBuilder::new().with_anonymous_credentials();
        for url in [
            "http://127.0.0.1:9",
            "http://127.0.0.2:9",
            "http://[::1]:9",
            "http://localhost:9",
            "http://LOCALHOST",
            "https://secretmanager.example",
            "https://10.0.0.1:443",
        ] {
            b().with_endpoint(url).build().await.unwrap();
            b().with_regional_endpoint("l", url).build().await.unwrap();
        }
        for url in [
            "http://secretmanager.example",
            "http://10.0.0.1",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
            "http://localhost@evil.example",
            "http://evil.example\\@127.0.0.1",
            "ftp://127.0.0.1",
            "unix:/var/run/sm.sock",
            "127.0.0.1:9",
        ] {
            let e = b().with_endpoint(url).build().await.unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::Config, "{url}");
            let e = b()
                .with_regional_endpoint("l", url)
                .build()
                .await
                .unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::Config, "{url}");
        }
        let e = b()
            .with_endpoint("http://sm.example")
            .build()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
    }

    #[tokio::test]
    async fn the_sts_url_of_workload_identity_is_checked_too() {
        let token: std::sync::Arc<dyn keyrack_core::IdentityToken> =
            std::sync::Arc::new(keyrack_core::StaticToken::new("HEADER.PAYLOAD.SIG"));
        let identity = WorkloadIdentity::new("//iam.googleapis.com/projects/1", token);
        let b = |url: &str| {
            GcpBuilder::new().with_workload_identity(identity.clone().with_token_url(url))
        };
        b("http://127.0.0.1:9/v1/token").build().await.unwrap();
        let e = b("http://sts.example/v1/token").build().await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(e.to_string().contains("STS token URL"), "{e}");
    }
}
