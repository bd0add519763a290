//! A fleet restarting together against a backend's documented quotas (Vault's: the capacity
//! measured here), simulated in one process.
//!
//! Each pod is a real engine (`Secrets`) with a real backend source whose SDK sends its
//! requests to an in-process fake of the service instead of a socket: AWS Secrets Manager
//! ([`aws`]), Azure Key Vault ([`azure`]), Google Secret Manager ([`gcp`], through the SDK's
//! stub seam) and Vault ([`vault`], through `VaultBuilder::with_transport`); each module says
//! which quotas its fake enforces, where they are documented, and how it refuses past them
//! (Vault documents none: its fake has the capacity `benches/vault_fleet.rs` measured from the
//! OpenBao here, and makes requests past it wait, as the server does). Every answer comes after
//! a simulated 20 ms. Time is simulated: the runtime is tokio's paused clock, which jumps to the
//! next timer whenever every task waits, and the engines and the fakes read that clock, so a
//! 10,000-pod restart measures the policy, not this machine.
//!
//! Start-up: every pod starts at t = 0, `prefetch`es its 20 secrets, and retries what failed
//! every second (a service that does not start without its secrets).
//! Figures per backend, fleet size and policy, as `RESULT` lines:
//!
//! * `ready_s`: simulated seconds until every pod holds all its secrets;
//!   `ready_vs_floor`: that over the quota's floor (`Backend::floor`). Goal ≤ 1.2.
//! * `failed_pods`: pods without all their secrets after 5 minutes, or half again the floor
//!   where that is longer (goal 0).
//! * `throttled_share`: throttled answers over all requests, in percent (goal < 1).
//! * `calls`: requests the fake received; `first_second_calls`, `first_second_throttled`: those
//!   of the first second, and how many it refused (`FLEET_PER_SECOND=1` prints every second).
//!
//! Policies, in the same run: `default` (what a `Secrets` does unless told otherwise: the
//! source's budget, adaptive), `unbudgeted` (no client-side budget: the policy before budgets)
//! and `share` (each pod given its even share of the quota, `Backend::share`).
//!
//! Steady state (`steady_*`): the default policy with 20 handles per pod for a simulated day
//! after start-up (an hour above 1,000 pods; `FLEET_HOURS=N` to choose, 0 for none), one
//! secret rotated in the middle of every hour: requests per pod per hour and the worst time,
//! over every rotation and every pod, from the rotation until the pod's handle holds the new
//! version.
//!
//! `cargo bench --bench fleet` runs 1,000 and 10,000 pods (`FLEET_PODS=N` for one size,
//! `FLEET_POLICIES=share,default` for some policies, `FLEET_BACKENDS=azure,gcp` for some
//! backends: `aws`, `azure`, `gcp`, `vault`, `vault_quota`); `cargo test --benches` runs 50 pods as `SMOKE`
//! lines. The default and unbudgeted policies at 10,000 pods take a long time here (a retry
//! storm of millions of requests through the SDKs, on one core).

// The fakes answer on tokio's (paused) clock; nothing reads real time for a result.
#![allow(clippy::disallowed_methods)]
// Printing the results is the point of a benchmark.
#![allow(clippy::print_stdout)]
// A benchmark: a broken fake or a failed pod should stop it loudly.
#![allow(clippy::unwrap_used)]

mod aws;
mod azure;
mod gcp;
mod vault;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use keyrack_core::clock::Sleep;
use keyrack_core::{Clock, RequestBudget, RotationEvent, SecretRef, SecretSource, Secrets};

const SECRETS: usize = 20;
const LATENCY: Duration = Duration::from_millis(20);
/// How long a pod may take to start: 5 minutes, or half again the quota's floor where that is
/// longer (10,000 pods on one Key Vault need over 8 minutes whatever they do).
fn start_limit<B: Backend>(pods: usize) -> Duration {
    Duration::from_secs_f64((B::floor(pods) * 1.5).max(300.0))
}

// ------------------------------------------------------------------------------------------------
// Simulated time

/// The engines' clock: tokio's, paused, so the whole fleet shares one simulated time.
#[derive(Debug, Clone, Copy)]
struct SimClock {
    base: tokio::time::Instant,
}

impl SimClock {
    fn new() -> Self {
        SimClock {
            base: tokio::time::Instant::now(),
        }
    }

    fn elapsed(&self) -> Duration {
        tokio::time::Instant::now() - self.base
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + self.elapsed()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

// ------------------------------------------------------------------------------------------------
// What every fake shares

/// A token bucket on the simulated clock: `rate` per second, up to `capacity` at once.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: f64, capacity: f64) -> Self {
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            at: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    calls: usize,
    throttled: usize,
    by_operation: HashMap<String, usize>,
    /// Since when they are counted, and requests and refusals in each second since.
    since: Option<tokio::time::Instant>,
    per_second: Vec<(usize, usize)>,
}

#[derive(Debug)]
struct LedgerState {
    counts: Counts,
    /// The current version of each secret, by name (all pods read the same ones).
    versions: HashMap<String, u64>,
    names: Vec<String>,
}

/// What a fake counts and the versions it serves.
#[derive(Debug, Clone)]
struct Ledger {
    state: Arc<Mutex<LedgerState>>,
}

impl Ledger {
    fn new(names: impl Iterator<Item = String>) -> Self {
        let names: Vec<String> = names.collect();
        Ledger {
            state: Arc::new(Mutex::new(LedgerState {
                counts: Counts::default(),
                versions: names.iter().map(|n| (n.clone(), 1)).collect(),
                names,
            })),
        }
    }

    /// Counts a request for `operation`, and whether the quota let it through; returns
    /// `allowed`.
    fn count(&self, operation: &str, allowed: bool) -> bool {
        let mut st = self.state.lock().unwrap();
        st.counts.calls += 1;
        *st.counts
            .by_operation
            .entry(operation.to_owned())
            .or_default() += 1;
        if !allowed {
            st.counts.throttled += 1;
        }
        let since = *st
            .counts
            .since
            .get_or_insert_with(tokio::time::Instant::now);
        let second = usize::try_from(since.elapsed().as_secs()).unwrap();
        let per_second = &mut st.counts.per_second;
        if per_second.len() <= second {
            per_second.resize(second + 1, (0, 0));
        }
        per_second[second].0 += 1;
        per_second[second].1 += usize::from(!allowed);
        allowed
    }

    fn rotate(&self, i: usize) {
        let mut st = self.state.lock().unwrap();
        let name = st.names[i].clone();
        *st.versions.get_mut(&name).unwrap() += 1;
    }

    fn version_of_name(&self, name: &str) -> Option<u64> {
        self.state.lock().unwrap().versions.get(name).copied()
    }

    fn counts(&self) -> (usize, usize, HashMap<String, usize>) {
        let st = self.state.lock().unwrap();
        (
            st.counts.calls,
            st.counts.throttled,
            st.counts.by_operation.clone(),
        )
    }

    /// Requests and refusals in each second since the counts were reset.
    fn per_second(&self) -> Vec<(usize, usize)> {
        self.state.lock().unwrap().counts.per_second.clone()
    }

    fn reset_counts(&self) {
        self.state.lock().unwrap().counts = Counts {
            since: Some(tokio::time::Instant::now()),
            ..Counts::default()
        };
    }
}

/// A backend under simulation: its fake (which enforces the documented quota) and the real
/// source pointed at it.
trait Backend: Clone + Sized + 'static {
    /// The backend's part of `RESULT` names.
    const LABEL: &'static str;
    /// The source's name in references.
    const SOURCE: &'static str;
    /// The quotas enforced, for the printed summary.
    const QUOTAS: &'static str;
    /// A fake holding `SECRETS` secrets, each at version 1.
    fn new() -> Self;
    fn ledger(&self) -> &Ledger;
    /// The reference of secret `i`.
    fn reference(i: usize) -> SecretRef;
    /// A pod's source, sending to this fake.
    async fn source(&self, clock: SimClock) -> Arc<dyn SecretSource>;
    /// A pod's even share of the quota in a fleet of `pods`.
    fn share(pods: usize) -> RequestBudget;
    /// The least time in which the quota lets every pod of the fleet read its secrets.
    fn floor(pods: usize) -> f64;
}

/// A pod's even share of a quota of `rate` per second that allows `at_once` requests at once:
/// one request every `pods / rate` seconds, its share of `at_once` (at least 1), at its own
/// phase ([`RequestBudget::spread`]).
fn even_share(rate: f64, at_once: f64, pods: usize) -> RequestBudget {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let burst = (at_once / pods as f64) as u32;
    RequestBudget::new(1, Duration::from_secs_f64(pods as f64 / rate))
        .with_burst(burst)
        .spread()
}

// ------------------------------------------------------------------------------------------------
// The fleet

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Default,
    Unbudgeted,
    Share,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::Default => "default",
            Policy::Unbudgeted => "unbudgeted",
            Policy::Share => "share",
        }
    }
}

async fn pod<B: Backend>(
    fake: &B,
    clock: SimClock,
    policy: Policy,
    pods: usize,
    seed: u64,
) -> Secrets {
    let mut builder = Secrets::builder()
        .clock(clock)
        .shared_source(B::SOURCE, fake.source(clock).await)
        .jitter_seed(seed);
    builder = match policy {
        Policy::Default => builder,
        Policy::Unbudgeted => builder.unbudgeted(B::SOURCE),
        Policy::Share => builder.request_budget(B::SOURCE, B::share(pods)),
    };
    builder.build().unwrap()
}

/// A service's start-up: prefetch, then retry what failed every second until all are held.
async fn start<B: Backend>(secrets: &Secrets, clock: SimClock, limit: Duration) -> bool {
    let refs: Vec<SecretRef> = (0..SECRETS).map(B::reference).collect();
    let mut missing: Vec<SecretRef> = secrets
        .prefetch(&refs)
        .await
        .into_iter()
        .zip(&refs)
        .filter(|(r, _)| r.is_err())
        .map(|(_, r)| r.clone())
        .collect();
    while !missing.is_empty() {
        if clock.elapsed() >= limit {
            return false;
        }
        clock
            .sleep_until(clock.now() + Duration::from_secs(1))
            .await;
        let mut still = Vec::new();
        for r in missing {
            if secrets.get_secret(&r).await.is_err() {
                still.push(r);
            }
        }
        missing = still;
    }
    true
}

struct Restart {
    ready: Option<Duration>,
    failed: usize,
    calls: usize,
    throttled: usize,
    by_operation: HashMap<String, usize>,
    /// Requests and refusals in each second of the restart.
    per_second: Vec<(usize, usize)>,
}

async fn restart<B: Backend>(pods: usize, policy: Policy) -> (Restart, Vec<Secrets>, B, SimClock) {
    let fake = B::new();
    let clock = SimClock::new();
    let mut fleet = Vec::with_capacity(pods);
    for i in 0..pods {
        fleet.push(pod(&fake, clock, policy, pods, i as u64).await);
    }
    fake.ledger().reset_counts();
    let begun = clock.elapsed();
    let ready_at = Arc::new(Mutex::new(Duration::ZERO));
    let failed = Arc::new(AtomicUsize::new(0));
    let limit = start_limit::<B>(pods);
    let tasks: Vec<_> = fleet
        .iter()
        .map(|secrets| {
            let secrets = secrets.clone();
            let ready_at = ready_at.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                if start::<B>(&secrets, clock, limit).await {
                    let mut at = ready_at.lock().unwrap();
                    *at = (*at).max(clock.elapsed() - begun);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    let (calls, throttled, by_operation) = fake.ledger().counts();
    let per_second = fake.ledger().per_second();
    let ready = (failed == 0).then(|| *ready_at.lock().unwrap());
    (
        Restart {
            ready,
            failed,
            calls,
            throttled,
            by_operation,
            per_second,
        },
        fleet,
        fake,
        clock,
    )
}

/// `hours` simulated hours with a handle per secret in every pod, one secret rotated in the
/// middle of each hour (secret `h % 20` in hour `h`): requests per pod-hour, and the worst
/// delay, over every rotation and every pod, until the pod's handle had the new version
/// (`None` if some pod never saw some rotation).
async fn steady<B: Backend>(
    fleet: &[Secrets],
    fake: &B,
    clock: SimClock,
    hours: u32,
) -> (f64, Option<Duration>) {
    let mut handles = Vec::new();
    let mut watchers = Vec::new();
    // When each secret was last rotated.
    let rotated_at = Arc::new(Mutex::new(vec![None::<Duration>; SECRETS]));
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let seen = Arc::new(AtomicUsize::new(0));
    // Events name the secret, not the field a handle reads (`vault://…#value`).
    let index: Arc<HashMap<SecretRef, usize>> = Arc::new(
        (0..SECRETS)
            .map(|i| (B::reference(i).without_field(), i))
            .collect(),
    );
    for secrets in fleet {
        for i in 0..SECRETS {
            handles.push(secrets.handle(B::reference(i)).await.unwrap());
        }
        let mut events = secrets.events();
        let (rotated_at, worst, seen, index) = (
            rotated_at.clone(),
            worst.clone(),
            seen.clone(),
            index.clone(),
        );
        watchers.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let RotationEvent::Rotated { secret, .. } = &event else {
                    continue;
                };
                let Some(at) = index
                    .get(&secret.without_field())
                    .and_then(|&i| rotated_at.lock().unwrap()[i])
                else {
                    continue;
                };
                let mut w = worst.lock().unwrap();
                *w = (*w).max(clock.elapsed() - at);
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let ledger = fake.ledger();
    ledger.reset_counts();
    let began = clock.elapsed();
    let half_hour = Duration::from_secs(30 * 60);
    for hour in 0..hours as usize {
        clock.sleep_until(clock.now() + half_hour).await;
        let i = hour % SECRETS;
        ledger.rotate(i);
        rotated_at.lock().unwrap()[i] = Some(clock.elapsed());
        clock.sleep_until(clock.now() + half_hour).await;
    }
    let (calls, _, _) = ledger.counts();
    // Every pod sees every rotation once.
    let rotations = hours as usize;
    let complete = seen.load(Ordering::Relaxed) == fleet.len() * rotations;
    let worst = complete.then(|| *worst.lock().unwrap());
    let hours = (clock.elapsed() - began).as_secs_f64() / 3600.0;
    for w in watchers {
        w.abort();
    }
    drop(handles);
    (calls as f64 / fleet.len() as f64 / hours, worst)
}

/// Simulated hours of steady state: `FLEET_HOURS` (0 for none), else a day up to 1,000 pods and
/// an hour above (a day of 10,000 pods is tens of millions of requests through the SDKs here).
fn steady_hours(pods: usize) -> u32 {
    std::env::var("FLEET_HOURS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if pods <= 1_000 { 24 } else { 1 })
}

/// The policies to run: all, or those named in `FLEET_POLICIES` (comma-separated labels).
fn policies() -> Vec<Policy> {
    let all = [Policy::Default, Policy::Unbudgeted, Policy::Share];
    match std::env::var("FLEET_POLICIES") {
        Ok(names) => all
            .into_iter()
            .filter(|p| names.split(',').any(|n| n.trim() == p.label()))
            .collect(),
        Err(_) => all.to_vec(),
    }
}

/// Whether `FLEET_BACKENDS` (comma-separated labels; all when unset) names backend `label`.
fn selected(label: &str) -> bool {
    match std::env::var("FLEET_BACKENDS") {
        Ok(names) => names.split(',').any(|n| n.trim() == label),
        Err(_) => true,
    }
}

/// One fleet size and policy against backend `B`: the restart's figures, then (default policy
/// only) the steady state's.
fn run<B: Backend>(tag: &str, pods: usize, policy: Policy) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let wall = std::time::Instant::now();
        let (r, fleet, fake, clock) = restart::<B>(pods, policy).await;
        let floor = B::floor(pods);
        let name = format!("fleet_{}_{pods}_{}", B::LABEL, policy.label());
        match r.ready {
            Some(ready) => {
                println!("{tag} {name}_ready_s={:.2}", ready.as_secs_f64());
                println!(
                    "{tag} {name}_ready_vs_floor={:.2}",
                    ready.as_secs_f64() / floor
                );
            }
            None => println!("{tag} {name}_ready_s=never"),
        }
        println!("{tag} {name}_failed_pods={}", r.failed);
        println!(
            "{tag} {name}_throttled_share={:.2}",
            100.0 * r.throttled as f64 / r.calls.max(1) as f64
        );
        println!("{tag} {name}_calls={}", r.calls);
        let mut ops: Vec<_> = r.by_operation.into_iter().collect();
        ops.sort();
        println!(
            "fleet: {} ({}), {pods} pods, {}: floor {floor:.2} s, requests by operation {ops:?}, \
             {:.1} s of real time",
            B::LABEL,
            B::QUOTAS,
            policy.label(),
            wall.elapsed().as_secs_f64()
        );
        let (first, refused) = r.per_second.first().copied().unwrap_or_default();
        println!("{tag} {name}_first_second_calls={first}");
        println!("{tag} {name}_first_second_throttled={refused}");
        if std::env::var_os("FLEET_PER_SECOND").is_some() {
            println!(
                "fleet: requests and refusals in each second: {:?}",
                r.per_second
            );
        }
        let hours = steady_hours(pods);
        if policy == Policy::Default && r.failed == 0 && hours > 0 {
            let (per_pod_hour, worst) = steady(&fleet, &fake, clock, hours).await;
            let steady = format!("fleet_{}_{pods}_steady", B::LABEL);
            println!("{tag} {steady}_hours={hours}");
            println!("{tag} {steady}_calls_per_pod_hour={per_pod_hour:.0}");
            match worst {
                Some(w) => println!("{tag} {steady}_worst_staleness_s={:.1}", w.as_secs_f64()),
                None => println!("{tag} {steady}_worst_staleness_s=never"),
            }
        }
        for secrets in &fleet {
            secrets.shutdown().await;
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let tag = if bench { "RESULT" } else { "SMOKE" };
    let sizes: Vec<usize> = match std::env::var("FLEET_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None if bench => vec![1_000, 10_000],
        None => vec![50],
    };
    for pods in sizes {
        for policy in policies() {
            if selected(aws::Aws::LABEL) {
                run::<aws::Aws>(tag, pods, policy);
            }
            if selected(azure::Azure::LABEL) {
                run::<azure::Azure>(tag, pods, policy);
            }
            if selected(gcp::Gcp::LABEL) {
                run::<gcp::Gcp>(tag, pods, policy);
            }
            if selected(vault::Vault::<0>::LABEL) {
                run::<vault::Vault<0>>(tag, pods, policy);
            }
            if selected(vault::Vault::<{ vault::QUOTA }>::LABEL) {
                run::<vault::Vault<{ vault::QUOTA }>>(tag, pods, policy);
            }
        }
    }
}
