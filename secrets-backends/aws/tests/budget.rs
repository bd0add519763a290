//! The request budget counts the requests the source sends, not the calls the client makes, and
//! chooses between a batch and single reads. Against moto, requests timed by an interceptor.

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

/// Six secrets prefetched at 5 requests per second (burst 1), a fleet pod's share: its share of
/// the batch quota (a hundredth) has no room for a batch, so the six are read one by one, each
/// waiting for its place (before, one batch went out; when a fleet's batches were refused, the
/// six single reads that replaced it all went out on the prefetch's one place, within
/// milliseconds of each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_budget_reads_one_by_one_each_within_the_budget() {
    let setup = source().await;
    let names: Vec<String> = (0..6).map(|i| uniq(&format!("budget-{i}"))).collect();
    for name in &names {
        put(&setup, name, b"value").await.unwrap();
    }

    let times = SendTimes::default();
    let src = builder()
        .with_interceptor(times.clone())
        .build()
        .await
        .unwrap();
    let secrets = Secrets::builder()
        .source("aws-sm", src)
        .request_budget("aws-sm", RequestBudget::per_second(5).with_burst(1).fixed())
        .build()
        .unwrap();

    let refs: Vec<_> = names.iter().map(|n| aws_ref(n)).collect();
    for result in secrets.prefetch(&refs).await {
        result.unwrap();
    }

    assert!(times.of("BatchGetSecretValue").is_empty());
    let singles = times.of("GetSecretValue");
    assert_eq!(singles.len(), 6);
    // Six requests at 5 per second: the last 1 s after the first, give or take scheduling (a
    // lower bound: a budget never lets them go sooner).
    let span = *singles.iter().max().unwrap() - *singles.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(900),
        "six single reads went out within {span:?}"
    );
}

/// The default budget (the whole read quota) batches, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_budget_batches() {
    let setup = source().await;
    let names: Vec<String> = (0..6).map(|i| uniq(&format!("batched-{i}"))).collect();
    for name in &names {
        put(&setup, name, b"value").await.unwrap();
    }
    let times = SendTimes::default();
    let src = builder()
        .with_interceptor(times.clone())
        .build()
        .await
        .unwrap();
    let secrets = Secrets::builder().source("aws-sm", src).build().unwrap();
    let refs: Vec<_> = names.iter().map(|n| aws_ref(n)).collect();
    for result in secrets.prefetch(&refs).await {
        result.unwrap();
    }
    assert_eq!(times.of("BatchGetSecretValue").len(), 1);
    assert!(times.of("GetSecretValue").is_empty());
}

/// A read whose budget has no room for the optional DescribeSecret now (rotation schedule) is
/// answered without it: 1 request per second, burst 1, one cold read sends its GetSecretValue
/// and no DescribeSecret. (Before, the read waited a second for a place for the DescribeSecret
/// and then sent it.) With room (the default budget), the schedule is read as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_does_not_wait_for_room_to_describe_the_secret() {
    let setup = source().await;
    let name = uniq("no-describe");
    put(&setup, &name, b"value").await.unwrap();

    let times = SendTimes::default();
    let src = builder()
        .with_interceptor(times.clone())
        .build()
        .await
        .unwrap();
    let secrets = Secrets::builder()
        .source("aws-sm", src)
        .request_budget("aws-sm", RequestBudget::per_second(1).with_burst(1).fixed())
        .build()
        .unwrap();
    secrets.get_secret(aws_ref(&name)).await.unwrap();
    assert_eq!(times.of("GetSecretValue").len(), 1);
    assert!(times.of("DescribeSecret").is_empty());

    let times = SendTimes::default();
    let src = builder()
        .with_interceptor(times.clone())
        .build()
        .await
        .unwrap();
    let secrets = Secrets::builder().source("aws-sm", src).build().unwrap();
    secrets.get_secret(aws_ref(&name)).await.unwrap();
    assert_eq!(times.of("GetSecretValue").len(), 1);
    assert_eq!(times.of("DescribeSecret").len(), 1);
}
