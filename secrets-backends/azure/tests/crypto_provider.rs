//! Issue 11: the source's TLS (Key Vault and Entra ID alike) uses the provider it was given,
//! else a default, and installs nothing process-wide. A test binary of its own: no test in it
//! installs a provider, so the process-wide default stays empty unless the library installs
//! one (nextest also runs each test in a process of its own).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::*;
use keyrack_azure::AzureSource;
use keyrack_core::SecretSource;
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_fake_server::counting_provider;

/// The recorded exchange: challenge, token from the fake Entra ID, read; all over TLS.
async fn read_over_tls(fake: &Fake, source: &AzureSource) {
    fake.put("db-password", "over-tls");
    let s = source.fetch(&kv_ref("db-password")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"over-tls");
    assert_eq!(fake.token_requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_read_installs_no_process_provider() {
    assert!(CryptoProvider::get_default().is_none());
    let fake = Fake::start().await;
    let source = fake.source();
    read_over_tls(&fake, &source).await;
    assert!(
        CryptoProvider::get_default().is_none(),
        "building and using the source installed a process-wide crypto provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_given_provider_makes_the_handshakes() {
    let fake = Fake::start().await;
    let (provider, draws) = counting_provider();
    let source = fake
        .builder(Arc::new(RotatingToken::new("projected-sa-token-1")))
        .with_crypto_provider(provider)
        .build()
        .unwrap();
    let before = draws.load(Ordering::SeqCst);
    read_over_tls(&fake, &source).await;
    // Two servers (vault and Entra ID), so at least two handshakes.
    assert!(
        draws.load(Ordering::SeqCst) >= before + 2,
        "the given provider was not used for both servers"
    );
    assert!(CryptoProvider::get_default().is_none());
}
