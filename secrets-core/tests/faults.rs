//! The engine on a backend's worst day: each test reproduces an outage-class defect (numbered as
//! in the issue that reported them) and failed before its fix. Manual clock, memory source, and
//! the testkit's `Scripted` wrapper for faults the memory source cannot make alone.
#![allow(clippy::unwrap_used)] // test helpers unwrap too

use std::time::Duration;

use keyrack_core::sources::MemorySource;
use keyrack_core::testkit::{Fault, LogCapture, Op, Scripted, drain};
use keyrack_core::{
    Clock, ErrorKind, ManualClock, RotationEvent, RotationEvents, Secrets, SecretsBuilder,
};

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn builder(clock: &ManualClock) -> SecretsBuilder {
    Secrets::builder()
        .clock(clock.clone())
        .refresh_interval(S(100))
        .refresh_jitter(0.2)
        .jitter_seed(7)
}

/// A memory source behind `Scripted`, registered as `mem`.
fn scripted(clock: &ManualClock) -> (MemorySource, Scripted) {
    let memory = MemorySource::with_clock(clock.clone());
    let scripted = Scripted::new(memory.clone(), clock.clone());
    (memory, scripted)
}

/// Advance in steps of `step` for `total`, returning the first moment (elapsed on the clock) at
/// which `events` delivered an event matching `want`.
async fn first_event(
    clock: &ManualClock,
    events: &mut RotationEvents,
    total: Duration,
    step: Duration,
    want: impl Fn(&RotationEvent) -> bool,
) -> Option<Duration> {
    let end = clock.elapsed() + total;
    while clock.elapsed() < end {
        clock.advance(step).await;
        if drain(events).iter().any(&want) {
            return Some(clock.elapsed());
        }
    }
    None
}

// 1. A reader held a front shard's read lock while moka's `get` ran housekeeping, whose eviction
//    listener took the same shard's write lock: once the cache was full, readers stopped.
//    Reproduced by leaving evictions pending (fewer new entries than moka's write flush point)
//    and then hitting one secret until a sampled `get` flushes them: some evicted reference
//    shares the hit's shard.
#[test]
fn a_full_cache_never_stops_a_reader() {
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 0..20 {
                let memory = MemorySource::new();
                for i in 0..60 {
                    memory.set(format!("r{round}-s{i}"), "x");
                }
                let secrets = Secrets::builder()
                    .source("mem", memory)
                    .cache_capacity(16)
                    .build()
                    .unwrap();
                let hot = format!("mem://r{round}-s0");
                secrets.get_secret(hot.as_str()).await.unwrap();
                secrets.run_pending_tasks().await;
                for i in 1..48 {
                    secrets
                        .get_secret(format!("mem://r{round}-s{i}"))
                        .await
                        .unwrap();
                }
                for _ in 0..64 * 64 {
                    secrets.get_secret(hot.as_str()).await.unwrap();
                }
            }
        });
        let _ = done.send(());
    });
    // A deadlock detector, not a timing assertion: the work takes well under a second.
    match finished.recv_timeout(S(120)) {
        Ok(()) => worker.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: show why.
            worker.join().unwrap();
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("readers of a full cache made no progress for 120 s: deadlock")
        }
    }
}

// 1b. The same under contention: many tasks, hot and cold references, a small cache.
#[test]
fn a_full_cache_serves_concurrent_readers() {
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let memory = MemorySource::new();
            for i in 0..400 {
                memory.set(format!("s{i}"), "x");
            }
            let secrets = Secrets::builder()
                .source("mem", memory)
                .cache_capacity(16)
                .build()
                .unwrap();
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let secrets = secrets.clone();
                    tokio::spawn(async move {
                        let mut rng = fastrand::Rng::with_seed(t);
                        for _ in 0..20_000 {
                            let i = if rng.u8(..10) < 9 {
                                rng.usize(..4)
                            } else {
                                rng.usize(..400)
                            };
                            secrets.get_secret(format!("mem://s{i}")).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let _ = done.send(());
    });
    match finished.recv_timeout(S(120)) {
        Ok(()) => worker.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => worker.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("readers of a full cache made no progress for 120 s: deadlock")
        }
    }
}

// 3. A refused version probe (a policy without metadata access) failed every check: rotations
//    were never seen and, with max_staleness, a readable secret expired.
#[tokio::test]
async fn a_refused_probe_falls_back_to_reading_and_says_so_once() {
    let clock = ManualClock::new();
    let (memory, backend) = scripted(&clock);
    backend.set_fault(
        Op::Version,
        Some(Fault::Fail(ErrorKind::PermissionDenied, None)),
    );
    let secrets = builder(&clock)
        .source("mem", backend.clone())
        .max_staleness(S(250))
        .build()
        .unwrap();
    memory.set("app", "v1");
    let logs = LogCapture::start();
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.set("app", "v2");
    clock.advance(S(101)).await;
    assert_eq!(handle.current().expose_str().unwrap(), "v2");
    clock.advance(S(1000)).await;
    assert!(handle.try_current().is_ok(), "a readable secret expired");
    let evs = drain(&mut events);
    assert!(
        !evs.iter().any(|e| matches!(
            e,
            RotationEvent::RefreshFailed { .. } | RotationEvent::Expired { .. }
        )),
        "{evs:?}"
    );
    memory.set("app", "v3");
    handle.refresh_now().await.unwrap();
    assert_eq!(handle.current().expose_str().unwrap(), "v3");
    // Probed once, refused, never asked again.
    assert_eq!(backend.count(Op::Version), 1);
    let warned = logs.text().matches("version probe was refused").count();
    assert_eq!(warned, 1, "{}", logs.text());
}

// 4a. A lease of TTL 0 made the driver loop with the clock standing still.
#[tokio::test]
async fn a_lease_of_ttl_zero_is_not_fetched_in_a_loop() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.lease("db", Duration::ZERO, S(60), true);
    let e = secrets.get_secret("mem://db").await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Expired, "{e}");
    let handle = secrets.handle("mem://db").await.unwrap();
    clock.advance(S(60)).await;
    let fetches = memory.calls().fetch;
    assert!(fetches <= 10, "{fetches} fetches in a minute");
    assert!(handle.try_current().is_err());
}

// 4b. A capped lease re-issued with the same lease id re-issued in a loop.
#[tokio::test]
async fn a_reissue_answered_with_the_same_lease_is_not_repeated_in_a_loop() {
    let clock = ManualClock::new();
    let (memory, backend) = scripted(&clock);
    let secrets = builder(&clock)
        .source("mem", backend.clone())
        .build()
        .unwrap();
    memory.lease("db", S(10), S(10), true);
    backend.reissue_same_lease(true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let mut events = handle.subscribe();
    clock.advance(S(60)).await;
    let fetches = backend.count(Op::Fetch);
    assert!(fetches <= 12, "{fetches} fetches in a minute");
    assert!(
        drain(&mut events)
            .iter()
            .any(|e| matches!(e, RotationEvent::Expired { .. }))
    );
}

// 5. A wrong `#field` and a refused permission reached the backend on every call.
#[tokio::test]
async fn failed_reads_are_remembered_like_missing_secrets() {
    let clock = ManualClock::new();
    let (memory, backend) = scripted(&clock);
    let secrets = builder(&clock)
        .source("mem", backend.clone())
        .build()
        .unwrap();
    memory.set("app", r#"{"user":"u"}"#);
    memory.set("locked", "x");
    for _ in 0..100 {
        let e = secrets.get_secret("mem://app#pasword").await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidValue);
    }
    assert_eq!(backend.count(Op::Fetch), 1);
    backend.set_fault(
        Op::Fetch,
        Some(Fault::Fail(ErrorKind::PermissionDenied, None)),
    );
    for _ in 0..100 {
        let e = secrets.get_secret("mem://locked").await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::PermissionDenied);
    }
    assert_eq!(backend.count(Op::Fetch), 2);
    // Remembered for the negative TTL (5 s), then asked again.
    backend.set_fault(Op::Fetch, None);
    clock.advance(S(6)).await;
    assert!(secrets.get_secret("mem://locked").await.is_ok());
}

// 6. `Expired` waited for a hanging request: the clock was read before it and used after it.
#[tokio::test]
async fn expiry_is_reported_at_the_deadline_while_the_backend_hangs() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.lease("db", S(10), S(3600), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let mut events = handle.subscribe();
    memory.hang();
    let at = first_event(&clock, &mut events, S(30), MS(100), |e| {
        matches!(e, RotationEvent::Expired { .. })
    })
    .await
    .expect("no Expired event");
    assert!(
        at <= MS(10_100),
        "Expired at {at:?}, the lease ended at 10 s"
    );
    // The hanging renewal times out (30 s after it started at ~7 s): the retry it announces is
    // counted from then, and soon, since the value is expired.
    let failed = first_event(&clock, &mut events, S(40), MS(100), |e| {
        matches!(e, RotationEvent::RefreshFailed { error, retry_in, .. }
            if error.kind() == &ErrorKind::Timeout && *retry_in <= S(5))
    })
    .await;
    assert!(
        failed.is_some(),
        "no timely retry announced after the timeout"
    );
}

// 7. An expired leased secret waited out its grown backoff after the backend came back
//    (22 s and 45 s measured), and forced refreshes during the outage grew it further.
#[tokio::test]
async fn an_expired_secret_is_replaced_within_seconds_of_recovery() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.lease("db", S(30), S(3600), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let first = handle.current().lease().unwrap().id.clone();
    memory.fail(ErrorKind::Unavailable);
    for _ in 0..60 {
        // The application asks for a refresh after each failed login, as it would.
        let h = handle.clone();
        tokio::spawn(async move { h.refresh_now().await });
        clock.advance(S(10)).await;
    }
    assert!(
        handle.try_current().is_err(),
        "still valid after 10 minutes?"
    );
    memory.recover();
    let recovered_at = clock.elapsed();
    let mut replaced = None;
    for _ in 0..100 {
        clock.advance(MS(100)).await;
        if handle.try_current().is_ok() {
            replaced = Some(clock.elapsed() - recovered_at);
            break;
        }
    }
    let after = replaced.expect("not replaced within 10 s of recovery");
    assert!(after <= S(5), "replaced {after:?} after recovery");
    assert_ne!(handle.current().lease().unwrap().id, first);
}

// 8a. A 503's Retry-After was dropped, and the wait was counted from the request's start.
#[tokio::test]
async fn retry_after_is_honoured_on_any_failure_from_the_answer() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.set_latency(S(1));
    memory.fail_with(ErrorKind::Unavailable, Some(S(4)));
    clock.advance(S(100)).await; // the check is due in 80-100 s
    let evs = drain(&mut events);
    let failed = evs
        .iter()
        .find_map(|e| match e {
            RotationEvent::RefreshFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .expect("no failure");
    assert!(failed >= S(4), "retry in {failed:?} despite Retry-After: 4");
    let calls = memory.calls().version;
    clock.advance(MS(3900)).await;
    assert_eq!(memory.calls().version, calls, "asked again within 4 s");
}

// 8b. A 429 without a header was retried after 0.1-0.95 s; Key Vault asks for 1, 2, 4, 8, 16 s.
#[tokio::test]
async fn throttling_without_a_hint_backs_off_in_whole_steps() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.throttle(None);
    clock.advance(S(100)).await;
    clock.advance(S(40)).await;
    let waits: Vec<Duration> = drain(&mut events)
        .iter()
        .filter_map(|e| match e {
            RotationEvent::RefreshFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert!(waits.len() >= 4, "{waits:?}");
    for (n, wait) in waits.iter().take(5).enumerate() {
        let step = S(1 << n);
        assert!(
            *wait >= step && *wait <= step + step / 4,
            "wait {n} was {wait:?}: {waits:?}"
        );
    }
}

// 10a. A handle cloned while shutdown ran started a driver on the closed entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_cloned_during_shutdown_starts_nothing() {
    for _ in 0..50 {
        let memory = MemorySource::new();
        memory.set("app", "v1");
        let secrets = Secrets::builder()
            .source("mem", memory.clone())
            .build()
            .unwrap();
        let handle = secrets.handle("mem://app").await.unwrap();
        let cloner = std::thread::spawn({
            let handle = handle.clone();
            move || (0..100).map(|_| handle.clone()).collect::<Vec<_>>()
        });
        secrets.shutdown().await;
        let clones = cloner.join().unwrap();
        drop(handle);
        drop(clones);
        // Aborted tasks end at their next await: give them a moment, then none may be left.
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..2_000 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            // The worker threads drop aborted tasks; this thread only waits for them.
            std::thread::sleep(MS(1));
        }
        assert_eq!(metrics.num_alive_tasks(), 0, "a task outlived shutdown");
        assert_eq!(secrets.held(), 0, "an entry is still held after shutdown");
    }
}

// 10b. A re-issue under way during shutdown installed a new lease after shutdown revoked the
//      old one, and the client kept calling the backend.
#[tokio::test]
async fn nothing_is_leased_or_called_after_shutdown() {
    let clock = ManualClock::new();
    let (memory, backend) = scripted(&clock);
    let secrets = builder(&clock)
        .source("mem", backend.clone())
        .revoke_on_shutdown(true)
        .build()
        .unwrap();
    memory.lease("db", S(10), S(10), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    memory.set_latency(S(2));
    let refresh = tokio::spawn({
        let handle = handle.clone();
        async move { handle.refresh_now().await }
    });
    clock.advance(S(1)).await; // the re-issue is waiting for its answer
    memory.set_latency(Duration::ZERO);
    secrets.shutdown().await;
    clock.advance(S(5)).await;
    assert_eq!(
        refresh.await.unwrap().unwrap_err().kind(),
        &ErrorKind::Shutdown
    );
    assert_eq!(memory.valid_leases(), Vec::<String>::new());
    clock.advance(S(3600)).await;
    assert_eq!(backend.calls_after_shutdown(), 0);
    drop(handle);
}

// 11. Durations: "never" panicked on Instant overflow; intervals of 1 ns were accepted.
#[tokio::test]
async fn huge_durations_mean_never_and_tiny_intervals_are_refused() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .refresh_interval(Duration::MAX)
        .max_staleness(Duration::MAX)
        .negative_cache_ttl(Duration::MAX)
        .revoke_replaced_leases_after(Duration::MAX)
        .backoff(keyrack_core::Backoff {
            initial: S(1),
            max: Duration::MAX,
        })
        .build()
        .unwrap();
    memory.set("app", "v1");
    memory.lease("db", S(10), S(30), true);
    let _app = secrets.handle("mem://app").await.unwrap();
    let _db = secrets.handle("mem://db").await.unwrap();
    assert!(secrets.get_secret("mem://missing").await.is_err());
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(3600)).await;
    memory.recover();
    clock.advance(S(3600)).await;
    assert_eq!(memory.calls().version, 0, "checked within 'never'");

    for tiny in [Duration::from_nanos(1), MS(1), MS(999)] {
        let e = Secrets::builder()
            .refresh_interval(tiny)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config, "{tiny:?}");
        let e = Secrets::builder()
            .refresh_interval_for("mem://app", tiny)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config, "{tiny:?}");
    }
    let e = Secrets::builder().cache_capacity(0).build().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
}

// 12. References: a value passed where a reference was expected was echoed in the error; a
//     1 MiB reference was accepted; a selector the source does not have was ignored.
#[tokio::test]
async fn reference_errors_quote_no_input_and_selectors_are_checked() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("app", "v1");
    for input in ["s3cr3t-hunter2", "hunter2://", "mem://app?s3cr3t-hunter2"] {
        let e = secrets.get_secret(input).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef);
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            !text.contains("hunter2") || input.starts_with("hunter2"),
            "{text}"
        );
    }
    let huge = format!("mem://{}", "a".repeat(1 << 20));
    let e = secrets.get_secret(huge.as_str()).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidRef);
    assert!(e.to_string().len() < 200, "{e}");
    assert_eq!(memory.calls().fetch, 0);
    let e = secrets
        .get_secret("mem://app?stage=AWSCURRENT")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidRef);
    assert!(e.to_string().contains("stages"), "{e}");
    assert_eq!(memory.calls().fetch, 0);
}

// 14c. `Debug` of the client said `cached: 0` after cached reads (moka counts lazily).
#[tokio::test]
async fn debug_counts_what_is_cached() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("a", "1");
    memory.set("b", "2");
    secrets.get_secret("mem://a").await.unwrap();
    secrets.get_secret("mem://b").await.unwrap();
    assert!(format!("{secrets:?}").contains("cached: 2"), "{secrets:?}");
}

// A wall clock that jumps (an NTP step of two hours): expiries stated in wall time suddenly look
// past, and the engine must not start looping on them.
#[tokio::test]
async fn a_wall_clock_jump_starts_no_loop() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    let exp = clock.wall() + S(1800);
    memory.set_with("cert", "pem", |m| m.expires_at = Some(exp));
    memory.lease("db", S(30), S(3600), true);
    let cert = secrets.handle("mem://cert").await.unwrap();
    let db = secrets.handle("mem://db").await.unwrap();
    clock.advance(S(60)).await;
    let before = memory.calls();
    clock.jump_wall(S(7200));
    clock.advance(S(600)).await;
    let after = memory.calls();
    let calls = (after.fetch + after.version + after.renew)
        - (before.fetch + before.version + before.renew);
    assert!(
        calls <= 60,
        "{calls} calls in 10 minutes after the jump: {after:?}"
    );
    // The lease is renewed on the monotonic clock, whatever the wall says.
    assert!(db.try_current().is_ok());
    drop(cert);
}

// A lease that already ended, answered again by something between us and the backend (a caching
// proxy in front of a restarted pod's backend), is not served as if it were new.
#[tokio::test]
async fn a_replayed_lease_that_already_ended_is_not_served() {
    let clock = ManualClock::new();
    let (memory, backend) = scripted(&clock);
    memory.lease("db", S(5), S(3600), true);
    let before = builder(&clock)
        .source("mem", backend.clone())
        .build()
        .unwrap();
    let first = before.get_secret("mem://db").await.unwrap();
    before.shutdown().await;
    backend.reissue_same_lease(true);
    clock.advance(S(60)).await;
    let id = first.lease().unwrap().id.clone();
    assert!(!memory.lease_valid(&id));
    let after = builder(&clock)
        .source("mem", backend.clone())
        .build()
        .unwrap();
    match after.get_secret("mem://db").await {
        Ok(s) => panic!("served lease {} that ended 55 s ago", s.lease().unwrap().id),
        Err(e) => assert_eq!(e.kind(), &ErrorKind::Expired, "{e}"),
    }
}

/// Found by the simulation (seed 1119917 of a 10^6-schedule run): an entry the cache let go
/// hands its lease to the revoker (after the configured overlap); if the backend then answers a
/// new read with that same lease id (a caching proxy, a replay), the revoker must not end the
/// credential a new handle is serving.
#[tokio::test]
async fn a_lease_handed_out_again_is_not_revoked_under_its_new_holder() {
    let clock = ManualClock::new();
    let (memory, scripted) = scripted(&clock);
    let secrets = builder(&clock)
        .source("mem", scripted.clone())
        .cache_capacity(1)
        .revoke_replaced_leases_after(S(10))
        .build()
        .unwrap();
    memory.lease("db", S(600), S(6000), true);
    let lease = secrets
        .get_secret("mem://db")
        .await
        .unwrap()
        .lease()
        .unwrap()
        .id
        .clone();
    // Let the cache drop the entry: its lease is retired, to be revoked 10 s from now.
    for i in 0..50 {
        memory.set(format!("s{i}"), "x");
        // Read often enough to win the cache's admission over `db`.
        for _ in 0..3 {
            secrets.get_secret(format!("mem://s{i}")).await.unwrap();
        }
        secrets.run_pending_tasks().await;
    }
    scripted.reissue_same_lease(true);
    let fetches = scripted.count(Op::Fetch);
    let handle = secrets.handle("mem://db").await.unwrap();
    assert_eq!(
        scripted.count(Op::Fetch),
        fetches + 1,
        "read again after the eviction"
    );
    assert_eq!(
        handle.current().lease().unwrap().id,
        lease,
        "the same lease again"
    );
    clock.advance(S(30)).await;
    assert!(
        memory.lease_valid(&lease),
        "the lease a handle serves was revoked"
    );
    assert_eq!(scripted.count(Op::Revoke), 0);
}

/// Operators at INFO see the lifecycle (a rotation) and, at WARN, trouble (a failed refresh, an
/// expiry); routine renewals stay at DEBUG. None of it shows a value.
#[tokio::test]
async fn lifecycle_is_logged_at_info_and_trouble_at_warn() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("app", "value-one");
    memory.lease("db", S(30), S(3600), true);
    let logs = LogCapture::start();
    let app = secrets.handle("mem://app").await.unwrap();
    let _db = secrets.handle("mem://db").await.unwrap();
    memory.set("app", "value-two");
    app.refresh_now().await.unwrap();
    clock.advance(S(25)).await; // the lease renewed at about ⅔ of its TTL
    memory.fail_with(ErrorKind::Unavailable, None);
    clock.advance(S(300)).await; // renewals fail until the lease ends
    let text = logs.text();
    let lines = |level: &str, what: &str| {
        text.lines()
            .filter(|l| l.contains(level) && l.contains(what))
            .count()
    };
    assert!(lines(" INFO ", "mem://app rotated") >= 1, "{text}");
    assert!(lines(" WARN ", "refresh failed") >= 1, "{text}");
    assert!(lines(" WARN ", "mem://db expired") >= 1, "{text}");
    assert!(lines("DEBUG", "renewed") >= 1, "{text}");
    assert_eq!(lines(" INFO ", "renewed"), 0, "{text}");
    assert!(!text.contains("value-one") && !text.contains("value-two"));
}

/// `health()` for probes: fresh → ready; a backend that hangs → stale; one that fails →
/// failing since the first failure (still ready: the last good value is valid); a leased value
/// behind a handle that expires → not ready; recovery → ready again. No backend call.
#[tokio::test]
async fn health_follows_an_outage_and_its_recovery() {
    use keyrack_core::{SecretState, Verdict};
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("app", "v1");
    memory.lease("db", S(120), S(3600), true);
    let _app = secrets.handle("mem://app").await.unwrap();
    let db = secrets.handle("mem://db").await.unwrap();
    let state = |path: &str| {
        secrets
            .health()
            .secrets
            .into_iter()
            .find(|s| s.secret.path() == path)
            .unwrap()
            .state
    };
    let health = secrets.health();
    assert_eq!(health.verdict, Verdict::Ready, "{health:?}");
    assert_eq!(health.secrets.len(), 2);
    assert!(health.secrets.iter().all(|s| s.handles == 1));

    memory.hang();
    clock.advance(S(92)).await; // the lease's renewal (at about ⅔ of 120 s) hangs
    assert!(
        matches!(state("db"), SecretState::Stale { .. }),
        "{:?}",
        state("db")
    );
    assert_eq!(secrets.health().verdict, Verdict::Degraded);

    // The hung renewal answers now, unavailable, and so does every call after it.
    memory.recover();
    memory.fail_with(ErrorKind::Unavailable, None);
    let renewed_at = clock.wall() - S(92 - 80); // the last success: at most the ⅔ point
    clock.advance(S(2)).await;
    match state("db") {
        SecretState::Failing {
            since,
            kind,
            attempts,
        } => {
            assert_eq!(kind, ErrorKind::Unavailable);
            assert!(attempts >= 1);
            assert!(since <= renewed_at, "{since:?} {renewed_at:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        secrets.health().is_ready(),
        "the last good value is still valid"
    );

    clock.advance(S(60)).await; // past the lease's end
    assert!(matches!(state("db"), SecretState::Expired { .. }));
    assert_eq!(db.health(), state("db"), "the handle reports the same");
    let health = secrets.health();
    assert_eq!(health.verdict, Verdict::Failing);
    assert!(!health.is_ready());

    memory.recover();
    clock.advance(S(10)).await; // a new lease within the short recovery retries
    assert_eq!(state("db"), SecretState::Fresh);
    // `app` failed too, and waits out its grown backoff (at most the configured maximum).
    clock.advance(S(60)).await;
    assert_eq!(
        secrets.health().verdict,
        Verdict::Ready,
        "{:?}",
        secrets.health()
    );
    // health() itself asks the backend nothing.
    let before = memory.calls();
    let _ = secrets.health();
    assert_eq!(memory.calls(), before);
}

/// Every backend call runs in a `backend_call` span naming the source, the operation and the
/// secret, and ends with a DEBUG line saying how it went; no value appears.
#[tokio::test]
async fn backend_calls_are_traced_with_source_operation_and_outcome() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.set("app", "the-value");
    let logs = LogCapture::start();
    secrets.get_secret("mem://app").await.unwrap();
    let _ = secrets.get_secret("mem://gone").await.unwrap_err();
    let text = logs.text();
    let line = |what: &str| text.lines().find(|l| l.contains(what)).unwrap_or("");
    let ok = line("backend call ok");
    assert!(
        ok.contains("backend_call{") && ok.contains("source=mem") && ok.contains("fetch"),
        "{text}"
    );
    assert!(
        ok.contains("secret=mem://app") && ok.contains("took="),
        "{ok}"
    );
    let failed = line("backend call failed");
    assert!(
        failed.contains("secret=mem://gone") && failed.contains("NotFound"),
        "{text}"
    );
    assert!(!text.contains("the-value"));
}

/// Every refresh runs in a `refresh` span naming the source, what it does (`check`, `renew`,
/// `reissue`), the secret, the attempt and the outcome; a refused renewal that calls for a
/// re-issue is told at INFO, a failed refresh at WARN inside the span; no value appears.
#[tokio::test]
async fn refreshes_are_traced_with_operation_attempt_and_outcome() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.lease("db", S(60), S(6000), true);
    let db = secrets.handle("mem://db").await.unwrap();
    let first = db.current().expose_bytes().to_vec();
    let logs = LogCapture::start();
    clock.advance(S(50)).await; // the renewal, at about ⅔ of 60 s
    memory.fail_next(1, ErrorKind::Unavailable);
    clock.advance(S(40)).await; // the next renewal fails once, then succeeds on retry
    clock.advance(S(2)).await;
    memory.fail_next(1, ErrorKind::PermissionDenied);
    // Forced: a re-issue, refused.
    let refused = db.refresh_now().await.unwrap_err();
    assert_eq!(refused.kind(), &ErrorKind::PermissionDenied);
    let text = logs.text();
    let lines = |span: &str, what: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.contains(span) && l.contains(what))
            .collect()
    };
    let renewed = lines("operation=\"renew\"", "refresh finished");
    assert!(
        renewed.iter().any(|l| l.contains("refresh{")
            && l.contains("source=mem")
            && l.contains("secret=mem://db")
            && l.contains("attempt=1")
            && l.contains("outcome=\"ok\"")),
        "{text}"
    );
    let failed = lines("refresh{", "secret refresh failed");
    assert!(
        failed
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("operation=\"renew\"")),
        "{text}"
    );
    assert!(
        lines("attempt=2", "refresh finished")
            .iter()
            .any(|l| l.contains("outcome=\"ok\"")),
        "the retry is attempt 2: {text}"
    );
    let reissue = lines("operation=\"reissue\"", "refresh");
    assert!(!reissue.is_empty(), "{text}");
    assert!(
        reissue
            .iter()
            .any(|l| l.contains("outcome=\"permission_denied\"")),
        "{text}"
    );
    assert!(
        !text.contains(std::str::from_utf8(&first).unwrap()),
        "{text}"
    );
}

/// Fifty connections fail with the same leased credential and each asks for a refresh if it is
/// still current: one re-issue (one new database user), not fifty; a caller after the new
/// credential is in place causes no call.
#[tokio::test]
async fn refreshes_of_one_stale_credential_coalesce() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    memory.lease("db", S(600), S(6000), true);
    let handle = secrets.handle("mem://db").await.unwrap();
    let old = handle.current().version().cloned();
    let fetches = memory.calls().fetch;
    let results =
        futures_util::future::join_all((0..50).map(|_| handle.refresh_if_current(old.as_ref())))
            .await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(memory.calls().fetch, fetches + 1, "one re-issue");
    assert_ne!(handle.current().version().cloned(), old);
    assert!(!handle.refresh_if_current(old.as_ref()).await.unwrap());
    assert_eq!(memory.calls().fetch, fetches + 1);
    // The same through the client, by reference (field or not): one check, coalesced. (A
    // second re-issue waits a second after the last answer: let it pass.)
    clock.advance(S(2)).await;
    let results =
        futures_util::future::join_all((0..20).map(|_| secrets.refresh("mem://db#password"))).await;
    assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
    assert_eq!(memory.calls().fetch, fetches + 2);
    assert!(!secrets.refresh("mem://not-held").await.unwrap());
}
