//! Web identity (IRSA): credentials from STS AssumeRoleWithWebIdentity with a token read from a
//! file, against moto's STS. It reads moto's request recorder, which is global to the server:
//! the tests that reset it run one at a time (`.config/nextest.toml`, test group
//! `moto-recorder`), and the requests counted are this test's own (its token, its secret), as
//! other tests' requests reach the same moto meanwhile.

mod common;

use common::*;
use keyrack_core::SecretSource;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_assume_role_with_web_identity() {
    let admin = source().await;
    let name = uniq("web-identity");
    put(&admin, &name, b"irsa value").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let token = format!("eyJhbGciOiJSUzI1NiJ9.web-identity-{:016x}.sig", rand_u64());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

    // No static keys: only the web identity provider can sign.
    let src = keyrack_aws::AwsBuilder::new()
        .with_region(env("AWS_REGION"))
        .with_endpoint_url(env("AWS_ENDPOINT_URL"))
        .with_web_identity(
            "arn:aws:iam::123456789012:role/payments-app",
            &token_file,
            Some("payments-app".to_owned()),
        )
        .build()
        .await
        .unwrap();

    recorder("reset-recording").await;
    recorder("start-recording").await;
    let fetched = src.fetch(&aws_ref(&name)).await;
    recorder("stop-recording").await;
    let recording = recorder("download-recording").await;
    recorder("reset-recording").await;

    assert_eq!(fetched.unwrap().expose_bytes(), b"irsa value");
    // One JSON object per request; bodies are base64 when `body_encoded`.
    let requests: Vec<(serde_json::Value, String)> = recording
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let body = v["body"].as_str().unwrap_or_default().to_owned();
            let body = if v["body_encoded"].as_bool() == Some(true) {
                String::from_utf8(aws_smithy_types::base64::decode(&body).unwrap()).unwrap()
            } else {
                body
            };
            (v, body)
        })
        .collect();
    let sts: Vec<&String> = requests
        .iter()
        .map(|(_, body)| body)
        .filter(|body| body.contains("Action=AssumeRoleWithWebIdentity"))
        .filter(|body| body.contains(&format!("WebIdentityToken={token}")))
        .collect();
    assert_eq!(
        sts.len(),
        1,
        "{} requests recorded, AssumeRoleWithWebIdentity not once",
        requests.len()
    );
    assert!(
        sts[0].contains(&format!("WebIdentityToken={token}")),
        "the token from the file was not the one sent: {}",
        sts[0]
    );
    assert!(sts[0].contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fpayments-app"));
    // The Secrets Manager request was signed with the assumed role's session keys.
    let sm: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|(v, body)| {
            v["headers"]["X-Amz-Target"] == "secretsmanager.GetSecretValue" && body.contains(&name)
        })
        .map(|(v, _)| v)
        .collect();
    assert_eq!(sm.len(), 1, "GetSecretValue not recorded once");
    let auth = sm[0]["headers"]["Authorization"].as_str().unwrap();
    assert!(
        !auth.contains(&format!("Credential={}/", env("AWS_ACCESS_KEY_ID"))),
        "signed with the static test keys"
    );
    assert!(
        sm[0]["headers"]["X-Amz-Security-Token"].is_string(),
        "no session token sent"
    );
}
