//! The request budget counts the requests the source sends, not the calls the client makes: a
//! prefetch whose batch is refused falls back to single reads, each of which waits for its place.
//! Against moto, with the refusal made by an interceptor (moto does not throttle).

#![allow(clippy::unwrap_used)]
// The test measures how far apart real requests went out.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::BoxError;
use common::*;
use keyrack_core::{RequestBudget, Secrets};

/// When each request was sent, by operation.
#[derive(Clone, Debug, Default)]
struct SendTimes(Arc<Mutex<Vec<(String, Instant)>>>);

impl SendTimes {
    fn of(&self, op: &str) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, t)| *t)
            .collect()
    }
}

impl Intercept for SendTimes {
    fn name(&self) -> &'static str {
        "SendTimes"
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
        self.0.lock().unwrap().push((op, Instant::now()));
        Ok(())
    }
}

/// Six secrets prefetched at 5 requests per second (burst 1), the batch throttled: the six
/// single reads that follow are spaced by the budget (before, they all went out on the
/// prefetch's one place, within milliseconds of each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batchs_single_reads_each_wait_for_the_budget() {
    let setup = source().await;
    let names: Vec<String> = (0..6).map(|i| uniq(&format!("budget-{i}"))).collect();
    for name in &names {
        put(&setup, name, b"value").await.unwrap();
    }

    let throttler = Throttler::default();
    let times = SendTimes::default();
    let src = builder()
        .with_interceptor(throttler.clone())
        .with_interceptor(times.clone())
        .build()
        .await
        .unwrap();
    let secrets = Secrets::builder()
        .source("aws-sm", src)
        .request_budget("aws-sm", RequestBudget::per_second(5).with_burst(1).fixed())
        .build()
        .unwrap();
    throttler.arm("BatchGetSecretValue", 1);

    let refs: Vec<_> = names.iter().map(|n| aws_ref(n)).collect();
    for result in secrets.prefetch(&refs).await {
        result.unwrap();
    }

    assert_eq!(throttler.throttled(), 1);
    let batch = times.of("BatchGetSecretValue");
    let singles = times.of("GetSecretValue");
    assert_eq!((batch.len(), singles.len()), (1, 6));
    // Seven requests at 5 per second: the last single read 1.2 s after the batch, give or take
    // scheduling (a lower bound: a budget never lets them go sooner).
    let span = *singles.iter().max().unwrap() - batch[0];
    assert!(
        span >= Duration::from_millis(1_100),
        "the batch and six single reads went out within {span:?}"
    );
}
