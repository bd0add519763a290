//! [`AwsBuilder`]: where the Secrets Manager client gets its region, endpoint and credentials.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{
    Credentials, Intercept, ProvideCredentials, Region, SharedCredentialsProvider,
    SharedHttpClient, SharedInterceptor,
};
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::tls::{self, Trust};
use keyrack_core::{Clock, Error, ErrorKind, Result, SystemClock};

use crate::http::RustlsHttpClient;
use crate::source::{AwsSource, Tuning};

/// Builds an [`AwsSource`].
///
/// Two starting points:
/// - [`AwsBuilder::new`] reads nothing from the environment: give a region
///   ([`with_region`](Self::with_region)) and credentials ([`with_credentials`](Self::with_credentials),
///   [`with_static_credentials`](Self::with_static_credentials) or
///   [`with_web_identity`](Self::with_web_identity)), or a whole [`SdkConfig`]
///   ([`with_sdk_config`](Self::with_sdk_config)).
/// - [`AwsBuilder::from_env`] uses aws-config's default chain, exactly as the AWS SDK does.
///
/// Settings given with `with_*` override what the environment or the `SdkConfig` says.
/// [`build`](Self::build) is `async` because the default chain may read files and the instance
/// metadata service to find the region; it fails with [`ErrorKind::Config`] when no region or no
/// credentials provider can be found.
///
/// The SDK's own retries are turned off (one attempt per request): the engine's backoff, which
/// honours throttling, is the only retry loop, so a throttled fleet does not multiply its
/// requests. The one exception is the batch fallback described on [`AwsSource`].
pub struct AwsBuilder {
    from_env: bool,
    sdk_config: Option<SdkConfig>,
    region: Option<String>,
    endpoint_url: Option<String>,
    credentials: Option<SharedCredentialsProvider>,
    web_identity: Option<StaticConfiguration>,
    timeout: Duration,
    refresh_before_expiry: Option<Duration>,
    interceptors: Vec<SharedInterceptor>,
    tuning: Tuning,
    clock: Arc<dyn Clock>,
    crypto_provider: Option<Arc<CryptoProvider>>,
    ca_pems: Vec<String>,
}

impl fmt::Debug for AwsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsBuilder")
            .field("from_env", &self.from_env)
            .field("sdk_config", &self.sdk_config.is_some())
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("credentials", &self.credentials.is_some())
            .field("web_identity", &self.web_identity)
            .field("timeout", &self.timeout)
            .field("refresh_before_expiry", &self.refresh_before_expiry)
            .field("tuning", &self.tuning)
            .field("crypto_provider", &self.crypto_provider.is_some())
            .field("extra_cas", &self.ca_pems.len())
            .finish_non_exhaustive()
    }
}

impl Default for AwsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AwsBuilder {
    /// A builder that reads nothing from the environment.
    pub fn new() -> Self {
        AwsBuilder {
            from_env: false,
            sdk_config: None,
            region: None,
            endpoint_url: None,
            credentials: None,
            web_identity: None,
            timeout: Duration::from_secs(30),
            refresh_before_expiry: None,
            interceptors: Vec::new(),
            tuning: Tuning::default(),
            clock: Arc::new(SystemClock),
            crypto_provider: None,
            ca_pems: Vec::new(),
        }
    }

    /// A builder on aws-config's default chain, which reads:
    /// - region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile (`AWS_PROFILE`,
    ///   `AWS_CONFIG_FILE`), then the instance metadata service;
    /// - credentials, in this order: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
    ///   `AWS_SESSION_TOKEN`; the profile (`AWS_SHARED_CREDENTIALS_FILE`, role chaining);
    ///   web identity / IRSA (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`,
    ///   `AWS_ROLE_SESSION_NAME`); ECS and EKS Pod Identity (`AWS_CONTAINER_CREDENTIALS_*`);
    ///   the instance metadata service;
    /// - endpoint: `AWS_ENDPOINT_URL_SECRETS_MANAGER`, then `AWS_ENDPOINT_URL` (and
    ///   `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`).
    ///
    /// SSO profiles and `credential_process` are not compiled in (they would add crates).
    pub fn from_env() -> Self {
        AwsBuilder {
            from_env: true,
            ..Self::new()
        }
    }

    /// Use this SDK configuration (region, credentials, endpoint, HTTP client…) as the base;
    /// `with_*` settings still override it. Its retry settings are replaced (see above). If it
    /// has no HTTP client, the crate's rustls client is used; if it has one, that client is
    /// used as it is ([`with_crypto_provider`](Self::with_crypto_provider) and
    /// [`with_ca_pem`](Self::with_ca_pem) do not apply to it).
    pub fn with_sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// The region, e.g. `eu-west-1`.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Send Secrets Manager requests to this endpoint (a VPC endpoint, LocalStack, moto…).
    /// Only Secrets Manager's: the STS endpoint used by web identity follows the environment.
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Use this credentials provider.
    pub fn with_credentials(mut self, provider: impl ProvideCredentials + 'static) -> Self {
        self.credentials = Some(SharedCredentialsProvider::new(provider));
        self
    }

    /// Use fixed access keys.
    pub fn with_static_credentials(
        self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.with_credentials(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            None,
            "secrets-aws-static",
        ))
    }

    /// Assume `role_arn` with the web identity token in `token_file` (STS
    /// AssumeRoleWithWebIdentity, as IRSA does). The file is re-read whenever credentials are
    /// refreshed, so a projected service-account token that the kubelet rotates keeps working.
    pub fn with_web_identity(
        mut self,
        role_arn: impl Into<String>,
        token_file: impl Into<PathBuf>,
        session_name: Option<String>,
    ) -> Self {
        self.web_identity = Some(StaticConfiguration {
            web_identity_token_file: token_file.into(),
            role_arn: role_arn.into(),
            session_name: session_name.unwrap_or_else(|| "keyrack-aws".to_owned()),
        });
        self
    }

    /// Load new AWS credentials this long before the current ones expire (the SDK's default is
    /// 10 s; the SDK shortens the buffer by a random 0–50 % so a fleet does not refresh at once).
    /// With web identity every load reads the token file again, so this also bounds how long a
    /// rotated projected token waits before it is used.
    pub fn with_credentials_refresh_before_expiry(mut self, buffer: Duration) -> Self {
        self.refresh_before_expiry = Some(buffer);
        self
    }

    /// The rustls crypto provider of the source's TLS (e.g. aws-lc-rs for FIPS). Without it
    /// the process default is used if the application installed one when `build` runs, else
    /// ring's; either way nothing is installed process-wide. The SDK's HTTP client takes a
    /// provider only from a fixed list chosen by cargo feature, so the source passes the SDK an
    /// HTTP client of its own (hyper and hyper-rustls, as the SDK's) built on this provider;
    /// Secrets Manager, STS (web identity) and, with [`from_env`](Self::from_env), every
    /// credentials provider of the default chain use it.
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = Some(provider);
        self
    }

    /// Also trust the CA certificates in `pem` (a VPC endpoint behind a TLS-inspecting proxy,
    /// a test server), besides the platform's.
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// Time limit of one request (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Add an SDK interceptor (e.g. to count or log requests).
    pub fn with_interceptor(mut self, interceptor: impl Intercept + 'static) -> Self {
        self.interceptors.push(SharedInterceptor::new(interceptor));
        self
    }

    /// Whether `fetch` also calls DescribeSecret to learn `NextRotationDate` (default `true`;
    /// one more request per read, made concurrently with GetSecretValue).
    pub fn with_rotation_schedule(mut self, enabled: bool) -> Self {
        self.tuning.rotation_schedule = enabled;
        self
    }

    /// How many single reads a throttled or refused batch falls back to at a time (default
    /// 8). The fallback stops as soon as a single read is throttled too (see [`AwsSource`]).
    pub fn with_batch_fallback(mut self, concurrency: usize) -> Self {
        self.tuning.fallback_concurrency = concurrency.max(1);
        self
    }

    /// The clock `Retry-After` dates are counted from and a probe's rotation date is kept by
    /// (default: the system clock).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Resolve the configuration and build the source.
    pub async fn build(self) -> Result<AwsSource> {
        let http = self.http_client()?;
        let base = match self.sdk_config {
            Some(config) => config,
            None if self.from_env => {
                let mut loader =
                    aws_config::defaults(BehaviorVersion::latest()).http_client(http.clone());
                if let Some(region) = &self.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some(credentials) = &self.credentials {
                    loader = loader.credentials_provider(credentials.clone());
                }
                loader.load().await
            }
            None => SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .http_client(http.clone())
                .build(),
        };
        let region = self
            .region
            .map(Region::new)
            .or_else(|| base.region().cloned())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "no AWS region: set AWS_REGION (with from_env) or call with_region",
                )
            })?;

        let mut config = aws_sdk_secretsmanager::config::Builder::from(&base)
            .region(region.clone())
            // One attempt per request: the engine's backoff is the retry loop.
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(3100))
                    .operation_attempt_timeout(self.timeout)
                    .build(),
            );
        if base.http_client().is_none() {
            config = config.http_client(http.clone());
        }
        if let Some(buffer) = self.refresh_before_expiry {
            config = config.identity_cache(
                aws_sdk_secretsmanager::config::IdentityCache::lazy()
                    .buffer_time(buffer)
                    .build(),
            );
        }
        if let Some(url) = self.endpoint_url {
            config = config.endpoint_url(url);
        }
        if let Some(credentials) = self.credentials {
            config = config.credentials_provider(credentials);
        } else if let Some(web_identity) = self.web_identity {
            let provider_config = ProviderConfig::without_region()
                .with_region(Some(region))
                .with_http_client(http);
            let provider = WebIdentityTokenCredentialsProvider::builder()
                .configure(&provider_config)
                .static_configuration(web_identity)
                .build();
            config = config.credentials_provider(provider);
        } else if base.credentials_provider().is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "no AWS credentials: use from_env, with_credentials, with_static_credentials or \
                 with_web_identity",
            ));
        }
        for interceptor in self.interceptors {
            config.push_interceptor(interceptor);
        }
        let client = aws_sdk_secretsmanager::Client::from_conf(config.build());
        Ok(AwsSource::new(client, self.tuning, self.clock))
    }
}

impl AwsBuilder {
    /// The SDK's HTTP client: hyper 1 on rustls with the given (or default) provider.
    fn http_client(&self) -> Result<SharedHttpClient> {
        let mut extra = Vec::new();
        for pem in &self.ca_pems {
            let certs = tls::certificates_from_pem(pem.as_bytes()).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("a CA given with with_ca_pem: {}", e.message()),
                )
            })?;
            extra.extend(certs);
        }
        let provider = self
            .crypto_provider
            .clone()
            .unwrap_or_else(tls::default_provider);
        let config = tls::client_config(provider, Trust::Platform(extra), None)?;
        Ok(SharedHttpClient::new(RustlsHttpClient::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_without_region_or_credentials_is_a_config_error() {
        let e = AwsBuilder::new().build().await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        let e = AwsBuilder::new()
            .with_region("us-east-1")
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(e.to_string().contains("credentials"), "{e}");
        AwsBuilder::new()
            .with_region("us-east-1")
            .with_static_credentials("AKID", "SECRET", None)
            .build()
            .await
            .unwrap();
    }

    #[test]
    fn debug_shows_no_credentials() {
        let b = AwsBuilder::new().with_static_credentials("AKIDX", "very-secret-key", None);
        let d = format!("{b:?}");
        assert!(
            !d.contains("very-secret-key") && !d.contains("AKIDX"),
            "{d}"
        );
    }
}
