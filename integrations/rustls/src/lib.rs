//! rustls certificates that rotate: a [`RotatingCertificate`] is a
//! [`ResolvesServerCert`] and a [`ResolvesClientCert`] fed by keyrack
//! [handles](keyrack_core::SecretHandle). Its certificate chain and private key come from a Vault /
//! OpenBao PKI issue, a Kubernetes `kubernetes.io/tls` Secret, PEM files, or any secret with two
//! fields ([`CertSource`]); when the client brings a new one, it is checked and served from the
//! next handshake on, with no server rebuilt and no connection dropped.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keyrack_core::Secrets;
//! use keyrack_rustls::{CertSource, RotatingCertificate, rustls};
//!
//! let vault = keyrack_vault::VaultBuilder::from_env().build()?;
//! let secrets = Secrets::builder().source("vault", vault).build()?;
//! // Issued at once, issued again at ⅔ of its life (here every 20 s).
//! let issued = secrets
//!     .handle("vault://pki/issue/web?common_name=api.example.test&ttl=30s")
//!     .await?;
//! let certificate = Arc::new(RotatingCertificate::builder(CertSource::vault_pki(issued)).build()?);
//!
//! let provider = Arc::new(rustls::crypto::ring::default_provider());
//! let config = rustls::ServerConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_no_client_auth()
//!     .with_cert_resolver(certificate.clone());
//! // Serve with tokio-rustls, hyper-rustls, axum-server, …: `Arc::new(config)`.
//!
//! let mut events = certificate.subscribe();
//! while let Some(event) = events.recv().await {
//!     println!("{event}"); // "certificate 1a:2b:… installed (replacing 0f:…)"
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A client presenting a certificate to servers that ask for one (mutual TLS) takes the same
//! resolver: `ClientConfig::builder_with_provider(…)…with_client_cert_resolver(certificate)`.
//!
//! # What is refused
//!
//! Nothing known to be wrong is ever served. Each value a source brings is checked before it is
//! used: PEM that holds a certificate and an unencrypted private key, an X.509 leaf (and chain),
//! a key the crypto provider can sign with and that belongs to the leaf
//! ([`CertifiedKey::keys_match`](rustls::sign::CertifiedKey::keys_match)), and a leaf within its
//! validity. A value that fails is refused with a [`CertEvent::Rejected`] naming the
//! [`CertErrorKind`] (and a WARN log line), and the certificate served before stays in place. A
//! certificate whose validity has not begun is installed when it begins. [`build`] refuses a bad
//! first certificate with the same [`CertError`].
//!
//! The served certificate's `notAfter` is checked at every handshake (one wall-clock read): once
//! it is past, with no acceptable replacement, no certificate is given (a server's handshakes
//! fail, a client's go without one) and [`CertEvent::Expired`] is sent. Expiry-driven renewal is
//! the client's: Vault PKI certificates are issued again at ⅔ of their life, Kubernetes Secrets
//! are watched, files are watched.
//!
//! Two secrets ([`CertSource::pem`]: two files) change one after the other; a key that does not
//! match while only one of them changed is given
//! [`pair_settle`](RotatingCertificateBuilder::pair_settle) (5 s) to catch up before it is
//! refused.
//!
//! # Keys
//!
//! The key's PEM lives in the secret's zeroized buffer; its DER is handed to the crypto provider
//! (ring's wipes it). No `Debug`, `Display`, error, event or log line of this crate shows a key
//! or a PEM: errors are written from fixed text, field names, serial numbers and dates.
//!
//! # Crypto provider
//!
//! Keys are loaded with the provider given to
//! [`crypto_provider`](RotatingCertificateBuilder::crypto_provider), else the process default if
//! the application installed one, else ring's. Nothing is installed process-wide.
//!
//! [`ResolvesServerCert`]: rustls::server::ResolvesServerCert
//! [`ResolvesClientCert`]: rustls::client::ResolvesClientCert
//! [`build`]: RotatingCertificateBuilder::build
#![cfg_attr(docsrs, feature(doc_cfg))]

mod certified;
mod driver;
mod error;
mod events;
mod source;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use keyrack_core::{Clock, SystemClock};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use certified::CertInfo;
pub use error::{CertError, CertErrorKind};
pub use events::{CertEvent, CertEvents};
/// The rustls crate the resolvers implement, so an application names the same types.
pub use rustls;
pub use source::CertSource;

use driver::{Driver, Served, Shared};

/// A certificate chain and private key that follow a [`CertSource`]: a rustls
/// [`ResolvesServerCert`] and [`ResolvesClientCert`]. See the [crate docs](crate).
///
/// Hand it to rustls in an [`Arc`]. Dropping the last one stops following the source (and
/// releases its handles).
pub struct RotatingCertificate {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    source: String,
}

/// Builds a [`RotatingCertificate`]; from [`RotatingCertificate::builder`].
pub struct RotatingCertificateBuilder {
    source: CertSource,
    provider: Option<Arc<CryptoProvider>>,
    clock: Arc<dyn Clock>,
    settle: Duration,
    event_capacity: usize,
}

impl RotatingCertificate {
    /// A resolver for the certificates `source` holds.
    pub fn builder(source: CertSource) -> RotatingCertificateBuilder {
        RotatingCertificateBuilder {
            source,
            provider: None,
            clock: Arc::new(SystemClock),
            settle: Duration::from_secs(5),
            event_capacity: 64,
        }
    }

    /// The certificate handshakes are given now, with its key; `None` once it is past its
    /// `notAfter` with no replacement.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let served = self.shared.serving.load();
        (self.shared.clock.wall() < served.info.not_after()).then(|| served.key.clone())
    }

    /// What handshakes are given now; `None` once it is past its `notAfter` with no
    /// replacement.
    pub fn serving(&self) -> Option<CertInfo> {
        let served = self.shared.serving.load();
        (self.shared.clock.wall() < served.info.not_after()).then(|| served.info.clone())
    }

    /// Events: installed, refused and expired certificates.
    pub fn subscribe(&self) -> CertEvents {
        CertEvents::new(self.shared.events.subscribe())
    }
}

impl RotatingCertificateBuilder {
    /// The provider keys are loaded with (default: the process default if the application
    /// installed one, else ring's). Use the one your rustls configurations are built on.
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The clock validity is judged by (default: the system clock). For tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// For a [`CertSource::pem`] pair: how long a key that does not match is given when only one
    /// of the two secrets changed, for the other to follow, before it is refused (default 5 s).
    pub fn pair_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// How many events a slow subscriber may fall behind before it gets
    /// [`CertEvent::Lagged`] (default 64).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Check the certificate the source holds now and start following it. A bad one is refused
    /// with its [`CertError`]; so is a build outside a Tokio runtime (the task that follows the
    /// source is spawned on the current one) with [`CertErrorKind::Config`].
    pub fn build(self) -> Result<RotatingCertificate, CertError> {
        self.source.check()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            CertError::new(
                CertErrorKind::Config,
                "a RotatingCertificate is built inside a Tokio runtime (its task follows the \
                 source there)",
            )
        })?;
        let provider = self.provider.unwrap_or_else(|| {
            CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
        });
        let material = self.source.read()?;
        let checked = certified::check(
            material.cert_pem.expose_bytes(),
            &material.chain,
            material.key_pem.expose_bytes(),
            material.version.clone(),
            &provider,
            self.clock.wall(),
        )?;
        let expiry = self.clock.deadline_for(checked.info.not_after());
        tracing::info!(target: "keyrack_rustls", serial = checked.info.serial(),
            not_after = ?checked.info.not_after(), "certificate installed");
        let (events, _) = broadcast::channel(self.event_capacity);
        let shared = Arc::new(Shared {
            serving: ArcSwap::from_pointee(Served {
                key: checked.key,
                info: checked.info,
            }),
            clock: self.clock,
            events,
        });
        let described = format!("{:?}", self.source);
        let driver = Driver {
            shared: shared.clone(),
            source: self.source,
            provider,
            settle: self.settle,
            examined: material.origin.clone(),
            installed: material.origin,
            recheck: None,
            expiry: Some(expiry),
        };
        let task = runtime.spawn(driver.run());
        Ok(RotatingCertificate {
            shared,
            task,
            source: described,
        })
    }
}

impl ResolvesServerCert for RotatingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for RotatingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Drop for RotatingCertificate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for RotatingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let served = self.shared.serving.load();
        f.debug_struct("RotatingCertificate")
            .field("source", &format_args!("{}", self.source))
            .field("serving", &served.info)
            .finish()
    }
}

impl fmt::Debug for RotatingCertificateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatingCertificateBuilder")
            .field("source", &self.source)
            .field("pair_settle", &self.settle)
            .finish_non_exhaustive()
    }
}
