//! Faults and misuse against moto, with the faults made by an interceptor (moto cannot throttle
//! or fail on demand) and every request counted: Retry-After in both forms on any status (#8),
//! parameters and names Secrets Manager does not take (#12), DescribeSecret calls (#14), the
//! bounded batch fallback (#14).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use keyrack_core::{Clock, ErrorKind, ManualClock, SecretRef, SecretSource};

const S: fn(u64) -> Duration = Duration::from_secs;

/// #8: Retry-After is kept whatever the status (a 503 as well as a throttling answer) and in both
/// of its forms, an HTTP date counted from the source's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_kept_on_any_status_in_both_forms() {
    let throttler = Throttler::default();
    let clock = ManualClock::new();
    let src = builder()
        .with_interceptor(throttler.clone())
        .with_clock(clock.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(src.capabilities().retry_floor, S(1));
    let name = uniq("retry-after");
    put(&src, &name, b"v").await.unwrap();

    let at = httpdate::fmt_http_date(clock.wall() + S(30));
    throttler.answer(503, "ServiceUnavailable", Some(at));
    throttler.arm("GetSecretValue", 1);
    let e = src.fetch(&aws_ref(&name)).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert_eq!(e.retry_after(), Some(S(30)), "{e:?}");

    throttler.answer(400, "ThrottlingException", Some("7".into()));
    throttler.arm("GetSecretValue", 1);
    let e = src.fetch(&aws_ref(&name)).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Throttled, "{e}");
    assert_eq!(e.retry_after(), Some(S(7)), "{e:?}");
}

/// #12: a parameter Secrets Manager does not take was ignored (`?Stage=AWSPENDING`,
/// `?stgae=`, `?versionId=` read AWSCURRENT); names and ARNs longer than the service allows
/// were sent. Both are InvalidRef now, without a request and without quoting the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameters_and_overlong_names_are_refused() {
    let log = RequestLog::default();
    let src = builder()
        .with_interceptor(log.clone())
        .build()
        .await
        .unwrap();
    let name = uniq("params");
    put(&src, &name, b"current").await.unwrap();
    log.clear();

    let base = aws_ref(&name);
    let cases = [
        (
            base.clone().with_param("Stage", "AWSPENDING").unwrap(),
            "stage",
        ),
        (
            base.clone().with_param("stgae", "AWSPENDING").unwrap(),
            "stage",
        ),
        (
            base.clone().with_param("versionId", "x").unwrap(),
            "version",
        ),
    ];
    for (r, hint) in &cases {
        let e = src.fetch(r).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{r}: {e}");
        assert!(e.message().contains(hint), "{r}: {e}");
        assert_eq!(
            src.version(r).await.unwrap_err().kind(),
            &ErrorKind::InvalidRef
        );
    }
    let long_name = format!("n{}", "x".repeat(256));
    let long_arn = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}",
        "y".repeat(2048)
    );
    for id in [&long_name, &long_arn] {
        let r = SecretRef::new("aws-sm", id).unwrap();
        let e = src.fetch(&r).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{e}");
        assert!(!e.message().contains("xxxxxxxx") && !e.message().contains("yyyyyyyy"));
        assert_eq!(
            src.version(&r).await.unwrap_err().kind(),
            &ErrorKind::InvalidRef
        );
    }
    let refs: Vec<SecretRef> = cases.iter().map(|(r, _)| r.clone()).collect();
    for result in src.fetch_many(&refs).await {
        assert_eq!(result.unwrap_err().kind(), &ErrorKind::InvalidRef);
    }
    assert_eq!(
        log.operations(),
        Vec::<String>::new(),
        "refused references were sent"
    );

    // At the limits, names are sent (and simply not found).
    let at_limit = SecretRef::new("aws-sm", &"z".repeat(256)).unwrap();
    assert_eq!(
        src.fetch(&at_limit).await.unwrap_err().kind(),
        &ErrorKind::NotFound
    );
}

/// #14: a routine check is DescribeSecret (the probe) and, when the version moved, a read; the
/// read made a second DescribeSecret for `NextRotationDate`, which the probe had just returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_after_the_probe_describes_the_secret_once() {
    let log = RequestLog::default();
    let src = builder()
        .with_interceptor(log.clone())
        .build()
        .await
        .unwrap();
    let name = uniq("describe-once");
    put(&src, &name, b"one").await.unwrap();
    src.client()
        .rotate_secret()
        .secret_id(&name)
        .rotate_immediately(false)
        .rotation_rules(
            keyrack_aws::aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(7)
                .build(),
        )
        .send()
        .await
        .ok();
    let has_schedule = src
        .client()
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap()
        .next_rotation_date()
        .is_some();
    // The first read learns the schedule.
    log.clear();
    let first = src.fetch(&aws_ref(&name)).await.unwrap();
    assert_eq!(first.metadata().next_rotation.is_some(), has_schedule);
    assert_eq!(log.count("DescribeSecret"), 1, "{:?}", log.operations());

    // A check: the probe, then (the version moved) the read.
    put(&src, &name, b"two").await.unwrap();
    log.clear();
    let probed = src.version(&aws_ref(&name)).await.unwrap();
    assert_ne!(probed.as_ref(), first.version());
    let second = src.fetch(&aws_ref(&name)).await.unwrap();
    assert_eq!(second.version(), probed.as_ref());
    assert_eq!(second.metadata().next_rotation.is_some(), has_schedule);
    assert_eq!(
        log.operations(),
        ["DescribeSecret", "GetSecretValue"],
        "one DescribeSecret per check"
    );
}

/// #14: prefetch of 100 secrets while both BatchGetSecretValue and GetSecretValue are throttled
/// made 5 batch calls and then 400 single reads (100 ids × 4 attempts). Budget: the 5 batches
/// plus at most the fallback's concurrency in single reads, and every result Throttled with the
/// service's Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_fallback_stops_falling_back() {
    let throttler = Throttler::default();
    let log = RequestLog::default();
    let src = builder()
        .with_interceptor(throttler.clone())
        .with_interceptor(log.clone())
        .with_batch_fallback(8)
        .build()
        .await
        .unwrap();
    let refs: Vec<SecretRef> = (0..100)
        .map(|i| aws_ref(&uniq(&format!("fallback-{i}"))))
        .collect();
    throttler.answer(400, "ThrottlingException", Some("2".into()));
    throttler.arm("", usize::MAX);
    let out = src.fetch_many(&refs).await;
    throttler.arm("", 0);
    let calls = log.operations();
    eprintln!(
        "calls while everything is throttled: {} BatchGetSecretValue, {} GetSecretValue",
        log.count("BatchGetSecretValue"),
        log.count("GetSecretValue")
    );
    assert_eq!(log.count("BatchGetSecretValue"), 5, "{calls:?}");
    assert!(
        log.count("GetSecretValue") <= 8,
        "{} single reads after the batches were throttled",
        log.count("GetSecretValue")
    );
    for r in out {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Throttled, "{e}");
        assert_eq!(e.retry_after(), Some(S(2)), "{e:?}");
    }
}
