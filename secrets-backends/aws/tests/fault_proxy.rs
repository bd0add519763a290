//! moto behind a fault proxy (`keyrack_fake_server::proxy`): throttling storms with and without
//! `Retry-After`, and a load balancer's 503 pages. Real time; the figures asserted are the ones
//! the library promises (README, "Reliability").
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyrack_core::{Clock, Secrets, SystemClock};
use keyrack_fake_server::proxy::{Fault, FaultProxy};

async fn sleep(d: Duration) {
    SystemClock.sleep_until(SystemClock.now() + d).await;
}

fn now() -> Instant {
    SystemClock.now()
}

fn moto_addr() -> std::net::SocketAddr {
    env("AWS_ENDPOINT_URL")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// Three secrets behind handles re-checked every second, through `proxy`, for 20 s of `fault`:
/// the calls that reached the proxy meanwhile; `current()` must hold a value throughout.
async fn storm(fault: Fault) -> usize {
    let proxy = FaultProxy::start(moto_addr()).await;
    let writer = source().await;
    let names: Vec<String> = (0..3).map(|_| uniq("storm")).collect();
    for n in &names {
        put(&writer, n, br#"{"password":"p1"}"#).await.unwrap();
    }
    let through = builder()
        .with_endpoint_url(proxy.url())
        .build()
        .await
        .unwrap();
    let secrets = Secrets::builder()
        .source("aws-sm", through)
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut handles = Vec::new();
    for n in &names {
        handles.push(
            secrets
                .handle(format!("aws-sm://{n}#password"))
                .await
                .unwrap(),
        );
    }
    sleep(Duration::from_secs(2)).await;
    proxy.set(fault);
    let from = now();
    while now() < from + Duration::from_secs(20) {
        for h in &handles {
            assert_eq!(h.try_current().unwrap().expose_str().unwrap(), "p1");
        }
        sleep(Duration::from_millis(100)).await;
    }
    let calls = proxy.count_since(from, "/");
    proxy.set(Fault::Pass);
    secrets.shutdown().await;
    calls
}

// Secrets Manager's throttling answer carries no Retry-After: whole steps of 1, 2, 4, 8 s (plus
// up to a quarter) fit about 5 tries per secret into 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_storm_without_retry_after_stays_within_budget() {
    let calls = storm(Fault::too_many_requests(None)).await;
    println!(
        "RESULT aws_throttle_storm_calls_per_secret_20s={}",
        calls / 3
    );
    assert!(
        calls <= 3 * 6,
        "{calls} calls for 3 secrets in a 20 s storm"
    );
}

// With `Retry-After: 5`, no secret is asked more than once per 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_with_retry_after_is_obeyed() {
    let calls = storm(Fault::too_many_requests(Some("5"))).await;
    println!(
        "RESULT aws_retry_after_storm_calls_per_secret_20s={}",
        calls / 3
    );
    assert!(
        calls <= 3 * 5,
        "{calls} calls for 3 secrets in 20 s of Retry-After: 5"
    );
}

// A load balancer's HTML 502 page is an outage like any other: retried with backoff, the value
// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_error_page_is_an_outage() {
    let calls = storm(Fault::bad_gateway_page()).await;
    println!("RESULT aws_502_page_calls_per_secret_20s={}", calls / 3);
    // Full jitter above a 1 s floor, doubling: at most about 8 tries per secret in 20 s.
    assert!(
        calls <= 3 * 9,
        "{calls} calls for 3 secrets in 20 s of 502 pages"
    );
}
