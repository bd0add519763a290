//! Churn: 100,000 distinct references read through a 1,000-entry cache by 8 tasks for 60 s
//! (`CHURN_SECS` to change), one in ten a hot reference. Checks that readers never stop (a
//! second with no completed read for 10 s in a row is reported as a deadlock and fails) and that
//! memory stays bounded once the cache is full. Prints:
//!
//! * `RESULT churn_reads_per_s=…`: reads completed per second, all tasks together;
//! * `RESULT churn_rss_mib_at_10s=…` and `RESULT churn_rss_mib_end=…`: resident memory (Linux
//!   `VmRSS`) once the cache has filled and at the end; `churn_rss_growth_pct` between them;
//! * `RESULT churn_held=…`: secrets still held when the readers stop (the cache's bound).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)] // a benchmark: real time

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyrack_core::Secrets;
use keyrack_core::sources::MemorySource;

const REFS: usize = 100_000;
const CAPACITY: u64 = 1_000;
const TASKS: u64 = 8;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let secs: u64 = std::env::var("CHURN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let memory = MemorySource::new();
    for i in 0..REFS {
        memory.set(
            format!("s{i}"),
            r#"{"user":"u","password":"a-password-of-some-length"}"#,
        );
    }
    let secrets = Secrets::builder()
        .source("mem", memory)
        .cache_capacity(CAPACITY)
        .build()
        .unwrap();
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (secrets, reads, stop) = (secrets.clone(), reads.clone(), stop.clone());
            rt.spawn(async move {
                let mut rng = fastrand::Rng::with_seed(t);
                while !stop.load(Ordering::Relaxed) {
                    let i = if rng.u8(..10) == 0 {
                        rng.usize(..16)
                    } else {
                        rng.usize(..REFS)
                    };
                    let field = if rng.bool() { "#password" } else { "" };
                    secrets
                        .get_secret(format!("mem://s{i}{field}"))
                        .await
                        .unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut last = 0;
    let mut stalled = 0;
    let mut rss_at_10s = None;
    let mut rss_max: f64 = 0.0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        let now = reads.load(Ordering::Relaxed);
        stalled = if now == last { stalled + 1 } else { 0 };
        last = now;
        if stalled >= 10 {
            println!("RESULT churn_deadlock=1");
            eprintln!("no read completed for 10 s: the readers are stuck");
            std::process::exit(1);
        }
        let rss = rss_mib();
        rss_max = rss_max.max(rss);
        if rss_at_10s.is_none() && start.elapsed() >= Duration::from_secs(10) {
            rss_at_10s = Some(rss);
        }
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let rss_end = rss_mib();
    let rss_10 = rss_at_10s.unwrap_or(rss_end);
    println!("RESULT churn_deadlock=0");
    println!(
        "RESULT churn_reads_per_s={:.0}",
        reads.load(Ordering::Relaxed) as f64 / elapsed
    );
    println!("RESULT churn_rss_mib_at_10s={rss_10:.1}");
    println!("RESULT churn_rss_mib_end={rss_end:.1}");
    println!("RESULT churn_rss_mib_max={rss_max:.1}");
    println!(
        "RESULT churn_rss_growth_pct={:.1}",
        (rss_end - rss_10) / rss_10 * 100.0
    );
    rt.block_on(secrets.run_pending_tasks());
    println!("RESULT churn_held={}", secrets.held());
}
