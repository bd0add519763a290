//! Faults OpenBao cannot be made to show on demand, against the loopback fake in `common::fake`:
//! an outage of the token keeper's Vault, a renewal answered after a newer login, Retry-After in
//! both forms, redirects, repeated refusals. Time is a `ManualClock`; nothing asserts a duration
//! of real time (the fake answers on loopback, and the tests wait for that I/O to finish).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fake::FakeVault;
use common::r;
use keyrack_core::{Clock, ErrorKind, ManualClock, SecretSource};

const S: fn(u64) -> Duration = Duration::from_secs;

/// #8: Retry-After is kept on any status (a 503 too), on logins as on reads, and in both of its
/// forms (seconds and an HTTP date, counted from the source's clock).
#[tokio::test]
async fn retry_after_is_kept_on_any_status_in_both_forms() {
    let vault = FakeVault::start(3600).await;
    let clock = ManualClock::new();
    let source = vault.source(clock.clone());
    assert_eq!(source.capabilities().retry_floor, S(1));

    vault.set_down(true);
    *vault.behaviour.retry_after.lock().unwrap() = Some("7".into());
    let e = source.fetch(&r("vault://secret/app")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert_eq!(e.retry_after(), Some(S(7)), "a refused login: {e:?}");

    vault.set_down(false);
    source.fetch(&r("vault://secret/app")).await.unwrap();
    vault.set_down(true);
    let at = clock.wall() + S(30);
    *vault.behaviour.retry_after.lock().unwrap() = Some(httpdate::fmt_http_date(at));
    let e = source.fetch(&r("vault://secret/other")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert_eq!(e.retry_after(), Some(S(30)), "a refused read: {e:?}");
}
