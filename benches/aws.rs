//! Benchmarks of the AWS Secrets Manager source (`keyrack-aws`) against moto.
//!
//! Start moto first and source its env file (`AWS_ENDPOINT_URL`, `AWS_REGION`, keys):
//!
//! ```text
//! dir=$(scripts/testground/moto-up) && . "$dir/env"
//! cargo bench --bench aws                       # warm start figures
//! cargo bench --bench aws --features peer-aws   # + the comparison with aws_secretsmanager_caching
//! MOTO_TESTGROUND_DIR=$dir scripts/testground/moto-down
//! ```
//!
//! Without `AWS_ENDPOINT_URL` it says so and exits successfully without any figure. With it, it
//! creates 100 secrets in moto and prints, as `RESULT <name>=<value>` lines, all measured in the
//! same run:
//!
//! * `warm_start_100_calls`: requests a fresh client's `prefetch` of the 100 secrets sends
//!   (counted by an SDK interceptor; target ≤ 5: BatchGetSecretValue in chunks of 20).
//! * `warm_start_batched_ms` and `warm_start_sequential_ms`: medians of the wall time of that
//!   `prefetch` and of 100 sequential `get_secret` calls, each on a fresh client (fresh `Secrets`,
//!   fresh `AwsSource` and so fresh connections), and `warm_start_batched_vs_sequential`, the
//!   ratio sequential / batched. Both sources are built without the rotation-schedule
//!   DescribeSecret so that both read values only.
//! * with `--features peer-aws`: the cache-hit workload (repeated reads of one cached secret) on
//!   `aws_secretsmanager_caching` 2.1.0, `peer_aws_caching_hit_ns`, and on
//!   `secrets.get_secret("aws-sm://…")`, `get_secret_hit_aws_ns`; `get_secret_hit_vs_peer_aws` is
//!   peer / ours (target ≥ 3). Each figure is the median of several samples of a timed loop,
//!   the two subjects timed in turn within each round.
//!
//! `-- --quick` or `BENCH_QUICK=1` takes fewer samples. Under `cargo test --benches` every part
//! runs once at smoke sizes and the figures are printed as `SMOKE` lines instead.

// A benchmark measures real time: `Instant::now` is the point here.
#![allow(clippy::disallowed_methods)]
// Printing the results is the point of a benchmark.
#![allow(clippy::print_stdout)]

use keyrack_benches::median;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::{BoxError, ProvideErrorMetadata};
use futures_util::StreamExt;
use keyrack_aws::{AwsBuilder, AwsSource};
use keyrack_core::{SecretRef, Secrets};
use tokio::runtime::{Builder, Runtime};

// ------------------------------------------------------------------------------------------------
// Run configuration

/// How the binary was started and how big each part is.
struct Plan {
    /// `cargo bench` (`--bench`), not `cargo test --benches`.
    bench: bool,
    /// Secrets created and prefetched.
    secrets: usize,
    /// Samples of the warm start (each: one batched and one sequential fresh client).
    warm_rounds: usize,
    /// Rounds of the interleaved cache-hit loops (the median is reported).
    #[cfg_attr(not(feature = "peer-aws"), allow(dead_code))]
    hit_rounds: usize,
    #[cfg_attr(not(feature = "peer-aws"), allow(dead_code))]
    hit_iters: u64,
}

impl Plan {
    fn from_env() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let env_on = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
        // As criterion decides: `--bench` without `--test` benchmarks, anything else tests.
        let bench = has("--bench") && !has("--test");
        let quick = has("--quick") || env_on("BENCH_QUICK");
        if !bench {
            return Plan {
                bench,
                secrets: 100,
                warm_rounds: 1,
                hit_rounds: 1,
                hit_iters: 1_000,
            };
        }
        Plan {
            bench,
            secrets: 100,
            warm_rounds: if quick { 5 } else { 11 },
            hit_rounds: if quick { 7 } else { 21 },
            hit_iters: if quick { 50_000 } else { 200_000 },
        }
    }

    /// The prefix of the figures' lines.
    fn tag(&self) -> &'static str {
        if self.bench { "RESULT" } else { "SMOKE" }
    }
}

// ------------------------------------------------------------------------------------------------
// moto

/// Where moto is and how to sign for it, from the env file of `scripts/testground/moto-up`.
#[derive(Clone, Debug)]
struct Moto {
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: String,
}

impl Moto {
    /// `None` when `AWS_ENDPOINT_URL` is unset: there is no moto to measure against.
    fn from_env() -> Option<Self> {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|v| !v.is_empty())?;
        Some(Moto {
            endpoint,
            region: var("AWS_REGION", "us-east-1"),
            access_key: var("AWS_ACCESS_KEY_ID", "testing"),
            secret_key: var("AWS_SECRET_ACCESS_KEY", "testing"),
        })
    }

    /// A builder pointed at moto. Without the rotation-schedule DescribeSecret: every read is
    /// one GetSecretValue (or its share of a BatchGetSecretValue).
    fn builder(&self) -> AwsBuilder {
        AwsBuilder::new()
            .with_region(&self.region)
            .with_endpoint_url(&self.endpoint)
            .with_static_credentials(&self.access_key, &self.secret_key, None)
            .with_rotation_schedule(false)
    }

    async fn source(&self) -> AwsSource {
        self.builder().build().await.expect("AWS source for moto")
    }
}

/// Counts the requests a client sends, by operation (`X-Amz-Target`).
#[derive(Clone, Debug, Default)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    fn operations(&self) -> Vec<String> {
        self.0.lock().expect("request log lock").clone()
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("?")
            .to_owned();
        self.0.lock().expect("request log lock").push(op);
        Ok(())
    }
}

/// A name no earlier run used (moto keeps secrets for its whole life).
fn unique_prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .expect("clock after 1970")
        .as_nanos();
    format!("bench-aws-{:016x}", RandomState::new().hash_one(nanos))
}

fn value_of(name: &str) -> String {
    format!("value of {name}")
}

/// Create `names` in moto (8 requests at a time); an existing secret is left as it is.
async fn create_secrets(moto: &Moto, names: &[String]) {
    let admin = moto.source().await;
    let created = Arc::new(AtomicUsize::new(0));
    futures_util::stream::iter(names)
        .for_each_concurrent(8, |name| {
            let client = admin.client().clone();
            let created = created.clone();
            async move {
                match client
                    .create_secret()
                    .name(name)
                    .secret_string(value_of(name))
                    .send()
                    .await
                {
                    Ok(_) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.code() == Some("ResourceExistsException") => {}
                    Err(e) => panic!("CreateSecret {name} in moto: {e:?}"),
                }
            }
        })
        .await;
    println!(
        "DETAIL created {} of {} secrets in moto at {}",
        created.load(Ordering::Relaxed),
        names.len(),
        moto.endpoint
    );
}

fn client_on(source: AwsSource) -> Secrets {
    Secrets::builder()
        .source("aws-sm", source)
        // Nothing is re-checked during the run: a hit is a hit.
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .expect("client")
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio multi-thread runtime")
}

fn spread(samples: &[f64]) -> (f64, f64) {
    (
        samples.iter().copied().fold(f64::INFINITY, f64::min),
        samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

// ------------------------------------------------------------------------------------------------
// Warm start

/// `warm_start_*`: the calls of one prefetch, then batched vs sequential wall times.
fn warm_start(plan: &Plan, moto: &Moto, rt: &Runtime, refs: &[SecretRef], out: &mut Vec<String>) {
    let tag = plan.tag();
    rt.block_on(async {
        // (a) The requests a fresh client's prefetch sends.
        let log = RequestLog::default();
        let source = moto
            .builder()
            .with_interceptor(log.clone())
            .build()
            .await
            .expect("AWS source for moto");
        let secrets = client_on(source);
        let results = secrets.prefetch(refs).await;
        let calls = log.operations();
        for (r, result) in refs.iter().zip(&results) {
            let secret = result
                .as_ref()
                .unwrap_or_else(|e| panic!("prefetch of {r}: {e}"));
            assert_eq!(
                secret.expose_bytes(),
                value_of(r.path()).as_bytes(),
                "value of {r}"
            );
        }
        // Served from the cache now: no further request.
        secrets
            .get_secret(&refs[refs.len() / 2])
            .await
            .expect("cached");
        assert_eq!(log.operations().len(), calls.len(), "a hit sends nothing");
        secrets.shutdown().await;
        println!(
            "DETAIL warm_start_100_calls: prefetch of {} secrets sent {} request(s): {calls:?}",
            refs.len(),
            calls.len()
        );
        out.push(format!("{tag} warm_start_100_calls={}", calls.len()));

        // (b) Wall time, batched and sequential in turn within each round.
        let mut batched = Vec::with_capacity(plan.warm_rounds);
        let mut sequential = Vec::with_capacity(plan.warm_rounds);
        for _ in 0..plan.warm_rounds {
            let secrets = client_on(moto.source().await);
            let start = Instant::now();
            let results = secrets.prefetch(refs).await;
            batched.push(start.elapsed().as_secs_f64() * 1e3);
            assert!(results.iter().all(Result::is_ok), "every prefetch succeeds");
            secrets.shutdown().await;

            let secrets = client_on(moto.source().await);
            let start = Instant::now();
            for r in refs {
                black_box(secrets.get_secret(r).await.expect("get_secret from moto"));
            }
            sequential.push(start.elapsed().as_secs_f64() * 1e3);
            secrets.shutdown().await;
        }
        let (b, s) = (median(&batched), median(&sequential));
        for (name, samples) in [("batched", &batched), ("sequential", &sequential)] {
            let (min, max) = spread(samples);
            println!(
                "DETAIL warm_start_{name}_ms: median {:.2}, min {min:.2}, max {max:.2} over {} \
                 fresh clients",
                median(samples),
                samples.len()
            );
        }
        out.push(format!("{tag} warm_start_batched_ms={b:.2}"));
        out.push(format!("{tag} warm_start_sequential_ms={s:.2}"));
        out.push(format!(
            "{tag} warm_start_batched_vs_sequential={:.2}",
            s / b
        ));
    });
}

// ------------------------------------------------------------------------------------------------
// Peer comparison: the cache hit on aws_secretsmanager_caching

#[cfg(feature = "peer-aws")]
mod peer {
    use std::hint::black_box;
    use std::num::NonZeroUsize;
    use std::time::{Duration, Instant};

    use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
    use aws_secretsmanager_caching::SecretsManagerCachingClient;
    use keyrack_core::Secrets;
    use tokio::runtime::Runtime;

    use super::{Moto, Plan, client_on, median, spread, value_of};

    /// The two clients, each with `name` read once (so cached) from moto.
    struct Subjects {
        rt: Runtime,
        uri: String,
        name: String,
        ours: Secrets,
        peer: SecretsManagerCachingClient,
    }

    impl Subjects {
        fn new(moto: &Moto, name: &str) -> Self {
            // Both loops run on a current-thread runtime, as in the engine bench.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio current-thread runtime");
            let uri = format!("aws-sm://{name}");
            let (ours, peer) = rt.block_on(async {
                let ours = client_on(moto.source().await);
                let first = ours.get_secret(uri.as_str()).await.expect("first read");
                assert_eq!(first.expose_bytes(), value_of(name).as_bytes());

                // The peer as its README sets it up, pointed at moto; a TTL of an hour so every
                // read below is a hit.
                let config = aws_sdk_secretsmanager::config::Builder::new()
                    .behavior_version(BehaviorVersion::latest())
                    .region(Region::new(moto.region.clone()))
                    .endpoint_url(&moto.endpoint)
                    .credentials_provider(Credentials::new(
                        &moto.access_key,
                        &moto.secret_key,
                        None,
                        None,
                        "bench",
                    ));
                let peer = SecretsManagerCachingClient::from_builder(
                    config,
                    NonZeroUsize::new(1000).expect("non-zero"),
                    Duration::from_secs(3600),
                    false,
                )
                .await
                .expect("peer caching client");
                let first = peer
                    .get_secret_value(name, None, None, false)
                    .await
                    .expect("peer first read");
                assert_eq!(
                    first.secret_string.as_deref(),
                    Some(value_of(name).as_str())
                );
                (ours, peer)
            });
            Subjects {
                rt,
                uri,
                name: name.to_owned(),
                ours,
                peer,
            }
        }

        fn loop_ours(&self, iters: u64) -> Duration {
            self.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let secret = self.ours.get_secret(black_box(self.uri.as_str())).await;
                    black_box(secret.expect("cached"));
                }
                start.elapsed()
            })
        }

        fn loop_peer(&self, iters: u64) -> Duration {
            self.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let secret = self
                        .peer
                        .get_secret_value(black_box(self.name.as_str()), None, None, false)
                        .await;
                    black_box(secret.expect("cached"));
                }
                start.elapsed()
            })
        }
    }

    fn ns_per_iter(d: Duration, iters: u64) -> f64 {
        d.as_secs_f64() * 1e9 / iters as f64
    }

    /// `peer_aws_caching_hit_ns`, `get_secret_hit_aws_ns`, `get_secret_hit_vs_peer_aws`.
    pub(super) fn hits(plan: &Plan, moto: &Moto, name: &str, out: &mut Vec<String>) {
        let s = Subjects::new(moto, name);
        let iters = plan.hit_iters;
        // Warm up both loops.
        s.loop_peer((iters / 10).max(1));
        s.loop_ours((iters / 10).max(1));
        let mut peer = Vec::with_capacity(plan.hit_rounds);
        let mut ours = Vec::with_capacity(plan.hit_rounds);
        let mut ratios = Vec::with_capacity(plan.hit_rounds);
        for _ in 0..plan.hit_rounds {
            let p = ns_per_iter(s.loop_peer(iters), iters);
            let o = ns_per_iter(s.loop_ours(iters), iters);
            peer.push(p);
            ours.push(o);
            ratios.push(p / o);
        }
        for (label, samples) in [
            ("peer_aws_caching_hit_ns", &peer),
            ("get_secret_hit_aws_ns", &ours),
        ] {
            let (min, max) = spread(samples);
            println!(
                "DETAIL {label}: median {:.2} ns, min {min:.2}, max {max:.2} over {} samples of \
                 {iters} calls",
                median(samples),
                samples.len()
            );
        }
        let (rmin, rmax) = spread(&ratios);
        println!(
            "DETAIL get_secret_hit_vs_peer_aws: median of per-round ratios {:.2} (min {rmin:.2}, \
             max {rmax:.2})",
            median(&ratios)
        );
        let tag = plan.tag();
        let (p, o) = (median(&peer), median(&ours));
        out.push(format!("{tag} peer_aws_caching_hit_ns={p:.2}"));
        out.push(format!("{tag} get_secret_hit_aws_ns={o:.2}"));
        out.push(format!("{tag} get_secret_hit_vs_peer_aws={:.2}", p / o));
        s.rt.block_on(s.ours.shutdown());
    }
}

fn main() {
    let plan = Plan::from_env();
    let Some(moto) = Moto::from_env() else {
        println!(
            "aws bench: AWS_ENDPOINT_URL is not set, so there is no moto to measure against and \
             no figure is printed. Start it with `dir=$(scripts/testground/moto-up) && . \
             \"$dir/env\"`, run the bench again, then stop it with \
             `MOTO_TESTGROUND_DIR=$dir scripts/testground/moto-down`."
        );
        return;
    };
    let prefix = unique_prefix();
    let names: Vec<String> = (0..plan.secrets)
        .map(|i| format!("{prefix}-{i:03}"))
        .collect();
    let refs: Vec<SecretRef> = names
        .iter()
        .map(|n| SecretRef::new("aws-sm", n).expect("valid reference"))
        .collect();

    let mut took = Vec::new();
    let mut out = Vec::new();
    let rt = multi_thread();
    let start = Instant::now();
    rt.block_on(create_secrets(&moto, &names));
    took.push(format!("create {:.2} s", start.elapsed().as_secs_f64()));

    let start = Instant::now();
    warm_start(&plan, &moto, &rt, &refs, &mut out);
    took.push(format!("warm start {:.2} s", start.elapsed().as_secs_f64()));
    drop(rt);

    #[cfg(feature = "peer-aws")]
    {
        let start = Instant::now();
        peer::hits(&plan, &moto, &names[0], &mut out);
        took.push(format!("peer hits {:.2} s", start.elapsed().as_secs_f64()));
    }
    #[cfg(not(feature = "peer-aws"))]
    println!("DETAIL peer comparison skipped: build with `--features peer-aws` to run it");

    println!("DETAIL time taken: {}", took.join(", "));
    if !plan.bench {
        println!("(test mode: smoke sizes, the figures below are not measurements)");
    }
    for line in out {
        println!("{line}");
    }
}
