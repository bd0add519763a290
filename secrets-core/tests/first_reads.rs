#![allow(clippy::unwrap_used)] // test helpers unwrap too
//! A first read that keeps failing retryably, on a manual clock: callers retrying it in a loop
//! (a service that does not start without its secret, and a fleet of them) reach the backend on
//! the engine's backoff, not on their loop's tick; a backend's `Retry-After` holds them back;
//! once the backend is back, a read gets through within the backoff's last step.

use std::time::Duration;

use keyrack_core::sources::MemorySource;
use keyrack_core::{ErrorKind, ManualClock, Secrets};

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// An engine over `memory` with no request budget, so only the read's own memory of its
/// failure keeps calls from the backend.
fn engine(clock: &ManualClock, memory: &MemorySource) -> Secrets {
    Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .unbudgeted("mem")
        .jitter_seed(7)
        .build()
        .unwrap()
}

/// Calls `get_secret` every 100 ms for `duration`; the number of successes.
async fn retry_loop(secrets: &Secrets, clock: &ManualClock, duration: Duration) -> usize {
    let mut ok = 0;
    let steps = duration.as_millis() / 100;
    for _ in 0..steps {
        if secrets.get_secret("mem://db").await.is_ok() {
            ok += 1;
        }
        clock.advance(MS(100)).await;
    }
    ok
}

#[tokio::test]
async fn a_throttled_first_read_retried_in_a_loop_backs_off() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    memory.set("db", "v");
    let secrets = engine(&clock, &memory);
    memory.throttle(None);
    assert_eq!(retry_loop(&secrets, &clock, S(60)).await, 0);
    // Throttling without a hint waits 1, 2, 4, 8, 16 s (+ up to a quarter) and then 16 s
    // steps: reads at about 0, 1, 3, 7, 15, 31, 47 s. Before: one read per second, 60.
    let calls = memory.calls().fetch;
    assert!(
        (6..=8).contains(&calls),
        "{calls} reads reached a throttling backend in 60 s of a 100 ms retry loop"
    );

    // Back: the next read within the last step (16 s + a quarter) gets through.
    memory.recover();
    let before = memory.calls().fetch;
    assert!(retry_loop(&secrets, &clock, S(21)).await > 0);
    assert_eq!(
        memory.calls().fetch,
        before + 1,
        "one read once it was back"
    );
}

#[tokio::test]
async fn an_outage_on_the_first_read_backs_off_too() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    memory.set("db", "v");
    let secrets = engine(&clock, &memory);
    memory.fail(ErrorKind::Unavailable);
    assert_eq!(retry_loop(&secrets, &clock, S(60)).await, 0);
    // A random wait up to 1, 2, 4, 8, 16 s (at least 1 s): between 60 / 16 and 60 reads,
    // at most about 40 once the steps reach 16 s.
    let calls = memory.calls().fetch;
    assert!(
        calls <= 45,
        "{calls} reads of an unavailable backend in 60 s"
    );
    memory.recover();
    assert!(retry_loop(&secrets, &clock, S(17)).await > 0);
}

#[tokio::test]
async fn a_retry_after_on_the_first_read_is_obeyed() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    memory.set("db", "v");
    let secrets = engine(&clock, &memory);
    memory.throttle(Some(S(30)));
    assert_eq!(retry_loop(&secrets, &clock, MS(29_900)).await, 0);
    assert_eq!(
        memory.calls().fetch,
        1,
        "nothing sent before the Retry-After"
    );
    memory.recover();
    // The backoff's first step (1–1.25 s) is shorter than the hint: the hint decides.
    assert!(retry_loop(&secrets, &clock, MS(200)).await > 0);
    assert_eq!(memory.calls().fetch, 2);
}

#[tokio::test]
async fn a_missing_secret_is_remembered_for_the_negative_ttl_without_backoff() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = engine(&clock, &memory);
    // 60 s of a retry loop on a secret that does not exist: one read per 5 s (the default
    // negative cache TTL), not a growing backoff.
    assert_eq!(retry_loop(&secrets, &clock, S(60)).await, 0);
    assert_eq!(memory.calls().fetch, 12);
    // Created: seen within the TTL.
    memory.set("db", "v");
    assert!(retry_loop(&secrets, &clock, S(5)).await > 0);
}
