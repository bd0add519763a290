#![allow(clippy::unwrap_used)] // test helpers unwrap too
//! The engine's behaviour, tested deterministically on a manual clock against the memory source.
//! Nothing here sleeps: time moves only through `ManualClock::advance`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use keyrack_core::sources::MemorySource;
use keyrack_core::testkit::drain;
use keyrack_core::{
    Clock, ErrorKind, ManualClock, RotationEvent, Secrets, SecretsBuilder, Version,
};

const S: fn(u64) -> Duration = Duration::from_secs;

fn builder(clock: &ManualClock, memory: &MemorySource) -> SecretsBuilder {
    Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .refresh_interval(S(100))
        .refresh_jitter(0.2)
        .jitter_seed(7)
}

fn setup() -> (ManualClock, MemorySource, Secrets) {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory).build().unwrap();
    (clock, memory, secrets)
}

fn rotated(events: &[RotationEvent]) -> Vec<(Option<Version>, Option<Version>)> {
    events
        .iter()
        .filter_map(|e| match e {
            RotationEvent::Rotated { old, new, .. } => Some((old.clone(), new.clone())),
            _ => None,
        })
        .collect()
}

fn v(s: &str) -> Option<Version> {
    Some(Version::from(s))
}

#[tokio::test]
async fn cache_hit_makes_no_call_and_copies_no_bytes() {
    let (_clock, memory, secrets) = setup();
    memory.set("app", "hunter2");
    let a = secrets.get_secret("mem://app").await.unwrap();
    let b = secrets.get_secret("mem://app").await.unwrap();
    assert_eq!(memory.calls().fetch, 1);
    assert_eq!(a.expose_str().unwrap(), "hunter2");
    assert!(a.value().shares_allocation_with(b.value()));
}

#[tokio::test]
async fn concurrent_misses_make_one_call() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    memory.set_latency(Duration::from_millis(5));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = secrets.clone();
            tokio::spawn(async move { s.get_secret("mem://app").await })
        })
        .collect();
    clock.advance(Duration::from_millis(5)).await;
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().expose_str().unwrap(), "v1");
    }
    assert_eq!(memory.calls().fetch, 1);
}

#[tokio::test]
async fn concurrent_misses_share_one_failure() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    memory.set_latency(Duration::from_millis(5));
    memory.fail(ErrorKind::Unavailable);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = secrets.clone();
            tokio::spawn(async move { s.get_secret("mem://app").await })
        })
        .collect();
    clock.advance(Duration::from_millis(5)).await;
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Unavailable);
        assert_eq!(e.source_name(), Some("mem"));
        assert_eq!(
            e.reference().map(ToString::to_string).as_deref(),
            Some("mem://app")
        );
    }
    assert_eq!(memory.calls().fetch, 1);
}

#[tokio::test]
async fn not_found_is_remembered_briefly() {
    let (clock, memory, secrets) = setup();
    for _ in 0..3 {
        let e = secrets.get_secret("mem://typo").await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::NotFound);
    }
    assert_eq!(memory.calls().fetch, 1);
    clock.advance(S(6)).await;
    memory.set("typo", "now it exists");
    assert!(secrets.get_secret("mem://typo").await.is_ok());
    assert_eq!(memory.calls().fetch, 2);
}

#[tokio::test]
async fn bad_references_are_typed_errors() {
    let (_clock, _memory, secrets) = setup();
    let e = secrets.get_secret("nope://x").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidRef);
    assert!(e.to_string().contains("`nope`"), "{e}");
    let e = secrets.get_secret("mem:/x").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidRef);
    let e = secrets.get_secret("mem://x#").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidRef);
}

#[tokio::test]
async fn fields_of_one_secret_share_one_fetch_and_one_lease() {
    let (_clock, memory, secrets) = setup();
    memory.lease("db", S(60), S(600), true);
    let user = secrets.get_secret("mem://db#username").await.unwrap();
    let pass = secrets.get_secret("mem://db#password").await.unwrap();
    assert_eq!(memory.calls().fetch, 1);
    assert_eq!(user.lease(), pass.lease());
    assert!(user.expose_str().unwrap().starts_with("db-user-1"));
    let e = secrets.get_secret("mem://db#nope").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidValue);
    assert!(e.to_string().contains("`nope`"));
}

#[tokio::test]
async fn routine_check_probes_version_and_reads_only_on_change() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let mut handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    // Interval 100 s with 20 % jitter: the first check falls in [80 s, 100 s].
    clock.advance(S(79)).await;
    assert_eq!(memory.calls().version, 0);
    clock.advance(S(21)).await;
    assert_eq!(memory.calls().version, 1);
    assert_eq!(memory.calls().fetch, 1, "unchanged version: no read");
    memory.set("app", "v2");
    clock.advance(S(100)).await;
    assert_eq!(memory.calls().version, 2);
    assert_eq!(memory.calls().fetch, 2);
    assert_eq!(rotated(&drain(&mut events)), vec![(v("1"), v("2"))]);
    assert_eq!(handle.current().expose_str().unwrap(), "v2");
    let changed = handle
        .changed()
        .now_or_never()
        .expect("changed() is ready")
        .unwrap();
    assert_eq!(changed.version(), v("2").as_ref());
}

#[tokio::test]
async fn per_secret_interval_override() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .refresh_interval_for("mem://fast", S(10))
        .build()
        .unwrap();
    memory.set("fast", "a");
    memory.set("slow", "b");
    let _fast = secrets.handle("mem://fast").await.unwrap();
    let _slow = secrets.handle("mem://slow").await.unwrap();
    clock.advance(S(50)).await;
    // fast: every 8–10 s → at least 5 probes; slow: none yet.
    assert!(memory.calls().version >= 5, "{:?}", memory.calls());
    assert!(memory.calls().version <= 7, "{:?}", memory.calls());
}

#[tokio::test]
async fn rotation_and_expiry_hints_move_checks_earlier() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .refresh_interval(S(3600))
        .build()
        .unwrap();
    let now = clock.wall();
    memory.set_with("rotating", "a", |m| m.next_rotation = Some(now + S(30)));
    memory.set_with("expiring", "b", |m| m.expires_at = Some(now + S(390)));
    let _r = secrets.handle("mem://rotating").await.unwrap();
    clock.advance(S(29)).await;
    assert_eq!(memory.calls().version, 0);
    // Right after the planned rotation: within the spread (20 % of the interval, at most 60 s).
    clock.advance(S(61)).await;
    assert_eq!(memory.calls().version, 1);
    let _e = secrets.handle("mem://expiring").await.unwrap();
    let fetches = memory.calls().fetch;
    // ⅔ of the way to expiry (read at 90 s, expires at 390 s: 200 s after the read) the value is
    // read again to replace it, without a version probe first.
    clock.advance(S(199)).await;
    assert_eq!(memory.calls().fetch, fetches);
    clock.advance(S(2)).await;
    assert_eq!(memory.calls().fetch, fetches + 1);
    assert_eq!(memory.calls().version, 1);
}

#[tokio::test]
async fn lease_renewed_at_two_thirds_of_ttl() {
    let (clock, memory, secrets) = setup();
    memory.lease("db", S(30), S(3600), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let mut events = handle.subscribe();
    // ⅔·30 s + ⅓·grace, grace in [3 s, 6 s): renewal in [21 s, 22 s).
    clock.advance(Duration::from_millis(20_900)).await;
    assert_eq!(memory.calls().renew, 0);
    clock.advance(Duration::from_millis(1_100)).await;
    assert_eq!(memory.calls().renew, 1);
    let evs = drain(&mut events);
    assert!(
        matches!(&evs[..], [RotationEvent::Renewed { ttl, .. }] if *ttl == S(30)),
        "{evs:?}"
    );
    assert_eq!(handle.current().lease().unwrap().ttl, S(30));
    assert_eq!(memory.calls().fetch, 1);
}

/// The LifetimeWatcher contract, checked every 100 ms of (manual) time for two minutes: the
/// value a handle serves always has a valid lease; before the max TTL a new one is issued while
/// the old one is still valid; `Rotated` names both.
#[tokio::test]
async fn lease_reissued_before_max_ttl_with_overlap() {
    let (clock, memory, secrets) = setup();
    memory.lease("db", S(10), S(30), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let mut events = handle.subscribe();
    let mut rotations = Vec::new();
    let mut last = handle.current().lease().unwrap().id.clone();
    for _ in 0..1200 {
        clock.advance(Duration::from_millis(100)).await;
        let current = handle.current().lease().unwrap().id.clone();
        assert!(
            memory.lease_valid(&current),
            "served an invalid lease at {:?}",
            clock.elapsed()
        );
        if current != last {
            // The old lease is still valid when the new one takes over.
            assert!(
                memory.lease_valid(&last),
                "no overlap at {:?}",
                clock.elapsed()
            );
            rotations.push(clock.elapsed());
            last = current;
        }
    }
    // Each lease lives 30 s; re-issued before that, so at least 4 rotations in 120 s.
    assert!(rotations.len() >= 4, "{rotations:?}");
    let evs = drain(&mut events);
    let rot = rotated(&evs);
    assert_eq!(rot.len(), rotations.len());
    assert_eq!(rot[0], (v("db/1"), v("db/2")));
    assert!(
        evs.iter()
            .any(|e| matches!(e, RotationEvent::Renewed { .. }))
    );
    assert!(!evs.iter().any(|e| matches!(
        e,
        RotationEvent::RefreshFailed { .. } | RotationEvent::Expired { .. }
    )));
}

#[tokio::test]
async fn non_renewable_lease_is_reissued_at_two_thirds() {
    let (clock, memory, secrets) = setup();
    memory.lease("db", S(30), S(30), false);
    let handle = secrets.handle("mem://db").await.unwrap();
    clock.advance(S(20)).await;
    assert_eq!(memory.calls().fetch, 1);
    clock.advance(S(3)).await;
    assert_eq!(memory.calls().renew, 0);
    assert_eq!(memory.calls().fetch, 2);
    assert_eq!(handle.current().version(), v("db/2").as_ref());
}

#[tokio::test]
async fn replaced_lease_revoked_after_overlap() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .revoke_replaced_leases_after(S(2))
        .build()
        .unwrap();
    memory.lease("db", S(30), S(30), false);
    let _handle = secrets.handle("mem://db").await.unwrap();
    clock.advance(S(23)).await; // re-issued in [21 s, 22 s)
    assert!(memory.lease_valid("db/1"));
    clock.advance(S(2)).await;
    assert!(
        !memory.lease_valid("db/1"),
        "old lease revoked after the overlap"
    );
    assert!(memory.lease_valid("db/2"));
    assert_eq!(memory.calls().revoke, 1);
}

#[tokio::test]
async fn failures_back_off_and_recover_serving_last_good_value() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(100)).await;
    let evs = drain(&mut events);
    let Some(RotationEvent::RefreshFailed {
        error,
        attempt: 1,
        retry_in,
        ..
    }) = evs.first()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(error.kind(), &ErrorKind::Unavailable);
    assert!(*retry_in <= S(1), "first backoff within 1 s: {retry_in:?}");
    // Backoff doubles (full jitter): over the next 60 s at most ~7 attempts, not hundreds.
    clock.advance(S(60)).await;
    let probes = memory.calls().version;
    assert!((3..=9).contains(&probes), "{probes} probes");
    assert_eq!(handle.current().expose_str().unwrap(), "v1");
    assert_eq!(handle.try_current().unwrap().expose_str().unwrap(), "v1");
    memory.recover();
    clock.advance(S(300)).await;
    let evs = drain(&mut events);
    assert!(
        evs.iter()
            .any(|e| matches!(e, RotationEvent::Recovered { failures, .. } if *failures >= 3)),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, RotationEvent::Expired { .. }))
    );
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.throttle(Some(S(45)));
    clock.advance(S(100)).await;
    assert_eq!(memory.calls().version, 1);
    let evs = drain(&mut events);
    assert!(
        matches!(evs.first(), Some(RotationEvent::RefreshFailed { retry_in, .. }) if *retry_in >= S(45)),
        "{evs:?}"
    );
    // The throttled probe ran in [80 s, 100 s]; the retry is no sooner than 45 s after it.
    clock.advance(S(24)).await;
    assert_eq!(memory.calls().version, 1, "no call before Retry-After");
    memory.recover();
    clock.advance(S(60)).await;
    assert_eq!(memory.calls().version, 2);
    assert!(
        drain(&mut events)
            .iter()
            .any(|e| matches!(e, RotationEvent::Recovered { .. }))
    );
    assert!(handle.try_current().is_ok());
}

#[tokio::test]
async fn lease_expiring_during_outage_is_reported_then_replaced() {
    let (clock, memory, secrets) = setup();
    memory.lease("db", S(30), S(3600), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let mut events = handle.subscribe();
    let first = handle.current().lease().unwrap().id.clone();
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(31)).await;
    let evs = drain(&mut events);
    assert!(
        evs.iter().any(|e| matches!(e, RotationEvent::Expired { version, .. } if version.as_ref().map(Version::as_str) == Some(first.as_str()))),
        "{evs:?}"
    );
    assert_eq!(
        handle.try_current().unwrap_err().kind(),
        &ErrorKind::Expired
    );
    // current() still answers with the last value; it never blocks or panics.
    assert_eq!(handle.current().lease().unwrap().id, first);
    memory.recover();
    clock.advance(S(301)).await;
    let evs = drain(&mut events);
    assert_eq!(rotated(&evs).len(), 1, "{evs:?}");
    assert!(handle.try_current().is_ok());
    assert!(memory.lease_valid(&handle.current().lease().unwrap().id));
}

#[tokio::test]
async fn max_staleness_expires_static_values() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .max_staleness(S(250))
        .build()
        .unwrap();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(249)).await;
    assert!(handle.try_current().is_ok());
    clock.advance(S(2)).await;
    assert_eq!(
        handle.try_current().unwrap_err().kind(),
        &ErrorKind::Expired
    );
    assert!(
        drain(&mut events)
            .iter()
            .any(|e| matches!(e, RotationEvent::Expired { .. }))
    );
    let e = secrets.get_secret("mem://app").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Expired);
}

#[tokio::test]
async fn deletion_is_an_event_and_the_value_is_kept() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.delete("app");
    clock.advance(S(100)).await;
    let evs = drain(&mut events);
    assert!(
        matches!(evs.first(), Some(RotationEvent::Deleted { version, .. }) if *version == v("1")),
        "{evs:?}"
    );
    assert_eq!(handle.current().expose_str().unwrap(), "v1");
    memory.set("app", "v2");
    clock.advance(S(600)).await;
    assert_eq!(handle.current().expose_str().unwrap(), "v2");
}

#[tokio::test]
async fn field_handle_refuses_a_version_without_its_field() {
    let (clock, memory, secrets) = setup();
    memory.set("app", r#"{"key":"k1"}"#);
    let handle = secrets.handle("mem://app#key").await.unwrap();
    let mut events = handle.subscribe();
    memory.set("app", r#"{"other":"x"}"#);
    clock.advance(S(100)).await;
    let evs = drain(&mut events);
    assert!(
        matches!(evs.first(), Some(RotationEvent::RefreshFailed { error, .. }) if error.kind() == &ErrorKind::InvalidValue),
        "{evs:?}"
    );
    assert_eq!(handle.current().expose_str().unwrap(), "k1");
    memory.set("app", r#"{"key":"k3"}"#);
    clock.advance(S(100)).await;
    assert_eq!(handle.current().expose_str().unwrap(), "k3");
    assert_eq!(handle.reference().to_string(), "mem://app#key");
}

fn text(secret: keyrack_core::Secret) -> String {
    secret.expose_str().unwrap().to_owned()
}

#[tokio::test]
async fn reads_without_a_handle_recheck_when_due() {
    // No grace: a read of a due value waits for its check (the behaviour before
    // stale-while-revalidate, kept for users who ask for it).
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .stale_while_revalidate(Duration::ZERO)
        .build()
        .unwrap();
    memory.set("app", "v1");
    secrets.get_secret("mem://app").await.unwrap();
    memory.set("app", "v2");
    clock.advance(S(50)).await;
    assert_eq!(text(secrets.get_secret("mem://app").await.unwrap()), "v1");
    clock.advance(S(51)).await;
    assert_eq!(text(secrets.get_secret("mem://app").await.unwrap()), "v2");
    assert_eq!(memory.calls().version, 1);
    // A failed re-check serves the last good value (no hard expiry configured).
    memory.set("app", "v3");
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(101)).await;
    assert_eq!(text(secrets.get_secret("mem://app").await.unwrap()), "v2");
}

#[tokio::test]
async fn a_due_value_is_served_at_once_and_checked_in_the_background() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    secrets.get_secret("mem://app").await.unwrap();
    memory.set("app", "v2");
    // Every call now takes 10 s: a read that waited for one would not complete at its first poll.
    memory.set_latency(S(10));
    clock.advance(S(101)).await;
    for _ in 0..20 {
        let read = secrets.get_secret("mem://app").now_or_never();
        assert_eq!(text(read.expect("served without waiting").unwrap()), "v1");
    }
    // Twenty reads of the due value started one check between them.
    keyrack_core::testkit::settle().await;
    assert_eq!(memory.calls().version, 1);
    clock.advance(S(20)).await;
    assert_eq!(
        memory.calls().fetch,
        2,
        "the version moved: one read of the new value"
    );
    let read = secrets.get_secret("mem://app").now_or_never();
    assert_eq!(text(read.expect("a hit").unwrap()), "v2");
}

#[tokio::test]
async fn a_hung_backend_does_not_hold_reads_within_the_grace() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    secrets.get_secret("mem://app").await.unwrap();
    memory.hang();
    clock.advance(S(101)).await;
    // Reads go on being answered at once while the check hangs and times out, and afterwards
    // while its retries back off.
    for _ in 0..60 {
        let read = secrets.get_secret("mem://app").now_or_never();
        assert_eq!(text(read.expect("served without waiting").unwrap()), "v1");
        clock.advance(S(1)).await;
    }
    let calls = memory.calls();
    assert!(
        calls.version + calls.fetch <= 4,
        "60 reads in a minute of a hang started {} calls",
        calls.version + calls.fetch - 1
    );
    assert!(matches!(
        secrets.health().secrets[0].state,
        keyrack_core::SecretState::Failing { .. }
    ));
}

#[tokio::test]
async fn past_the_grace_a_read_waits_for_the_check() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .stale_while_revalidate(S(30))
        .build()
        .unwrap();
    memory.set("app", "v1");
    secrets.get_secret("mem://app").await.unwrap();
    memory.set("app", "v2");
    memory.set_latency(S(1));
    // Checked at 80–100 s (20 % jitter): by 131 s it is past the 30 s grace.
    clock.advance(S(131)).await;
    let mut read = Box::pin(secrets.get_secret("mem://app"));
    assert!((&mut read).now_or_never().is_none(), "waits for the check");
    clock.advance(S(2)).await;
    assert_eq!(text(read.await.unwrap()), "v2");
}

#[tokio::test]
async fn a_fresh_read_reaches_the_backend_or_times_out() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    secrets.get_secret("mem://app").await.unwrap();
    memory.set("app", "v2");
    clock.advance(S(2)).await;
    // Cached and fresh, but the caller wants the backend's word: the version probe, then a read.
    let secret = secrets.get_secret_fresh("mem://app", S(5)).await.unwrap();
    assert_eq!(text(secret), "v2");
    assert_eq!((memory.calls().version, memory.calls().fetch), (1, 2));
    // Concurrent fresh reads share one check.
    clock.advance(S(2)).await;
    let reads = futures_util::future::join_all(
        (0..10).map(|_| secrets.get_secret_fresh("mem://app", S(5))),
    )
    .await;
    assert!(reads.iter().all(Result::is_ok));
    assert_eq!(memory.calls().version, 2);
    // A refused check is the caller's error, not the cached value.
    clock.advance(S(2)).await;
    memory.fail(ErrorKind::PermissionDenied);
    let e = secrets
        .get_secret_fresh("mem://app", S(5))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PermissionDenied);
    // A hung backend: a Timeout at the caller's deadline, on the client's clock.
    memory.recover();
    memory.hang();
    clock.advance(S(2)).await;
    let mut read = Box::pin(secrets.get_secret_fresh("mem://app", S(3)));
    assert!((&mut read).now_or_never().is_none());
    clock.advance(S(3)).await;
    let e = read.await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout);
    assert_eq!(
        e.reference().map(ToString::to_string).as_deref(),
        Some("mem://app")
    );
    // Plain reads were never held up and still serve the last good value.
    let read = secrets.get_secret("mem://app").now_or_never();
    assert_eq!(text(read.expect("a hit").unwrap()), "v2");
}

#[tokio::test]
async fn a_fresh_read_of_a_lease_renews_it_rather_than_issue_another() {
    let (clock, memory, secrets) = setup();
    memory.lease("db", S(60), S(600), true);
    memory.set("db", r#"{"username":"u","password":"p"}"#);
    let first = secrets.get_secret("mem://db#username").await.unwrap();
    clock.advance(S(5)).await;
    let again = secrets
        .get_secret_fresh("mem://db#username", S(5))
        .await
        .unwrap();
    assert_eq!(memory.calls().renew, 1);
    assert_eq!(memory.calls().fetch, 1, "no second credential issued");
    assert_eq!(
        first.lease().map(|l| l.id.clone()),
        again.lease().map(|l| l.id.clone())
    );
    // A source that cannot renew: the lease is re-issued.
    memory.lease("once", S(60), S(600), false);
    memory.set("once", "x");
    secrets.get_secret("mem://once").await.unwrap();
    clock.advance(S(5)).await;
    secrets.get_secret_fresh("mem://once", S(5)).await.unwrap();
    assert_eq!(memory.calls().fetch, 3);
}

#[tokio::test]
async fn push_feed_delivers_changes_without_polling() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone()).watchable();
    let secrets = builder(&clock, &memory).build().unwrap();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    keyrack_core::clock::settle().await;
    memory.set("app", "v2");
    // The feed's look right after the handle opened was a call: the next waits a second.
    clock.advance(S(1)).await;
    assert_eq!(rotated(&drain(&mut events)), vec![(v("1"), v("2"))]);
    // The first read, the feed's look when it opened, and the change: a probe and a read.
    assert_eq!(
        memory.calls().version + memory.calls().fetch,
        4,
        "{:?}",
        memory.calls()
    );
}

#[tokio::test]
async fn refresh_now_checks_immediately() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    memory.set("app", "v2");
    handle.refresh_now().await.unwrap();
    assert_eq!(handle.current().expose_str().unwrap(), "v2");
    memory.fail(ErrorKind::PermissionDenied);
    // A second refresh within a second of the last call waits for the second to pass.
    let h = handle.clone();
    let again = tokio::spawn(async move { h.refresh_now().await });
    clock.advance(S(1)).await;
    let e = again.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PermissionDenied);
    assert_eq!(handle.current().expose_str().unwrap(), "v2");
}

#[tokio::test]
async fn entries_behind_handles_survive_eviction() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory).cache_capacity(4).build().unwrap();
    memory.lease("db", S(600), S(6000), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let lease = handle.current().lease().unwrap().id.clone();
    for i in 0..50 {
        memory.set(format!("s{i}"), "x");
        secrets.get_secret(format!("mem://s{i}")).await.unwrap();
        secrets.run_pending_tasks().await;
    }
    let again = secrets.get_secret("mem://db").await.unwrap();
    assert_eq!(
        again.lease().unwrap().id,
        lease,
        "no second lease for a held secret"
    );
    // moka applies evictions in batches of housekeeping: give it a few rounds.
    for _ in 0..10 {
        secrets.run_pending_tasks().await;
    }
    assert!(
        secrets.held() <= 4 + 1 + 1,
        "cache bounded: {}",
        secrets.held()
    );
    assert_eq!(memory.calls().fetch, 51);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_its_task() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let second = handle.clone();
    drop(handle);
    clock.advance(S(100)).await;
    assert_eq!(memory.calls().version, 1, "still watched by the clone");
    drop(second);
    clock.advance(S(1000)).await;
    assert_eq!(memory.calls().version, 1);
}

#[tokio::test]
async fn shutdown_stops_tasks_and_revokes_when_asked() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock, &memory)
        .revoke_on_shutdown(true)
        .build()
        .unwrap();
    memory.lease("db", S(60), S(600), true);
    memory.set("app", "v1");
    let db = secrets.handle("mem://db").await.unwrap();
    let _app = secrets.handle("mem://app").await.unwrap();
    let lease = db.current().lease().unwrap().id.clone();
    secrets.shutdown().await;
    assert!(!memory.lease_valid(&lease));
    let calls = memory.calls();
    clock.advance(S(3600)).await;
    assert_eq!(memory.calls(), calls, "nothing runs after shutdown");
    let e = secrets.get_secret("mem://app").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Shutdown);
    assert!(
        db.current().lease().is_some(),
        "handles keep their last value"
    );
}

#[tokio::test]
async fn prefetch_uses_one_batch_call() {
    let (_clock, memory, secrets) = setup();
    let refs: Vec<String> = (0..100)
        .map(|i| {
            memory.set(format!("s{i}"), format!("value-{i}"));
            format!("mem://s{i}")
        })
        .chain(["mem://missing".to_owned(), "bad uri".to_owned()])
        .collect();
    let results = secrets.prefetch(&refs).await;
    assert_eq!(memory.calls().fetch_many, 1);
    assert_eq!(memory.calls().fetch, 0);
    for (i, r) in results.iter().take(100).enumerate() {
        assert_eq!(
            r.as_ref().unwrap().expose_str().unwrap(),
            format!("value-{i}")
        );
    }
    assert_eq!(
        results[100].as_ref().unwrap_err().kind(),
        &ErrorKind::NotFound
    );
    assert_eq!(
        results[101].as_ref().unwrap_err().kind(),
        &ErrorKind::InvalidRef
    );
    secrets.get_secret("mem://s42").await.unwrap();
    assert_eq!(memory.calls().fetch, 0, "prefetched values are cache hits");
}

#[tokio::test]
async fn global_events_see_every_secret() {
    let (clock, memory, secrets) = setup();
    let mut all = secrets.events();
    memory.set("a", "1");
    memory.set("b", "1");
    let _a = secrets.handle("mem://a").await.unwrap();
    let _b = secrets.handle("mem://b").await.unwrap();
    memory.set("a", "2");
    memory.set("b", "2");
    clock.advance(S(100)).await;
    let mut names: Vec<String> = drain(&mut all)
        .iter()
        .filter_map(|e| e.secret().map(ToString::to_string))
        .collect();
    names.sort();
    assert_eq!(names, ["mem://a", "mem://b"]);
}

#[tokio::test]
async fn builder_rejects_bad_settings() {
    let memory = MemorySource::new();
    let e = Secrets::builder()
        .source("Bad Name", memory.clone())
        .refresh_jitter(2.0)
        .refresh_interval(Duration::ZERO)
        .refresh_interval_for("nonsense", S(1))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    let msg = e.to_string();
    // The unparsable reference is not quoted (it might be a value passed by mistake).
    for needle in ["Bad Name", "jitter", "interval", "missing `://`"] {
        assert!(msg.contains(needle), "{needle} in {msg}");
    }
    let e = Secrets::builder()
        .source("mem", memory.clone())
        .shared_source("mem", Arc::new(memory))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("twice"));
}

#[tokio::test]
async fn opening_a_push_feed_does_not_reissue_a_lease() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone()).watchable();
    let secrets = builder(&clock, &memory).build().unwrap();
    memory.lease("db", S(60), S(600), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    keyrack_core::clock::settle().await;
    assert_eq!(
        memory.calls().fetch,
        1,
        "one credential, not a second at handle creation"
    );
    assert_eq!(handle.current().version(), v("db/1").as_ref());
}

#[tokio::test]
async fn prefetch_does_not_fetch_a_secret_already_held() {
    let (_clock, memory, secrets) = setup();
    memory.lease("db", S(60), S(600), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let results = secrets.prefetch(&["mem://db#username"]).await;
    assert_eq!(memory.calls().fetch_many, 0);
    assert_eq!(memory.calls().fetch, 1);
    let user = results[0].as_ref().unwrap();
    assert_eq!(
        user.lease(),
        handle.current().lease(),
        "the held lease, not a second one"
    );
}

/// Nested fields (JSON Pointer, RFC 6901) share the secret's one read with top-level fields.
#[tokio::test]
async fn json_pointer_fields_share_one_read() {
    let (_clock, memory, secrets) = setup();
    memory.set(
        "app",
        r#"{"db":{"hosts":["h0","h1"],"password":"pw"},"user":"u"}"#,
    );
    let host = secrets.get_secret("mem://app#/db/hosts/1").await.unwrap();
    let password = secrets.handle("mem://app#/db/password").await.unwrap();
    let user = secrets.get_secret("mem://app#user").await.unwrap();
    assert_eq!(host.expose_str().unwrap(), "h1");
    assert_eq!(password.current().expose_str().unwrap(), "pw");
    assert_eq!(user.expose_str().unwrap(), "u");
    assert_eq!(memory.calls().fetch, 1);
    let e = secrets.get_secret("mem://app#/db/port").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidValue);
    assert!(
        e.to_string().contains("`/db/port` is not in the value"),
        "{e}"
    );
}

/// A re-issue's `Rotated` says when it happened, when the replaced lease ends (the deadline for
/// draining what uses it) and the new lease's TTL; every event carries its time.
#[tokio::test]
async fn rotated_carries_the_old_lease_end_and_the_new_ttl() {
    let (clock, memory, secrets) = setup();
    memory.lease("db", S(60), S(90), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let first = handle.current().lease().unwrap().clone();
    let mut events = handle.subscribe();
    let mut rotated = None;
    for _ in 0..200 {
        clock.advance(S(1)).await;
        if let Some(e) = drain(&mut events)
            .into_iter()
            .find(|e| matches!(e, RotationEvent::Rotated { .. }))
        {
            rotated = Some((e, clock.wall()));
            break;
        }
    }
    let (event, when) = rotated.expect("re-issued before the max TTL");
    let RotationEvent::Rotated {
        at,
        old_lease_ends,
        new_lease_ttl,
        ..
    } = &event
    else {
        unreachable!()
    };
    // During the last second advanced.
    assert!(*at <= when && *at > when - S(1), "{at:?} {when:?}");
    assert_eq!(event.at(), Some(*at));
    // Renewed up to its max TTL (90 s) before it was replaced.
    assert_eq!(*old_lease_ends, Some(first.issued_at + S(90)));
    assert!(
        old_lease_ends.unwrap() > *at,
        "re-issued while the old lease was valid"
    );
    assert_eq!(*new_lease_ttl, Some(handle.current().lease().unwrap().ttl));
}
