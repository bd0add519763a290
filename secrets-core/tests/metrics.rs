//! The metrics the client emits, counted by a recorder local to each test (no global recorder,
//! so each test passes alone and in any order), against the calls the source saw.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use keyrack_core::sources::MemorySource;
use keyrack_core::telemetry::{
    BACKEND_DURATION, BACKEND_REQUESTS, CACHE_HITS, CACHE_MISSES, EVENTS,
};
use keyrack_core::{ErrorKind, ManualClock, Secrets};

/// Counters and histogram sample counts by name and sorted labels.
#[derive(Default)]
struct Counting {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    gauges: Mutex<BTreeMap<String, Arc<Level>>>,
}

/// A gauge's last value (f64 bits).
#[derive(Default)]
struct Level(AtomicU64);

impl metrics::GaugeFn for Level {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Samples(AtomicU64);

impl HistogramFn for Samples {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn id(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Counting {
    fn counter(&self, id: &str) -> u64 {
        let counters = self.counters.lock().unwrap();
        counters.get(id).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn samples(&self, id: &str) -> u64 {
        let histograms = self.histograms.lock().unwrap();
        histograms
            .get(id)
            .map_or(0, |h| h.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, id: &str) -> Option<f64> {
        let gauges = self.gauges.lock().unwrap();
        gauges
            .get(id)
            .map(|g| f64::from_bits(g.0.load(Ordering::Relaxed)))
    }

    fn all_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.counters.lock().unwrap().keys().cloned().collect();
        ids.extend(self.histograms.lock().unwrap().keys().cloned());
        ids.extend(self.gauges.lock().unwrap().keys().cloned());
        ids
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        Counter::from_arc(counters.entry(id(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut gauges = self.gauges.lock().unwrap();
        Gauge::from_arc(gauges.entry(id(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(histograms.entry(id(key)).or_default().clone())
    }
}

/// Run `body` on a current-thread runtime with `recorder` as this thread's recorder: every task
/// the client spawns runs on this thread, so it reports there too.
fn recorded<F: Future<Output = ()>>(recorder: &Counting, body: impl FnOnce() -> F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || rt.block_on(body()));
}

#[test]
fn counters_match_the_calls_the_source_saw() {
    let recorder = Counting::default();
    let memory = MemorySource::new();
    recorded(&recorder, || async {
        let secrets = Secrets::builder()
            .source("mem", memory.clone())
            .build()
            .unwrap();
        memory.set("app", "hunter2-value");
        secrets.get_secret("mem://app").await.unwrap();
        secrets.get_secret("mem://app").await.unwrap();
        secrets.get_secret("mem://app").await.unwrap();

        memory.fail(ErrorKind::PermissionDenied);
        let err = secrets.get_secret("mem://other").await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::PermissionDenied);
        memory.recover();

        let handle = secrets.handle("mem://app").await.unwrap();
        memory.rotate("app", "hunter2-next");
        handle.refresh_now().await.unwrap();
        secrets.shutdown().await;
    });

    let calls = memory.calls();
    let ok_fetches = recorder.counter(&format!(
        "{BACKEND_REQUESTS}{{operation=fetch,outcome=ok,source=mem}}"
    ));
    let denied = recorder.counter(&format!(
        "{BACKEND_REQUESTS}{{operation=fetch,outcome=permission_denied,source=mem}}"
    ));
    assert_eq!(denied, 1, "{:?}", recorder.all_ids());
    assert_eq!(ok_fetches + denied, calls.fetch, "{:?}", recorder.all_ids());
    assert_eq!(
        recorder.samples(&format!("{BACKEND_DURATION}{{operation=fetch,source=mem}}")),
        calls.fetch
    );
    assert_eq!(recorder.counter(&format!("{CACHE_HITS}{{}}")), 2);
    assert_eq!(recorder.counter(&format!("{CACHE_MISSES}{{}}")), 2);
    assert_eq!(recorder.counter(&format!("{EVENTS}{{kind=rotated}}")), 1);

    // Labels are bounded sets: no reference path, no value.
    for id in recorder.all_ids() {
        assert!(!id.contains("hunter2"), "{id}");
        assert!(!id.contains("app") && !id.contains("other"), "{id}");
    }
}

/// With `metrics_secret_label(true)` the backend request metrics name the reference (never the
/// value); without it (the test above) no label holds one.
#[test]
fn the_secret_label_is_opt_in_and_names_the_reference() {
    let recorder = Counting::default();
    let memory = MemorySource::new();
    recorded(&recorder, || async {
        let secrets = Secrets::builder()
            .source("mem", memory.clone())
            .metrics_secret_label(true)
            .build()
            .unwrap();
        memory.set("app", "hunter2-value");
        secrets.get_secret("mem://app").await.unwrap();
        secrets.get_secret("mem://app").await.unwrap();
        secrets.shutdown().await;
    });
    assert_eq!(
        recorder.counter(&format!(
            "{BACKEND_REQUESTS}{{operation=fetch,outcome=ok,secret=mem://app,source=mem}}"
        )),
        1,
        "{:?}",
        recorder.all_ids()
    );
    assert_eq!(
        recorder.samples(&format!(
            "{BACKEND_DURATION}{{operation=fetch,secret=mem://app,source=mem}}"
        )),
        1
    );
    for id in recorder.all_ids() {
        assert!(!id.contains("hunter2"), "{id}");
    }
}

#[test]
fn a_hanging_backend_counts_as_a_timeout() {
    let recorder = Counting::default();
    let memory = MemorySource::new();
    let clock = ManualClock::new();
    recorded(&recorder, || async {
        let secrets = Secrets::builder()
            .clock(clock.clone())
            .source("mem", memory.clone())
            .request_timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap();
        memory.hang();
        let read = tokio::spawn({
            let secrets = secrets.clone();
            async move { secrets.get_secret("mem://slow").await }
        });
        while clock.sleepers() == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(std::time::Duration::from_secs(6)).await;
        let err = read.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Timeout);
        memory.recover();
        secrets.shutdown().await;
    });
    assert_eq!(
        recorder.counter(&format!(
            "{BACKEND_REQUESTS}{{operation=fetch,outcome=timeout,source=mem}}"
        )),
        1,
        "{:?}",
        recorder.all_ids()
    );
}

#[test]
fn without_a_recorder_nothing_is_recorded_and_reads_work() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let memory = MemorySource::new();
        memory.set("app", "v");
        let secrets = Secrets::builder().source("mem", memory).build().unwrap();
        secrets.get_secret("mem://app").await.unwrap();
        keyrack_core::telemetry::describe_metrics();
    });
}

#[test]
fn gauges_say_what_is_held_how_old_and_when_the_nearest_lease_ends() {
    use keyrack_core::telemetry::{HANDLES, NEAREST_LEASE_END, OLDEST_SUCCESS_AGE, SECRETS_HELD};
    let recorder = Counting::default();
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let second = MemorySource::with_clock(clock.clone());
    recorded(&recorder, || async {
        let secrets = Secrets::builder()
            .clock(clock.clone())
            .source("mem", memory.clone())
            .source("idle", second.clone())
            .build()
            .unwrap();
        memory.set("app", "hunter2-value");
        memory.lease("db", S(60), S(600), true);
        memory.set("db", "hunter2-cred");
        let _app = secrets.handle("mem://app").await.unwrap();
        let _db = secrets.get_secret("mem://db").await.unwrap();
        // The backend stops answering: the oldest answer ages, the lease end nears.
        memory.hang();
        clock.advance(S(30)).await;
        secrets.record_gauges();
        let g = |name: &str, source: &str| recorder.gauge(&format!("{name}{{source={source}}}"));
        assert_eq!(g(SECRETS_HELD, "mem"), Some(2.0));
        assert_eq!(g(HANDLES, "mem"), Some(1.0));
        assert_eq!(g(OLDEST_SUCCESS_AGE, "mem"), Some(30.0));
        assert_eq!(g(NEAREST_LEASE_END, "mem"), Some(30.0));
        // A registered source holding nothing reads 0, and has no lease gauge.
        assert_eq!(g(SECRETS_HELD, "idle"), Some(0.0));
        assert_eq!(g(NEAREST_LEASE_END, "idle"), None);
        memory.recover();
        secrets.shutdown().await;
    });
    for id in recorder.all_ids() {
        assert!(!id.contains("hunter2") && !id.contains("app"), "{id}");
    }
}

/// A leased secret renewed until its maximum TTL caps it, re-issued, a renewal that fails, a
/// replaced lease revoked and the last one revoked at shutdown: the refresh, renewal, re-issue
/// and revocation counters equal the calls the source saw.
#[test]
fn lease_counters_match_the_renewals_reissues_and_revocations_the_source_saw() {
    use keyrack_core::telemetry::{REFRESHES, REISSUES, RENEWALS, REVOCATIONS};
    let recorder = Counting::default();
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    recorded(&recorder, || async {
        let secrets = Secrets::builder()
            .clock(clock.clone())
            .jitter_seed(3)
            .revoke_on_shutdown(true)
            .revoke_replaced_leases_after(S(5))
            .source("mem", memory.clone())
            .build()
            .unwrap();
        memory.lease("db", S(60), S(150), true);
        let db = secrets.handle("mem://db").await.unwrap();
        // Renewals at about ⅔ of each TTL, until the max TTL caps them and a new lease follows.
        for _ in 0..20 {
            clock.advance(S(10)).await;
        }
        // One renewal or re-issue fails, the next try succeeds.
        memory.fail_next(1, ErrorKind::Unavailable);
        for _ in 0..10 {
            clock.advance(S(10)).await;
        }
        drop(db);
        secrets.shutdown().await;
    });
    let failed_refreshes = recorder.counter(&format!("{EVENTS}{{kind=refresh_failed}}"));
    let calls = memory.calls();
    let sum = |name: &str| -> u64 {
        recorder
            .all_ids()
            .iter()
            .filter(|id| id.starts_with(&format!("{name}{{")) && id.contains("source=mem"))
            .map(|id| recorder.counter(id))
            .sum()
    };
    let ids = recorder.all_ids();
    assert!(calls.renew >= 2, "{calls:?}");
    assert_eq!(sum(RENEWALS), calls.renew, "{ids:?}");
    // Every fetch after the first read replaced a lease.
    assert!(calls.fetch >= 3, "{calls:?}");
    assert_eq!(sum(REISSUES), calls.fetch - 1, "{ids:?}");
    assert!(calls.revoke >= 2, "{calls:?}");
    assert_eq!(sum(REVOCATIONS), calls.revoke, "{ids:?}");
    assert_eq!(
        recorder.counter(&format!("{REVOCATIONS}{{outcome=ok,source=mem}}")),
        calls.revoke
    );
    // The backend's revocations are backend requests too.
    assert_eq!(
        recorder.counter(&format!(
            "{BACKEND_REQUESTS}{{operation=revoke,outcome=ok,source=mem}}"
        )),
        calls.revoke
    );
    // Each maintenance is one refresh, whatever it asked; the failed one by its error kind.
    assert_eq!(
        recorder.counter(&format!("{REFRESHES}{{outcome=unavailable,source=mem}}")),
        failed_refreshes,
        "{ids:?}"
    );
    assert_eq!(failed_refreshes, 1);
    let failed =
        |name: &str| recorder.counter(&format!("{name}{{outcome=unavailable,source=mem}}"));
    assert_eq!(failed(RENEWALS) + failed(REISSUES), 1, "{ids:?}");
    assert!(
        sum(REFRESHES) >= calls.renew.max(calls.fetch - 1),
        "{ids:?}"
    );
    assert!(sum(REFRESHES) < calls.renew + calls.fetch, "{ids:?}");
}
