//! When to check, renew and re-issue: the timing rules the client (and backends that keep their own
//! login tokens alive) follow, as pure functions of durations and a
//! uniform random number, so they are tested without a clock.
//!
//! Lease timing follows Vault's `LifetimeWatcher` (api/lifetime_watcher.go): the grace period is a
//! random 10–20 % of the lease (or of the renewal increment, if smaller), recomputed while
//! renewals keep extending the lease; the next renewal happens at ⅔ of the remaining TTL plus ⅓ of
//! the grace. Unlike the watcher, which keeps renewing until the remainder is inside the grace
//! (leaving only the grace for a replacement), we stop renewing as soon as a renewal comes back
//! shorter than the one before — the lease has hit its max TTL — and re-issue at ⅔ of what is left,
//! so the new credential overlaps the old one by about a third of the final stretch.

use std::time::Duration;

/// The grace period for a lease of `ttl` renewed by `increment`: uniform in 10–20 % of the smaller.
pub fn grace(ttl: Duration, increment: Option<Duration>, unit: f64) -> Duration {
    let base = match increment {
        Some(inc) if !inc.is_zero() => ttl.min(inc),
        _ => ttl,
    };
    base.mul_f64(0.1 + 0.1 * unit.clamp(0.0, 1.0))
}

/// Delay until a lease with `remaining` time left should be renewed or replaced.
pub fn lease_delay(remaining: Duration, grace: Duration) -> Duration {
    remaining.mul_f64(2.0 / 3.0) + grace / 3
}

/// Delay until a lease that can no longer be extended, with `remaining` time left, is replaced:
/// as a renewal would be ([`lease_delay`]), but leaving at least twice the `grace` of overlap
/// (immediately if less than that is left).
pub fn replace_delay(remaining: Duration, grace: Duration) -> Duration {
    lease_delay(remaining, grace).min(remaining.saturating_sub(grace * 2))
}

/// Whether a renewal to `renewed` (down from `previous`) shows the lease has stopped extending.
/// Backends answer whole seconds and cap at the max TTL, so anything more than 1 % shorter is a cap.
pub fn stopped_extending(previous: Duration, renewed: Duration) -> bool {
    renewed < previous.saturating_sub(previous / 100)
}

/// The delay before the next routine check: `interval` shortened by up to `jitter` (a fraction) so
/// that a fleet started together spreads its checks over the last `jitter` of the interval.
pub fn check_delay(interval: Duration, jitter: f64, unit: f64) -> Duration {
    interval.mul_f64(1.0 - jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0))
}

/// Delay before checking a value whose own expiry is `remaining` away: ⅔ of the way there.
pub fn expiry_delay(remaining: Duration) -> Duration {
    remaining.mul_f64(2.0 / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_capped_lease_is_replaced_with_an_overlap_left() {
        // Plenty left: as a renewal, ⅔ of the way.
        assert_eq!(replace_delay(S(3000), S(360)), S(2120));
        // Little left: twice the grace of overlap kept.
        assert_eq!(replace_delay(S(1000), S(360)), S(280));
        // Less than that left: now.
        assert_eq!(replace_delay(S(500), S(360)), Duration::ZERO);
    }

    #[test]
    fn grace_is_ten_to_twenty_percent_of_the_smaller() {
        assert_eq!(grace(S(100), None, 0.0), S(10));
        assert_eq!(grace(S(100), None, 1.0), S(20));
        assert_eq!(grace(S(100), Some(S(50)), 0.0), S(5));
        assert_eq!(grace(S(100), Some(Duration::ZERO), 0.0), S(10));
    }

    #[test]
    fn renew_at_two_thirds_plus_a_third_of_grace() {
        assert_eq!(lease_delay(S(30), S(3)), S(21));
        // Always before expiry while grace < TTL.
        for unit in [0.0, 0.5, 1.0] {
            let g = grace(S(10), None, unit);
            assert!(lease_delay(S(10), g) < S(10));
        }
    }

    #[test]
    fn capped_renewal_detected() {
        assert!(!stopped_extending(S(10), S(10)));
        assert!(stopped_extending(S(10), S(9)));
        assert!(!stopped_extending(S(3600), S(3599)));
        assert!(stopped_extending(S(3600), S(3000)));
    }

    #[test]
    fn jitter_spreads_checks_within_interval() {
        assert_eq!(check_delay(S(100), 0.2, 0.0), S(100));
        assert_eq!(check_delay(S(100), 0.2, 1.0), S(80));
        assert_eq!(check_delay(S(100), 0.0, 0.7), S(100));
    }
}
