//! Exponential backoff with full jitter, honouring a backend's Retry-After.

use std::time::Duration;

use crate::error::Error;

/// Backoff policy: the n-th retry waits a uniformly random time in `[0, min(max, initial·2ⁿ)]`
/// ("full jitter"), but never less than a throttling backend's `retry_after`.
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

impl Backoff {
    /// Upper bound of the wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry number `attempt` after `error`; `unit` is a uniform random number
    /// in `[0, 1)`.
    pub fn delay(&self, attempt: u32, error: &Error, unit: f64) -> Duration {
        let jittered = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        match error.retry_after() {
            Some(hint) => jittered.max(hint),
            None => jittered,
        }
    }
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

    #[test]
    fn full_jitter_and_retry_after() {
        let b = Backoff::default();
        let e = Error::new(ErrorKind::Unavailable, "down");
        assert_eq!(b.delay(2, &e, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, &e, 0.5), Duration::from_secs(2));
        let t = Error::throttled(Some(Duration::from_secs(30)), "slow down");
        assert_eq!(b.delay(0, &t, 0.9), Duration::from_secs(30));
    }
}
