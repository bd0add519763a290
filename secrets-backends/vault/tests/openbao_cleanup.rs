//! Cleanup at shutdown against real OpenBao (see `common`): the source revokes the token it logged
//! in for, and with it the leases issued under it, so pods that restart leave nothing behind.
//!
//! `pod_restarts_leave_no_token_and_no_lease` simulates `FLEET_RESTARTS` pod restarts (default
//! 20; the README's figure is for 100) twice in the same run: with the default (revocation) and
//! with revocation turned off (the behaviour before it existed), and counts what each left
//! behind through the root token: tokens by their accessors (`auth/token/accessors`, then
//! `auth/token/lookup-accessor`, matched on the AppRole role), leases by
//! `sys/leases/lookup/database/creds/<role>/`.
#![allow(clippy::unwrap_used)]
// Real servers run in real time: these tests read the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyrack_core::{ErrorKind, SecretRef, SecretSource};
use keyrack_fake_server::proxy::{Fault, FaultProxy};
use keyrack_vault::{Auth, VaultBuilder};
use serde_json::Value;

/// A root-token request that may fail (a token revoked meanwhile, an empty list): the body, or
/// `None` for a non-success status.
async fn root_try(method: reqwest::Method, path: &str, body: Option<Value>) -> Option<Value> {
    let mut req = test_client()
        .request(method, format!("{}/v1/{path}", env("VAULT_ADDR")))
        .header("X-Vault-Token", env("VAULT_ROOT_TOKEN"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.unwrap();
    Some(serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn list(path: &str) -> Vec<String> {
    match root_try(reqwest::Method::GET, &format!("{path}?list=true"), None).await {
        Some(v) => v["data"]["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .map(|k| k.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(), // 404: nothing under the prefix
    }
}

/// Live tokens issued by logins to AppRole role `role`.
async fn tokens_of(role: &str) -> usize {
    let mut n = 0;
    for accessor in list("auth/token/accessors").await {
        let info = root_try(
            reqwest::Method::POST,
            "auth/token/lookup-accessor",
            Some(serde_json::json!({ "accessor": accessor })),
        )
        .await;
        if let Some(info) = info
            && info["data"]["meta"]["role_name"] == role
            && info["data"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("auth/approle/login"))
        {
            n += 1;
        }
    }
    n
}

/// Live leases of database role `role`.
async fn leases_of(role: &str) -> usize {
    list(&format!("sys/leases/lookup/database/creds/{role}/"))
        .await
        .len()
}

/// Revoke whatever a test left behind under `role` (its leases, then its tokens' leases die
/// with the prefix revocation; the tokens themselves end at their TTL).
async fn clean_up(role: &str) {
    root_try(
        reqwest::Method::PUT,
        &format!("sys/leases/revoke-prefix/database/creds/{role}"),
        None,
    )
    .await;
}

fn restarts() -> usize {
    std::env::var("FLEET_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// One simulated pod lifetime: build a client that logs in with AppRole, read a dynamic database
/// secret, shut down.
async fn pod(role: &str, role_id: &str, secret_id: &str, revoke: Option<bool>) {
    let mut builder = VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_auth(Auth::approle(role_id, secret_id));
    if let Some(revoke) = revoke {
        builder = builder.revoke_token_on_shutdown(revoke);
    }
    let secrets = client(builder.build().unwrap());
    let creds = secrets
        .get_secret(&format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    assert!(
        creds.lease().is_some(),
        "a dynamic secret comes with a lease"
    );
    secrets.shutdown().await;
}

/// Poll `count` until it reaches `want` or `within` has passed (Vault revokes a token's leases
/// in the background after the token itself); the last count and the time it took.
async fn settle<F, Fut>(count: F, want: usize, within: Duration) -> (usize, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = Instant::now();
    loop {
        let n = count().await;
        if n == want || start.elapsed() > within {
            return (n, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_restarts_leave_no_token_and_no_lease() {
    let n = restarts();
    // Leases and tokens live an hour: whatever is counted was left behind, not expired.
    let (before, before_role_id, before_secret_id) =
        own_db_role_and_approle("1h", "2h", "1h", "2h").await;
    let (after, role_id, secret_id) = own_db_role_and_approle("1h", "2h", "1h", "2h").await;

    let start = Instant::now();
    for _ in 0..n {
        pod(&before, &before_role_id, &before_secret_id, Some(false)).await;
    }
    let without = start.elapsed();
    let start = Instant::now();
    for _ in 0..n {
        pod(&after, &role_id, &secret_id, None).await;
    }
    let with = start.elapsed();

    let left_tokens_before = tokens_of(&before).await;
    let left_leases_before = leases_of(&before).await;
    let (left_tokens, _) = settle(|| tokens_of(&after), 0, Duration::from_secs(10)).await;
    let (left_leases, waited) = settle(|| leases_of(&after), 0, Duration::from_secs(30)).await;
    println!(
        "RESULT vault_pod_restarts restarts={n} revoke_off: tokens_left={left_tokens_before} \
         leases_left={left_leases_before} ({without:?}) | revoke_on (default): \
         tokens_left={left_tokens} leases_left={left_leases} ({with:?}; leases gone {waited:?} \
         after the last shutdown)"
    );
    clean_up(&before).await;
    clean_up(&after).await;

    assert_eq!(left_tokens, 0, "tokens left behind with revocation");
    assert_eq!(left_leases, 0, "leases left behind with revocation");
    // The comparison: without revocation every restart leaves its token and its lease.
    assert_eq!(left_tokens_before, n);
    assert_eq!(left_leases_before, n);
}

/// A Vault that accepts the revocation and never answers holds the shutdown up for the
/// configured timeout, not for ever; the token is then left to its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_vault_does_not_hang_shutdown() {
    let (role, role_id, secret_id) = own_db_role_and_approle("1h", "2h", "1h", "2h").await;
    let addr = env("VAULT_ADDR");
    let proxy = FaultProxy::start(addr.trim_start_matches("http://").parse().unwrap()).await;
    let source = VaultBuilder::new()
        .with_address(proxy.url())
        .with_auth(Auth::approle(role_id, secret_id))
        .with_shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let secrets = client(source);
    secrets
        .get_secret(&format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    proxy.set(Fault::Hang);
    let since = Instant::now();
    // A liveness guard, not a timing target: without the bound, shutdown waits for the request
    // timeout (30 s).
    tokio::time::timeout(Duration::from_secs(10), secrets.shutdown())
        .await
        .expect("shutdown returned although Vault hangs");
    assert_eq!(
        proxy.count_since(since, "/v1/auth/token/revoke-self"),
        1,
        "the revocation was sent: {:?}",
        proxy.seen()
    );
    // Nothing was revoked: the token and its lease are still there.
    assert_eq!(tokens_of(&role).await, 1);
    assert_eq!(leases_of(&role).await, 1);
    clean_up(&role).await;
}

/// A static token is handed in and may be shared: left alone by default, revoked when asked.
/// After a revocation the source does not log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_is_revoked_only_when_asked() {
    let child = || async {
        root_api(
            reqwest::Method::POST,
            "auth/token/create",
            Some(serde_json::json!({ "policies": ["app-read"], "ttl": "10m" })),
        )
        .await["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let alive = |token: String| async move {
        test_client()
            .get(format!("{}/v1/auth/token/lookup-self", env("VAULT_ADDR")))
            .header("X-Vault-Token", token)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    };
    let kv = SecretRef::parse("vault://secret/app/config").unwrap();

    let kept = child().await;
    let source = source(Auth::token(kept.clone()));
    source.fetch(&kv).await.unwrap();
    source.shutdown().await;
    assert!(alive(kept).await, "a given token is not revoked by default");

    let revoked = child().await;
    let source = VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_token(revoked.clone())
        .revoke_token_on_shutdown(true)
        .build()
        .unwrap();
    source.fetch(&kv).await.unwrap();
    source.shutdown().await;
    assert!(!alive(revoked).await, "revoked when asked");
    let e = source.fetch(&kv).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Shutdown, "{e}");
}

/// A login-method source whose shutdown revoked its token refuses reads instead of logging in
/// again (a new token would be left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_revocation_no_new_login() {
    let (role, role_id, secret_id) = own_db_role_and_approle("1h", "2h", "1h", "2h").await;
    let source = source(Auth::approle(role_id, secret_id));
    let r = SecretRef::parse(&format!("vault://database/creds/{role}")).unwrap();
    source.fetch(&r).await.unwrap();
    source.shutdown().await;
    let e = source.fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Shutdown, "{e}");
    assert!(!e.to_string().contains(&role), "{e}");
    let (tokens, _) = settle(|| tokens_of(&role), 0, Duration::from_secs(10)).await;
    assert_eq!(tokens, 0);
    let (leases, _) = settle(|| leases_of(&role), 0, Duration::from_secs(30)).await;
    assert_eq!(leases, 0);
}

/// Dropped without shutdown: the revocation goes out as a detached task while the runtime runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_source_revokes_best_effort() {
    let (role, role_id, secret_id) = own_db_role_and_approle("1h", "2h", "1h", "2h").await;
    let source = source(Auth::approle(role_id, secret_id));
    let r = SecretRef::parse(&format!("vault://database/creds/{role}")).unwrap();
    source.fetch(&r).await.unwrap();
    assert_eq!(tokens_of(&role).await, 1);
    drop(source);
    let (tokens, _) = settle(|| tokens_of(&role), 0, Duration::from_secs(10)).await;
    assert_eq!(tokens, 0);
    let (leases, _) = settle(|| leases_of(&role), 0, Duration::from_secs(30)).await;
    assert_eq!(leases, 0);
}
