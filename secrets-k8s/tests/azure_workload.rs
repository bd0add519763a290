//! Azure workload identity from the pod's environment with a projected token that the
//! kubelet-style projector replaces, against keyrack-fake-server's loopback fakes of Key Vault and the
//! Entra ID token endpoint (answers from entra/instance_discovery_disabled.json entry 1 and the
//! Key Vault recordings; the expected form fields from
//! entra_client_assertion_token_exchange.documented.json, `request.form_body_in_documented_order`).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // waits for the real directory watch

#[path = "../../secrets-backends/azure/tests/common/mod.rs"]
mod azure_fakes;

use std::time::Duration;

use azure_fakes::{CLIENT_ID, Fake, TENANT, VAULT, documented_form, form_of, kv_ref};
use keyrack_core::{Clock, SecretSource, SystemClock};
use keyrack_k8s::Pod;
use keyrack_k8s::testkit::{TokenProjector, unsigned_jwt};

fn last_assertion(fake: &Fake) -> Vec<(String, String)> {
    form_of(fake.token_requests().last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_pod_sends_the_token_the_kubelet_projected_last() {
    let fake = Fake::start().await;
    fake.put("db-password", "s3cr3t-value");
    // Under the SDK's 5-minute refresh margin: every read asks Entra ID again.
    fake.with_state(|s| s.token_expires_in = Some(60));

    let dir = tempfile::tempdir().unwrap();
    let mut projector = TokenProjector::new(dir.path(), "azure-identity-token").unwrap();
    let token = |n: u32| {
        unsigned_jwt(
            &serde_json::json!({ "aud": ["api://AzureADTokenExchange"], "jti": format!("az-{n}"),
        "sub": "system:serviceaccount:payments:app" }),
        )
    };
    projector.project(&token(1)).unwrap();

    let pod = Pod::from_vars([
        ("AZURE_CLIENT_ID", CLIENT_ID.to_owned()),
        ("AZURE_TENANT_ID", TENANT.to_owned()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            projector.path().display().to_string(),
        ),
        ("AZURE_AUTHORITY_HOST", fake.entra.url()),
    ]);
    let source = keyrack_k8s::azure::from_pod(&pod)
        .unwrap()
        .with_vault_url(VAULT, fake.vault.url())
        .with_ca_pem(fake.vault.ca_pem().unwrap())
        .with_ca_pem(fake.entra.ca_pem().unwrap())
        .with_challenge_resource_verification(false)
        .build()
        .unwrap();

    let r = kv_ref("db-password");
    assert_eq!(
        source.fetch(&r).await.unwrap().expose_bytes(),
        b"s3cr3t-value"
    );
    assert_eq!(last_assertion(&fake), documented_form(&token(1)));

    projector.project(&token(2)).unwrap();
    let deadline = SystemClock.now() + Duration::from_secs(5);
    loop {
        source.fetch(&r).await.unwrap();
        if last_assertion(&fake) == documented_form(&token(2)) {
            break;
        }
        assert!(
            SystemClock.now() < deadline,
            "the rotated token was not sent within 5 s"
        );
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(50))
            .await;
    }
}
