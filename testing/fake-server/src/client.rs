//! The reqwest client of the tests' own setup requests (writing a secret into OpenBao or moto,
//! asking a fake what it saw): one copy for every crate's tests.
//!
//! Its TLS is rustls on ring's provider, passed in: nothing is installed process-wide, so a
//! test that uses it passes alone and in any order (a `reqwest::get` panicked unless another
//! test had installed a default provider first). It trusts no root but the CAs given: the
//! servers tests set up are on loopback, over plain HTTP or HTTPS with a CA of their own
//! ([`FakeServer::ca_pem`](crate::FakeServer::ca_pem)), never on the platform's roots.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A client for plain-HTTP servers (and HTTPS ones it will refuse: it trusts no CA).
pub fn test_client() -> reqwest::Client {
    test_client_builder(&[]).build().unwrap()
}

/// A client builder (to add a timeout, say) whose TLS trusts only `ca_pems` (PEM certificates;
/// none for plain HTTP).
pub fn test_client_builder(ca_pems: &[&str]) -> reqwest::ClientBuilder {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder().tls_backend_preconfigured(tls)
}
