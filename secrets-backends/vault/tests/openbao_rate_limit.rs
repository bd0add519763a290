//! OpenBao's rate-limit quota (`sys/quotas/rate-limit`), which an operator sets to protect the
//! server from a fleet: past its rate OpenBao answers 429 with `Retry-After: 0` (recorded in
//! `testing/fake-server/fixtures/vault/openbao-2.7.2.json`). Vault documents no quota, so the
//! source's default budget is only a ceiling (1,000/s), but it is adaptive: the quota's refusal
//! cuts it to what the process was sending, as any backend's throttling does. Before, Vault
//! sources had no budget and a refusal cut nothing. Each test has a KV v2 mount and a quota of
//! its own, so nothing else on the test ground is limited.

#![allow(clippy::unwrap_used)]

mod common;

use common::{client, r, root, root_api, uniq};
use keyrack_core::{ErrorKind, SecretRef};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_rate_limit_quota_cuts_the_default_budget() {
    let mount = uniq("quota");
    root_api(
        Method::POST,
        &format!("sys/mounts/{mount}"),
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    )
    .await;
    for i in 0..12 {
        root_api(
            Method::POST,
            &format!("{mount}/data/s{i}"),
            Some(json!({"data": {"v": format!("value {i}")}})),
        )
        .await;
    }
    // Five requests a second on this mount, for every client together.
    root_api(
        Method::POST,
        &format!("sys/quotas/rate-limit/{mount}"),
        Some(json!({"path": format!("{mount}/"), "rate": 5, "interval": "1s"})),
    )
    .await;

    let secrets = client(root());
    assert_eq!(secrets.request_rate("vault"), Some(1_000.0));
    let refs: Vec<SecretRef> = (0..12)
        .map(|i| r(&format!("vault://{mount}/s{i}#v")))
        .collect();
    let results = secrets.prefetch(&refs).await;
    let throttled = results
        .iter()
        .filter(|res| matches!(res, Err(e) if *e.kind() == ErrorKind::Throttled))
        .count();
    let read = results.iter().filter(|res| res.is_ok()).count();
    let rate = secrets.request_rate("vault").unwrap();
    eprintln!("12 reads against 5/s: {read} read, {throttled} throttled, rate now {rate:.2}/s");
    assert!(read >= 1, "the quota's first five pass");
    assert!(throttled >= 1, "past five a second, OpenBao refuses");
    assert_eq!(read + throttled, 12, "{results:?}");
    assert!(
        rate <= 10.0,
        "the refusal cut the budget to what was sent, not left it at 1,000/s: {rate}"
    );
    // Every refused error says so, and quotes no value.
    for res in &results {
        if let Err(e) = res {
            assert!(!e.to_string().contains("value "), "{e}");
        }
    }

    root_api(
        Method::DELETE,
        &format!("sys/quotas/rate-limit/{mount}"),
        None,
    )
    .await;
    root_api(Method::DELETE, &format!("sys/mounts/{mount}"), None).await;
    secrets.shutdown().await;
}
