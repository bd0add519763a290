//! Workload identity federation: the subject token comes from an `IdentityToken` and is
//! exchanged at a loopback fake of Google's STS, shaped after
//! `fixtures/sts_token_exchange.assembled.json`; the access token it issues is what Secret
//! Manager (a fake shaped after `access_secret_version.documented.json`) receives.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use keyrack_core::{ErrorKind, IdentityToken, Result, SecretSource, SecretValue, async_trait};
use keyrack_fake_server::{FakeServer, Request, Response};
use keyrack_gcp::{GcpBuilder, GcpSource, WorkloadIdentity};
use serde_json::{Value, json};

/// A projected token that the test rotates, as the kubelet would. Like a cached token file,
/// it keeps serving its copy until invalidated, when it "re-reads" the file (`on_disk`).
#[derive(Debug, Default)]
struct RotatingToken {
    current: Mutex<String>,
    on_disk: Mutex<Option<String>>,
    invalidated: AtomicUsize,
}

impl RotatingToken {
    fn set(&self, token: &str) {
        *self.current.lock().unwrap() = token.to_owned();
    }

    /// The kubelet wrote a new token that the cached copy does not know yet.
    fn write_behind(&self, token: &str) {
        *self.on_disk.lock().unwrap() = Some(token.to_owned());
    }
}

#[async_trait]
impl IdentityToken for RotatingToken {
    async fn token(&self) -> Result<SecretValue> {
        Ok(SecretValue::from_string(
            self.current.lock().unwrap().clone(),
        ))
    }

    fn invalidate(&self) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
        if let Some(fresh) = self.on_disk.lock().unwrap().take() {
            self.set(&fresh);
        }
    }
}

fn form(req: &Request) -> BTreeMap<String, String> {
    req.form().into_iter().collect()
}

fn expected_form(sts: &Value, subject_token: &str) -> BTreeMap<String, String> {
    let mut want: BTreeMap<String, String> = sts["sts_request"]["form"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    want.insert("subject_token".into(), subject_token.into());
    want
}

async fn build(sts_url: &str, sm_url: &str, token: Arc<RotatingToken>) -> GcpSource {
    let sts = fixture(STS);
    let audience = sts["sts_request"]["form"]["audience"].as_str().unwrap();
    GcpBuilder::new()
        .with_endpoint(sm_url)
        .with_workload_identity(
            WorkloadIdentity::new(audience, token).with_token_url(format!("{sts_url}/v1/token")),
        )
        .build()
        .await
        .unwrap()
}

/// Waits (up to 30 s) until `server` has seen `n` requests.
async fn until_requests(server: &FakeServer, n: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.requests().len() < n {
            tick.tick().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("STS saw {} requests, not {n}", server.requests().len()));
}

// STS: sts_request (the form, field for field) and sts_success_response_google_auth_tests,
// with expires_in shortened from 3600 to 5 s: the auth library renews a token 10 s after
// issue when it has less than 4 minutes left, so the second exchange happens within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_identity_token_is_exchanged_at_sts_each_time() {
    let sts = fixture(STS);
    let first = sts["sts_request"]["form"]["subject_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = "HEADER.SIMULATED_JWT_PAYLOAD_ROTATED.SIGNATURE";
    let mut issued = sts["sts_success_response_google_auth_tests"].clone();
    issued["expires_in"] = json!(5);
    let access_token = issued["access_token"].as_str().unwrap().to_owned();
    let sts_server = FakeServer::http(move |_| {
        let body = issued.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"from federation");
    let sm = secret_manager(&store, access_token).await;
    let token = Arc::new(RotatingToken::default());
    token.set(&first);
    let src = build(&sts_server.url(), &sm.url(), token.clone()).await;

    let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"from federation");
    let exchanges = sts_server.requests();
    assert_eq!(exchanges.len(), 1);
    let req = &exchanges[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/token");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(form(req), expected_form(&sts, &first));

    // The kubelet rotates the token; the next exchange sends the new one.
    token.set(second);
    until_requests(&sts_server, 2).await;
    assert_eq!(form(&sts_server.requests()[1]), expected_form(&sts, second));
    let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"from federation");
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 0);
}

// STS: sts_error_response_google_auth_tests (HTTP 400) for the first exchange, then
// sts_success_response_google_auth_tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_invalidated_and_the_credentials_recover() {
    let sts = fixture(STS);
    let refused = sts["sts_error_response_google_auth_tests"].clone();
    let issued = sts["sts_success_response_google_auth_tests"].clone();
    let access_token = issued["access_token"].as_str().unwrap().to_owned();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let sts_server = FakeServer::http(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let answer = if n == 0 {
            Response::json(400, &refused)
        } else {
            Response::json(200, &issued)
        };
        async move { answer }
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"after recovery");
    let sm = secret_manager(&store, access_token).await;
    let token = Arc::new(RotatingToken::default());
    token.set("HEADER.EXPIRED_PAYLOAD.SIGNATURE");
    token.write_behind("HEADER.FRESH_PAYLOAD.SIGNATURE");
    let src = build(&sts_server.url(), &sm.url(), token.clone()).await;

    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/db"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
    assert!(!e.is_retryable());
    assert!(!format!("{e} {e:?}").contains("EXPIRED_PAYLOAD"), "{e:?}");
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 1);
    assert!(sm.requests().is_empty(), "no request without a token");

    // Invalidated, the token was read again; the credentials were built again, and the
    // engine's next attempt finds a fresh exchange made with the new token.
    let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"after recovery");
    let exchanges = sts_server.requests();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(
        form(&exchanges[1]).get("subject_token").map(String::as_str),
        Some("HEADER.FRESH_PAYLOAD.SIGNATURE")
    );
}

// The credentials file: external_account_file_sourced_k8s_oidc_DERIVED (AIP-4117 schema, a
// projected-token path) with token_url and credential_source.file pointed at the test's fake
// STS and token file; STS answers sts_success_response_google_auth_tests, and the form must be
// sts_request.form exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_account_file_is_exchanged_with_its_token_file() {
    let sts = fixture(STS);
    let issued = sts["sts_success_response_google_auth_tests"].clone();
    let access_token = issued["access_token"].as_str().unwrap().to_owned();
    let sts_server = FakeServer::http(move |_| {
        let body = issued.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"from a file-sourced account");
    let sm = secret_manager(&store, access_token).await;

    let dir = std::env::temp_dir().join(format!("secrets-gcp-sts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let subject_token = sts["sts_request"]["form"]["subject_token"]
        .as_str()
        .unwrap();
    std::fs::write(&token_file, subject_token).unwrap();
    let mut account = sts["external_account_file_sourced_k8s_oidc_DERIVED"].clone();
    account.as_object_mut().unwrap().remove("_note");
    account["token_url"] = json!(format!("{}/v1/token", sts_server.url()));
    account["credential_source"]["file"] = json!(token_file.to_str().unwrap());
    let credentials_file = dir.join("external_account.json");
    std::fs::write(&credentials_file, account.to_string()).unwrap();

    let src = GcpBuilder::new()
        .with_endpoint(sm.url())
        .with_credentials_file(&credentials_file)
        .build()
        .await
        .unwrap();
    let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"from a file-sourced account");
    let exchanges = sts_server.requests();
    assert_eq!(exchanges.len(), 1);
    assert_eq!(form(&exchanges[0]), expected_form(&sts, subject_token));
    let _ = std::fs::remove_dir_all(&dir);
}

// The credentials file: external_account_file_sourced_aip4117_verbatim's
// service_account_impersonation_url (pointed at a fake IAM Credentials) on the
// external_account_file_sourced_k8s_oidc_DERIVED account. STS answers
// sts_success_response_google_auth_tests; its form is sts_request.form with the IAM scope, as
// sts_request.notes says for impersonation. IAM Credentials answers a
// GenerateAccessTokenResponse of iamcredentials.v1.json (accessToken, expireTime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_account_can_impersonate_a_service_account() {
    let sts = fixture(STS);
    let issued = sts["sts_success_response_google_auth_tests"].clone();
    let federated = issued["access_token"].as_str().unwrap().to_owned();
    let sts_server = FakeServer::http(move |_| {
        let body = issued.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let schema = &fixture(IAM_CREDENTIALS)["schemas"]["GenerateAccessTokenResponse"]["properties"];
    let mut fields: Vec<&str> = schema
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["accessToken", "expireTime"]);
    let impersonated = "IMPERSONATED_ACCESS_TOKEN";
    let iam = FakeServer::http(move |_| async move {
        Response::json(
            200,
            &json!({"accessToken": impersonated, "expireTime": "2099-01-01T00:00:00Z"}),
        )
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"as the service account");
    let sm = secret_manager(&store, impersonated.to_owned()).await;

    let dir = std::env::temp_dir().join(format!("secrets-gcp-iam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let subject_token = sts["sts_request"]["form"]["subject_token"]
        .as_str()
        .unwrap();
    std::fs::write(&token_file, subject_token).unwrap();
    let email = "app@p1.iam.gserviceaccount.com";
    let mut account = sts["external_account_file_sourced_k8s_oidc_DERIVED"].clone();
    account.as_object_mut().unwrap().remove("_note");
    account["token_url"] = json!(format!("{}/v1/token", sts_server.url()));
    account["credential_source"]["file"] = json!(token_file.to_str().unwrap());
    let template =
        sts["external_account_file_sourced_aip4117_verbatim"]["service_account_impersonation_url"]
            .as_str()
            .unwrap();
    account["service_account_impersonation_url"] = json!(
        template
            .replace("https://iamcredentials.googleapis.com", &iam.url())
            .replace("$EMAIL", email)
    );
    let credentials_file = dir.join("external_account.json");
    std::fs::write(&credentials_file, account.to_string()).unwrap();

    let src = GcpBuilder::new()
        .with_endpoint(sm.url())
        .with_credentials_file(&credentials_file)
        .build()
        .await
        .unwrap();
    let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"as the service account");

    let mut want = expected_form(&sts, subject_token);
    want.insert("scope".into(), "https://www.googleapis.com/auth/iam".into());
    assert_eq!(form(&sts_server.requests()[0]), want);
    let call = &iam.requests()[0];
    assert_eq!(call.method, "POST");
    assert_eq!(
        call.path,
        format!("/v1/projects/-/serviceAccounts/{email}:generateAccessToken")
    );
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {federated}").as_str())
    );
    assert_eq!(
        call.json()["scope"],
        json!(["https://www.googleapis.com/auth/cloud-platform"])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// STS never answers (no fixture: a token endpoint that accepted the connection and hangs);
// Secret Manager would answer access_secret_version.documented.json (response.body) but is
// never reached. The auth library's exchange has no timeout of its own and the SDK's attempt
// timeout starts only once it has a token: with_timeout must bound the whole read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_exchange_that_never_answers_is_bounded_by_the_timeout() {
    let sts_server = FakeServer::http(|_| std::future::pending::<Response>()).await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"v");
    let sm = fake(&store).await;
    let sts = fixture(STS);
    let src = GcpBuilder::new()
        .with_endpoint(sm.url())
        .with_workload_identity(
            WorkloadIdentity::new(
                sts["sts_request"]["form"]["audience"].as_str().unwrap(),
                Arc::new(keyrack_core::StaticToken::new("HEADER.PAYLOAD.SIG")),
            )
            .with_token_url(format!("{}/v1/token", sts_server.url())),
        )
        .with_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(2),
        src.fetch(&gcp_ref("projects/p1/secrets/db")),
    )
    .await
    .expect("fetch still pending 2 s into a 300 ms timeout: the token exchange is not bounded")
    .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("access token"), "{e}");
    assert!(sm.requests().is_empty(), "no request without a token");
    // The hung exchange is abandoned: the next read builds the credentials again and starts a
    // new one (the old cache would have waited on the first exchange forever). Not before the
    // client reads again: that would be a retry on the source's own.
    assert_eq!(sts_server.requests().len(), 1);
    let e = tokio::time::timeout(
        Duration::from_secs(2),
        src.fetch(&gcp_ref("projects/p1/secrets/db")),
    )
    .await
    .expect("the second read is bounded too")
    .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    until_requests(&sts_server, 2).await;
}

// STS: sts_success_response_google_auth_tests, with access_token numbered by exchange
// (tok-1, tok-2, ...). Secret Manager: access_secret_version.documented.json (response.body)
// to an accepted token, else the AIP-193 envelope of aip_0193_examples.minimal_404 with
// code 401 UNAUTHENTICATED (as in `secret_manager`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_secret_manager_refuses_is_replaced_by_a_new_exchange() {
    let sts = fixture(STS);
    let issued = sts["sts_success_response_google_auth_tests"].clone();
    let exchanges = Arc::new(AtomicUsize::new(0));
    let counter = exchanges.clone();
    let sts_server = FakeServer::http(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let mut body = issued.clone();
        body["access_token"] = json!(format!("tok-{n}"));
        async move { Response::json(200, &body) }
    })
    .await;
    let accepted = Arc::new(Mutex::new("tok-1".to_owned()));
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"v");
    let (acc, st) = (accepted.clone(), store.clone());
    let sm = FakeServer::http(move |req| {
        let ok = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| *acc.lock().unwrap() == t);
        let answer = if ok {
            st.answer(&req)
        } else {
            let mut body = fixture(STATUS_ERRORS)["aip_0193_examples"]["minimal_404"].clone();
            body["error"] = json!({"code": 401, "status": "UNAUTHENTICATED"});
            Response::json(401, &body)
        };
        async move { answer }
    })
    .await;
    let token = Arc::new(RotatingToken::default());
    token.set("HEADER.PAYLOAD.SIG");
    let src = build(&sts_server.url(), &sm.url(), token.clone()).await;
    src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);

    // Secret Manager stops accepting tok-1 long before it expires (revoked); a new exchange
    // gives tok-2, which it accepts.
    *accepted.lock().unwrap() = "tok-2".to_owned();
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/db"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 1);
    // The credentials were built again: the next read has a new token.
    let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"v");
    assert_eq!(exchanges.load(Ordering::SeqCst), 2);
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 1);
}

/// Issue #16: an STS refusal keeps the endpoint's `error` and `error_description` (they describe
/// the token's claims, never the token), so an expired token and a token for the wrong audience
/// give different errors; the subject token is not quoted.
/// Answers: two real STS refusals, as quoted in public files: a wrong audience
/// (`{"error":"invalid_grant","error_description":"The audience in ID Token [...] does not match
/// the expected audience."}`, find_string id 56232663698) and a stale token
/// (`{"error":"invalid_grant","error_description":"ID Token issued at 1713260741 is stale to
/// sign-in."}`, find_string id 10656543091), in the shape of
/// `sts_error_response_google_auth_tests`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_refusal_keeps_its_error_description() {
    let refusals = [
        json!({
            "error": "invalid_grant",
            "error_description": "The audience in ID Token [//iam.googleapis.com/projects/573522191771/locations/global/workloadIdentityPools/tfc-pool/providers/tfc-oidc] does not match the expected audience."
        }),
        json!({
            "error": "invalid_grant",
            "error_description": "ID Token issued at 1713260741 is stale to sign-in."
        }),
    ];
    let mut messages = Vec::new();
    for refusal in refusals {
        let description = refusal["error_description"].as_str().unwrap().to_owned();
        let sts_server = FakeServer::http(move |_| {
            let body = refusal.clone();
            async move { Response::json(400, &body) }
        })
        .await;
        let sm = secret_manager(&Store::default(), "never-issued".into()).await;
        let token = Arc::new(RotatingToken::default());
        token.set("HEADER.CANARY_PAYLOAD.SIGNATURE");
        let src = build(&sts_server.url(), &sm.url(), token).await;
        let e = src
            .fetch(&gcp_ref("projects/p1/secrets/db"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
        let text = e.to_string();
        assert!(text.contains("invalid_grant"), "{text}");
        assert!(text.contains(&description), "{text}");
        assert!(!format!("{e} {e:?}").contains("CANARY_PAYLOAD"), "{e:?}");
        messages.push(e.message().to_owned());
    }
    assert_ne!(messages[0], messages[1]);
}

/// `shutdown` stops what the source runs: the auth library's token refresh task (it exchanges the
/// identity token again ahead of each access token's expiry) ends with the credentials, and
/// reads afterwards fail with `Shutdown` instead of starting a new exchange.
/// Answers: STS `sts_success_response_google_auth_tests` with `expires_in` shortened to 5 s (the
/// library then renews 10 s after issue, as in the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_token_refresh() {
    let sts = fixture(STS);
    let mut issued = sts["sts_success_response_google_auth_tests"].clone();
    issued["expires_in"] = json!(5);
    let access_token = issued["access_token"].as_str().unwrap().to_owned();
    let sts_server = FakeServer::http(move |_| {
        let body = issued.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"v");
    let sm = secret_manager(&store, access_token).await;
    let token = Arc::new(RotatingToken::default());
    token.set("HEADER.PAYLOAD.SIGNATURE");
    let src = build(&sts_server.url(), &sm.url(), token).await;
    src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
    assert_eq!(sts_server.requests().len(), 1);

    src.shutdown().await;
    // Past the refresh the library would have made 10 s after issue.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..26 {
        tick.tick().await;
    }
    assert_eq!(
        sts_server.requests().len(),
        1,
        "the token was exchanged again after shutdown"
    );
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/db"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Shutdown, "{e}");
}

/// Issue #16: a refusal that no retry can fix (here STS refusing the subject token) must be
/// retried when the client asks again (its backoff, never under its floor of a second), not by
/// the source on its own: the credentials rebuilt after the refusal exchanged again at once
/// (the auth library's refresh task starts with them), a retry some 50 ms after the failure.
/// Answers: STS `sts_error_response_google_auth_tests` (HTTP 400), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_exchange_is_retried_only_when_the_client_reads_again() {
    let refused = fixture(STS)["sts_error_response_google_auth_tests"].clone();
    let sts_server = FakeServer::http(move |_| {
        let body = refused.clone();
        async move { Response::json(400, &body) }
    })
    .await;
    let sm = secret_manager(&Store::default(), "never-issued".into()).await;
    let token = Arc::new(RotatingToken::default());
    token.set("HEADER.PAYLOAD.SIGNATURE");
    let src = build(&sts_server.url(), &sm.url(), token.clone()).await;
    for attempt in 1..=3 {
        let e = src
            .fetch(&gcp_ref("projects/p1/secrets/db"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
        // Time for an exchange the source might make on its own.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..6 {
            tick.tick().await;
        }
        assert_eq!(
            sts_server.requests().len(),
            attempt,
            "exchanges after {attempt} read(s)"
        );
    }
    // Each refusal made the token source read the token again for the next exchange.
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 3);
}
