//! Workload identity from an `IdentityToken`: the Entra ID client-assertion grant, checked
//! against the loopback token endpoint (answers from entra/instance_discovery_disabled.json
//! entry 1; request fields from entra_client_assertion_token_exchange.documented.json).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use secrets_core::{ErrorKind, SecretSource};

fn form_of(req: &secrets_fake_server::Request) -> Vec<(String, String)> {
    let mut form = req.form();
    form.sort();
    form
}

/// The fields the documented federated-credential request sends
/// (`request.form_body_in_documented_order`), with Key Vault's scope (`request.notes`) and the
/// client assertion replaced by `assertion`.
fn documented_form(assertion: &str) -> Vec<(String, String)> {
    let doc = fixture("entra_client_assertion_token_exchange.documented.json");
    let mut form: Vec<(String, String)> = doc["request"]["form_body_in_documented_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let key = pair[0].as_str().unwrap().to_owned();
            let value = match key.as_str() {
                "client_assertion" => assertion.to_owned(),
                "scope" => "https://vault.azure.net/.default".to_owned(),
                _ => pair[1].as_str().unwrap().to_owned(),
            };
            (key, value)
        })
        .collect();
    form.sort();
    form
}

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
    assert!(e.to_string().contains("AADSTS70011"), "{e}");
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
    let src = secrets_azure::AzureBuilder::from_vars(|name| {
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
