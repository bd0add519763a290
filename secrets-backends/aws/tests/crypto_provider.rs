//! Issue 11: the source's TLS uses the provider it was given, else a default, and installs
//! nothing process-wide. A test binary of its own: no test in it installs a provider, so the
//! process-wide default stays empty unless the library installs one (nextest also runs each
//! test in a process of its own). The server is a loopback HTTPS fake of GetSecretValue.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;

use keyrack_aws::{AwsBuilder, AwsSource};
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::{ErrorKind, SecretRef, SecretSource};
use keyrack_fake_server::{FakeServer, Response, counting_provider};

async fn https_secrets_manager() -> FakeServer {
    FakeServer::https(|req| async move {
        if req.header("x-amz-target") != Some("secretsmanager.GetSecretValue") {
            return Response::status(400);
        }
        let body = serde_json::json!({
            "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf",
            "Name": "app",
            "VersionId": "11111111-2222-3333-4444-555555555555",
            "SecretString": "over-tls",
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1.7e9,
        });
        Response::text(200, "application/x-amz-json-1.1", body.to_string())
    })
    .await
}

fn builder(server: &FakeServer) -> AwsBuilder {
    AwsBuilder::new()
        .with_region("us-east-1")
        .with_endpoint_url(server.url())
        .with_ca_pem(server.ca_pem().unwrap())
        .with_static_credentials("AKIDEXAMPLE", "example-secret-key", None)
        .with_rotation_schedule(false)
}

async fn read_over_tls(source: &AwsSource) {
    let secret = source
        .fetch(&SecretRef::parse("aws-sm://app").unwrap())
        .await
        .unwrap();
    assert_eq!(secret.expose_bytes(), b"over-tls");
}

#[tokio::test]
async fn a_tls_read_installs_no_process_provider() {
    assert!(CryptoProvider::get_default().is_none());
    let server = https_secrets_manager().await;
    let source = builder(&server).build().await.unwrap();
    read_over_tls(&source).await;
    assert!(
        CryptoProvider::get_default().is_none(),
        "building and using the source installed a process-wide crypto provider"
    );
}

#[tokio::test]
async fn the_given_provider_makes_the_handshakes() {
    let server = https_secrets_manager().await;
    let (provider, draws) = counting_provider();
    let source = builder(&server)
        .with_crypto_provider(provider)
        .build()
        .await
        .unwrap();
    let before = draws.load(Ordering::SeqCst);
    read_over_tls(&source).await;
    assert!(
        draws.load(Ordering::SeqCst) > before,
        "the given provider was not used"
    );
    assert!(CryptoProvider::get_default().is_none());
}

/// Without the fake's CA the platform's roots are used, and they do not trust it: the
/// handshake is refused, and that is an `Unavailable` read (not a panic, not a timeout).
#[tokio::test]
async fn an_untrusted_server_is_refused() {
    let server = https_secrets_manager().await;
    let source = AwsBuilder::new()
        .with_region("us-east-1")
        .with_endpoint_url(server.url())
        .with_static_credentials("AKIDEXAMPLE", "example-secret-key", None)
        .with_rotation_schedule(false)
        .build()
        .await
        .unwrap();
    let e = source
        .fetch(&SecretRef::parse("aws-sm://app").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert!(server.requests().is_empty());
    assert!(CryptoProvider::get_default().is_none());
}
