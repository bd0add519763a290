//! Leases, outages and re-login against real servers, in real time (see `common`): the database
//! role issues PostgreSQL users with a 10 s lease and a 30 s max TTL.

#![allow(clippy::unwrap_used)]
// Real servers run in real time: these tests read the clock and sleep (the engine itself is
// tested on a manual clock in keyrack-core).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use keyrack_core::{Backoff, RotationEvent, Secrets};
use keyrack_vault::{Auth, VaultBuilder};
use reqwest::Method;

/// Renewal at about ⅔ of the TTL; a new credential before the 30 s max TTL while the old one
/// still logs in; `Rotated`; the old lease revoked after the overlap; and for two minutes a login
/// with `current()` every 200 ms never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_renew_rotate_overlap_and_never_fail() {
    let overlap = Duration::from_secs(2);
    let secrets = Secrets::builder()
        .source("vault", root())
        .revoke_replaced_leases_after(overlap)
        .build()
        .unwrap();
    let handle = secrets.handle("vault://database/creds/app").await.unwrap();
    let issued = Instant::now();
    let mut events = handle.subscribe();
    pg_login(&creds(&handle.current()))
        .await
        .expect("issued credentials log in");

    // Records renewals and rotations as they happen.
    let checker = tokio::spawn(async move {
        let (mut renewals, mut rotations) = (Vec::new(), Vec::new());
        while let Some(ev) = events.recv().await {
            match ev {
                RotationEvent::Renewed { ttl, .. } => renewals.push((issued.elapsed(), ttl)),
                RotationEvent::Rotated { .. } => rotations.push(issued.elapsed()),
                RotationEvent::RefreshFailed { error, .. } => panic!("refresh failed: {error}"),
                _ => {}
            }
        }
        (renewals, rotations)
    });

    let (mut failures, mut logins, mut old_checks) = (Vec::new(), 0, Vec::new());
    let mut last = creds(&handle.current());
    let mut replaced: Option<(DbCreds, Instant)> = None;
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        let current = creds(&handle.current());
        if current.username != last.username {
            // Rotated: the old credential still works now, and stops after the overlap.
            old_checks.push(("during overlap", pg_login(&last).await));
            replaced = Some((last, Instant::now()));
            last = current.clone();
        }
        if let Some((old, since)) = &replaced
            && since.elapsed() > overlap + Duration::from_secs(2)
        {
            old_checks.push(("after overlap", pg_login(old).await));
            replaced = None;
        }
        logins += 1;
        if let Err(e) = pg_login(&current).await {
            failures.push(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    secrets.shutdown().await;
    drop(handle);
    let (renewals, rotations) = checker.await.unwrap();

    assert!(
        failures.is_empty(),
        "{} of {logins} logins failed: {failures:?}",
        failures.len()
    );
    assert!(logins > 300, "{logins} logins");
    // First renewal at ⅔·10 s + ⅓ grace (1–2 s): 6.9–7.4 s after issue (plus a little latency).
    let (first, ttl) = renewals.first().copied().expect("renewals happened");
    assert!(
        first > Duration::from_millis(6_500) && first < Duration::from_millis(8_500),
        "first renewal at {first:?}"
    );
    assert_eq!(ttl, Duration::from_secs(10));
    // Each credential lives at most 30 s: at least 4 rotations in 120 s, the first before 30 s.
    assert!(rotations.len() >= 4, "rotations at {rotations:?}");
    assert!(
        rotations[0] < Duration::from_secs(30),
        "first rotation at {:?}",
        rotations[0]
    );
    for (when, result) in &old_checks {
        match *when {
            "during overlap" => assert!(
                result.is_ok(),
                "old credential failed during the overlap: {result:?}"
            ),
            _ => assert!(
                result.is_err(),
                "old credential still works after its lease was revoked"
            ),
        }
    }
    assert!(
        old_checks.iter().any(|(w, _)| *w == "after overlap"),
        "{old_checks:?}"
    );
}

/// Server #2 (persistent storage) is stopped for 20 s: `current()` keeps the last good value,
/// `RefreshFailed` then `Recovered` arrive, nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_the_last_good_value_and_recovers() {
    let vault2 = VaultBuilder::new()
        .with_address(env("VAULT2_ADDR"))
        .with_token(env("VAULT2_TOKEN"))
        .with_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let secrets = Secrets::builder()
        .source("vault2", vault2)
        .refresh_interval(Duration::from_secs(1))
        .backoff(Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(4),
        })
        .build()
        .unwrap();
    let handle = secrets
        .handle("vault2://secret/app/config#api_key")
        .await
        .unwrap();
    assert_eq!(handle.current().expose_str().unwrap(), "k2-1");
    let mut events = handle.subscribe();

    let script = |var: &str| {
        let out = Command::new(env(var)).output().unwrap();
        assert!(
            out.status.success(),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    script("TESTGROUND_VAULT2_STOP");
    let down = Instant::now();
    let mut failed = 0;
    while down.elapsed() < Duration::from_secs(20) {
        assert_eq!(handle.current().expose_str().unwrap(), "k2-1");
        assert!(
            handle.try_current().is_ok(),
            "no hard expiry for a static secret"
        );
        while let Some(Some(ev)) = futures_util_now(&mut events) {
            if matches!(ev, RotationEvent::RefreshFailed { .. }) {
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(failed >= 3, "{failed} RefreshFailed events in 20 s");
    script("TESTGROUND_VAULT2_START");
    next_matching(&mut events, Duration::from_secs(15), |e| {
        matches!(e, RotationEvent::Recovered { .. })
    })
    .await
    .expect("Recovered after the server is back");
    assert_eq!(handle.current().expose_str().unwrap(), "k2-1");
    secrets.shutdown().await;
}

fn futures_util_now(events: &mut keyrack_core::RotationEvents) -> Option<Option<RotationEvent>> {
    use futures_util::FutureExt;
    events.recv().now_or_never()
}

/// The source's own token reaches its max TTL: it logs in again, and the dynamic secret issued
/// under the old token (whose leases die with it) is re-issued, with `Rotated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_max_ttl_relogin_reissues_dynamic_secrets() {
    let role = uniq("short");
    root_api(
        Method::POST,
        &format!("auth/approle/role/{role}"),
        Some(serde_json::json!({
            "token_policies": ["app-read"], "token_ttl": "6s", "token_max_ttl": "15s"
        })),
    )
    .await;
    let (role_id, secret_id) = approle_ids("approle", &role).await;
    let secrets = client(source(Auth::approle(role_id, secret_id)));
    let handle = secrets.handle("vault://database/creds/app").await.unwrap();
    let started = Instant::now();
    let first = creds(&handle.current());
    pg_login(&first).await.unwrap();
    let mut events = handle.subscribe();
    // The token lives at most 15 s, so the keeper logs in again shortly before that. The
    // credential's own schedule (10 s leases, 30 s max) would replace it only at about 27 s: a
    // rotation before 24 s comes from the re-login.
    let ev = next_matching(&mut events, Duration::from_secs(24), |e| {
        matches!(e, RotationEvent::Rotated { .. })
    })
    .await
    .expect("Rotated after the re-login");
    assert!(
        started.elapsed() < Duration::from_secs(24),
        "{ev} at {:?}",
        started.elapsed()
    );
    // Once the old token is past its max TTL its leases are gone; the new credential works.
    tokio::time::sleep(Duration::from_secs(17).saturating_sub(started.elapsed())).await;
    let second = creds(&handle.current());
    assert_ne!(second.username, first.username);
    pg_login(&second)
        .await
        .expect("re-issued credential logs in");
    assert!(
        pg_login(&first).await.is_err(),
        "the old token's lease was revoked with it"
    );
    secrets.shutdown().await;
}

/// A leased credential read with `get_secret` only (no handle) is re-issued after the source
/// logs in again: the old token's leases die with it (#9). The credential's own lease is an hour,
/// so nothing but the new login can replace it within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_secret_only_credentials_are_reissued_after_a_relogin() {
    let (db_role, role_id, secret_id) = own_db_role_and_approle("1h", "2h", "6s", "15s").await;
    let secrets = client(source(Auth::approle(role_id, secret_id)));
    let uri = format!("vault://database/creds/{db_role}");
    let started = Instant::now();
    let first = creds(&secrets.get_secret(uri.as_str()).await.unwrap());
    pg_login(&first).await.unwrap();
    // The token lives at most 15 s: the keeper logs in again before, and once the old token is
    // past its max TTL Vault revokes the credential issued under it.
    tokio::time::sleep(Duration::from_secs(18).saturating_sub(started.elapsed())).await;
    assert!(
        pg_login(&first).await.is_err(),
        "the old token's lease was revoked with it"
    );
    let second = creds(&secrets.get_secret(uri.as_str()).await.unwrap());
    assert_ne!(
        second.username, first.username,
        "get_secret still serves the credential of the dead token"
    );
    pg_login(&second)
        .await
        .expect("the re-issued credential logs in");
    secrets.shutdown().await;
}
