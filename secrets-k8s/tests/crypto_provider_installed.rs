//! Issue 11: when the application installed a process default provider and gave a builder
//! none, the source's TLS uses the application's provider (not ring's), for every backend;
//! the Google backend, which needs a process default, leaves the application's in place. One
//! test, in a binary of its own, since it installs the process default.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::{SecretRef, SecretSource, StaticToken};
use keyrack_fake_server::{FakeServer, Response, counting_provider};

fn r(s: &str) -> SecretRef {
    SecretRef::parse(s).unwrap()
}

/// The count moved while `read` ran: a handshake drew from the installed provider.
async fn handshakes<F: std::future::Future>(draws: &AtomicUsize, read: F) -> usize {
    let before = draws.load(Ordering::SeqCst);
    read.await;
    draws.load(Ordering::SeqCst) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_default_is_used_when_no_provider_is_given() {
    let (provider, draws) = counting_provider();
    CryptoProvider::install_default(Arc::unwrap_or_clone(provider)).unwrap();
    let installed = CryptoProvider::get_default().unwrap();
    // Any answer will do: each read below only has to complete a TLS handshake.
    let server = FakeServer::https(|_| async { Response::status(404) }).await;
    let ca = server.ca_pem().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();

    let vault = keyrack_vault::VaultBuilder::new()
        .with_address(server.url())
        .with_ca_file(&ca_file)
        .with_token("t")
        .build()
        .unwrap();
    let n = handshakes(&draws, async {
        let _ = vault.fetch(&r("vault://secret/app")).await;
    })
    .await;
    assert!(n > 0, "Vault did not use the installed provider");

    let k8s = keyrack_k8s::source::KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem(ca.clone())
        .token(Arc::new(StaticToken::new("t")))
        .build()
        .unwrap();
    let n = handshakes(&draws, async {
        let _ = k8s.fetch(&r("k8s://apps/db")).await;
    })
    .await;
    assert!(
        n > 0,
        "the Kubernetes source did not use the installed provider"
    );

    let azure = keyrack_azure::AzureBuilder::new()
        .with_vault_url("fakevault", server.url())
        .with_ca_pem(ca.clone())
        .with_challenge_resource_verification(false)
        .with_client_secret("tenant", "client", "secret")
        .build()
        .unwrap();
    let n = handshakes(&draws, async {
        let _ = azure.fetch(&r("azure-kv://fakevault/db")).await;
    })
    .await;
    assert!(n > 0, "Azure did not use the installed provider");

    let aws = keyrack_aws::AwsBuilder::new()
        .with_region("us-east-1")
        .with_endpoint_url(server.url())
        .with_ca_pem(ca.clone())
        .with_static_credentials("AKIDEXAMPLE", "example-secret-key", None)
        .with_rotation_schedule(false)
        .build()
        .await
        .unwrap();
    let n = handshakes(&draws, async {
        let _ = aws.fetch(&r("aws-sm://app")).await;
    })
    .await;
    assert!(n > 0, "AWS did not use the installed provider");

    // Google's SDK uses the process default itself; building the source leaves it as it was.
    let _gcp = keyrack_gcp::GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .build()
        .await
        .unwrap();
    assert!(Arc::ptr_eq(
        installed,
        CryptoProvider::get_default().unwrap()
    ));
}
