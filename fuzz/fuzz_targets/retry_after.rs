//! `parse_retry_after` and the backoff that honours it: never panics; delay-seconds always parse
//! to their value (a date to its distance from now, or zero); the wait is never below the floor
//! nor, bar a shorter `Retry-After` cap, below the hint, and never above the longest wait the
//! policy allows.
#![no_main]

use std::time::{Duration, SystemTime};

use keyrack_core::backoff::{MAX_RETRY_AFTER, parse_retry_after};
use keyrack_core::{Backoff, Error, ErrorKind};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

/// A duration from 8 bytes: mostly seconds to hours, sometimes anything a `Duration` holds.
fn duration(raw: u64) -> Duration {
    match raw & 3 {
        0 => Duration::from_millis((raw >> 2) % 100_000),
        1 => Duration::from_secs((raw >> 2) % 100_000),
        2 => Duration::from_secs(raw >> 2),
        _ => Duration::new(raw, (raw % 1_000_000_000) as u32),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 38 {
        return;
    }
    let secs = u64_at(data, 0) % (1 << 40);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let attempt = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    let unit = f64::from(u32::from_le_bytes(
        data[12..16].try_into().expect("4 bytes"),
    )) / (f64::from(u32::MAX) + 1.0);
    let policy = Backoff {
        initial: duration(u64_at(data, 16)),
        max: duration(u64_at(data, 24)),
    };
    let floor = Duration::from_millis(u64::from(u16::from_le_bytes([data[32], data[33]])));
    let kind = data[34];
    let (_, value) = data.split_at(38);
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };

    let parsed = parse_retry_after(value, now);
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let want = trimmed.parse().unwrap_or(u64::MAX);
        assert_eq!(parsed, Some(Duration::from_secs(want)), "{value:?}");
    }

    let e = match kind % 3 {
        0 => Error::throttled(parsed, "429"),
        1 => {
            let e = Error::new(ErrorKind::Unavailable, "503");
            match parsed {
                Some(h) => e.with_retry_after(h),
                None => e,
            }
        }
        _ => Error::new(ErrorKind::Unavailable, "down"),
    };
    for b in [Backoff::default(), policy] {
        let wait = b.delay(attempt, &e, floor, unit);
        let cap = b.max.max(floor);
        assert!(wait >= floor, "{wait:?} < floor {floor:?}");
        if let Some(h) = e.retry_after() {
            assert!(
                wait >= h.min(cap.max(MAX_RETRY_AFTER)),
                "{wait:?} < hint {h:?}"
            );
        }
        assert!(
            wait <= cap.max(MAX_RETRY_AFTER),
            "{wait:?} above {b:?} {floor:?}"
        );
        assert!(b.ceiling(attempt) <= b.max);
    }
});
