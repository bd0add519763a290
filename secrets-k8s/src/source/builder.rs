//! [`KubernetesSecretsBuilder`]: the API server, its CA, the token and the timings.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::tls::{self, Trust};
use keyrack_core::{Backoff, Clock, Error, ErrorKind, IdentityToken, Result, SystemClock};
use url::Url;

use super::KubernetesSecrets;
use super::api::Api;
use super::data::Fingerprint;
use super::tracked::Tracked;

/// Builds a [`KubernetesSecrets`].
pub struct KubernetesSecretsBuilder {
    api_server: Option<String>,
    ca_pem: Option<Vec<u8>>,
    token: Option<Arc<dyn IdentityToken>>,
    clock: Arc<dyn Clock>,
    watch_backoff: Backoff,
    request_timeout: Duration,
    crypto_provider: Option<Arc<CryptoProvider>>,
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
            crypto_provider: None,
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
            .field("crypto_provider", &self.crypto_provider.is_some())
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

    /// The rustls crypto provider of the client's TLS (e.g. aws-lc-rs for FIPS). Without it
    /// the process default is used if the application installed one when `build` runs, else
    /// ring's; either way nothing is installed process-wide.
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = Some(provider);
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
        let trust = match &self.ca_pem {
            Some(pem) => {
                let certs = tls::certificates_from_pem(pem).map_err(|e| {
                    Error::new(ErrorKind::Config, format!("the CA bundle: {}", e.message()))
                })?;
                if certs.is_empty() {
                    return Err(config("the CA bundle holds no certificate"));
                }
                Trust::Only(certs)
            }
            None => Trust::Platform(Vec::new()),
        };
        let provider = self
            .crypto_provider
            .clone()
            .unwrap_or_else(tls::default_provider);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config(provider, trust, None)?)
            .https_only(true)
            .connect_timeout(Duration::from_secs(10))
            // A redirect would carry the token elsewhere; the API server never redirects reads.
            .redirect(reqwest::redirect::Policy::none());
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
