//! Workload identity from an `IdentityToken`: the Entra ID client-assertion grant, checked
//! against the loopback token endpoint (answers from entra/instance_discovery_disabled.json
//! entry 1; request fields from entra_client_assertion_token_exchange.documented.json).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyrack_core::{ErrorKind, SecretSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_assertion_grant_sends_the_current_identity_token() {
    let fake = Fake::start().await;
    fake.put("db-password", "v");
    // Shorter than the recorded 86399 s: under the SDK's 5-minute refresh margin, so every read
    // asks for a new access token and the assertion is sent again.
    fake.with_state(|s| s.token_expires_in = Some(60));
    let first = "eyJhbGciOiJSUzI1NiJ9.first-projected-token.sig";
    let token = Arc::new(RotatingToken::new(first));
    let src = fake.builder(token.clone()).build().unwrap();

    src.fetch(&kv_ref("db-password")).await.unwrap();
    let sent = fake.token_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    // The token endpoint of entra/instance_discovery_disabled.json entry 1, under our authority.
    assert_eq!(sent[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert!(
        sent[0]
            .header("content-type")
            .unwrap()
            .starts_with("application/x-www-form-urlencoded"),
        "{:?}",
        sent[0].header("content-type")
    );
    assert_eq!(form_of(&sent[0]), documented_form(first));

    // The kubelet rotates the projected token: the next token request carries the new one.
    let second = "eyJhbGciOiJSUzI1NiJ9.second-projected-token.sig";
    token.set(second);
    src.fetch(&kv_ref("db-password")).await.unwrap();
    let sent = fake.token_requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(form_of(&sent[1]), documented_form(second));
    let vault = fake.vault_requests();
    assert_eq!(
        vault.last().unwrap().header("authorization"),
        Some("Bearer fake-access-token-2")
    );
    assert_eq!(token.invalidations(), 0);
}

/// Entra ID refuses the assertion (the documented 400 `error_response`): the read fails as
/// `Unauthenticated` with Entra's reason, and the token source is told to drop its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_assertion_invalidates_the_identity_token() {
    let fake = Fake::start().await;
    fake.put("db-password", "v");
    fake.with_state(|s| s.refuse_next_token = true);
    let token = Arc::new(RotatingToken::new("expired-projected-token"));
    let src = fake.builder(token.clone()).build().unwrap();

    let e = src.fetch(&kv_ref("db-password")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
    assert!(!e.is_retryable());
    // Entra's reason, read by our policy (azure_identity 1.0 cannot parse the `\r\n` in it):
    // status, error, description and its Trace ID line, AADSTS code.
    let text = e.to_string();
    for part in [
        "HTTP 400 invalid_scope",
        "AADSTS70011",
        "Trace ID: 255d1aef",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(!format!("{e:?}").contains("expired-projected-token"));
    assert_eq!(token.invalidations(), 1);

    // The next attempt logs in again and succeeds.
    token.set("fresh-projected-token");
    assert_eq!(
        src.fetch(&kv_ref("db-password"))
            .await
            .unwrap()
            .expose_bytes(),
        b"v"
    );
}

/// `from_env`'s chain with the variables the AKS webhook injects: workload identity from
/// `AZURE_FEDERATED_TOKEN_FILE`, at the authority of `AZURE_AUTHORITY_HOST`; the file is read
/// again at every token request, so the kubelet's replacement is what is sent next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_env_uses_the_federated_token_file() {
    let fake = Fake::start().await;
    fake.put("db-password", "v");
    fake.with_state(|s| s.token_expires_in = Some(60));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "file-token-1\n").unwrap();
    let vars: Vec<(&str, String)> = vec![
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
        ("AZURE_AUTHORITY_HOST", fake.entra.url()),
        // Ignored: workload identity comes first in the chain.
        ("AZURE_CLIENT_SECRET", "unused-client-secret".to_owned()),
    ];
    let src = keyrack_azure::AzureBuilder::from_vars(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .with_vault_url(VAULT, fake.vault.url())
    .with_ca_pem(fake.vault.ca_pem().unwrap())
    .with_ca_pem(fake.entra.ca_pem().unwrap())
    .with_challenge_resource_verification(false)
    .build()
    .unwrap();

    src.fetch(&kv_ref("db-password")).await.unwrap();
    std::fs::write(&file, "file-token-2\n").unwrap();
    src.fetch(&kv_ref("db-password")).await.unwrap();
    let sent = fake.token_requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(form_of(&sent[0]), documented_form("file-token-1"));
    assert_eq!(form_of(&sent[1]), documented_form("file-token-2"));
}

/// Entra ID throttles the token request (429 with `Retry-After: 5`; body: the documented
/// `error_response` of entra_client_assertion_token_exchange.documented.json with OAuth's
/// `temporarily_unavailable`, see `entra_answer` in tests/common): the read is `Throttled` with
/// Entra's hint, retryable, and the identity token is kept. Once Entra answers again, so does
/// the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_throttling_is_throttled_with_its_retry_after() {
    let fake = Fake::start().await;
    fake.put("db-password", "v");
    fake.with_state(|s| s.token_failure = Some((429, 5)));
    let token = Arc::new(RotatingToken::new("projected-sa-token-1"));
    let src = fake.builder(token.clone()).build().unwrap();

    let e = src.fetch(&kv_ref("db-password")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (&ErrorKind::Throttled, Some(Duration::from_secs(5))),
        "{e}"
    );
    assert!(e.is_retryable());
    assert!(e.to_string().contains("temporarily_unavailable"), "{e}");
    assert_eq!(token.invalidations(), 0, "throttling invalidated the token");
    assert_eq!(fake.token_requests().len(), 1, "the SDK retried by itself");

    fake.with_state(|s| s.token_failure = None);
    assert_eq!(
        src.fetch(&kv_ref("db-password"))
            .await
            .unwrap()
            .expose_bytes(),
        b"v"
    );
    assert_eq!(token.invalidations(), 0);
}

/// Entra ID is down (503, same body as above): `Unavailable`, retryable, and the identity token
/// is kept (a failing Entra ID says nothing about the token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_outage_is_unavailable_and_keeps_the_identity_token() {
    let fake = Fake::start().await;
    fake.put("db-password", "v");
    fake.with_state(|s| s.token_failure = Some((503, 30)));
    let token = Arc::new(RotatingToken::new("projected-sa-token-1"));
    let src = fake.builder(token.clone()).build().unwrap();

    let e = src.fetch(&kv_ref("db-password")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert_eq!(token.invalidations(), 0, "an outage invalidated the token");
}

/// Key Vault stops accepting the access token it accepted before (revocation, continuous
/// access evaluation; the fake answers the recorded 401 challenge of
/// rust/list_secrets_by_pages_verify_telemetry.excerpt.json entry 0). The SDK answers the
/// challenge from the credential's token cache, so that read fails `Unauthenticated`; the
/// source then replaces its credential and tells the token source to drop its copy, and the
/// next read logs in again (a second token request to the fake Entra ID,
/// entra/instance_discovery_disabled.json entry 1) instead of sending the refused token until
/// it expires (86399 s in the recording).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_access_token_is_replaced_by_the_next_read() {
    let fake = Fake::start().await;
    fake.put("db-password", "v");
    let token = Arc::new(RotatingToken::new("projected-sa-token-1"));
    let src = fake.builder(token.clone()).build().unwrap();
    src.fetch(&kv_ref("db-password")).await.unwrap();
    assert_eq!(fake.token_requests().len(), 1);

    fake.with_state(|s| s.issued.clear());
    let e = src.fetch(&kv_ref("db-password")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
    assert_eq!(
        fake.token_requests().len(),
        1,
        "answered from the token cache"
    );
    assert_eq!(token.invalidations(), 1);

    fake.vault.clear_requests();
    let s = src.fetch(&kv_ref("db-password")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"v");
    assert_eq!(fake.token_requests().len(), 2);
    let sent = fake.vault_requests();
    assert_eq!(
        sent.last().unwrap().header("authorization"),
        Some("Bearer fake-access-token-2")
    );
    // The new credential's token is cached like the first one: no login per read.
    src.fetch(&kv_ref("db-password")).await.unwrap();
    assert_eq!(fake.token_requests().len(), 2);
    assert_eq!(token.invalidations(), 1);
}
