//! #15: a CA file (`VAULT_CACERT`, `with_ca_file`) replaces the platform's roots, as with the
//! Vault CLI; it was merged with them. The "platform" here trusts a test CA through
//! `SSL_CERT_FILE`, which the platform verifier reads on Linux; a test binary of its own, since
//! it sets that variable for the process.
#![allow(unsafe_code)] // std::env::set_var
#![allow(clippy::unwrap_used)]

mod common;

use common::r;
use keyrack_core::{ErrorKind, ManualClock, SecretSource};
use keyrack_fake_server::{FakeServer, Response};
use keyrack_vault::VaultBuilder;

#[test]
fn a_ca_file_replaces_the_platform_roots() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (server, other) = runtime.block_on(async {
        let not_found = |_| async { Response::json(404, &serde_json::json!({ "errors": [] })) };
        (
            FakeServer::https(not_found).await,
            FakeServer::https(not_found).await,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("platform.pem");
    let private = dir.path().join("private.pem");
    std::fs::write(&platform, server.ca_pem().unwrap()).unwrap();
    std::fs::write(&private, other.ca_pem().unwrap()).unwrap();
    // SAFETY: this test is alone in its process and no other thread of it reads the
    // environment (the runtime is current-thread, and no client was built yet).
    unsafe { std::env::set_var("SSL_CERT_FILE", &platform) };

    let read = |builder: VaultBuilder| {
        let source = builder
            .with_address(server.url())
            .with_token("t")
            .with_clock(ManualClock::new())
            .build()
            .unwrap();
        runtime.block_on(source.fetch(&r("vault://secret/app")))
    };
    // Without a CA file the platform's roots are used: TLS succeeds and Vault answers 404.
    let e = read(VaultBuilder::new()).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotFound, "{e}");
    // With a CA file only that CA is trusted: the platform's no longer are.
    let e = read(VaultBuilder::new().with_ca_file(&private)).unwrap_err();
    assert_eq!(
        e.kind(),
        &ErrorKind::Unavailable,
        "the platform's roots were still trusted: {e}"
    );
    // And the server's own CA as the CA file works.
    let e = read(VaultBuilder::new().with_ca_file(&platform)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotFound, "{e}");
}
