//! Many reads of a vault started together on a new client: one authentication challenge between
//! them, whatever the challenge request meets (an answer, a 503, a proxy's HTML page, no answer).
//!
//! The challenge is the 401 of rust/list_secrets_by_pages_verify_telemetry.excerpt.json entry 0,
//! the token exchange entra/instance_discovery_disabled.json entry 1 (see tests/common). No
//! recording has a failing challenge request: the 503 is Key Vault's documented error body for
//! `ServiceUnavailable` (REST reference, "Common error codes") without `Retry-After`, and the
//! 502 page is what an nginx in front of the vault sends.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use keyrack_core::{ErrorKind, Result, Secret, SecretSource, Secrets};

const READS: usize = 20;

fn names() -> Vec<String> {
    (0..READS).map(|i| format!("cold-{i}")).collect()
}

async fn seeded() -> Fake {
    let fake = Fake::start().await;
    for name in names() {
        fake.put(&name, &format!("value-of-{name}"));
    }
    fake
}

/// All reads at once, straight on the source, each on its own task.
async fn read_all(source: &std::sync::Arc<keyrack_azure::AzureSource>) -> Vec<Result<Secret>> {
    let tasks: Vec<_> = names()
        .into_iter()
        .map(|name| {
            let source = source.clone();
            tokio::spawn(async move { source.fetch(&kv_ref(&name)).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Requests the vault received without a token: the challenges asked for.
fn unauthorized(fake: &Fake) -> usize {
    fake.vault_requests()
        .iter()
        .filter(|r| r.header("authorization").is_none())
        .count()
}

/// A source whose requests give up after `timeout`.
fn timing_out(fake: &Fake, timeout: Duration) -> keyrack_azure::AzureSource {
    fake.builder(std::sync::Arc::new(RotatingToken::new(
        "projected-sa-token-1",
    )))
    .with_timeout(timeout)
    .build()
    .unwrap()
}

/// Each read failed as a read of a vault that does not answer does (and not by the budget).
fn all_hung(results: &[Result<Secret>]) {
    for result in results {
        let err = result.as_ref().unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
            "{err}"
        );
        assert!(!err.is_budget_refusal(), "{err}");
    }
}

fn authorized(fake: &Fake) -> usize {
    fake.vault_requests()
        .iter()
        .filter(|r| r.header("authorization").is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_cold_reads_cost_one_challenge_and_one_token() {
    let fake = seeded().await;
    let source = std::sync::Arc::new(fake.source());

    for (name, result) in names().iter().zip(read_all(&source).await) {
        let secret = result.unwrap();
        assert_eq!(secret.expose_bytes(), format!("value-of-{name}").as_bytes());
    }
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());
    assert_eq!(authorized(&fake), READS);
    assert_eq!(fake.token_requests().len(), 1);
}

/// Through the engine, as a service starts: one `prefetch` of twenty references.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_prefetch_through_the_engine_costs_one_challenge() {
    let fake = seeded().await;
    let secrets = Secrets::builder()
        .source("azure-kv", fake.source())
        .build()
        .unwrap();
    let refs: Vec<_> = names().iter().map(|n| kv_ref(n)).collect();

    for result in secrets.prefetch(&refs).await {
        result.unwrap();
    }
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());
    assert_eq!(authorized(&fake), READS);
    assert_eq!(fake.token_requests().len(), 1);
}

/// The first read of a vault is two requests (the challenge, then the read with a token) and
/// takes two places in the request budget: with one place per second the challenge goes at
/// once and the read with the token when the second place comes; the next read waits a second
/// more. Before, the challenge went
/// uncounted, and 10,000 pods each given their share of a vault's quota sent 10,000 of them at
/// once (`cargo bench --bench fleet`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Real time lets the requests that were not held back reach the fake over its socket.
#[allow(clippy::disallowed_methods)]
async fn the_first_read_of_a_vault_takes_two_places_in_the_budget() {
    let fake = seeded().await;
    let clock = keyrack_core::ManualClock::new();
    let budget = keyrack_core::RequestBudget::per_second(1)
        .with_burst(1)
        .fixed();
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("azure-kv", fake.source())
        .request_budget("azure-kv", budget)
        .build()
        .unwrap();
    let read = |name: &'static str| {
        let secrets = secrets.clone();
        tokio::spawn(async move { secrets.get_secret(kv_ref(name)).await })
    };
    let first = read("cold-0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (unauthorized(&fake), authorized(&fake)),
        (1, 0),
        "the read went before its second place"
    );
    clock.advance(Duration::from_secs(1)).await;
    first.await.unwrap().unwrap();
    assert_eq!((unauthorized(&fake), authorized(&fake)), (1, 1));

    let second = read("cold-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        authorized(&fake),
        1,
        "the next read did not wait for its place"
    );
    clock.advance(Duration::from_secs(1)).await;
    second.await.unwrap().unwrap();
    assert_eq!((unauthorized(&fake), authorized(&fake)), (1, 2));
}

/// The challenge request is answered 503 (no `Retry-After`), then by a proxy's 502 page, each
/// after 300 ms so that all twenty reads are waiting on it: each time the twenty fail together
/// with `Unavailable` after that one request (none goes on to ask for a challenge of its own),
/// and the failed discovery is not kept: the next round discovers again, with one request, and
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_challenge_fails_its_waiters_once_and_is_not_kept() {
    let fake = seeded().await;
    let source = std::sync::Arc::new(fake.source());
    fake.with_state(|s| s.unauthorized_delay = Some(Duration::from_millis(300)));
    let faults = [
        Canned::key_vault(
            503,
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
            None,
        ),
        Canned::html(
            502,
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad \
             Gateway</h1></center><hr><center>nginx</center></body></html>",
        ),
    ];

    for (round, fault) in faults.into_iter().enumerate() {
        fake.vault.clear_requests();
        fake.with_state(|s| s.challenge_faults.push_back(fault));
        let results = read_all(&source).await;
        for result in &results {
            let err = result.as_ref().unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::Unavailable, "round {round}: {err}");
            // A proxy's page is not quoted back whole.
            assert!(!err.to_string().contains("<html>"), "{err}");
        }
        assert_eq!(
            unauthorized(&fake),
            1,
            "round {round}: {:#?}",
            fake.vault_requests()
        );
        assert_eq!(authorized(&fake), 0, "round {round}");
        assert_eq!(fake.token_requests().len(), 0, "round {round}");
    }

    fake.with_state(|s| s.unauthorized_delay = None);
    fake.vault.clear_requests();
    for result in read_all(&source).await {
        result.unwrap();
    }
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());
    assert_eq!(authorized(&fake), READS);
    assert_eq!(fake.token_requests().len(), 1);
}

/// The challenge request is accepted and never answered: the twenty reads end together at the
/// source's request timeout (not one timeout after another), with one request sent; once the
/// vault answers again, the next round needs one challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // measures how long real requests waited
async fn a_hung_challenge_ends_every_waiter_at_one_timeout() {
    let fake = seeded().await;
    let timeout = Duration::from_millis(800);
    let source = std::sync::Arc::new(timing_out(&fake, timeout));
    fake.with_state(|s| s.hang_unauthorized = true);

    let started = Instant::now();
    let results = read_all(&source).await;
    let took = started.elapsed();
    all_hung(&results);
    // Twenty timeouts one after another would take 16 s; a generous bound against a loaded
    // machine that still tells the two apart.
    assert!(took < timeout * 8, "the reads took {took:?}");
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());
    assert_eq!(fake.token_requests().len(), 0);

    fake.with_state(|s| s.hang_unauthorized = false);
    fake.vault.clear_requests();
    for result in read_all(&source).await {
        result.unwrap();
    }
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());
    assert_eq!(authorized(&fake), READS);
    assert_eq!(fake.token_requests().len(), 1);
}

/// The same hang through the engine with a request budget: the challenge's place
/// (`budget::needed_request`) is taken while the reads wait for it, and the hang neither holds
/// the reads past the timeout nor leaves the budget owing: twenty other secrets read right
/// after the vault answers again go through at once, with one new challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::disallowed_methods)] // measures how long real requests waited
async fn a_hung_challenge_under_a_request_budget_ends_at_one_timeout_and_owes_nothing() {
    let fake = seeded().await;
    let others: Vec<String> = (0..READS).map(|i| format!("after-{i}")).collect();
    for name in &others {
        fake.put(name, &format!("value-of-{name}"));
    }
    let timeout = Duration::from_millis(800);
    let source = timing_out(&fake, timeout);
    // Room for the twenty reads, the challenge and the token's read: 22 at once, then 22 a
    // second.
    let budget = keyrack_core::RequestBudget::per_second(22)
        .with_burst(22)
        .fixed();
    let secrets = Secrets::builder()
        .source("azure-kv", source)
        .request_budget("azure-kv", budget)
        .build()
        .unwrap();
    fake.with_state(|s| s.hang_unauthorized = true);

    let refs: Vec<_> = names().iter().map(|n| kv_ref(n)).collect();
    let started = Instant::now();
    let results = secrets.prefetch(&refs).await;
    let took = started.elapsed();
    all_hung(&results);
    assert!(took < timeout * 8, "the reads took {took:?}");
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());

    fake.with_state(|s| s.hang_unauthorized = false);
    fake.vault.clear_requests();
    // A second of room back, as the budget gives it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refs: Vec<_> = others.iter().map(|n| kv_ref(n)).collect();
    for result in secrets.prefetch(&refs).await {
        result.unwrap();
    }
    assert_eq!(unauthorized(&fake), 1, "{:#?}", fake.vault_requests());
    assert_eq!(authorized(&fake), READS);
}
