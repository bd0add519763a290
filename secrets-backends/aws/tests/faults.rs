//! Faults and misuse against moto, with the faults made by an interceptor (moto cannot throttle
//! or fail on demand) and every request counted: Retry-After in both forms on any status (#8).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use keyrack_core::{Clock, ErrorKind, ManualClock, SecretSource};

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
