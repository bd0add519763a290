//! Real OpenBao behind a fault proxy (`keyrack_fake_server::proxy`): what the library does when
//! the network between it and Vault hangs, or Vault answers 503 for a minute. Real time, real
//! leases; the figures asserted are the ones the library promises (README, "Reliability").
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyrack_core::{Clock, RotationEvent, Secrets, SystemClock};
use keyrack_fake_server::proxy::{Fault, FaultProxy};
use keyrack_vault::{Auth, VaultBuilder};

fn vault_addr() -> std::net::SocketAddr {
    let addr = env("VAULT_ADDR");
    let hostport = addr.trim_start_matches("http://");
    hostport.parse().unwrap()
}

async fn sleep(d: Duration) {
    SystemClock.sleep_until(SystemClock.now() + d).await;
}

fn now() -> Instant {
    SystemClock.now()
}

// During a 30 s hang, a credential whose lease ends is reported `Expired` within a second of its
// end; once Vault is back, a new credential is in place within 5 s and logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_reports_expiry_on_time_and_recovery_is_quick() {
    let (role, role_id, secret_id) = own_db_role_and_approle("10s", "60s", "1h", "4h").await;
    let proxy = FaultProxy::start(vault_addr()).await;
    let source = VaultBuilder::new()
        .with_address(proxy.url())
        .with_auth(Auth::approle(role_id, secret_id))
        .build()
        .unwrap();
    let secrets = Secrets::builder().source("vault", source).build().unwrap();
    let asked = now();
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let answered = now();
    let first = handle.current().lease().unwrap().id.clone();
    let mut events = handle.subscribe();

    proxy.set(Fault::Hang);
    let hang_started = now();
    let expired_at = loop {
        assert!(now() < asked + Duration::from_secs(40), "no Expired event");
        if let Ok(Some(RotationEvent::Expired { .. })) =
            tokio::time::timeout(Duration::from_millis(100), events.recv()).await
        {
            break now();
        }
    };
    // The lease is counted from the request: it ends between `asked + 10 s` and
    // `answered + 10 s`.
    let ttl = Duration::from_secs(10);
    assert!(
        expired_at + Duration::from_millis(100) >= asked + ttl,
        "Expired {:?} before the lease could have ended",
        (asked + ttl) - expired_at
    );
    assert!(
        expired_at <= answered + ttl + Duration::from_secs(1),
        "Expired {:?} after the lease ended",
        expired_at - (answered + ttl)
    );
    assert!(handle.try_current().is_err());

    // Vault comes back after 30 s of hanging.
    sleep((hang_started + Duration::from_secs(30)).saturating_duration_since(now())).await;
    proxy.set(Fault::Pass);
    let back = now();
    let replaced_in = loop {
        if let Ok(secret) = handle.try_current()
            && secret.lease().is_some_and(|l| l.id != first)
        {
            break now() - back;
        }
        assert!(
            now() < back + Duration::from_secs(10),
            "not replaced in 10 s"
        );
        sleep(Duration::from_millis(50)).await;
    };
    assert!(
        replaced_in <= Duration::from_secs(5),
        "new credential {replaced_in:?} after Vault came back"
    );
    pg_login(&creds(&handle.current())).await.unwrap();
    println!(
        "RESULT vault_hang_expired_late_ms={}",
        (expired_at.saturating_duration_since(answered + ttl)).as_millis()
    );
    println!("RESULT vault_recovery_ms={}", replaced_in.as_millis());
    secrets.shutdown().await;
}

// A minute of 503s (Vault down behind its load balancer): the token keeper logs in a handful of
// times, not thousands, while the engine keeps trying to replace the expired credential every
// few seconds; once Vault is back, reads work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_outage_costs_a_bounded_number_of_calls() {
    let (role, role_id, secret_id) = own_db_role_and_approle("10s", "60s", "4s", "8s").await;
    let proxy = FaultProxy::start(vault_addr()).await;
    let source = VaultBuilder::new()
        .with_address(proxy.url())
        .with_auth(Auth::approle(role_id, secret_id))
        .build()
        .unwrap();
    let secrets = Secrets::builder().source("vault", source).build().unwrap();
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();

    proxy.set(Fault::unavailable(None));
    let down = now();
    sleep(Duration::from_secs(60)).await;
    let logins = proxy.count_since(down, "/v1/auth/approle/login");
    let renewals = proxy.count_since(down, "/v1/auth/token/renew-self");
    let reads = proxy.count_since(down, "/v1/database/creds/");
    let all = proxy.count_since(down, "/v1/");
    println!("RESULT vault_outage_logins_per_minute={logins}");
    println!("RESULT vault_outage_calls_per_minute={all}");
    // The keeper: a doubling backoff from 1 s (at most 8 tries in the first minute).
    assert!(
        logins + renewals <= 10,
        "{logins} logins and {renewals} renewals in a minute of outage"
    );
    // The credential, expired after 10 s: retried every 1-5 s, plus its renewal/re-issue before.
    assert!(reads <= 60, "{reads} reads of the credential in a minute");
    assert!(
        all <= 80,
        "{all} calls in a minute of outage: {:?}",
        proxy.seen().len()
    );

    proxy.set(Fault::Pass);
    let back = now();
    loop {
        if handle.try_current().is_ok() {
            break;
        }
        assert!(
            now() < back + Duration::from_secs(10),
            "not replaced in 10 s"
        );
        sleep(Duration::from_millis(50)).await;
    }
    pg_login(&creds(&handle.current())).await.unwrap();
    secrets.shutdown().await;
}
