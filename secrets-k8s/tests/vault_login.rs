//! Vault logins with a projected token that the kubelet-style projector rotates, against the
//! test ground's OpenBao (scripts/testground/vault-up; run through scripts/test).
//!
//! * JWT auth verifies real RS256 signatures (`jwt_validation_pubkeys`): a minute of logins while
//!   the token is replaced every 5 s, no failure, and every login after a swap used the new token.
//! * Kubernetes auth: OpenBao calls a loopback fake TokenReview endpoint over TLS. The fake's
//!   request and answers follow fixtures/k8s/tokenreview.samples.json (`endpoint`,
//!   `response_authenticated_docs` with the user of `observed_service_account_user`, and
//!   `response_unauthenticated_docs`) and the TokenReview schema in
//!   fixtures/k8s/openapi-v3/apis__authentication.k8s.io__v1_openapi.json.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // real servers, real time

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use keyrack_core::testkit::LogCapture;
use keyrack_core::{Clock, ErrorKind, Secrets, SystemClock};
use keyrack_fake_server::{FakeServer, Response};
use keyrack_k8s::ProjectedToken;
use keyrack_k8s::testkit::{TokenProjector, unsigned_jwt};
use keyrack_vault::{Auth, VaultBuilder};
use reqwest::Method;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests through scripts/test (it starts OpenBao)")
    })
}

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand_u32())
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(SystemClock.now()) as u32
}

fn wall_secs() -> u64 {
    SystemClock
        .wall()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

use keyrack_fake_server::test_client;

async fn root_api(
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut req = test_client()
        .request(method, format!("{}/v1/{path}", env("VAULT_ADDR")))
        .header("X-Vault-Token", env("VAULT_ROOT_TOKEN"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// An RS256 JWT signed by the key the test ground's `jwt` mount trusts, unique by `jti`.
fn signed_jwt(jti: &str) -> String {
    let out = std::process::Command::new(env("TESTGROUND_JWT_SIGN"))
        .arg(env("VAULT_JWT_PRIVATE_KEY_PEM"))
        .args(["--sub", &env("VAULT_JWT_SUBJECT"), "--aud", &env("VAULT_JWT_AUDIENCE")])
        .args(["--iss", "https://kubernetes.default.svc.cluster.local", "--ttl", "600"])
        .arg("--claim")
        .arg(format!("jti={jti}"))
        .arg("--claim")
        .arg(r#"kubernetes.io={"namespace":"payments","serviceaccount":{"name":"app","uid":"3f7c"}}"#)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jwt-sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A recording proxy in front of OpenBao: every login request's JWT, when it was sent, and the
/// status OpenBao answered with.
type LoginLog = Arc<Mutex<Vec<(Instant, String, u16)>>>;

async fn recording_proxy(login_path: String) -> (FakeServer, LoginLog) {
    let log: LoginLog = Arc::default();
    let upstream = env("VAULT_ADDR");
    let (seen, client) = (log.clone(), test_client());
    let server = FakeServer::http(move |req| {
        let (seen, client, upstream, login_path) = (
            seen.clone(),
            client.clone(),
            upstream.clone(),
            login_path.clone(),
        );
        async move {
            let url = format!(
                "{upstream}{}{}{}",
                req.path,
                if req.query.is_empty() { "" } else { "?" },
                req.query
            );
            let mut forward =
                client.request(Method::from_bytes(req.method.as_bytes()).unwrap(), url);
            for (name, value) in &req.headers {
                if name != "host" && name != "content-length" {
                    forward = forward.header(name, value);
                }
            }
            // When the login arrived, not when OpenBao answered it.
            let arrived = SystemClock.now();
            let answer = forward.body(req.body.clone()).send().await.unwrap();
            let status = answer.status().as_u16();
            if req.path == login_path {
                let jwt = req.json()["jwt"].as_str().unwrap_or_default().to_owned();
                seen.lock().unwrap().push((arrived, jwt, status));
            }
            let content_type = answer
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let body = answer.bytes().await.unwrap().to_vec();
            let mut response = Response::status(status).body(body);
            if let Some(ct) = content_type {
                response = response.header("content-type", ct);
            }
            response
        }
    })
    .await;
    (server, log)
}

#[tokio::test(flavor = "current_thread")]
async fn jwt_logins_follow_a_token_rotated_every_five_seconds_for_a_minute() {
    let logs = LogCapture::start();
    let role = uniq("projected");
    // Short Vault tokens force a re-login every ~2 s, so each 5 s token is used for several.
    root_api(
        Method::POST,
        &format!("auth/jwt/role/{role}"),
        Some(serde_json::json!({
            "role_type": "jwt", "user_claim": "sub",
            "bound_audiences": [env("VAULT_JWT_AUDIENCE")], "bound_subject": env("VAULT_JWT_SUBJECT"),
            "token_policies": ["app-read"], "token_ttl": "3s", "token_max_ttl": "3s",
        })),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let projected_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut rotation = {
        let projected_at = projected_at.clone();
        TokenProjector::new(dir.path(), "token")
            .unwrap()
            .rotate_every(Duration::from_secs(5), move |n| {
                let jwt = signed_jwt(&format!("tok-{n}"));
                projected_at.lock().unwrap().insert(n, SystemClock.now());
                jwt
            })
            .unwrap()
    };
    let token = ProjectedToken::new(rotation.path());
    let (proxy, logins) = recording_proxy("/v1/auth/jwt/login".to_owned()).await;
    let source = VaultBuilder::new()
        .with_address(proxy.url())
        .with_auth(Auth::jwt(role.clone(), token.clone()))
        .build()
        .unwrap();
    let secrets = Secrets::builder()
        .source("vault", source)
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = secrets
        .handle("vault://secret/app/config#user")
        .await
        .unwrap();

    let end = SystemClock.now() + Duration::from_secs(60);
    let mut reads = 0;
    while SystemClock.now() < end {
        assert_eq!(handle.current().expose_str().unwrap(), "app");
        // A fresh read through the engine (not only the handle's copy) every 200 ms.
        secrets
            .get_secret("vault://secret/app/config#user")
            .await
            .unwrap();
        reads += 1;
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(200))
            .await;
    }
    rotation.stop();
    secrets.shutdown().await;

    let history = rotation.history();
    // Projections at 0, 5, …, 55 s on a fixed schedule; 11 leaves room for a late last one.
    assert!(
        history.len() >= 11,
        "only {} tokens projected",
        history.len()
    );
    let logins = logins.lock().unwrap().clone();
    assert!(
        logins.len() >= 20,
        "only {} logins in a minute",
        logins.len()
    );
    let failed: Vec<u16> = logins
        .iter()
        .map(|(_, _, s)| *s)
        .filter(|s| *s != 200)
        .collect();
    assert!(failed.is_empty(), "failed logins: {failed:?}");
    // Which projection each login carried.
    let seq_of = |jwt: &str| history.iter().position(|t| t == jwt).map(|i| i as u64 + 1);
    let at = projected_at.lock().unwrap().clone();
    for (when, jwt, _) in &logins {
        let sent = seq_of(jwt).expect("a login sent a token that was never projected");
        // The newest token projected at least 1 s before the login (the directory watch and the
        // re-login need a moment) must be the one sent, or a newer one.
        let newest = at
            .iter()
            .filter(|(_, t)| **t + Duration::from_secs(1) <= *when)
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(1);
        assert!(
            sent >= newest,
            "a login sent token {sent} although token {newest} had been projected"
        );
    }
    let used: std::collections::BTreeSet<u64> =
        logins.iter().filter_map(|(_, j, _)| seq_of(j)).collect();
    let unused: Vec<u64> = (1..history.len() as u64)
        .filter(|n| !used.contains(n))
        .collect();
    assert!(
        unused.is_empty(),
        "tokens never used for a login: {unused:?}"
    );

    let text = logs.text();
    assert!(
        !text.contains("refused the identity token"),
        "a login failed:\n{text}"
    );
    for t in &history {
        assert!(!text.contains(t.as_str()), "a token reached the logs");
    }
    eprintln!(
        "{reads} reads, {} logins, {} tokens, 0 failed",
        logins.len(),
        history.len()
    );
}

/// A fake kube-apiserver that knows which tokens it issued and reviews them like the real one:
/// the user is `system:serviceaccount:<ns>:<name>` with the service account's uid.
struct FakeTokenReview {
    server: FakeServer,
    issued: Arc<Mutex<Vec<String>>>,
    reviewer: String,
}

impl FakeTokenReview {
    async fn start() -> Self {
        let issued: Arc<Mutex<Vec<String>>> = Arc::default();
        let reviewer = unsigned_jwt(
            &serde_json::json!({ "sub": "system:serviceaccount:vault:token-reviewer" }),
        );
        let (known, expected_bearer) = (issued.clone(), format!("Bearer {reviewer}"));
        let server = FakeServer::https(move |req| {
            let known = known.lock().unwrap().clone();
            let bearer_ok = req.header("authorization") == Some(expected_bearer.as_str());
            async move {
                if req.method != "POST" || req.path != "/apis/authentication.k8s.io/v1/tokenreviews" {
                    return Response::status(404);
                }
                if !bearer_ok {
                    // fixtures/k8s/secret_api.samples.json: the assembled 401 Status body
                    return Response::json(401, &serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "Unauthorized", "reason": "Unauthorized", "code": 401 }));
                }
                let review = req.json();
                let token = review["spec"]["token"].as_str().unwrap_or_default().to_owned();
                let audiences = review["spec"]["audiences"].clone();
                let status = if known.contains(&token) {
                    let claims: serde_json::Value = jsonish_claims(&token);
                    let k8s = &claims["kubernetes.io"];
                    let (ns, sa) = (k8s["namespace"].as_str().unwrap(), &k8s["serviceaccount"]);
                    serde_json::json!({
                        "authenticated": true,
                        "user": {
                            "username": format!("system:serviceaccount:{ns}:{}", sa["name"].as_str().unwrap()),
                            "uid": sa["uid"],
                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        },
                        "audiences": audiences,
                    })
                } else {
                    serde_json::json!({ "authenticated": false, "error": "Credentials are expired" })
                };
                Response::json(201, &serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "metadata": { "creationTimestamp": null }, "spec": review["spec"], "status": status,
                }))
            }
        })
        .await;
        FakeTokenReview {
            server,
            issued,
            reviewer,
        }
    }

    fn issue(&self, jti: &str) -> String {
        let now = wall_secs();
        let token = unsigned_jwt(&serde_json::json!({
            "aud": ["vault"], "iss": "https://kubernetes.default.svc.cluster.local",
            "iat": now, "nbf": now, "exp": now + 600, "jti": jti,
            "sub": "system:serviceaccount:payments:app",
            "kubernetes.io": { "namespace": "payments", "pod": { "name": "app-7d9f", "uid": "5e0b" },
                               "serviceaccount": { "name": "app", "uid": "14ee3fa4" } }
        }));
        self.issued.lock().unwrap().push(token.clone());
        token
    }

    fn reviewed_tokens(&self) -> Vec<String> {
        self.server
            .requests_to("/apis/authentication.k8s.io/v1/tokenreviews")
            .iter()
            .map(|r| {
                r.json()["spec"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

fn jsonish_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_through_a_token_review_over_tls() {
    let api = FakeTokenReview::start().await;
    let mount = uniq("kubernetes");
    root_api(
        Method::POST,
        &format!("sys/auth/{mount}"),
        Some(serde_json::json!({ "type": "kubernetes" })),
    )
    .await;
    root_api(
        Method::POST,
        &format!("auth/{mount}/config"),
        Some(serde_json::json!({
            "kubernetes_host": api.server.url(),
            "kubernetes_ca_cert": api.server.ca_pem().unwrap(),
            "token_reviewer_jwt": api.reviewer,
            "disable_local_ca_jwt": true,
        })),
    )
    .await;
    root_api(
        Method::POST,
        &format!("auth/{mount}/role/app"),
        Some(serde_json::json!({
            "bound_service_account_names": ["app"], "bound_service_account_namespaces": ["payments"],
            "audience": "vault", "token_policies": ["app-read"], "token_ttl": "3s", "token_max_ttl": "3s",
        })),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut projector = TokenProjector::new(dir.path(), "token").unwrap();
    let first = api.issue("first");
    projector.project(&first).unwrap();
    let token = ProjectedToken::new(projector.path());
    let source = VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_auth(Auth::kubernetes("app", token.clone()).at_mount(mount.clone()))
        .build()
        .unwrap();
    let secrets = Secrets::builder()
        .source("vault", source)
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let value = secrets
        .get_secret("vault://secret/app/config#user")
        .await
        .unwrap();
    assert_eq!(value.expose_str().unwrap(), "app");

    let reviews = api
        .server
        .requests_to("/apis/authentication.k8s.io/v1/tokenreviews");
    assert!(
        !reviews.is_empty(),
        "OpenBao did not call the TokenReview endpoint"
    );
    let spec = &reviews[0].json()["spec"];
    assert_eq!(
        spec["token"],
        first.as_str(),
        "the projected token is the one reviewed"
    );
    assert_eq!(
        spec["audiences"],
        serde_json::json!(["vault"]),
        "the role's audience is asked for"
    );
    assert_eq!(
        reviews[0].header("authorization"),
        Some(format!("Bearer {}", api.reviewer).as_str())
    );

    // The kubelet rotates the token and the API server stops accepting the old one: the next
    // re-login (Vault tokens live 3 s) must send the new one.
    let second = api.issue("second");
    api.issued.lock().unwrap().retain(|t| t != &first);
    projector.project(&second).unwrap();
    let deadline = SystemClock.now() + Duration::from_secs(15);
    while !api.reviewed_tokens().contains(&second) {
        assert!(
            SystemClock.now() < deadline,
            "no login with the rotated token within 15 s"
        );
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(200))
            .await;
    }
    let value = secrets
        .get_secret("vault://secret/app/config#user")
        .await
        .unwrap();
    assert_eq!(value.expose_str().unwrap(), "app");
    secrets.shutdown().await;

    // A token the API server does not know is refused, typed, without quoting it.
    let mut claims = jsonish_claims(&second);
    claims["jti"] = "never-issued".into();
    let stranger = unsigned_jwt(&claims);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("token"), &stranger).unwrap();
    let refused = VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_auth(
            Auth::kubernetes("app", ProjectedToken::new(other.path().join("token")))
                .at_mount(mount.clone()),
        )
        .build()
        .unwrap();
    let secrets = Secrets::builder().source("vault", refused).build().unwrap();
    let e = secrets
        .get_secret("vault://secret/app/config#user")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
    assert!(!format!("{e} {e:?}").contains(&stranger));
}
