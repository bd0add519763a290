#![allow(clippy::unwrap_used)] // test helpers unwrap too
//! Refresh budgets, on a manual clock: routine checks of a source's secrets stay within the rate
//! the application gives them, by stretching the shortest refresh intervals, instead of costing
//! whatever a fixed interval times the number of secrets comes to.

use std::time::Duration;

use keyrack_core::sources::MemorySource;
use keyrack_core::{ErrorKind, ManualClock, RequestBudget, SecretHandle, Secrets};

const S: fn(u64) -> Duration = Duration::from_secs;

/// 100 secrets held through handles, checked every 10 s (10 checks/s), and one checked every
/// 400 s, against a refresh budget of 2 checks/s: the 100 are stretched to a common floor of
/// about 56 s (checks come early by up to the 20 % jitter, 10 % on average, so the floor aims
/// at 1.8/s), the slow one keeps its interval, and over ten minutes the checks cost 2 per second.
/// The same secrets without a refresh budget cost 10 per second and more.
#[tokio::test]
async fn checks_are_stretched_to_fit_the_refresh_budget() {
    let (paced, paced_floor) = checks_in_ten_minutes(true).await;
    let (fixed, fixed_floor) = checks_in_ten_minutes(false).await;
    eprintln!("checks in 600 s: {paced} with a refresh budget of 2/s, {fixed} without");
    // 100/(2 × 0.9 - 1/400) s, rounded up to the millisecond.
    assert_eq!(paced_floor, Some(Duration::from_millis(55_633)));
    assert_eq!(fixed_floor, None);
    // 600 s at 2/s.
    assert!(
        (1_100..=1_250).contains(&paced),
        "{paced} checks with the budget"
    );
    assert!(fixed >= 5_500, "{fixed} checks without");
}

async fn checks_in_ten_minutes(budgeted: bool) -> (u64, Option<Duration>) {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    for i in 0..100 {
        memory.set(format!("s{i}"), "v");
    }
    memory.set("slow", "v");
    let builder = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .refresh_interval(S(10))
        .refresh_interval_for("mem://slow", S(400))
        .jitter_seed(7);
    let builder = if budgeted {
        builder.refresh_budget("mem", RequestBudget::per_second(2))
    } else {
        builder
    };
    let secrets = builder.build().unwrap();
    let mut handles: Vec<SecretHandle> = Vec::new();
    for i in 0..100 {
        handles.push(secrets.handle(format!("mem://s{i}")).await.unwrap());
    }
    handles.push(secrets.handle("mem://slow").await.unwrap());
    // The first round of checks was planned while the secrets were still joining.
    for _ in 0..100 {
        clock.advance(S(1)).await;
    }
    let before = memory.calls();
    for _ in 0..600 {
        clock.advance(S(1)).await;
    }
    let after = memory.calls();
    let checks = (after.version + after.fetch) - (before.version + before.fetch);
    let floor = secrets.refresh_floor("mem");
    secrets.shutdown().await;
    (checks, floor)
}

/// By default a budgeted source's checks may cost half its request budget; an unbudgeted source
/// has no refresh budget unless given one; `no_refresh_budget` turns the default off.
#[tokio::test]
async fn the_default_is_half_the_request_budget() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    for i in 0..4 {
        memory.set(format!("s{i}"), "v");
    }
    let build = |b: keyrack_core::SecretsBuilder| {
        b.clock(clock.clone())
            .source("mem", memory.clone())
            .refresh_interval(S(1))
            .build()
            .unwrap()
    };
    // 4 secrets every second against 4 requests/s: checks may cost 2/s, so every 2 s on average
    // (a floor of 2.22 s, which the jitter brings forward by 10 % on average).
    let half = build(Secrets::builder().request_budget("mem", RequestBudget::per_second(4)));
    for i in 0..4 {
        half.get_secret(format!("mem://s{i}")).await.unwrap();
    }
    assert_eq!(
        half.refresh_floor("mem"),
        Some(Duration::from_millis(2_223))
    );
    let none = build(Secrets::builder());
    assert_eq!(none.refresh_floor("mem"), None);
    let off = build(
        Secrets::builder()
            .request_budget("mem", RequestBudget::per_second(4))
            .no_refresh_budget("mem"),
    );
    assert_eq!(off.refresh_floor("mem"), None);
}

/// Leased secrets follow their leases: they are not counted, and the floor falls back when the
/// secrets that raised it are let go.
#[tokio::test]
async fn leases_are_not_counted_and_the_floor_follows_what_is_held() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    memory.lease("db", S(60), S(600), true);
    for i in 0..3 {
        memory.set(format!("s{i}"), "v");
    }
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .refresh_interval(S(10))
        .refresh_budget("mem", RequestBudget::new(1, S(10)))
        .cache_capacity(1)
        .build()
        .unwrap();
    let _db = secrets.handle("mem://db").await.unwrap();
    assert_eq!(secrets.refresh_floor("mem"), Some(Duration::ZERO));
    let a = secrets.handle("mem://s0").await.unwrap();
    let b = secrets.handle("mem://s1").await.unwrap();
    // Two secrets every 10 s at 0.1 checks/s: every 20 s on average (a floor of 22.2 s).
    assert_eq!(
        secrets.refresh_floor("mem"),
        Some(Duration::from_millis(22_223))
    );
    drop((a, b));
    // Only the cache (one reference) keeps them now: read a third to evict them.
    secrets.get_secret("mem://s2").await.unwrap();
    secrets.run_pending_tasks().await;
    assert_eq!(secrets.refresh_floor("mem"), Some(Duration::ZERO));
}

/// A refresh budget for a source that is not registered, or of no rate, is a configuration
/// error naming it.
#[test]
fn bad_refresh_budgets_are_config_errors() {
    let e = Secrets::builder()
        .source("mem", MemorySource::new())
        .refresh_budget("nope", RequestBudget::per_second(1))
        .refresh_budget("mem", RequestBudget::new(0, S(1)))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    let text = e.to_string();
    assert!(text.contains("refresh budget names `nope`"), "{text}");
    assert!(text.contains("source `mem`"), "{text}");
}
