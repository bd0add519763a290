//! AWS web identity (IRSA) with a projected token that the kubelet-style projector replaces,
//! against moto's STS (scripts/testground/moto-up; run through scripts/test). moto accepts any
//! token, and its request recorder (`/moto-api/recorder/…`) shows which token each
//! `AssumeRoleWithWebIdentity` carried. One test in this binary: the recorder is global.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // real servers, real time

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use keyrack_core::{Clock, SecretRef, SecretSource, SystemClock};
use keyrack_k8s::ProjectedToken;
use keyrack_k8s::testkit::{TokenProjector, unsigned_jwt};

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run through scripts/test (it starts moto)"))
}

use keyrack_fake_server::test_client;

/// One moto API call, JSON protocol. moto does not check signatures, so the header only has to
/// have the SigV4 shape.
async fn moto(target: &str, body: serde_json::Value) -> serde_json::Value {
    let response = test_client()
        .post(env("AWS_ENDPOINT_URL"))
        .header("x-amz-target", format!("secretsmanager.{target}"))
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20261126/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{target}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn recorder(action: &str) -> String {
    let url = format!("{}/moto-api/recorder/{action}", env("AWS_ENDPOINT_URL"));
    let client = test_client();
    let response = if action == "download-recording" {
        client.get(url).send().await.unwrap()
    } else {
        client.post(url).send().await.unwrap()
    };
    response.text().await.unwrap()
}

/// The `WebIdentityToken` of every AssumeRoleWithWebIdentity in moto's recording, in order.
fn tokens_sent(recording: &str) -> Vec<String> {
    recording
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let body = v["body"].as_str().unwrap_or_default();
            let body = if v["body_encoded"].as_bool() == Some(true) {
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .unwrap(),
                )
                .unwrap()
            } else {
                body.to_owned()
            };
            let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            form.iter()
                .any(|(k, v)| k == "Action" && v == "AssumeRoleWithWebIdentity")
                .then(|| {
                    form.iter()
                        .find(|(k, _)| k == "WebIdentityToken")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
        })
        .collect()
}

fn token(n: u32) -> String {
    let now = SystemClock
        .wall()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    unsigned_jwt(&serde_json::json!({
        "aud": ["sts.amazonaws.com"], "iss": "https://oidc.eks.us-east-1.amazonaws.com/id/TEST",
        "iat": now, "nbf": now, "exp": now + 86400, "jti": format!("irsa-{n}"),
        "sub": "system:serviceaccount:payments:app",
        "kubernetes.io": { "namespace": "payments", "serviceaccount": { "name": "app", "uid": "c3dc" } }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freshest_projected_token_is_sent_after_a_rotation() {
    // Unique per run, also against a long-lived moto.
    let name = format!("irsa-{:016x}", {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(SystemClock.wall())
    });
    moto(
        "CreateSecret",
        serde_json::json!({ "Name": name, "SecretString": "irsa value" }),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut projector = TokenProjector::new(dir.path(), "token").unwrap();
    let first = token(1);
    projector.project(&first).unwrap();
    let projected = ProjectedToken::new(projector.path());

    // No static keys reach the builder: only web identity can sign. moto's session credentials
    // last 3600 s, and the SDK jitters the refresh buffer down by up to half: a 7200 s buffer
    // makes every credential load go back to STS, as an expiring session would.
    let builder = keyrack_aws::AwsBuilder::new()
        .with_region(env("AWS_REGION"))
        .with_endpoint_url(env("AWS_ENDPOINT_URL"))
        .with_credentials_refresh_before_expiry(Duration::from_secs(7200));
    let source = keyrack_k8s::aws::web_identity(
        builder,
        "arn:aws:iam::123456789012:role/payments-app",
        &projected,
        Some("payments-app".to_owned()),
    )
    .build()
    .await
    .unwrap();
    let r: SecretRef = format!("aws-sm://{name}").parse().unwrap();

    recorder("reset-recording").await;
    recorder("start-recording").await;
    assert_eq!(
        source.fetch(&r).await.unwrap().expose_bytes(),
        b"irsa value"
    );
    let second = token(2);
    projector.project(&second).unwrap();
    SystemClock
        .sleep_until(SystemClock.now() + Duration::from_secs(4))
        .await;
    assert_eq!(
        source.fetch(&r).await.unwrap().expose_bytes(),
        b"irsa value"
    );
    recorder("stop-recording").await;
    let recording = recorder("download-recording").await;
    recorder("reset-recording").await;

    let sent = tokens_sent(&recording);
    assert!(
        sent.len() >= 2,
        "{} AssumeRoleWithWebIdentity calls recorded",
        sent.len()
    );
    assert_eq!(
        sent[0], first,
        "the first credentials came from the first token"
    );
    assert_eq!(
        sent.last().unwrap(),
        &second,
        "the refresh after the rotation sent the new token"
    );
}
