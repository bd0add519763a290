//! Refresh budgets: routine checks of one source's secrets kept within a rate by stretching their
//! intervals, the shortest first.
//!
//! A fixed refresh interval costs `secrets / interval` checks per second per process, and a
//! fleet multiplies that past what the backend accepts (10,000 pods × 20 secrets every 5 minutes
//! is 667 checks per second, over one Azure vault's 400). A [`Pacer`] knows the interval of every
//! secret of its source that is checked by schedule and the rate the checks may cost; when they
//! would cost more, every interval shorter than a floor is raised to it, the floor chosen as
//! the shortest that fits (a secret checked every minute is stretched before one checked every
//! hour). Leased secrets are not counted or stretched: their renewals keep the lease alive.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::context::FOREVER;

/// The checks of one source, and the floor under their intervals that keeps them within `rate`.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Checks per second allowed.
    rate: f64,
    /// How many secrets are checked at each interval.
    intervals: Mutex<BTreeMap<Duration, usize>>,
    /// The floor, in nanoseconds (0: no interval is stretched).
    floor: AtomicU64,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> Self {
        Pacer {
            rate,
            intervals: Mutex::new(BTreeMap::new()),
            floor: AtomicU64::new(0),
        }
    }

    /// A secret checked every `interval` joins; returns the new floor when it changed.
    pub(crate) fn add(&self, interval: Duration) -> Option<Duration> {
        let mut intervals = self.lock();
        *intervals.entry(interval).or_default() += 1;
        self.refloor(&intervals)
    }

    /// A secret checked every `interval` leaves; returns the new floor when it changed.
    pub(crate) fn remove(&self, interval: Duration) -> Option<Duration> {
        let mut intervals = self.lock();
        if let Some(n) = intervals.get_mut(&interval) {
            *n -= 1;
            if *n == 0 {
                intervals.remove(&interval);
            }
        }
        self.refloor(&intervals)
    }

    /// The interval a secret configured for `interval` is checked at now.
    pub(crate) fn interval(&self, interval: Duration) -> Duration {
        interval.max(self.floor())
    }

    /// The floor now (zero: nothing stretched).
    pub(crate) fn floor(&self) -> Duration {
        Duration::from_nanos(self.floor.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Duration, usize>> {
        self.intervals.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refloor(&self, intervals: &BTreeMap<Duration, usize>) -> Option<Duration> {
        let floor = stretch_floor(intervals.iter().map(|(d, n)| (*d, *n)), self.rate);
        let nanos = u64::try_from(floor.as_nanos()).unwrap_or(u64::MAX);
        (self.floor.swap(nanos, Ordering::AcqRel) != nanos).then_some(floor)
    }
}

/// The shortest floor under `intervals` (interval, how many secrets; ascending) such that
/// checking each secret every `max(interval, floor)` costs at most `rate` checks per second;
/// zero when the intervals fit as they are.
pub(crate) fn stretch_floor(
    intervals: impl Iterator<Item = (Duration, usize)> + Clone,
    rate: f64,
) -> Duration {
    let per_second = |(d, n): (Duration, usize)| n as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE);
    let mut rest: f64 = intervals.clone().map(per_second).sum();
    if rest <= rate {
        return Duration::ZERO;
    }
    // Stretch the shortest groups to a common floor, one more group at a time, until the
    // floor that fits is no longer than the next group's own interval.
    let mut stretched = 0usize;
    let mut iter = intervals.peekable();
    while let Some(group) = iter.next() {
        stretched += group.1;
        rest -= per_second(group);
        let left = rate - rest;
        if left <= 0.0 {
            continue;
        }
        let floor = stretched as f64 / left;
        if iter
            .peek()
            .is_none_or(|(next, _)| floor <= next.as_secs_f64())
        {
            // Whole milliseconds, rounded up: within the rate, and exact for the figures users
            // write.
            let millis = (floor * 1_000.0).ceil().min(FOREVER.as_millis() as f64);
            return Duration::from_millis(millis as u64).max(group.0);
        }
    }
    FOREVER
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn floor(groups: &[(u64, usize)], rate: f64) -> Duration {
        stretch_floor(groups.iter().map(|(d, n)| (S(*d), *n)), rate)
    }

    #[test]
    fn intervals_that_fit_are_left_alone() {
        assert_eq!(floor(&[], 1.0), Duration::ZERO);
        assert_eq!(floor(&[(300, 20)], 1.0), Duration::ZERO);
        assert_eq!(floor(&[(10, 10)], 1.0), Duration::ZERO);
    }

    #[test]
    fn the_shortest_are_stretched_first() {
        // 10 every minute and 10 every 10 minutes cost 0.183/s: at 0.1/s the minute ones go to
        // 2 minutes (10/120 + 10/600 = 0.1) and the others keep theirs.
        assert_eq!(floor(&[(60, 10), (600, 10)], 0.1), S(120));
        // At 0.02/s both groups are stretched to a common 1,000 s.
        assert_eq!(floor(&[(60, 10), (600, 10)], 0.02), S(1_000));
        // 20 secrets every 5 minutes within a fleet pod's 0.01/s: every 2,000 s.
        assert_eq!(floor(&[(300, 20)], 0.01), S(2_000));
    }

    #[test]
    fn the_floor_follows_secrets_joining_and_leaving() {
        let pacer = Pacer::new(1.0);
        for _ in 0..10 {
            pacer.add(S(10));
        }
        assert_eq!(pacer.floor(), Duration::ZERO);
        assert_eq!(pacer.add(S(10)), Some(S(11)));
        assert_eq!(pacer.interval(S(10)), S(11));
        assert_eq!(pacer.interval(S(60)), S(60));
        assert_eq!(pacer.remove(S(10)), Some(Duration::ZERO));
        // Leaving an interval nobody has changes nothing.
        assert_eq!(pacer.remove(S(7)), None);
    }
}
