//! A pod's cold start against real OpenBao (see `common`), behind a fault proxy that counts
//! requests: twenty reads started together under one mount detect the mount once and log in
//! once, also when the detection hangs; the login and the detection take places in the
//! application's request budget, as the reads do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyrack_core::{ErrorKind, RequestBudget, SecretRef, Secrets};
use keyrack_fake_server::proxy::{Fault, FaultProxy};
use keyrack_vault::{Auth, VaultBuilder};

fn vault_addr() -> std::net::SocketAddr {
    env("VAULT_ADDR")
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// `n` KV v2 secrets under `secret/app/<unique>/`, readable by the AppRole `app`.
async fn secrets_under_app(n: usize) -> Vec<SecretRef> {
    let dir = uniq("cold");
    let mut refs = Vec::new();
    for i in 0..n {
        kv2_put(
            &format!("app/{dir}/s{i:02}"),
            serde_json::json!({ "v": "a" }),
        )
        .await;
        refs.push(r(&format!("vault://secret/app/{dir}/s{i:02}#v")));
    }
    refs
}

fn approle_through(proxy: &FaultProxy, timeout: Duration) -> Secrets {
    let source = VaultBuilder::new()
        .with_address(proxy.url())
        .with_auth(Auth::approle(
            env("VAULT_APPROLE_ROLE_ID"),
            env("VAULT_APPROLE_SECRET_ID"),
        ))
        .with_timeout(timeout)
        .build()
        .unwrap();
    Secrets::builder().source("vault", source).build().unwrap()
}

#[allow(clippy::disallowed_methods)] // real servers, real time
fn now() -> Instant {
    Instant::now()
}

// Before: one `sys/internal/ui/mounts` request per read in flight (eight, the source's
// prefetch concurrency); a fleet of 1,000 pods sent 8,000 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cold_reads_of_one_mount_detect_it_once_and_log_in_once() {
    let refs = secrets_under_app(20).await;
    let proxy = FaultProxy::start(vault_addr()).await;
    let secrets = approle_through(&proxy, Duration::from_secs(30));
    let since = now();
    for result in secrets.prefetch(&refs).await {
        result.unwrap();
    }
    assert_eq!(proxy.count_since(since, "/v1/sys/internal/ui/mounts/"), 1);
    assert_eq!(proxy.count_since(since, "/v1/auth/approle/login"), 1);
    assert_eq!(proxy.count_since(since, "/v1/secret/data/"), 20);
    secrets.shutdown().await;
}

// A detection that never answers is one request, whose timeout every read waiting for it
// shares, not one hanging request per read (before: eight, the prefetch's concurrency), nor one
// per eight reads in turn (before `fetch_each` stopped at a timeout: three for twenty reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_detection_is_one_request_that_every_waiting_read_shares() {
    let mut refs = secrets_under_app(21).await;
    let after = refs.pop().unwrap();
    let proxy = FaultProxy::start(vault_addr()).await;
    let secrets = approle_through(&proxy, Duration::from_secs(2));
    // Logged in (through another mount), so the detection is what hangs.
    kv1_put_for_app().await;
    secrets.get_secret(&r(KV1_REF)).await.unwrap();
    proxy.set(Fault::Hang);
    let since = now();
    for result in secrets.prefetch(&refs).await {
        assert_eq!(result.unwrap_err().kind(), &ErrorKind::Timeout);
    }
    assert_eq!(proxy.count_since(since, "/v1/sys/internal/ui/mounts/"), 1);
    assert_eq!(proxy.count_since(since, "/v1/secret/data/"), 0);
    proxy.set(Fault::Pass);
    // Once Vault answers again, a read detects the mount anew and succeeds (another secret:
    // those that failed wait for their backoff).
    secrets.get_secret(&after).await.unwrap();
}

const KV1_REF: &str = "vault://kv1/app/cold-start#v";

async fn kv1_put_for_app() {
    root_api(
        reqwest::Method::POST,
        "kv1/app/cold-start",
        Some(serde_json::json!({ "v": "b" })),
    )
    .await;
}

// The login (a lookup of the static token) and the mount detection each take a place: with two
// places an hour and both at once, the first read takes three (one ahead of the budget, never refused: the read
// cannot be made without them) and the next read is refused at once by the budget. Before,
// they took none: the second read took the second place and was sent.
#[tokio::test]
async fn the_login_and_the_detection_take_places_in_the_budget() {
    let refs = secrets_under_app(2).await;
    let secrets = Secrets::builder()
        .source("vault", root())
        .request_budget(
            "vault",
            RequestBudget::new(2, Duration::from_secs(3600))
                .with_burst(2)
                .fixed(),
        )
        .build()
        .unwrap();
    secrets.get_secret(&refs[0]).await.unwrap();
    let e = secrets.get_secret(&refs[1]).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Throttled, "{e}");
    assert!(e.is_budget_refusal(), "{e}");
}
