//! Issue 11: the source's TLS uses the provider it was given, else a default, and installs
//! nothing process-wide. A test binary of its own: no test in it installs a provider, so the
//! process-wide default stays empty unless the library installs one (nextest also runs each
//! test in a process of its own).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::r;
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::{ErrorKind, ManualClock, SecretSource};
use keyrack_fake_server::{FakeServer, Response, counting_provider};
use keyrack_vault::{VaultBuilder, VaultSource};

async fn https_vault() -> (FakeServer, tempfile::TempDir, std::path::PathBuf) {
    let server =
        FakeServer::https(|_| async { Response::json(404, &serde_json::json!({ "errors": [] })) })
            .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server.ca_pem().unwrap()).unwrap();
    (server, dir, ca)
}

fn builder(server: &FakeServer, ca: &std::path::Path) -> VaultBuilder {
    VaultBuilder::new()
        .with_address(server.url())
        .with_ca_file(ca)
        .with_token("t")
        .with_clock(ManualClock::new())
}

/// A read over TLS made it to the server and back (Vault's 404 is `NotFound`).
async fn read_over_tls(source: &VaultSource, server: &FakeServer) {
    let e = source.fetch(&r("vault://secret/app")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotFound, "{e}");
    assert!(!server.requests().is_empty());
}

#[tokio::test]
async fn a_tls_read_installs_no_process_provider() {
    assert!(CryptoProvider::get_default().is_none());
    let (server, _dir, ca) = https_vault().await;
    let source = builder(&server, &ca).build().unwrap();
    read_over_tls(&source, &server).await;
    assert!(
        CryptoProvider::get_default().is_none(),
        "building and using the source installed a process-wide crypto provider"
    );
}

#[tokio::test]
async fn the_given_provider_makes_the_handshakes() {
    let (server, _dir, ca) = https_vault().await;
    let (provider, draws) = counting_provider();
    let source = builder(&server, &ca)
        .with_crypto_provider(provider)
        .build()
        .unwrap();
    let before = draws.load(Ordering::SeqCst);
    read_over_tls(&source, &server).await;
    assert!(
        draws.load(Ordering::SeqCst) > before,
        "the given provider was not used"
    );
    assert!(CryptoProvider::get_default().is_none());
}
