//! TLS plumbing shared by the backends (feature `tls`): rustls client configurations built on a
//! [`CryptoProvider`] passed explicitly.
//!
//! A library must not install process-wide state: rustls' default provider belongs to the
//! application, which may install another one (aws-lc-rs for FIPS, say) after the library's
//! sources are built, and [`CryptoProvider::install_default`] fails once a default exists. So
//! every client configuration built here names its provider, and nothing here installs one:
//! a source uses the provider its builder was given (`with_crypto_provider`), else
//! [`default_provider`] (the application's process default if it installed one, else ring's).
//!
//! The backends whose SDKs build their own HTTP clients, with no way to pass a provider or a
//! client, say so on their builders.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Error, ErrorKind, Result};

/// The rustls crate the providers and configurations here are from, so an application can
/// name [`CryptoProvider`] without a version mismatch.
pub use rustls;

/// The provider a source uses when its builder was given none: the process default if the
/// application installed one ([`CryptoProvider::get_default`]), else rustls' ring provider.
/// Nothing is installed: the process default stays the application's to choose. Read when a
/// source is built, so install yours before building sources.
pub fn default_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Which servers a client trusts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Trust {
    /// The platform's verifier and trust store (on Linux the system's CA bundle, which
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` can replace), plus these CA certificates. A platform
    /// without a trust store fails each handshake (saying so), not the configuration: a client
    /// that only speaks plain `http` (an emulator in a minimal container) still works.
    Platform(Vec<CertificateDer<'static>>),
    /// Only these CA certificates; the platform's are not used. Empty: no server is trusted
    /// (a client that only speaks plain `http`).
    Only(Vec<CertificateDer<'static>>),
    /// No certificate check at all (handshake signatures are still verified): anyone on the
    /// path can impersonate the server. For loopback test servers only.
    DangerAcceptAnyCertificate,
}

/// A client certificate chain and its private key, presented to servers that ask for one.
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// The certificates of `cert_pem` (leaf first) and the first private key of `key_pem`
    /// (PKCS#8, PKCS#1 or SEC1). The two may be the same bundle.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let chain = certificates_from_pem(cert_pem)?;
        if chain.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "the client certificate PEM holds no certificate",
            ));
        }
        // The key's bytes never reach the message: a PEM error names only what was wrong.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "no usable private key in the client key PEM ({})",
                    pem_reason(&e)
                ),
            )
        })?;
        Ok(ClientIdentity { chain, key })
    }
}

/// The certificates of a PEM bundle (other sections are skipped); empty if it holds none.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("not PEM certificates ({})", pem_reason(&e)),
            )
        })
}

fn pem_reason(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "nothing found",
        E::MissingSectionEnd { .. } | E::IllegalSectionStart { .. } => "a section is malformed",
        E::Base64Decode(_) => "bad base64",
        _ => "unreadable",
    }
}

/// A rustls client configuration on `provider`: the protocol versions the provider supports
/// (TLS 1.2 and 1.3 for ring and aws-lc-rs), `trust`, an optional client identity, and ALPN
/// offering HTTP/2 then HTTP/1.1 (what reqwest and the AWS SDK's client offer themselves).
/// Fails with [`ErrorKind::Config`] when the provider cannot make a usable configuration (no
/// cipher suite for any version) or a certificate or key is refused.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    trust: Trust,
    identity: Option<ClientIdentity>,
) -> Result<ClientConfig> {
    let config_error = |what: &str, e: rustls::Error| {
        Error::new(ErrorKind::Config, format!("TLS configuration: {what}: {e}"))
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("the crypto provider", e))?;
    let builder = match trust {
        Trust::Platform(extra) => {
            let verifier: Arc<dyn ServerCertVerifier> =
                match platform_verifier(extra, provider.clone()) {
                    Ok(verifier) => Arc::new(verifier),
                    Err(e @ rustls::Error::General(_)) => Arc::new(NoTrustStore(e, provider)),
                    Err(e) => return Err(config_error("a CA certificate", e)),
                };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
        }
        Trust::Only(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| config_error("a CA certificate", e))?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::DangerAcceptAnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
    };
    let mut config = match identity {
        Some(ClientIdentity { chain, key }) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| config_error("the client certificate", e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(any(all(unix, not(target_os = "android")), target_os = "windows"))]
fn platform_verifier(
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
) -> std::result::Result<rustls_platform_verifier::Verifier, rustls::Error> {
    if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider)
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider)
    }
}

#[cfg(not(any(all(unix, not(target_os = "android")), target_os = "windows")))]
fn platform_verifier(
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
) -> std::result::Result<rustls_platform_verifier::Verifier, rustls::Error> {
    if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider)
    } else {
        Err(rustls::Error::General(
            "extra CA certificates on top of the platform's are not supported on this target"
                .into(),
        ))
    }
}

/// The platform's trust store could not be loaded (no CA bundle in the container): every
/// certificate is refused with the reason.
#[derive(Debug)]
struct NoTrustStore(rustls::Error, Arc<CryptoProvider>);

impl ServerCertVerifier for NoTrustStore {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Err(self.0.clone())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.0.clone())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(self.0.clone())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// [`Trust::DangerAcceptAnyCertificate`]: any certificate is accepted, but the handshake's
/// signatures are still checked with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_ring_and_is_not_installed() {
        // Nothing in this crate installs a default, tests included.
        assert!(CryptoProvider::get_default().is_none());
        let p = default_provider();
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(p.cipher_suites.len(), ring.cipher_suites.len());
        client_config(p, Trust::Platform(Vec::new()), None).unwrap();
        assert!(CryptoProvider::get_default().is_none());
    }

    #[test]
    fn a_provider_without_cipher_suites_is_a_config_error() {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.clear();
        let e = client_config(Arc::new(provider), Trust::Only(Vec::new()), None).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
    }

    #[test]
    fn bad_pem_is_a_config_error_that_quotes_nothing() {
        let e = ClientIdentity::from_pem(b"", b"").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        let key =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let e =
            certificates_from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(certificates_from_pem(key).unwrap().is_empty());
    }
}
