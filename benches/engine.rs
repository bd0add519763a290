//! Benchmarks of the engine's hot paths and resource use.
//!
//! `cargo bench --bench engine` prints criterion's report, then the tracked figures as
//! `RESULT <name>=<value>` lines on stdout:
//!
//! * `arcswap_floor_ns`: a bare `ArcSwap::load` (+ `black_box` of the guard), the floor a handle
//!   read is compared with; `handle_current_ns` and `handle_current_vs_floor` (target ≤ 1.5).
//! * `get_secret_hit_ns` (a `&str` URI, parsed on every call, as users write it) and
//!   `get_secret_hit_parsed_ns` (a pre-parsed `&SecretRef`): a cache hit (target ≤ 150 ns).
//! * `get_secret_hit_recorded_ns`: the same hit with a counting metrics recorder installed;
//!   `hit_metrics_share_no_recorder`: what the hit path's metrics cost without a recorder (one
//!   `counter!` increment, timed alone) as a share of `get_secret_hit_ns` (target ≤ 0.05).
//! * `single_flight_backend_calls`: 1,000 concurrent cold reads of one key against a slow
//!   (5 ms) source make this many backend fetches (target 1; the max over several clients).
//! * `bytes_per_cached_secret` (the cache's own cost per secret; target ≤ 1,024) and
//!   `bytes_per_cached_secret_incl_value` (also counting what the source holds).
//!
//! The ns figures are not criterion's estimates (criterion gives no programmatic access to
//! them): each is the median of several samples of a timed loop, with every subject timed in
//! turn within each round so that ratios compare like with like. `DETAIL` lines give the
//! samples' spread and the cost of the hit path's pieces.
//!
//! `-- --quick` or `BENCH_QUICK=1` takes fewer samples; `BENCH_RESULTS_ONLY=1` skips the
//! criterion report; `-- --profile-time <s> <filter>` runs only criterion's profiling loop (for
//! `perf record`). Under `cargo test --benches` every part runs once at smoke sizes and the
//! figures are printed as `SMOKE` lines instead.

// The only unsafe code is the counting global allocator (`unsafe impl GlobalAlloc` delegating
// to `System`), which measures the cache's memory.
#![allow(unsafe_code)]
// A benchmark measures real time: `Instant::now` is the point here (the engine itself goes
// through its `Clock`).
#![allow(clippy::disallowed_methods)]
// Printing the results is the point of a benchmark.
#![allow(clippy::print_stdout)]

use keyrack_benches::{median, quantile};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::Criterion;
use keyrack_core::sources::MemorySource;
use keyrack_core::{Clock, RotationEvent, Secret, SecretRef, Secrets, SystemClock};
use tokio::runtime::{Builder, Runtime};

// ------------------------------------------------------------------------------------------------
// Counting allocator

/// `System`, counting live bytes and allocations while [`COUNTING`] is on. Off, it costs one
/// relaxed load and a branch per call, so the timed benchmarks are not skewed by counting.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn count(delta: isize, new_block: bool) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
        if new_block {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn signed(n: usize) -> isize {
    isize::try_from(n).expect("allocation size fits in isize")
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the counting only reads the layouts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(signed(layout.size()), true);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(signed(layout.size()), true);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count(-signed(layout.size()), false);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(signed(new_size) - signed(layout.size()), true);
        }
        p
    }
}

/// Live bytes and allocations counted so far (counting must be on).
fn alloc_snapshot() -> (isize, u64) {
    (
        LIVE_BYTES.load(Ordering::SeqCst),
        ALLOCATIONS.load(Ordering::SeqCst),
    )
}

// ------------------------------------------------------------------------------------------------
// Run configuration

/// How the binary was started and how big each part is.
struct Plan {
    /// `cargo bench` (`--bench`), not `cargo test --benches`.
    bench: bool,
    quick: bool,
    criterion: bool,
    /// Only criterion's `--profile-time` run (for a profiler): no figures.
    profile: bool,
    /// Rounds of the interleaved timed loops (the median is reported).
    rounds: usize,
    load_iters: u64,
    get_iters: u64,
    flight_clients: usize,
    flight_tasks: usize,
    cached_secrets: usize,
}

impl Plan {
    fn from_env() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let env_on = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
        // As criterion decides: `--bench` without `--test` benchmarks, anything else tests.
        let bench = has("--bench") && !has("--test");
        let quick = has("--quick") || env_on("BENCH_QUICK");
        let criterion = !env_on("BENCH_RESULTS_ONLY");
        let profile = args.iter().any(|a| a.starts_with("--profile-time"));
        if !bench {
            return Plan {
                bench,
                quick,
                criterion,
                profile,
                rounds: 1,
                load_iters: 1_000,
                get_iters: 1_000,
                flight_clients: 1,
                flight_tasks: 1_000,
                cached_secrets: 1_000,
            };
        }
        Plan {
            bench,
            quick,
            criterion,
            profile,
            rounds: if quick { 7 } else { 21 },
            load_iters: 1_000_000,
            get_iters: 200_000,
            flight_clients: if quick { 3 } else { 5 },
            flight_tasks: 1_000,
            cached_secrets: 100_000,
        }
    }

    /// The prefix of the figures' lines.
    fn tag(&self) -> &'static str {
        if self.bench { "RESULT" } else { "SMOKE" }
    }
}

// ------------------------------------------------------------------------------------------------
// Fixtures

/// The URI users write; parsed on every `get_secret` call.
const URI: &str = "mem://bench";
const VALUE_LEN: usize = 100;

/// Stand-in for the value behind a handle's `ArcSwap`: a small struct.
#[derive(Debug)]
#[allow(dead_code)] // only held and loaded, never read
struct Small {
    id: u64,
    version: u32,
    bytes: [u8; 16],
}

/// A distinct value of exactly `VALUE_LEN` bytes, in an allocation of exactly that size.
fn value(i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_LEN);
    v.extend_from_slice(format!("value-{i:08}-").as_bytes());
    v.resize(VALUE_LEN, b'x');
    v
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio current-thread runtime")
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio multi-thread runtime")
}

/// A client with `mem://bench` (100 bytes) loaded and cached, on the system clock. The refresh
/// interval is an hour so the value stays fresh for the whole run: this measures the hit path,
/// not a re-check.
fn cached_client(rt: &Runtime) -> Secrets {
    let memory = MemorySource::new();
    memory.set("bench", value(0));
    let secrets = Secrets::builder()
        .source("mem", memory)
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .expect("client");
    rt.block_on(async {
        secrets.get_secret(URI).await.expect("first read loads");
    });
    secrets
}

/// Everything the timed loops read.
struct Subjects {
    rt: Runtime,
    swap: ArcSwap<Small>,
    secrets: Secrets,
    handle: keyrack_core::SecretHandle,
    parsed: SecretRef,
    /// The pieces of the hit path, alone.
    moka: moka::sync::Cache<SecretRef, Arc<Secret>>,
    secret: Secret,
    hasher: RandomState,
}

impl Subjects {
    fn new() -> Self {
        let rt = current_thread();
        let secrets = cached_client(&rt);
        // `handle` starts the refresh task: it must be made inside the runtime. The task sleeps
        // for an hour, and only runs while the runtime is driven anyway.
        let handle = rt
            .block_on(secrets.handle(URI))
            .expect("handle on a cached secret");
        let parsed = SecretRef::parse(URI).expect("valid reference");
        let secret = Secret::new(value(0));
        let moka = moka::sync::Cache::builder().max_capacity(10_000).build();
        moka.insert(parsed.clone(), Arc::new(secret.clone()));
        Subjects {
            rt,
            swap: ArcSwap::from_pointee(Small {
                id: 7,
                version: 1,
                bytes: [0; 16],
            }),
            secrets,
            handle,
            parsed,
            moka,
            secret,
            hasher: RandomState::new(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Timed loops (one subject each; `iters` calls, total time returned)

fn loop_floor(s: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(s.swap.load());
    }
    start.elapsed()
}

fn loop_handle(s: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(s.handle.current());
    }
    start.elapsed()
}

fn loop_get_str(s: &Subjects, iters: u64) -> Duration {
    s.rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let secret = s.secrets.get_secret(black_box(URI)).await;
            black_box(secret.expect("cached"));
        }
        start.elapsed()
    })
}

/// The hit path with a recorder installed that counts (an atomic add per hit).
fn loop_get_str_recorded(s: &Subjects, iters: u64) -> Duration {
    metrics::with_local_recorder(&*COUNTING_RECORDER, || loop_get_str(s, iters))
}

/// What the hit path's metrics cost without a recorder: one counter increment.
fn loop_counter_no_recorder(_: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        metrics::counter!("keyrack_cache_hits_total").increment(black_box(1));
    }
    start.elapsed()
}

/// A recorder whose counters are one shared atomic: the cheapest real recorder.
struct OneCounter(Arc<AtomicU64>);

static COUNTING_RECORDER: std::sync::LazyLock<OneCounter> =
    std::sync::LazyLock::new(|| OneCounter(Arc::new(AtomicU64::new(0))));

impl metrics::Recorder for OneCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.0.clone())
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn loop_get_parsed(s: &Subjects, iters: u64) -> Duration {
    s.rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let secret = s.secrets.get_secret(black_box(&s.parsed)).await;
            black_box(secret.expect("cached"));
        }
        start.elapsed()
    })
}

fn loop_parse(_: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(SecretRef::parse(black_box(URI)).expect("valid"));
    }
    start.elapsed()
}

fn loop_moka_get(s: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(s.moka.get(black_box(&s.parsed)));
    }
    start.elapsed()
}

fn loop_hash(s: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(s.hasher.hash_one(black_box(&s.parsed)));
    }
    start.elapsed()
}

fn loop_clock(_: &Subjects, iters: u64) -> Duration {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(&clock).now());
    }
    start.elapsed()
}

fn loop_secret_clone(s: &Subjects, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(black_box(&s.secret).clone());
    }
    start.elapsed()
}

fn loop_empty_await(s: &Subjects, iters: u64) -> Duration {
    s.rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(std::future::ready(black_box(1u64)).await);
        }
        start.elapsed()
    })
}

type TimedLoop = fn(&Subjects, u64) -> Duration;

/// One subject of the interleaved rounds.
struct Timed {
    name: &'static str,
    /// `RESULT` line, or only a `DETAIL` line (a piece of the hit path).
    result: bool,
    /// Iterations per sample: `true` for the ~1 ns loops, `false` for the ~100 ns ones.
    cheap: bool,
    run: TimedLoop,
    samples: Vec<f64>,
}

const TIMED: [(&str, bool, bool, TimedLoop); 13] = [
    ("arcswap_floor_ns", true, true, loop_floor),
    ("handle_current_ns", true, true, loop_handle),
    ("get_secret_hit_ns", true, false, loop_get_str),
    ("get_secret_hit_parsed_ns", true, false, loop_get_parsed),
    (
        "get_secret_hit_recorded_ns",
        true,
        false,
        loop_get_str_recorded,
    ),
    (
        "piece_metrics_counter_no_recorder_ns",
        false,
        true,
        loop_counter_no_recorder,
    ),
    ("piece_secret_ref_parse_ns", false, false, loop_parse),
    ("piece_moka_sync_get_ns", false, false, loop_moka_get),
    ("piece_siphash_secret_ref_ns", false, true, loop_hash),
    ("piece_system_clock_now_ns", false, true, loop_clock),
    ("piece_secret_clone_drop_ns", false, true, loop_secret_clone),
    (
        "piece_ready_await_in_block_on_ns",
        false,
        true,
        loop_empty_await,
    ),
    // Timed last in each round as well as first, so drift within a round shows.
    ("arcswap_floor_again_ns", false, true, loop_floor),
];

fn ns_per_iter(d: Duration, iters: u64) -> f64 {
    d.as_secs_f64() * 1e9 / iters as f64
}

/// Heap bytes held by what `make` returns (measured while it is alive).
fn heap_bytes<T>(make: impl FnOnce() -> T) -> isize {
    COUNTING.store(true, Ordering::SeqCst);
    let (before, _) = alloc_snapshot();
    let made = make();
    let (after, _) = alloc_snapshot();
    COUNTING.store(false, Ordering::SeqCst);
    drop(made);
    after - before
}

/// Allocations made by one call of `f` (averaged over `n` calls).
fn allocations_per_call(n: u64, mut f: impl FnMut()) -> f64 {
    f();
    COUNTING.store(true, Ordering::SeqCst);
    let (_, before) = alloc_snapshot();
    for _ in 0..n {
        f();
    }
    let (_, after) = alloc_snapshot();
    COUNTING.store(false, Ordering::SeqCst);
    (after - before) as f64 / n as f64
}

/// The ns figures: each subject timed in turn within every round; medians over the rounds.
fn timings(plan: &Plan, out: &mut Vec<String>) {
    let s = Subjects::new();
    let mut timed: Vec<Timed> = TIMED
        .iter()
        .map(|&(name, result, cheap, run)| Timed {
            name,
            result,
            cheap,
            run,
            samples: Vec::with_capacity(plan.rounds),
        })
        .collect();
    // Warm up every loop (thread-local arc-swap debts, moka's buffers, caches, branch predictors).
    for t in &timed {
        let iters = if t.cheap {
            plan.load_iters
        } else {
            plan.get_iters
        } / 10;
        (t.run)(&s, iters.max(1));
    }
    let mut ratios = Vec::with_capacity(plan.rounds);
    for _ in 0..plan.rounds {
        for t in &mut timed {
            let iters = if t.cheap {
                plan.load_iters
            } else {
                plan.get_iters
            };
            t.samples.push(ns_per_iter((t.run)(&s, iters), iters));
        }
        let (floor, handle) = (&timed[0].samples, &timed[1].samples);
        ratios.push(handle[handle.len() - 1] / floor[floor.len() - 1]);
    }

    let tag = plan.tag();
    for t in &timed {
        let m = median(&t.samples);
        let min = t.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let p25 = quantile(&t.samples, 0.25);
        let max = t.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if t.result {
            out.push(format!("{tag} {}={m:.2}", t.name));
        }
        println!(
            "DETAIL {}: median {m:.2} ns, min {min:.2}, p25 {p25:.2}, max {max:.2} over {} samples \
             of {} calls",
            t.name,
            t.samples.len(),
            if t.cheap {
                plan.load_iters
            } else {
                plan.get_iters
            },
        );
    }
    let floor = median(&timed[0].samples);
    let handle = median(&timed[1].samples);
    // The hit path's metrics without a recorder, as a share of the hit (target ≤ 0.05).
    let hit = median(&timed[2].samples);
    let counter = median(&timed[5].samples);
    out.push(format!(
        "{tag} hit_metrics_share_no_recorder={:.3}",
        counter / hit
    ));
    out.push(format!(
        "{tag} handle_current_vs_floor={:.3}",
        handle / floor
    ));
    println!(
        "DETAIL handle_current_vs_floor: ratio of medians {:.3}; median of per-round ratios {:.3} \
         (min {:.3}, max {:.3})",
        handle / floor,
        median(&ratios),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );

    // Allocations per call (counting is on only here).
    let n = 10_000;
    let allocs_str = allocations_per_call(n, || {
        s.rt.block_on(async {
            black_box(s.secrets.get_secret(URI).await.expect("cached"));
        });
    });
    let allocs_parsed = allocations_per_call(n, || {
        s.rt.block_on(async {
            black_box(s.secrets.get_secret(&s.parsed).await.expect("cached"));
        });
    });
    let allocs_block_on = allocations_per_call(n, || s.rt.block_on(async {}));
    let allocs_moka = allocations_per_call(n, || {
        s.rt.block_on(async {
            black_box(s.moka.get(&s.parsed));
        });
    });
    let allocs_handle = allocations_per_call(n, || {
        black_box(s.handle.current());
    });
    println!(
        "DETAIL allocations per call: get_secret(&str) {:.2}, get_secret(&SecretRef) {:.2} \
         (each includes an empty block_on's {:.2}), moka future get alone {:.2}, \
         handle.current() {:.2}",
        allocs_str, allocs_parsed, allocs_block_on, allocs_moka, allocs_handle
    );
    drop(s);
}

// ------------------------------------------------------------------------------------------------
// Single flight

/// Max backend fetches over `plan.flight_clients` fresh clients, each hit by
/// `plan.flight_tasks` concurrent cold reads of one key (5 ms source latency, real clock).
fn single_flight(plan: &Plan, out: &mut Vec<String>) {
    let rt = multi_thread();
    let mut worst = 0;
    for round in 0..plan.flight_clients {
        let memory = MemorySource::new();
        memory.set("bench", value(round));
        memory.set_latency(Duration::from_millis(5));
        let secrets = Secrets::builder()
            .source("mem", memory.clone())
            .build()
            .expect("client");
        let tasks = plan.flight_tasks;
        let (fetches, elapsed, ok) = rt.block_on(async {
            // Every task is running before any reads, so all 1,000 reads are concurrent.
            let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
            let start = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let secrets = secrets.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        secrets.get_secret(URI).await
                    })
                })
                .collect();
            let mut ok = 0;
            for h in futures_util::future::join_all(handles).await {
                if h.expect("task did not panic").is_ok() {
                    ok += 1;
                }
            }
            (memory.calls().fetch, start.elapsed(), ok)
        });
        println!(
            "DETAIL single_flight client {round}: {fetches} fetch(es), {ok}/{tasks} reads ok, \
             {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        );
        assert_eq!(ok, tasks, "every concurrent read succeeds");
        worst = worst.max(fetches);
    }
    out.push(format!(
        "{} single_flight_backend_calls={worst}",
        plan.tag()
    ));
}

// ------------------------------------------------------------------------------------------------
// Memory per cached secret

fn memory_per_secret(plan: &Plan, out: &mut Vec<String>) {
    let n = plan.cached_secrets;
    let rt = current_thread();
    let uris: Vec<String> = (0..n).map(|i| format!("mem://s/{i}")).collect();

    COUNTING.store(true, Ordering::SeqCst);
    let memory = MemorySource::new();
    let secrets = Secrets::builder()
        .source("mem", memory.clone())
        .cache_capacity(2 * n as u64)
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .expect("client");
    let (before_values, _) = alloc_snapshot();
    for i in 0..n {
        memory.set(format!("s/{i}"), value(i));
    }
    let (before_cache, allocs_before) = alloc_snapshot();
    rt.block_on(async {
        for uri in &uris {
            black_box(secrets.get_secret(uri.as_str()).await.expect("stored"));
        }
        // Apply moka's pending writes so the measurement sees the settled cache.
        secrets.run_pending_tasks().await;
    });
    let (after, allocs_after) = alloc_snapshot();
    COUNTING.store(false, Ordering::SeqCst);

    let held = secrets.held();
    assert_eq!(held, n, "every secret is cached");
    assert_eq!(memory.calls().fetch, n as u64, "one fetch per secret");
    // The cache shares the value bytes with the source (`SecretValue` is an `Arc`), so the delta
    // from `before_cache` is the cache's own cost: entry, view, snapshot, keys, moka's node.
    let cache = (after - before_cache) as f64 / n as f64;
    let incl_value = (after - before_values) as f64 / n as f64;
    println!(
        "DETAIL memory: {n} secrets of {VALUE_LEN} B; source {:.0} B/secret (value, path, \
         version, metadata), cache {cache:.0} B/secret in {:.1} allocations/secret",
        (before_cache - before_values) as f64 / n as f64,
        (allocs_after - allocs_before) as f64 / n as f64,
    );
    // What part of that is the per-secret event channel (each `Entry` makes a
    // `broadcast::channel` of the client's `event_capacity`, 256 by default, whose ring is
    // allocated up front) and each `View`'s `watch` channel.
    let broadcast = heap_bytes(|| tokio::sync::broadcast::channel::<RotationEvent>(256));
    let watch = heap_bytes(|| tokio::sync::watch::channel(0u64));
    println!(
        "DETAIL memory: of the cache's cost, an empty broadcast::channel::<RotationEvent>(256) is \
         {broadcast} B (RotationEvent is {} B), a watch::channel(0u64) {watch} B; the rest is \
         {:.0} B/secret",
        std::mem::size_of::<RotationEvent>(),
        cache - broadcast as f64 - watch as f64,
    );
    out.push(format!("{} bytes_per_cached_secret={cache:.0}", plan.tag()));
    out.push(format!(
        "{} bytes_per_cached_secret_incl_value={incl_value:.0}",
        plan.tag()
    ));
    drop(secrets);
    drop(rt);
}

// ------------------------------------------------------------------------------------------------
// Criterion report

fn criterion_report(plan: &Plan) {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(if plan.quick { 300 } else { 700 }))
        .measurement_time(Duration::from_millis(if plan.quick { 1000 } else { 2000 }))
        .sample_size(if plan.quick { 20 } else { 50 })
        .configure_from_args();
    let s = Subjects::new();

    let mut g = c.benchmark_group("handle");
    g.bench_function("arcswap_floor", |b| b.iter(|| black_box(s.swap.load())));
    g.bench_function("current", |b| b.iter(|| black_box(s.handle.current())));
    g.finish();

    let mut g = c.benchmark_group("get_secret_hit");
    g.bench_function("str", |b| {
        b.to_async(&s.rt)
            .iter(|| async { s.secrets.get_secret(black_box(URI)).await.expect("cached") });
    });
    g.bench_function("parsed", |b| {
        b.to_async(&s.rt).iter(|| async {
            s.secrets
                .get_secret(black_box(&s.parsed))
                .await
                .expect("cached")
        });
    });
    g.finish();

    let mut g = c.benchmark_group("hit_pieces");
    g.bench_function("secret_ref_parse", |b| {
        b.iter(|| SecretRef::parse(black_box(URI)).expect("valid"));
    });
    g.bench_function("moka_sync_get", |b| {
        b.iter(|| s.moka.get(black_box(&s.parsed)));
    });
    g.bench_function("hash_secret_ref", |b| {
        b.iter(|| s.hasher.hash_one(black_box(&s.parsed)));
    });
    g.bench_function("system_clock_now", |b| {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        b.iter(|| black_box(&clock).now());
    });
    g.bench_function("secret_clone_drop", |b| {
        b.iter(|| black_box(&s.secret).clone());
    });
    g.finish();

    c.final_summary();
}

fn main() {
    let plan = Plan::from_env();
    let mut took = Vec::new();
    let mut section = |name: &'static str, f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        took.push(format!("{name} {:.2} s", start.elapsed().as_secs_f64()));
    };
    if plan.criterion || plan.profile {
        section("criterion", &mut || criterion_report(&plan));
    }
    if plan.profile {
        return;
    }
    let mut out = Vec::new();
    section("timed loops", &mut || timings(&plan, &mut out));
    section("single flight", &mut || single_flight(&plan, &mut out));
    section("memory", &mut || memory_per_secret(&plan, &mut out));
    println!("DETAIL time taken: {}", took.join(", "));
    if !plan.bench {
        println!("(test mode: smoke sizes, the figures below are not measurements)");
    }
    for line in out {
        println!("{line}");
    }
}
