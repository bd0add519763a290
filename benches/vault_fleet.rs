//! A fleet restarting together against a real OpenBao: Vault has no documented quota (its
//! capacity is the operator's machine), so this measures the capacity of the one here and
//! the fleet against it, in the same run and in real time. Needs the test ground
//! (`dir=$(scripts/testground/vault-up); . $dir/env`: `VAULT_ADDR`, `VAULT_ROOT_TOKEN`, the
//! AppRole `app`); without it, it says so and prints no `RESULT`.
//!
//! 1. Capacity: 64 tasks on one keep-alive client send for 3 s what a pod's start-up sends,
//!    KV v2 reads (`secret/app/fleet/secret-NN`, root token) and, separately, AppRole logins
//!    (each token revoked after, untimed): `RESULT vault_capacity_reads_per_s`,
//!    `vault_capacity_logins_per_s`.
//! 2. Restart: `VAULT_FLEET_PODS` pods (default 1,000), each a real `Secrets` with its own
//!    `VaultSource` logging in with AppRole, start at once, prefetch 20 secrets and retry what
//!    failed every second, for at most 5 minutes. The floor is the time the capacity above
//!    allows: pods × (1 / logins per s + 20 / reads per s). Policies `default` (a Vault
//!    source's budget is a ceiling of 1,000/s per process, adaptive: Vault documents no quota)
//!    and `share` (each pod its share of the
//!    measured read capacity, spread). Per policy: `RESULT vault_fleet_<pods>_<policy>_ready_s`,
//!    `_ready_vs_floor`, `_failed_pods`, `_failed_reads` (reads that returned an error, retried),
//!    and `_shutdown_s` (every pod's shutdown, which revokes its token).
//!
//! Every pod and OpenBao share this machine's cores: the figures are this machine's. The same
//! fleet against a fake of this capacity, in simulated time and without sharing the cores, is
//! `benches/fleet`'s `vault` (and `vault_quota`, behind a rate-limit quota).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)] // a benchmark: real time

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use keyrack_core::{RequestBudget, SecretRef, Secrets};
use keyrack_vault::{Auth, VaultBuilder};
use serde_json::{Value, json};

const SECRETS: usize = 20;
const CONCURRENCY: usize = 64;
const MEASURE: Duration = Duration::from_secs(3);
const START_LIMIT: Duration = Duration::from_secs(300);

struct Ground {
    addr: String,
    root: String,
    role_id: String,
    secret_id: String,
    http: reqwest::Client,
}

impl Ground {
    fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Ground {
            addr: var("VAULT_ADDR")?,
            root: var("VAULT_ROOT_TOKEN")?,
            role_id: var("VAULT_APPROLE_ROLE_ID")?,
            secret_id: var("VAULT_APPROLE_SECRET_ID")?,
            http: keyrack_fake_server::test_client_builder(&[])
                .pool_max_idle_per_host(CONCURRENCY)
                .build()
                .unwrap(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_success() || status.as_u16() == 204,
            "{path}: {status}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn login(&self) -> String {
        let body = json!({"role_id": self.role_id, "secret_id": self.secret_id});
        let v = self
            .call(reqwest::Method::POST, "auth/approle/login", "", Some(body))
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_owned()
    }
}

fn path(i: usize) -> String {
    format!("secret/data/app/fleet/secret-{i:02}")
}

fn reference(i: usize) -> SecretRef {
    SecretRef::parse(&format!("vault://secret/app/fleet/secret-{i:02}#value")).unwrap()
}

/// Requests per second `CONCURRENCY` tasks complete in `MEASURE`, each sending `one`.
async fn rate<F, Fut>(one: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let (one, done, stop) = (one.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    one(i).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += CONCURRENCY;
                }
            })
        })
        .collect();
    tokio::time::sleep(MEASURE).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
}

/// A service's start-up: prefetch, then retry what failed every second until all are held.
async fn start(secrets: &Secrets, failures: &Failures, began: Instant) -> bool {
    let refs: Vec<SecretRef> = (0..SECRETS).map(reference).collect();
    let mut missing = Vec::new();
    for (result, r) in secrets.prefetch(&refs).await.into_iter().zip(&refs) {
        if let Err(e) = result {
            failures.count(&e);
            missing.push(r.clone());
        }
    }
    while !missing.is_empty() {
        if began.elapsed() >= START_LIMIT {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for r in missing {
            if let Err(e) = secrets.get_secret(&r).await {
                failures.count(&e);
                still.push(r);
            }
        }
        missing = still;
    }
    true
}

/// Failed reads by error kind.
#[derive(Default)]
struct Failures(std::sync::Mutex<std::collections::BTreeMap<String, usize>>);

impl Failures {
    fn count(&self, e: &keyrack_core::Error) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(format!("{:?}", e.kind()))
            .or_default() += 1;
    }

    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

async fn fleet(ground: &Ground, pods: usize, share: Option<RequestBudget>, tag: &str, floor: f64) {
    let label = if share.is_some() { "share" } else { "default" };
    let mut fleet = Vec::with_capacity(pods);
    for seed in 0..pods {
        let vault = VaultBuilder::new()
            .with_address(&ground.addr)
            .with_auth(Auth::approle(&ground.role_id, ground.secret_id.as_str()))
            .build()
            .unwrap();
        let mut builder = Secrets::builder()
            .source("vault", vault)
            .jitter_seed(seed as u64);
        if let Some(budget) = share {
            builder = builder.request_budget("vault", budget);
        }
        fleet.push(builder.build().unwrap());
    }
    let failures = Arc::new(Failures::default());
    let failed = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let tasks: Vec<_> = fleet
        .iter()
        .map(|secrets| {
            let (secrets, failures, failed) = (secrets.clone(), failures.clone(), failed.clone());
            tokio::spawn(async move {
                if !start(&secrets, &failures, began).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ready = began.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let name = format!("vault_fleet_{pods}_{label}");
    if failed == 0 {
        println!("{tag} {name}_ready_s={ready:.2}");
        println!("{tag} {name}_ready_vs_floor={:.2}", ready / floor);
    } else {
        println!("{tag} {name}_ready_s=never");
    }
    println!("{tag} {name}_failed_pods={failed}");
    println!("{tag} {name}_failed_reads={}", failures.total());
    println!(
        "vault_fleet: {name}: failed reads by kind {:?}",
        failures.0.lock().unwrap()
    );
    let began = Instant::now();
    futures_util::future::join_all(fleet.iter().map(Secrets::shutdown)).await;
    println!(
        "{tag} {name}_shutdown_s={:.2}",
        began.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let tag = if bench { "RESULT" } else { "SMOKE" };
    let Some(ground) = Ground::from_env() else {
        println!(
            "vault_fleet: no test ground (VAULT_ADDR, VAULT_ROOT_TOKEN, VAULT_APPROLE_ROLE_ID, \
             VAULT_APPROLE_SECRET_ID); start one with scripts/testground/vault-up and source its \
             env. Nothing measured."
        );
        return;
    };
    let pods: usize = std::env::var("VAULT_FLEET_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 1_000 } else { 50 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ground = Arc::new(ground);
        for i in 0..SECRETS {
            let body = json!({"data": {"value": format!("value of secret {i}")}});
            ground
                .call(reqwest::Method::POST, &path(i), &ground.root, Some(body))
                .await;
        }
        let g = ground.clone();
        let reads = rate(move |i| {
            let g = g.clone();
            async move {
                g.call(reqwest::Method::GET, &path(i % SECRETS), &g.root, None)
                    .await;
            }
        })
        .await;
        let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (g, t) = (ground.clone(), tokens.clone());
        let logins = rate(move |_| {
            let (g, t) = (g.clone(), t.clone());
            async move {
                let token = g.login().await;
                t.lock().unwrap().push(token);
            }
        })
        .await;
        let tokens = std::mem::take(&mut *tokens.lock().unwrap());
        futures_util::stream::iter(tokens.iter().map(|token| {
            ground.call(reqwest::Method::POST, "auth/token/revoke-self", token, None)
        }))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        println!("{tag} vault_capacity_reads_per_s={reads:.0}");
        println!("{tag} vault_capacity_logins_per_s={logins:.0}");
        let floor = pods as f64 * (1.0 / logins + SECRETS as f64 / reads);
        println!("vault_fleet: {pods} pods, floor {floor:.2} s");
        fleet(&ground, pods, None, tag, floor).await;
        // The share: the measured read capacity split evenly, one request at a time.
        let share = RequestBudget::new(1, Duration::from_secs_f64(pods as f64 / reads)).spread();
        fleet(&ground, pods, Some(share), tag, floor).await;
    });
}
