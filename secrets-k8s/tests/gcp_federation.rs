//! Google workload identity federation with a projected token that the kubelet-style projector
//! replaces, against keyrack-fake-server's loopback fakes: STS answers
//! `sts_success_response_google_auth_tests` of fixtures/sts_token_exchange.assembled.json (with
//! `expires_in` shortened to 5 s so the auth library exchanges again within the test) and the
//! request must equal its `sts_request.form` field for field; Secret Manager answers after
//! access_secret_version.documented.json.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // real time: the auth library's renewal

#[path = "../../secrets-backends/gcp/tests/common/mod.rs"]
mod gcp_fakes;

use std::collections::BTreeMap;
use std::time::Duration;

use gcp_fakes::{STS, Store, fake, fixture, gcp_ref};
use keyrack_core::{Clock, SecretSource, SystemClock};
use keyrack_fake_server::{FakeServer, Request, Response};
use keyrack_gcp::GcpBuilder;
use keyrack_k8s::ProjectedToken;
use keyrack_k8s::testkit::{TokenProjector, unsigned_jwt};

fn form(req: &Request) -> BTreeMap<String, String> {
    req.form().into_iter().collect()
}

fn expected_form(subject_token: &str) -> BTreeMap<String, String> {
    let mut want: BTreeMap<String, String> = fixture(STS)["sts_request"]["form"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    want.insert("subject_token".into(), subject_token.into());
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_the_kubelet_projected_last_is_exchanged() {
    let sts = fixture(STS);
    let mut issued = sts["sts_success_response_google_auth_tests"].clone();
    issued["expires_in"] = serde_json::json!(5);
    let sts_server = FakeServer::http(move |_| {
        let body = issued.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"from federation");
    let secret_manager = fake(&store).await;

    let dir = tempfile::tempdir().unwrap();
    let mut projector = TokenProjector::new(dir.path(), "token").unwrap();
    let token = |n: u32| {
        unsigned_jwt(
            &serde_json::json!({ "aud": ["https://iam.googleapis.com/"], "jti": format!("gcp-{n}"),
            "sub": "system:serviceaccount:payments:app" }),
        )
    };
    projector.project(&token(1)).unwrap();

    let audience = sts["sts_request"]["form"]["audience"].as_str().unwrap();
    let identity =
        keyrack_k8s::gcp::workload_identity(audience, ProjectedToken::new(projector.path()))
            .with_token_url(format!("{}/v1/token", sts_server.url()));
    let source = GcpBuilder::new()
        .with_endpoint(secret_manager.url())
        .with_workload_identity(identity)
        .build()
        .await
        .unwrap();

    let r = gcp_ref("projects/p1/secrets/db");
    assert_eq!(
        source.fetch(&r).await.unwrap().expose_bytes(),
        b"from federation"
    );
    assert_eq!(form(&sts_server.requests()[0]), expected_form(&token(1)));

    projector.project(&token(2)).unwrap();
    let deadline = SystemClock.now() + Duration::from_secs(30);
    while sts_server.requests().len() < 2 {
        assert!(
            SystemClock.now() < deadline,
            "no second exchange within 30 s"
        );
        source.fetch(&r).await.unwrap();
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(200))
            .await;
    }
    assert_eq!(
        form(sts_server.requests().last().unwrap()),
        expected_form(&token(2))
    );
}
