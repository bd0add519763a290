//! Regressions found by a review of the engine, each first reproduced by its test here (manual
//! clock, memory source; a pass-through `Wrap` source adds a panicking fetch, a forced renewal
//! increment and a drop flag).
#![allow(clippy::unwrap_used)] // test helpers unwrap too
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::stream::BoxStream;
use futures_util::FutureExt;
use keyrack_core::sources::MemorySource;
use keyrack_core::testkit::drain;
use keyrack_core::{
    Capabilities, Clock, ErrorKind, Lease, ManualClock, Result, RotationEvent, Secret, SecretRef,
    SecretSource, Secrets, SecretsBuilder, SourceEvent, Version, async_trait,
};

const S: fn(u64) -> Duration = Duration::from_secs;

fn builder(clock: &ManualClock) -> SecretsBuilder {
    Secrets::builder()
        .clock(clock.clone())
        .refresh_interval(S(100))
        .refresh_jitter(0.2)
        .jitter_seed(7)
}

fn setup() -> (ManualClock, MemorySource, Secrets) {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    (clock, memory, secrets)
}

/// A memory source with hooks.
#[derive(Default)]
struct Hooks {
    panic_next_fetch: AtomicBool,
    /// Every fetched value claims this expiry (the same version with a moving `exp`).
    expires_at: Mutex<Option<std::time::SystemTime>>,
    renew_increment: Mutex<Option<Duration>>,
    #[allow(clippy::type_complexity)]
    after_first_fetch: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}
impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}
#[derive(Debug)]
struct Wrap {
    inner: MemorySource,
    hooks: Arc<Hooks>,
    dropped: Arc<AtomicBool>,
}
impl Drop for Wrap {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}
#[async_trait]
impl SecretSource for Wrap {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        if self.hooks.panic_next_fetch.swap(false, Ordering::SeqCst) {
            panic!("backend bug");
        }
        let mut out = self.inner.fetch(r).await;
        if let (Ok(secret), Some(at)) = (&out, *self.hooks.expires_at.lock().unwrap()) {
            out = Ok(secret.clone().expires_at(at));
        }
        let hook = self.hooks.after_first_fetch.lock().unwrap().take();
        if let Some(h) = hook {
            h();
        }
        out
    }
    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        self.inner.fetch_many(refs).await
    }
    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        self.inner.version(r).await
    }
    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease> {
        let inc = self.hooks.renew_increment.lock().unwrap().or(increment);
        self.inner.renew(lease, inc).await
    }
    async fn revoke(&self, lease: &Lease) -> Result<()> {
        self.inner.revoke(lease).await
    }
    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        self.inner.watch(r)
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}
fn wrap(clock: &ManualClock) -> (MemorySource, Arc<Hooks>, Arc<AtomicBool>, Wrap) {
    let memory = MemorySource::with_clock(clock.clone());
    let hooks = Arc::new(Hooks::default());
    let dropped = Arc::new(AtomicBool::new(false));
    let w = Wrap {
        inner: memory.clone(),
        hooks: hooks.clone(),
        dropped: dropped.clone(),
    };
    (memory, hooks, dropped, w)
}

// 1. `store` does not update `fresh_until`: a hit serves a value past its hard deadline.
#[tokio::test]
async fn a_hit_never_serves_a_value_past_its_hard_deadline() {
    let (clock, memory, secrets) = setup();
    memory.set("cert", "a");
    let handle = secrets.handle("mem://cert").await.unwrap(); // fresh_until ~ 80-100 s
    let now = clock.wall();
    memory.set_with("cert", "b", |m| m.expires_at = Some(now + S(5)));
    handle.refresh_now().await.unwrap();
    clock.advance(S(10)).await;
    assert_eq!(
        handle.try_current().unwrap_err().kind(),
        &ErrorKind::Expired
    );
    let r = secrets.get_secret("mem://cert").await;
    assert!(
        r.is_err(),
        "get_secret served a value 5 s past its hard expiry: {r:?}"
    );
}

// 2. Cloning a handle after shutdown restarts the background task.
#[tokio::test]
async fn a_handle_cloned_after_shutdown_starts_no_task() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    let h = secrets.handle("mem://app").await.unwrap();
    secrets.shutdown().await;
    let _h2 = h.clone();
    let calls = memory.calls();
    clock.advance(S(1000)).await;
    assert_eq!(memory.calls(), calls, "nothing runs after shutdown");
}

// 2b. A handle whose load was in flight when shutdown ran is returned and keeps a task running.
#[tokio::test]
async fn a_handle_loading_during_shutdown_starts_no_task() {
    let (clock, memory, secrets) = setup();
    memory.set("app", "v1");
    memory.set_latency(Duration::from_millis(5));
    let s = secrets.clone();
    let t = tokio::spawn(async move { s.handle("mem://app").await });
    keyrack_core::clock::settle().await;
    secrets.shutdown().await;
    clock.advance(Duration::from_millis(5)).await;
    let h = t.await.unwrap();
    let calls = memory.calls();
    clock.advance(S(1000)).await;
    assert!(
        h.is_err() || memory.calls() == calls,
        "handle after shutdown: {:?}; calls {:?} -> {:?}",
        h.as_ref().map(|_| ()),
        calls,
        memory.calls()
    );
}

// 3. `sched.expired` is not reset when the recovery check finds the same version: a second expiry
//    is never reported.
#[tokio::test]
async fn a_second_expiry_is_reported_too() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .max_staleness(S(250))
        .build()
        .unwrap();
    memory.set("app", "v1");
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(260)).await;
    assert!(
        drain(&mut events)
            .iter()
            .any(|e| matches!(e, RotationEvent::Expired { .. }))
    );
    memory.recover();
    clock.advance(S(400)).await;
    assert!(handle.try_current().is_ok());
    drain(&mut events);
    memory.fail(ErrorKind::Unavailable);
    clock.advance(S(400)).await;
    assert_eq!(
        handle.try_current().unwrap_err().kind(),
        &ErrorKind::Expired
    );
    let evs = drain(&mut events);
    assert!(
        evs.iter()
            .any(|e| matches!(e, RotationEvent::Expired { .. })),
        "second expiry not reported: {evs:?}"
    );
}

// 4. A refused value (field handle) resets the failure count: bogus Recovered, no backoff growth.
#[tokio::test]
async fn a_refused_value_keeps_backing_off() {
    let (clock, memory, secrets) = setup();
    memory.set("app", r#"{"key":"k1"}"#);
    let handle = secrets.handle("mem://app#key").await.unwrap();
    let mut events = handle.subscribe();
    memory.set("app", r#"{"other":"x"}"#);
    clock.advance(S(100)).await;
    let before = memory.calls().fetch;
    clock.advance(S(60)).await;
    let fetches = memory.calls().fetch - before;
    let evs = drain(&mut events);
    let recovered = evs
        .iter()
        .filter(|e| matches!(e, RotationEvent::Recovered { .. }))
        .count();
    let max_attempt = evs
        .iter()
        .filter_map(|e| match e {
            RotationEvent::RefreshFailed { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .max();
    assert!(
        fetches <= 9 && recovered == 0,
        "{fetches} fetches in 60 s, {recovered} Recovered events, max attempt {max_attempt:?}"
    );
}

// 5. A renewal granting less than the grace period schedules the re-issue after the lease ends.
#[tokio::test]
async fn a_renewal_shorter_than_the_grace_is_replaced_in_time() {
    let clock = ManualClock::new();
    let (memory, hooks, _d, w) = wrap(&clock);
    let secrets = builder(&clock).source("mem", w).build().unwrap();
    memory.lease("db", S(10), S(3600), true);
    // The server grants only 500 ms on renewal (as at a max TTL).
    *hooks.renew_increment.lock().unwrap() = Some(Duration::from_millis(500));
    let handle = secrets.handle("mem://db").await.unwrap();
    let mut bad = Vec::new();
    for _ in 0..200 {
        clock.advance(Duration::from_millis(50)).await;
        let id = handle.current().lease().unwrap().id.clone();
        if !memory.lease_valid(&id) {
            bad.push((clock.elapsed(), id));
        }
    }
    assert!(bad.is_empty(), "served an invalid lease: {bad:?}");
}

// 5b. A renew increment below the lease TTL is taken for "max TTL reached": re-issued instead of renewed.
#[tokio::test]
async fn a_renew_increment_below_the_ttl_is_not_a_cap() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = builder(&clock)
        .source("mem", memory.clone())
        .renew_increment(S(30))
        .build()
        .unwrap();
    memory.lease("db", S(60), S(3600), true);
    let _h = secrets.handle("mem://db").await.unwrap();
    clock.advance(S(300)).await;
    assert_eq!(
        memory.calls().fetch,
        1,
        "re-issued despite renewable lease far from max TTL: {:?}",
        memory.calls()
    );
}

// 6. A panicking fetch poisons the single-flight slot for that key forever.
#[tokio::test]
async fn a_panicking_fetch_does_not_poison_its_key() {
    let clock = ManualClock::new();
    let (memory, hooks, _d, w) = wrap(&clock);
    let secrets = builder(&clock).source("w", w).build().unwrap();
    memory.set("app", "v1");
    hooks.panic_next_fetch.store(true, Ordering::SeqCst);
    let s = secrets.clone();
    assert!(
        tokio::spawn(async move { s.get_secret("w://app").await })
            .await
            .is_err()
    );
    let s = secrets.clone();
    let second = tokio::spawn(async move { s.get_secret("w://app").await.map(|_| ()) }).await;
    assert!(
        matches!(second, Ok(Ok(()))),
        "second read (backend fine now): {second:?}"
    );
}

// 7. A cancelled sole waiter leaves its flight in the map; the flight holds the client: leak.
#[tokio::test]
async fn a_cancelled_load_does_not_keep_the_client_alive() {
    let clock = ManualClock::new();
    let (memory, _hooks, dropped, w) = wrap(&clock);
    let secrets = builder(&clock).source("w", w).build().unwrap();
    memory.set("app", "v1");
    memory.set_latency(S(1));
    assert!(secrets.get_secret("w://app").now_or_never().is_none());
    drop(secrets);
    keyrack_core::clock::settle().await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "client (and its sources) never dropped"
    );
}

// 8. A handle can be built on a view detached between the flight's end and the follower's resume.
#[tokio::test]
async fn a_handle_is_never_built_on_a_detached_view() {
    let clock = ManualClock::new();
    let (memory, hooks, _d, w) = wrap(&clock);
    let secrets = builder(&clock).source("w", w).build().unwrap();
    memory.set("app", r#"{"key":"k1"}"#);
    let m = memory.clone();
    *hooks.after_first_fetch.lock().unwrap() = Some(Box::new(move || {
        m.set("app", r#"{"other":"x"}"#);
    }));
    memory.set_latency(Duration::from_millis(5));
    let s = secrets.clone();
    let t1 = tokio::spawn(async move { s.get_secret("w://app#key").await.map(|_| ()) });
    let s = secrets.clone();
    let t2 = tokio::spawn(async move { s.handle("w://app#key").await });
    let s = secrets.clone();
    let t3 = tokio::spawn(async move {
        let h = s.handle("w://app").await.unwrap();
        let _ = h.refresh_now().await;
        h
    });
    keyrack_core::clock::settle().await;
    memory.set_latency(Duration::ZERO);
    clock.advance(Duration::from_millis(5)).await;
    let _ = t1.await.unwrap();
    let _whole = t3.await.unwrap();
    let h2 = t2.await.unwrap();
    eprintln!(
        "R8 h2={:?} calls={:?}",
        h2.as_ref()
            .map(|h| h.current().expose_str().unwrap().to_owned()),
        memory.calls()
    );
    let Ok(h2) = h2 else {
        return;
    }; // refusing is fine
    memory.set("app", r#"{"key":"k3"}"#);
    clock.advance(S(300)).await;
    assert_eq!(
        h2.current().expose_str().unwrap(),
        "k3",
        "handle stuck on a detached view"
    );
}

// 10. A refresh that finds the same version with a later expiry (Azure `exp` extended, a GCP
//     secret's `expireTime` moved) kept the old metadata: the value was reported expired at the
//     old time although the backend still served it. Found while adding GCP's rotation schedule.
#[tokio::test]
async fn a_moved_expiry_of_the_same_version_is_taken() {
    let clock = ManualClock::new();
    let (memory, hooks, _dropped, source) = wrap(&clock);
    let secrets = builder(&clock).source("mem", source).build().unwrap();
    memory.set("app", "v1");
    *hooks.expires_at.lock().unwrap() = Some(clock.wall() + S(300));
    let handle = secrets.handle("mem://app").await.unwrap();
    let mut events = handle.subscribe();
    *hooks.expires_at.lock().unwrap() = Some(clock.wall() + S(3600));
    clock.advance(S(310)).await;
    assert_eq!(handle.try_current().unwrap().expose_bytes(), b"v1");
    assert_eq!(
        handle.current().metadata().expires_at,
        Some(clock.wall() - S(310) + S(3600))
    );
    let evs = drain(&mut events);
    assert!(
        !evs.iter().any(|e| matches!(
            e,
            RotationEvent::Rotated { .. } | RotationEvent::Expired { .. }
        )),
        "{evs:?}"
    );
}

// 11. An expiry extended after the pre-expiry check (which found it unchanged) was never seen:
//     the next check was the routine one, after the old expiry. Found by a second reading.
#[tokio::test]
async fn an_expiry_extended_after_the_pre_expiry_check_is_still_seen() {
    let clock = ManualClock::new();
    let (memory, hooks, _dropped, source) = wrap(&clock);
    let secrets = builder(&clock)
        .refresh_interval(S(3600))
        .source("mem", source)
        .build()
        .unwrap();
    memory.set("app", "v1");
    *hooks.expires_at.lock().unwrap() = Some(clock.wall() + S(300));
    let handle = secrets.handle("mem://app").await.unwrap();
    let fetches = memory.calls().fetch;
    clock.advance(S(210)).await; // past the ⅔ check at 200 s: same expiry
    assert_eq!(memory.calls().fetch, fetches + 1);
    *hooks.expires_at.lock().unwrap() = Some(clock.wall() - S(210) + S(3600));
    clock.advance(S(100)).await; // past the old expiry
    assert_eq!(handle.try_current().unwrap().expose_bytes(), b"v1");
    // A shrinking series of checks, not one per instant: ⅔ of what was left each time.
    assert!(memory.calls().fetch <= fetches + 4, "{:?}", memory.calls());
}
