//! A fleet restarting together against AWS Secrets Manager's quotas, simulated in one process.
//!
//! Each pod is a real engine (`Secrets`) with a real `keyrack-aws` source, whose SDK sends its
//! requests to an in-process fake of Secrets Manager instead of a socket. The fake enforces the
//! quotas of "AWS Secrets Manager quotas" (Secrets Manager User Guide): GetSecretValue and
//! DescribeSecret together 10,000 requests per second, BatchGetSecretValue 100 per second,
//! refused past them as the service does (HTTP 400, `ThrottlingException`, no `Retry-After`),
//! and answers each request after a simulated 20 ms. Time is simulated: the runtime is tokio's
//! paused clock, which jumps to the next timer whenever every task waits, and the engines and
//! the fake read that clock, so a 10,000-pod restart measures the policy, not this machine.
//!
//! Start-up: every pod starts at t = 0, `prefetch`es its 20 secrets, and retries what failed
//! every second (a service that does not start without its secrets) for up to 5 minutes.
//! Figures per fleet size and policy, as `RESULT` lines:
//!
//! * `ready_s`: simulated seconds until every pod holds all its secrets;
//!   `ready_vs_floor`: that over the quota's floor (see [`floor`]: the fake's buckets hold a
//!   second's worth of requests, an assumption: AWS does not document its burst). Goal ≤ 1.2.
//! * `failed_pods`: pods without all their secrets after 5 minutes (goal 0).
//! * `throttled_share`: throttled answers over all requests, in percent (goal < 1).
//! * `calls`: requests the fake received.
//!
//! Policies, in the same run: `default` (what a `Secrets` does unless told otherwise: the
//! source's budget, adaptive), `unbudgeted` (no client-side budget: the policy before budgets)
//! and `share` (each pod given its share of the quota, `RequestBudget::per_second(10,000 /
//! pods)`).
//!
//! Steady state (`steady_*`): the default policy with 20 handles per pod for one simulated hour
//! after start-up, one secret rotated at 30 minutes: requests per pod per hour and the worst
//! time, over all pods, from the rotation until the pod's handle holds the new version.
//!
//! `cargo bench --bench fleet` runs 1,000 and 10,000 pods (`FLEET_PODS=N` for one size,
//! `FLEET_POLICIES=share,default` for some policies); `cargo test --benches` runs 50 pods as
//! `SMOKE` lines. The default and unbudgeted policies at 10,000 pods take a long time here (a
//! retry storm of millions of requests through the SDK, on one core).

// The fake answers on tokio's (paused) clock; nothing reads real time for a result.
#![allow(clippy::disallowed_methods)]
// Printing the results is the point of a benchmark.
#![allow(clippy::print_stdout)]
// A benchmark: a broken fake or a failed pod should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use keyrack_aws::AwsBuilder;
use keyrack_core::clock::Sleep;
use keyrack_core::{Clock, RequestBudget, RotationEvent, SecretRef, Secrets};

const SECRETS: usize = 20;
/// GetSecretValue + DescribeSecret, per second (account and Region).
const READ_QUOTA: f64 = 10_000.0;
/// BatchGetSecretValue, per second.
const BATCH_QUOTA: f64 = 100.0;
const LATENCY: Duration = Duration::from_millis(20);
const START_LIMIT: Duration = Duration::from_secs(300);

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
// The fake Secrets Manager

/// A token bucket on the simulated clock: `rate` per second, a second's worth of burst.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Bucket {
            rate,
            tokens: rate,
            at: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.rate);
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
}

#[derive(Debug)]
struct FakeState {
    reads: Bucket,
    batches: Bucket,
    counts: Counts,
    /// The current version of each secret (all pods read the same 20).
    versions: HashMap<String, u64>,
}

#[derive(Debug, Clone)]
struct FakeSecretsManager {
    state: Arc<Mutex<FakeState>>,
}

impl FakeSecretsManager {
    fn new() -> Self {
        let versions = (0..SECRETS).map(|i| (name(i), 1)).collect();
        FakeSecretsManager {
            state: Arc::new(Mutex::new(FakeState {
                reads: Bucket::new(READ_QUOTA),
                batches: Bucket::new(BATCH_QUOTA),
                counts: Counts::default(),
                versions,
            })),
        }
    }

    fn rotate(&self, i: usize) {
        *self
            .state
            .lock()
            .unwrap()
            .versions
            .get_mut(&name(i))
            .unwrap() += 1;
    }

    fn version_of(&self, i: usize) -> u64 {
        self.state.lock().unwrap().versions[&name(i)]
    }

    fn counts(&self) -> (usize, usize, HashMap<String, usize>) {
        let st = self.state.lock().unwrap();
        (
            st.counts.calls,
            st.counts.throttled,
            st.counts.by_operation.clone(),
        )
    }

    fn reset_counts(&self) {
        self.state.lock().unwrap().counts = Counts::default();
    }

    /// The answer to one request, decided when it arrives.
    fn answer(&self, operation: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut st = self.state.lock().unwrap();
        st.counts.calls += 1;
        *st.counts
            .by_operation
            .entry(operation.to_owned())
            .or_default() += 1;
        let allowed = match operation {
            "BatchGetSecretValue" => st.batches.take(),
            _ => st.reads.take(),
        };
        if !allowed {
            st.counts.throttled += 1;
            return (
                400,
                serde_json::json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
            );
        }
        let one = |st: &FakeState, id: &str| -> Option<serde_json::Value> {
            let version = st.versions.get(id)?;
            Some(serde_json::json!({
                "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}-AbCdEf"),
                "Name": id,
                "VersionId": format!("{version:08}-0000-4000-8000-000000000000"),
                "SecretString": format!("value {version} of {id}"),
                "VersionStages": ["AWSCURRENT"],
                "CreatedDate": 1_800_000_000.0,
            }))
        };
        let not_found = || {
            (
                400,
                serde_json::json!({"__type": "ResourceNotFoundException",
                    "message": "Secrets Manager can't find the specified secret."}),
            )
        };
        let id = body["SecretId"].as_str().unwrap_or_default();
        match operation {
            "GetSecretValue" => match one(&st, id) {
                Some(v) => (200, v),
                None => not_found(),
            },
            "DescribeSecret" => match st.versions.get(id) {
                Some(version) => (
                    200,
                    serde_json::json!({
                        "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}-AbCdEf"),
                        "Name": id,
                        "VersionIdsToStages": {
                            format!("{version:08}-0000-4000-8000-000000000000"): ["AWSCURRENT"]
                        },
                    }),
                ),
                None => not_found(),
            },
            "BatchGetSecretValue" => {
                let ids: Vec<&str> = body["SecretIdList"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let values: Vec<_> = ids.iter().filter_map(|id| one(&st, id)).collect();
                (
                    200,
                    serde_json::json!({"SecretValues": values, "Errors": []}),
                )
            }
            other => (
                400,
                serde_json::json!({"__type": "InvalidRequestException",
                    "message": format!("the fleet fake does not answer {other}")}),
            ),
        }
    }
}

impl HttpClient for FakeSecretsManager {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for FakeSecretsManager {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.strip_prefix("secretsmanager."))
            .unwrap_or("?")
            .to_owned();
        let body: serde_json::Value = request
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let (status, answer) = self.answer(&operation, &body);
        HttpConnectorFuture::new(async move {
            tokio::time::sleep(LATENCY).await;
            let mut response = HttpResponse::new(
                StatusCode::try_from(status).unwrap(),
                SdkBody::from(answer.to_string()),
            );
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.1");
            Ok(response)
        })
    }
}

fn name(i: usize) -> String {
    format!("fleet/secret-{i:02}")
}

fn reference(i: usize) -> SecretRef {
    SecretRef::parse(&format!("aws-sm://{}", name(i))).unwrap()
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

async fn pod(
    fake: &FakeSecretsManager,
    clock: SimClock,
    policy: Policy,
    pods: usize,
    seed: u64,
) -> Secrets {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
        .http_client(fake.clone())
        .build();
    let source = AwsBuilder::new()
        .with_sdk_config(sdk)
        .with_clock(clock)
        .build()
        .await
        .unwrap();
    let mut builder = Secrets::builder()
        .clock(clock)
        .source("aws-sm", source)
        .jitter_seed(seed);
    builder = match policy {
        Policy::Default => builder,
        Policy::Unbudgeted => builder.unbudgeted("aws-sm"),
        Policy::Share => builder.request_budget(
            "aws-sm",
            RequestBudget::per_second(((READ_QUOTA as usize) / pods).max(1) as u32),
        ),
    };
    builder.build().unwrap()
}

/// A service's start-up: prefetch, then retry what failed every second until all are held.
async fn start(secrets: &Secrets, clock: SimClock) -> bool {
    let refs: Vec<SecretRef> = (0..SECRETS).map(reference).collect();
    let mut missing: Vec<SecretRef> = secrets
        .prefetch(&refs)
        .await
        .into_iter()
        .zip(&refs)
        .filter(|(r, _)| r.is_err())
        .map(|(_, r)| r.clone())
        .collect();
    while !missing.is_empty() {
        if clock.elapsed() >= START_LIMIT {
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
}

async fn restart(
    pods: usize,
    policy: Policy,
) -> (Restart, Vec<Secrets>, FakeSecretsManager, SimClock) {
    let fake = FakeSecretsManager::new();
    let clock = SimClock::new();
    let mut fleet = Vec::with_capacity(pods);
    for i in 0..pods {
        fleet.push(pod(&fake, clock, policy, pods, i as u64).await);
    }
    fake.reset_counts();
    let begun = clock.elapsed();
    let ready_at = Arc::new(Mutex::new(Duration::ZERO));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = fleet
        .iter()
        .map(|secrets| {
            let secrets = secrets.clone();
            let ready_at = ready_at.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                if start(&secrets, clock).await {
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
    let (calls, throttled, by_operation) = fake.counts();
    let ready = (failed == 0).then(|| *ready_at.lock().unwrap());
    (
        Restart {
            ready,
            failed,
            calls,
            throttled,
            by_operation,
        },
        fleet,
        fake,
        clock,
    )
}

/// One simulated hour with a handle per secret in every pod, the first secret rotated at 30
/// minutes: requests per pod-hour, and the worst delay until a pod's handle had the new version.
async fn steady(
    fleet: &[Secrets],
    fake: &FakeSecretsManager,
    clock: SimClock,
) -> (f64, Option<Duration>) {
    let mut handles = Vec::new();
    let mut watchers = Vec::new();
    let rotated_at = Arc::new(Mutex::new(None::<Duration>));
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let seen = Arc::new(AtomicUsize::new(0));
    for secrets in fleet {
        for i in 0..SECRETS {
            handles.push(secrets.handle(reference(i)).await.unwrap());
        }
        let mut events = secrets.events();
        let (rotated_at, worst, seen) = (rotated_at.clone(), worst.clone(), seen.clone());
        watchers.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let RotationEvent::Rotated { secret, .. } = &event
                    && *secret == reference(0)
                {
                    let Some(at) = *rotated_at.lock().unwrap() else {
                        continue;
                    };
                    let mut w = worst.lock().unwrap();
                    *w = (*w).max(clock.elapsed() - at);
                    seen.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    fake.reset_counts();
    let began = clock.elapsed();
    clock
        .sleep_until(clock.now() + Duration::from_secs(30 * 60))
        .await;
    fake.rotate(0);
    *rotated_at.lock().unwrap() = Some(clock.elapsed());
    clock
        .sleep_until(clock.now() + Duration::from_secs(30 * 60))
        .await;
    let hours = (clock.elapsed() - began).as_secs_f64() / 3600.0;
    let (calls, _, _) = fake.counts();
    assert!(fake.version_of(0) == 2);
    let worst = (seen.load(Ordering::Relaxed) == fleet.len()).then(|| *worst.lock().unwrap());
    for w in watchers {
        w.abort();
    }
    drop(handles);
    (calls as f64 / fleet.len() as f64 / hours, worst)
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

/// The quota's floor for a restart: the least time in which the fake can answer every pod's
/// secrets, one GetSecretValue per secret or one BatchGetSecretValue per pod (whichever is
/// shorter), each bucket starting full (a second's worth), plus one request's latency.
fn floor(pods: usize) -> f64 {
    let drain = |calls: f64, rate: f64| ((calls - rate) / rate).max(0.0);
    let singles = drain((pods * SECRETS) as f64, READ_QUOTA);
    let batches = drain(pods as f64, BATCH_QUOTA);
    singles.min(batches) + LATENCY.as_secs_f64()
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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let wall = std::time::Instant::now();
                let (r, fleet, fake, clock) = restart(pods, policy).await;
                let floor = floor(pods);
                let name = format!("fleet_aws_{pods}_{}", policy.label());
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
                    "fleet: {pods} pods, {}: floor {floor:.2} s, requests by operation {ops:?}, {:.1} s of real time",
                    policy.label(),
                    wall.elapsed().as_secs_f64()
                );
                if policy == Policy::Default && r.failed == 0 {
                    let (per_pod_hour, worst) = steady(&fleet, &fake, clock).await;
                    println!("{tag} fleet_aws_{pods}_steady_calls_per_pod_hour={per_pod_hour:.0}");
                    match worst {
                        Some(w) => println!(
                            "{tag} fleet_aws_{pods}_steady_worst_staleness_s={:.1}",
                            w.as_secs_f64()
                        ),
                        None => println!("{tag} fleet_aws_{pods}_steady_worst_staleness_s=never"),
                    }
                }
                for secrets in &fleet {
                    secrets.shutdown().await;
                }
            });
        }
    }
}
