//! A seeded simulation of the engine: random schedules of reads, handles, drops, forced refreshes
//! and shutdown against a backend that writes, deletes, fails, throttles (with and without
//! `Retry-After`), hangs, and issues leases of TTL 0, short, huge, non-renewable and capped ones,
//! with cache capacities from 1 to 10,000. Everything runs on one thread and a manual clock, so
//! a seed replays exactly, with one exception: which entry a small cache evicts, and when, is
//! moka's (its hashing is seeded per process and its housekeeping follows real time), so a
//! failure that hangs on an eviction may need its seed replayed a few times, or the run that
//! found it repeated (seed 1119917 showed only in a long run; its test is in `faults.rs`).
//!
//! Invariants, checked after every step:
//! 1. every operation completes (within two request timeouts of simulated time);
//! 2. backend calls per secret per simulated minute stay within [`BUDGET_PER_MINUTE`] plus two
//!    per operation the application made on it (no tight loop, whatever the backend answers);
//! 3. nothing is served past its hard expiry (a lease the backend no longer honours) or past
//!    `max_staleness` after the backend last answered for it;
//! 4. a change is seen within its freshness bound when the backend is healthy;
//! 5. a handle whose value has expired has been told (`Expired`);
//! 6. after shutdown no task runs and no backend call is made;
//! 7. nothing panics.
//!
//! A failure prints the seed and a shrunk schedule. `SIM_SCHEDULES` sets how many schedules run
//! (default 2,000), `SIM_SEED` replays one, `SIM_FIRST_SEED` starts elsewhere.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_core::stream::BoxStream;
use keyrack_core::sources::MemorySource;
use keyrack_core::testkit::drain;
use keyrack_core::{
    Backoff, Capabilities, Clock, Error, ErrorKind, Lease, ManualClock, Result, RotationEvent,
    RotationEvents, Secret, SecretHandle, SecretRef, SecretSource, Secrets, SourceEvent, Version,
    async_trait,
};
use tokio::sync::Notify;

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Backend calls per secret per simulated minute the engine may make on its own (a check at most
/// every second, each at most a probe and a read, and a little for revocations).
const BUDGET_PER_MINUTE: usize = 130;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(20);
const MAX_HINT: u64 = 10;

const STATIC: [&str; 4] = ["s0", "s1", "s2", "s3"];
/// Leased paths: (path, ttl, max ttl, renewable).
const LEASED: [(&str, u64, u64, bool); 5] = [
    ("d-zero", 0, 60, true),
    ("d-short", 5, 20, true),
    ("d-huge", 86_400, 864_000, true),
    ("d-fixed", 30, 30, false),
    ("d-capped", 10, 15, true),
];

fn paths() -> Vec<&'static str> {
    STATIC
        .iter()
        .copied()
        .chain(LEASED.iter().map(|l| l.0))
        .collect()
}

// ----------------------------------------------------------------------------------------------
// The simulated backend.

#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Healthy,
    Fail(ErrorKind),
    Throttle(Option<u64>),
    Unavailable(Option<u64>),
    Hang,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Fetch,
    Version,
    Renew,
    Revoke,
}

struct BackendState {
    mode: Mode,
    /// Probes refused, as under a policy without metadata access.
    probe_refused: bool,
    /// A fetch of a leased path answers with the lease issued before.
    same_lease: bool,
    last_lease: HashMap<String, Secret>,
    latency: Duration,
    /// (when, path, op)
    calls: Vec<(Instant, String, Op)>,
    /// When the backend last answered a call for the path successfully.
    last_success: HashMap<String, Instant>,
    /// Since when the backend has been healthy (no fault, no latency), if it is.
    healthy_since: Option<Instant>,
    shut_down: bool,
    after_shutdown: usize,
}

#[derive(Clone)]
struct Backend {
    memory: MemorySource,
    clock: ManualClock,
    state: Arc<Mutex<BackendState>>,
    changed: Arc<Notify>,
    watch: bool,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Backend")
    }
}

impl Backend {
    fn new(clock: &ManualClock, watch: bool) -> Self {
        let memory = MemorySource::with_clock(clock.clone());
        let memory = if watch { memory.watchable() } else { memory };
        for (path, ttl, max, renewable) in LEASED {
            memory.lease(path, S(ttl), S(max), renewable);
        }
        for path in STATIC {
            memory.set(path, r#"{"user":"u","password":"p0"}"#);
        }
        Backend {
            memory,
            clock: clock.clone(),
            state: Arc::new(Mutex::new(BackendState {
                mode: Mode::Healthy,
                probe_refused: false,
                same_lease: false,
                last_lease: HashMap::new(),
                latency: Duration::ZERO,
                calls: Vec::new(),
                last_success: HashMap::new(),
                healthy_since: Some(clock.now()),
                shut_down: false,
                after_shutdown: 0,
            })),
            changed: Arc::new(Notify::new()),
            watch,
        }
    }

    fn st(&self) -> MutexGuard<'_, BackendState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, change: impl FnOnce(&mut BackendState)) {
        let now = self.clock.now();
        let mut st = self.st();
        change(&mut st);
        let healthy = st.mode == Mode::Healthy && st.latency.is_zero();
        st.healthy_since = match (healthy, st.healthy_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
            (false, _) => None,
        };
        drop(st);
        self.changed.notify_waiters();
    }

    /// Count the call, wait out the latency, apply the mode (hanging until it changes).
    async fn enter(&self, path: &str, op: Op) -> Result<()> {
        {
            let mut st = self.st();
            if st.shut_down {
                st.after_shutdown += 1;
            }
            st.calls.push((self.clock.now(), path.to_owned(), op));
        }
        let latency = self.st().latency;
        if !latency.is_zero() {
            self.clock.sleep_until(self.clock.now() + latency).await;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mode = self.st().mode.clone();
            let hint = |h: Option<u64>| h.map(S);
            let e = match mode {
                Mode::Healthy => return Ok(()),
                Mode::Hang => {
                    changed.await;
                    continue;
                }
                Mode::Fail(kind) => Error::new(kind, "simulated failure"),
                Mode::Throttle(h) => Error::throttled(hint(h), "simulated 429"),
                Mode::Unavailable(h) => {
                    let e = Error::new(ErrorKind::Unavailable, "simulated 503");
                    match hint(h) {
                        Some(d) => e.with_retry_after(d),
                        None => e,
                    }
                }
            };
            return Err(e);
        }
    }

    fn answered(&self, path: &str) {
        let now = self.clock.now();
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("  {:?} backend answered for {path}", self.clock.elapsed());
        }
        self.st().last_success.insert(path.to_owned(), now);
    }

    fn calls_in(&self, path: &str, from: Instant, to: Instant) -> usize {
        self.st()
            .calls
            .iter()
            .filter(|(at, p, op)| p == path && *op != Op::Revoke && *at >= from && *at <= to)
            .count()
    }
}

fn lease_path(lease: &Lease) -> String {
    lease
        .id
        .rsplit_once('/')
        .map_or(lease.id.clone(), |(p, _)| p.to_owned())
}

#[async_trait]
impl SecretSource for Backend {
    fn capabilities(&self) -> Capabilities {
        self.memory.capabilities()
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        self.enter(r.path(), Op::Fetch).await?;
        // A backend may answer with the lease it issued last (a capped re-issue, a replaying
        // proxy), but never with one it has revoked or let end.
        let replay = {
            let st = self.st();
            st.same_lease
                .then(|| st.last_lease.get(r.path()).cloned())
                .flatten()
                .filter(|s| s.lease().is_some_and(|l| self.memory.lease_valid(&l.id)))
        };
        if let Some(last) = replay {
            self.answered(r.path());
            return Ok(last);
        }
        let secret = self.memory.fetch(r).await?;
        if secret.lease().is_some() {
            self.st()
                .last_lease
                .insert(r.path().to_owned(), secret.clone());
        }
        self.answered(r.path());
        Ok(secret)
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        keyrack_core::fetch_each(self, refs, 4).await
    }

    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        self.enter(r.path(), Op::Version).await?;
        if self.st().probe_refused {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "no metadata access",
            ));
        }
        let v = self.memory.version(r).await?;
        self.answered(r.path());
        Ok(v)
    }

    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease> {
        let path = lease_path(lease);
        self.enter(&path, Op::Renew).await?;
        let l = self.memory.renew(lease, increment).await?;
        self.answered(&path);
        Ok(l)
    }

    async fn revoke(&self, lease: &Lease) -> Result<()> {
        self.enter(&lease_path(lease), Op::Revoke).await?;
        self.memory.revoke(lease).await
    }

    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        if self.watch {
            self.memory.watch(r)
        } else {
            None
        }
    }

    async fn shutdown(&self) {
        self.st().shut_down = true;
    }
}

// ----------------------------------------------------------------------------------------------
// Schedules.

#[derive(Clone, Debug)]
enum Step {
    Advance(u64),
    Get { path: usize, field: bool },
    Handle(usize),
    Drop(usize),
    Refresh(usize),
    Write(usize),
    Delete(usize),
    Mode(Mode),
    ProbeRefused(bool),
    SameLease(bool),
    Latency(u64),
}

#[derive(Clone, Debug)]
struct Setup {
    capacity: u64,
    interval: u64,
    max_staleness: Option<u64>,
    watch: bool,
    revoke_replaced: Option<u64>,
}

fn generate(seed: u64) -> (Setup, Vec<Step>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let setup = Setup {
        capacity: [1, 2, 3, 8, 10_000][rng.usize(..5)],
        interval: [1, 10, 60, 300][rng.usize(..4)],
        max_staleness: rng.bool().then(|| rng.u64(5..600)),
        watch: rng.u8(..4) == 0,
        revoke_replaced: rng.bool().then(|| rng.u64(0..30)),
    };
    let n = paths().len();
    let mut steps = Vec::new();
    for _ in 0..rng.usize(20..80) {
        let step = match rng.u8(..100) {
            0..=22 => Step::Advance(match rng.u8(..10) {
                0..=5 => rng.u64(1..2_000),
                6..=8 => rng.u64(2_000..60_000),
                _ => rng.u64(60_000..900_000),
            }),
            23..=42 => Step::Get {
                path: rng.usize(..n),
                field: rng.u8(..4) == 0,
            },
            43..=51 => Step::Handle(rng.usize(..n)),
            52..=57 => Step::Drop(rng.usize(..8)),
            58..=62 => Step::Refresh(rng.usize(..8)),
            63..=69 => Step::Write(rng.usize(..STATIC.len())),
            70..=71 => Step::Delete(rng.usize(..STATIC.len())),
            72..=86 => Step::Mode(match rng.u8(..8) {
                0..=2 => Mode::Healthy,
                3 => Mode::Fail(
                    [
                        ErrorKind::PermissionDenied,
                        ErrorKind::Unauthenticated,
                        ErrorKind::NotFound,
                        ErrorKind::Backend,
                    ][rng.usize(..4)]
                    .clone(),
                ),
                4 => Mode::Throttle(rng.bool().then(|| rng.u64(0..=MAX_HINT))),
                5 => Mode::Unavailable(rng.bool().then(|| rng.u64(0..=MAX_HINT))),
                6 => Mode::Hang,
                _ => Mode::Unavailable(None),
            }),
            87..=90 => Step::ProbeRefused(rng.bool()),
            91..=95 => Step::SameLease(rng.bool()),
            _ => Step::Latency(if rng.bool() { 0 } else { rng.u64(1..3_000) }),
        };
        steps.push(step);
    }
    (setup, steps)
}

// ----------------------------------------------------------------------------------------------
// Running one schedule.

struct Held {
    path: &'static str,
    handle: SecretHandle,
    events: RotationEvents,
    /// An `Expired` arrived after the last sign of a good value.
    told_expired: bool,
}

/// A change to wait for: the handle on `path` shows `version` by `deadline` if the backend stays
/// healthy throughout.
struct Expectation {
    path: &'static str,
    version: Version,
    written: Instant,
    deadline: Instant,
}

struct Sim {
    clock: ManualClock,
    backend: Backend,
    secrets: Secrets,
    setup: Setup,
    held: Vec<Held>,
    refreshes: Vec<tokio::task::JoinHandle<Result<()>>>,
    expectations: Vec<Expectation>,
    /// Application operations per path, with their time (for the budget).
    user_ops: Vec<(Instant, &'static str)>,
    start: Instant,
}

type Verdict = std::result::Result<(), String>;

fn client_ref(path: &str, field: bool) -> String {
    if field && STATIC.contains(&path) {
        format!("mem://{path}#password")
    } else {
        format!("mem://{path}")
    }
}

impl Sim {
    fn new(setup: &Setup) -> Self {
        let clock = ManualClock::new();
        let backend = Backend::new(&clock, setup.watch);
        let mut builder = Secrets::builder()
            .clock(clock.clone())
            .source("mem", backend.clone())
            .cache_capacity(setup.capacity)
            .refresh_interval(S(setup.interval))
            .request_timeout(REQUEST_TIMEOUT)
            .backoff(Backoff {
                initial: S(1),
                max: BACKOFF_MAX,
            })
            .jitter_seed(setup.capacity ^ setup.interval);
        if let Some(m) = setup.max_staleness {
            builder = builder.max_staleness(S(m));
        }
        if let Some(r) = setup.revoke_replaced {
            builder = builder.revoke_replaced_leases_after(S(r));
        }
        let secrets = builder.build().unwrap();
        let start = clock.now();
        Sim {
            clock,
            backend,
            secrets,
            setup: setup.clone(),
            held: Vec::new(),
            refreshes: Vec::new(),
            expectations: Vec::new(),
            user_ops: Vec::new(),
            start,
        }
    }

    /// Run `op` to completion, moving the clock in small steps; it must finish within two
    /// request timeouts and a little.
    async fn complete<T: Send + 'static>(
        &mut self,
        what: &str,
        op: impl std::future::Future<Output = T> + Send + 'static,
    ) -> std::result::Result<T, String> {
        let task = tokio::spawn(op);
        let limit = self.clock.elapsed() + REQUEST_TIMEOUT * 2 + S(MAX_HINT) + S(5);
        loop {
            keyrack_core::testkit::settle().await;
            if task.is_finished() {
                return task.await.map_err(|e| format!("{what} panicked: {e}"));
            }
            if self.clock.elapsed() > limit {
                return Err(format!("{what} did not complete within {limit:?}"));
            }
            // The clock wakes every sleeper at its own deadline along the way.
            self.clock.advance(S(2)).await;
        }
    }

    async fn step(&mut self, step: &Step) -> Verdict {
        let all = paths();
        match step {
            Step::Advance(ms) => {
                // In slices, so that the invariants are looked at along the way.
                let mut left = *ms;
                while left > 0 {
                    let slice = left.min(15_000);
                    self.clock.advance(MS(slice)).await;
                    left -= slice;
                    self.check().await?;
                }
            }
            Step::Get { path, field } => {
                let path = all[*path];
                self.user_ops.push((self.clock.now(), path));
                let r = client_ref(path, *field);
                let secrets = self.secrets.clone();
                let clock = self.clock.clone();
                // Judged at the moment it was returned, not when the step ends.
                let (got, at) = self
                    .complete("get_secret", async move {
                        let got = secrets.get_secret(r).await;
                        (got, clock.now())
                    })
                    .await?;
                if let Ok(secret) = got {
                    self.served_ok(path, &secret, at, "get_secret")?;
                }
            }
            Step::Handle(path) => {
                let path = all[*path];
                self.user_ops.push((self.clock.now(), path));
                let secrets = self.secrets.clone();
                let r = client_ref(path, false);
                let got = self
                    .complete("handle", async move { secrets.handle(r).await })
                    .await?;
                if let Ok(handle) = got {
                    let events = handle.subscribe();
                    // Expired before anyone could subscribe: nothing to be told.
                    let told_expired = handle.try_current().is_err();
                    self.held.push(Held {
                        path,
                        handle,
                        events,
                        told_expired,
                    });
                }
            }
            Step::Drop(i) => {
                if !self.held.is_empty() {
                    self.held.remove(i % self.held.len());
                }
            }
            Step::Refresh(i) => {
                if !self.held.is_empty() {
                    let held = &self.held[i % self.held.len()];
                    self.user_ops.push((self.clock.now(), held.path));
                    let handle = held.handle.clone();
                    self.refreshes
                        .push(tokio::spawn(async move { handle.refresh_now().await }));
                }
            }
            Step::Write(i) => {
                let path = STATIC[*i];
                let v = self.backend.memory.set(
                    path,
                    format!(
                        r#"{{"user":"u","password":"p{}"}}"#,
                        self.clock.elapsed().as_millis()
                    ),
                );
                let now = self.clock.now();
                // Any check of a healthy backend sees it within the interval; one retrying a
                // failure within the backoff's cap or the backend's hint; plus the 1 s gap.
                let bound = S(self.setup.interval).max(BACKOFF_MAX + S(MAX_HINT)) + S(3);
                self.expectations.retain(|e| e.path != path);
                self.expectations.push(Expectation {
                    path,
                    version: v,
                    written: now,
                    deadline: now + bound,
                });
            }
            Step::Delete(i) => {
                self.backend.memory.delete(STATIC[*i]);
                self.expectations.retain(|e| e.path != STATIC[*i]);
            }
            Step::Mode(m) => {
                let m = m.clone();
                self.backend.set(|st| st.mode = m);
            }
            Step::ProbeRefused(on) => self.backend.set(|st| st.probe_refused = *on),
            Step::SameLease(on) => self.backend.set(|st| st.same_lease = *on),
            Step::Latency(ms) => self.backend.set(|st| st.latency = MS(*ms)),
        }
        self.check().await
    }

    /// A value served now must not be past what the backend honours.
    fn served_ok(&self, path: &str, secret: &Secret, now: Instant, how: &str) -> Verdict {
        let honoured = |id: &str| {
            if now == self.clock.now() {
                self.backend.memory.lease_valid(id)
            } else {
                // Judged earlier: only its end can be known (a revocation since is fine).
                let wall = self.clock.wall() - (self.clock.now() - now);
                self.backend
                    .memory
                    .lease_end(id)
                    .is_none_or(|end| wall < end)
            }
        };
        if let Some(lease) = secret.lease()
            && !honoured(&lease.id)
        {
            // Revoked by the engine itself as replaced is fine only if it was replaced: a handle
            // still showing it is not.
            return Err(format!(
                "{how} served lease {} of {path}, which the backend no longer honours",
                lease.id
            ));
        }
        if let Some(max) = self.setup.max_staleness
            && secret.lease().is_none()
        {
            let last = self.backend.st().last_success.get(path).copied();
            if let Some(last) = last
                && now >= last + S(max) + MS(1)
            {
                return Err(format!(
                    "{how} served {path} {:?} after the backend last answered for it \
                     (max_staleness {max} s)",
                    now - last
                ));
            }
        }
        Ok(())
    }

    async fn check(&mut self) -> Verdict {
        keyrack_core::testkit::settle().await;
        let now = self.clock.now();
        // 3 and 5: what handles serve.
        let trace = std::env::var_os("SIM_TRACE").is_some();
        for held in &mut self.held {
            for e in drain(&mut held.events) {
                if trace {
                    eprintln!("  {:?} event {e}", self.clock.elapsed());
                }
                match e {
                    RotationEvent::Expired { .. } => held.told_expired = true,
                    RotationEvent::Rotated { .. }
                    | RotationEvent::Renewed { .. }
                    | RotationEvent::Recovered { .. } => held.told_expired = false,
                    _ => {}
                }
            }
        }
        for held in &self.held {
            match held.handle.try_current() {
                Ok(secret) => self.served_ok(held.path, &secret, now, "a handle")?,
                Err(e) if e.kind() == &ErrorKind::Expired => {
                    if !held.told_expired {
                        return Err(format!("{} expired without an Expired event", held.path));
                    }
                }
                Err(e) => return Err(format!("try_current failed: {e}")),
            }
        }
        // 4: changes seen in time on a healthy backend.
        let healthy_since = self.backend.st().healthy_since;
        for exp in &self.expectations {
            if now < exp.deadline {
                continue;
            }
            let healthy = healthy_since.is_some_and(|t| t <= exp.written);
            if !healthy {
                continue;
            }
            let number = |v: &Version| v.as_str().parse::<u64>().unwrap_or(0);
            for held in self.held.iter().filter(|h| h.path == exp.path) {
                let current = held.handle.current().version().cloned();
                if current
                    .as_ref()
                    .is_some_and(|v| number(v) < number(&exp.version))
                {
                    return Err(format!(
                        "{}: version {} written {:?} ago is not served (still {:?})",
                        exp.path,
                        exp.version,
                        now - exp.written,
                        current
                    ));
                }
            }
        }
        self.expectations.retain(|e| now < e.deadline);
        // 2: the budget, over the last minute.
        if now >= self.start + S(60) {
            let from = now - S(60);
            for path in paths() {
                let calls = self.backend.calls_in(path, from, now);
                let ops = self
                    .user_ops
                    .iter()
                    .filter(|(at, p)| *p == path && *at >= from)
                    .count();
                if calls > BUDGET_PER_MINUTE + 2 * ops {
                    return Err(format!(
                        "{calls} calls for {path} in the last simulated minute ({ops} by the \
                         application)"
                    ));
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Verdict {
        let secrets = self.secrets.clone();
        self.complete("shutdown", async move { secrets.shutdown().await })
            .await?;
        for r in std::mem::take(&mut self.refreshes) {
            keyrack_core::testkit::settle().await;
            if !r.is_finished() {
                self.clock.advance(REQUEST_TIMEOUT * 2).await;
            }
            if let Err(e) = r.await {
                return Err(format!("a refresh panicked: {e}"));
            }
        }
        drop(std::mem::take(&mut self.held));
        self.backend.set(|st| st.mode = Mode::Healthy);
        self.clock.advance(S(3600)).await;
        let after = self.backend.st().after_shutdown;
        if after > 0 {
            return Err(format!("{after} backend calls after shutdown"));
        }
        keyrack_core::testkit::settle().await;
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if alive > 0 {
            return Err(format!("{alive} tasks alive after shutdown"));
        }
        Ok(())
    }
}

fn run(setup: &Setup, steps: &[Step]) -> Verdict {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let mut sim = Sim::new(setup);
            let trace = std::env::var_os("SIM_TRACE").is_some();
            if trace {
                eprintln!("setup {setup:?}");
            }
            for (i, step) in steps.iter().enumerate() {
                if trace {
                    eprintln!("{:?} step {i}: {step:?}", sim.clock.elapsed());
                }
                sim.step(step)
                    .await
                    .map_err(|e| format!("after step {i} ({step:?}): {e}"))?;
            }
            if trace {
                eprintln!("finish");
            }
            sim.finish().await
        })
    }));
    match result {
        Ok(verdict) => verdict,
        Err(panic) => Err(format!(
            "panic: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        )),
    }
}

/// The shortest schedule (removing one step at a time) that still fails.
fn shrink(setup: &Setup, mut steps: Vec<Step>) -> (Vec<Step>, String) {
    let mut error = run(setup, &steps).unwrap_err();
    let mut i = 0;
    while i < steps.len() {
        let mut fewer = steps.clone();
        fewer.remove(i);
        match run(setup, &fewer) {
            Err(e) => {
                steps = fewer;
                error = e;
            }
            Ok(()) => i += 1,
        }
    }
    (steps, error)
}

/// Seeds that once failed, replayed in every run.
///
/// - 1001709: a lease answered slower than its TTL arrived already past its end; `Rotated` was
///   emitted and `Expired` only when the driver next woke.
/// - 1119917: an entry the cache let go retired its lease; the backend handed the same lease id
///   to a new read and the revoker still ended it under a handle (engine: a lease served again
///   leaves the revoker's queue; this backend also stopped replaying leases it had revoked).
const REGRESSIONS: [u64; 2] = [1_001_709, 1_119_917];

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_schedules_keep_every_invariant() {
    let (first, count) = match env("SIM_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env("SIM_FIRST_SEED").unwrap_or(1),
            env("SIM_SCHEDULES").unwrap_or(2_000),
        ),
    };
    let replays = if env("SIM_SEED").is_some() {
        Vec::new()
    } else {
        REGRESSIONS.to_vec()
    };
    for seed in replays.into_iter().chain(first..first + count) {
        let (setup, steps) = generate(seed);
        if let Err(e) = run(&setup, &steps) {
            let (minimal, error) = shrink(&setup, steps);
            let mut report = format!(
                "seed {seed} failed: {e}\nreplay: SIM_SEED={seed} cargo nextest run -p \
                 keyrack-core --test simulation\nsetup: {setup:?}\nminimal schedule \
                 ({} steps), failing with: {error}\n",
                minimal.len()
            );
            for step in &minimal {
                report.push_str(&format!("  {step:?}\n"));
            }
            panic!("{report}");
        }
    }
}
