//! Exponential backoff with jitter and a floor, honouring a backend's `Retry-After`.

use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind};

/// Backoff policy. The n-th retry (0-based) waits a uniformly random time in
/// `[floor, min(max, initial·2ⁿ)]` ("full jitter" above a floor), but never less than the
/// backend's `Retry-After`. A throttling answer waits the whole step instead (plus up to a
/// quarter, to spread a fleet): 1, 2, 4, 8, 16 s with the defaults, Azure Key Vault's published
/// guidance; its `Retry-After` can lengthen that wait but never shorten it (OpenBao's rate-limit
/// quota answers `Retry-After: 0`, which would otherwise retry at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first wait.
    pub initial: Duration,
    /// Cap of the upper bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// The longest `Retry-After` obeyed (or `max`, if longer): a proxy answering `Retry-After: 86400`
/// must not silence a client for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Backoff {
    /// Upper bound of the wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `attempt` after `error`, never below `floor` (the source's
    /// [`retry_floor`](crate::Capabilities::retry_floor)); `unit` is a uniform random number in
    /// `[0, 1)`.
    pub fn delay(&self, attempt: u32, error: &Error, floor: Duration, unit: f64) -> Duration {
        let unit = unit.clamp(0.0, 1.0);
        let cap = self.max.max(floor);
        let ceiling = self.ceiling(attempt).max(floor).min(cap);
        let hint = error.retry_after().map(|h| h.min(cap.max(MAX_RETRY_AFTER)));
        // The budget's own refusal was never sent: its hint is when there is room, not a
        // backend asking for restraint.
        let wait = if *error.kind() == ErrorKind::Throttled && !error.is_budget_refusal() {
            // `mul_f64` would panic past `Duration::MAX` (an uncapped policy): saturate at the cap.
            Duration::try_from_secs_f64(ceiling.as_secs_f64() * (1.0 + 0.25 * unit))
                .map_or(cap, |wait| wait.min(cap))
        } else {
            ceiling.mul_f64(unit).max(floor)
        };
        hint.map_or(wait, |h| wait.max(h))
    }
}

/// Parse an HTTP `Retry-After` value: delay-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2015
/// 07:28:00 GMT`, and the two obsolete forms), the latter counted from `now` (the wall clock at
/// the answer's arrival). A date in the past is no wait; anything else unparsable is `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn ceiling_doubles_up_to_max() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(4), Duration::from_secs(10));
        assert_eq!(b.ceiling(100), Duration::from_secs(10));
    }

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Found by the `retry_after` fuzz target: a policy without a practical cap and a very long
    /// first wait made a throttled retry's wait overflow `Duration` (a panic).
    #[test]
    fn an_uncapped_policy_saturates() {
        let b = Backoff {
            initial: S(1 << 40),
            max: Duration::MAX,
        };
        let t = Error::throttled(None, "slow down");
        assert_eq!(b.delay(40, &t, Duration::ZERO, 0.5), Duration::MAX);
    }

    #[test]
    fn full_jitter_above_the_floor_and_retry_after() {
        let b = Backoff::default();
        let e = Error::new(ErrorKind::Unavailable, "down");
        assert_eq!(b.delay(2, &e, Duration::ZERO, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, &e, MS(500), 0.0), MS(500));
        assert_eq!(b.delay(2, &e, MS(500), 0.5), S(2));
        let t = Error::throttled(Some(S(30)), "slow down");
        assert_eq!(b.delay(0, &t, MS(500), 0.9), S(30));
        // A 503 with Retry-After is honoured as well as a 429's.
        let u = Error::new(ErrorKind::Unavailable, "503").with_retry_after(S(4));
        assert_eq!(b.delay(0, &u, MS(500), 0.0), S(4));
        // A hint longer than the cap is cut to it.
        let long = Error::throttled(Some(S(86_400)), "slow down");
        assert_eq!(b.delay(0, &long, MS(500), 0.0), S(600));
        // A hint above a small max is still obeyed (up to the hint cap).
        let tight = Backoff {
            initial: S(1),
            max: S(1),
        };
        assert_eq!(tight.delay(0, &t, MS(500), 0.0), S(30));
    }

    /// OpenBao's rate-limit quota answers 429 with `Retry-After: 0` (recorded in
    /// `testing/fake-server/fixtures/vault/openbao-2.7.2.json`, `rate_limited`): a short hint
    /// must not turn the whole steps into an immediate retry.
    #[test]
    fn a_short_retry_after_never_shortens_a_throttling_wait() {
        let b = Backoff::default();
        for hint in [Duration::ZERO, MS(100), S(1)] {
            let t = Error::throttled(Some(hint), "429");
            let waits: Vec<Duration> = (0..5).map(|n| b.delay(n, &t, S(1), 0.0)).collect();
            assert_eq!(waits, vec![S(1), S(2), S(4), S(8), S(16)], "{hint:?}");
        }
        // A longer hint still lengthens it.
        let t = Error::throttled(Some(S(3)), "429");
        assert_eq!(b.delay(0, &t, S(1), 0.0), S(3));
    }

    /// The budget's own refusal (never sent) is not the backend throttling: its hint is when the
    /// budget has room, and the wait is the usual random one above the floor, not whole steps.
    #[test]
    fn a_budget_refusal_waits_as_an_outage_does() {
        let b = Backoff::default();
        let refused = Error::throttled(Some(MS(200)), "no room").marked_budget_refusal();
        assert_eq!(b.delay(4, &refused, S(1), 0.0), S(1));
        assert_eq!(b.delay(4, &refused, S(1), 0.5), S(8));
    }

    #[test]
    fn throttling_without_a_hint_waits_whole_steps() {
        let b = Backoff::default();
        let t = Error::throttled(None, "429");
        let waits: Vec<Duration> = (0..5).map(|n| b.delay(n, &t, S(1), 0.0)).collect();
        assert_eq!(waits, vec![S(1), S(2), S(4), S(8), S(16)]);
        assert_eq!(b.delay(0, &t, S(1), 1.0), MS(1250));
        assert_eq!(b.delay(30, &t, S(1), 1.0), S(300));
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + S(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(S(120)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(S(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:04 GMT", now),
            Some(S(4))
        );
        // The obsolete forms a recipient must accept (RFC 9110, 5.6.7).
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:09 GMT", now),
            Some(S(9))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:10 2015", now),
            Some(S(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }
}
