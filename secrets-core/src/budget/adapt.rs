//! The adapted rate of a [`RequestBudget`]: cut when the backend throttles, given back while it
//! does not.
//!
//! A cut starts from what the source was sending at, not from its budget: a process whose
//! budget is the whole quota and that sends 20 requests at start-up would otherwise need ten
//! halvings before its budget bound at all, and a fleet of such processes would be refused all
//! along. So a cut halves the rate the source was sending at: its rate while places waited
//! (the bucket bound), else what it asked for in the last second or two. Recovery is relative
//! to the rate cut from: back there 10 s after a cut, whatever the budget, so a fleet grows
//! back by a share of itself whatever its size; beyond it, where the backend has not refused
//! yet, each success multiplies it by 1 + ½ × the seconds since the last change (about ×1.65
//! per second under steady successes), up to the budget, so a process does not stay slow long
//! after the rest of its fleet has what it needed.

use std::time::{Duration, Instant};

use super::RequestBudget;

/// A cut rate never falls below this share of the budget: 10,000 processes at the floor, each
/// given the whole quota (the default), send the quota together...
const FLOOR_SHARE: f64 = 1.0 / 10_000.0;
/// ...nor below one call a minute (nor below the budget itself, if lower).
const FLOOR_RATE: f64 = 1.0 / 60.0;
/// A cut halves the rate the source was sending at.
const CUT: f64 = 0.5;
/// At most one cut per this: the answers to what was sent before a cut are no news, and no
/// success in it gives anything back.
const CUT_GAP: Duration = Duration::from_secs(1);
/// After a cut, each second of successes gives back this share of the rate cut from (a halved
/// rate is whole again after 10 s)...
const RECOVERY_SHARE: f64 = 0.05;
/// ...then this share of the rate itself per second since the last change, at each success, up
/// to the budget.
const GROWTH_SHARE: f64 = 0.5;
/// Asks are counted per window of this length.
const WINDOW: Duration = Duration::from_secs(1);

/// A budget's rate now, and what it was adapted from.
#[derive(Debug)]
pub(super) struct Adapt {
    budget: RequestBudget,
    rate: f64,
    /// The last change of the rate (recovery counts from it).
    changed: Option<Instant>,
    /// The last cut, and the rate it started from.
    cut: Option<(Instant, f64)>,
    /// Places asked for (given or refused) lately.
    asked: Asks,
    /// The latest time a place was given for, when later than it was asked (the bucket bound).
    bound_until: Option<Instant>,
}

impl Adapt {
    pub(super) fn new(budget: RequestBudget) -> Self {
        Adapt {
            budget,
            rate: budget.rate(),
            changed: None,
            cut: None,
            asked: Asks::default(),
            bound_until: None,
        }
    }

    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether `now` is within a second of the last cut.
    fn just_cut(&self, now: Instant) -> bool {
        self.cut
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < CUT_GAP)
    }

    /// A place asked for at `now`.
    pub(super) fn asked(&mut self, now: Instant) {
        self.asked.count(now);
    }

    /// A place was given for `at`, later than it was asked for.
    pub(super) fn waited(&mut self, at: Instant) {
        self.bound_until = Some(self.bound_until.map_or(at, |t| t.max(at)));
    }

    /// The backend throttled a call answered at `now`. Returns the new rate when it is lower
    /// (adaptive budgets only).
    pub(super) fn throttled(&mut self, now: Instant) -> Option<f64> {
        if !self.budget.is_adaptive() || self.just_cut(now) {
            return None;
        }
        let full = self.budget.rate();
        let floor = (full * FLOOR_SHARE).max(FLOOR_RATE).min(full);
        // While places waited the source sent at its rate; otherwise at what it asked for, and
        // at least the refused call itself (asked for before the window, if it was answered
        // slowly).
        let bound = self
            .bound_until
            .is_some_and(|t| now.saturating_duration_since(t) < WINDOW);
        let sent = if bound {
            self.rate
        } else {
            let asked = self.asked.rate(now).max(1.0 / WINDOW.as_secs_f64());
            self.rate.min(asked)
        };
        let from = sent.max(floor);
        let rate = (from * CUT).max(floor);
        self.cut = Some((now, from));
        self.changed = Some(now);
        (rate < self.rate).then(|| {
            self.rate = rate;
            rate
        })
    }

    /// A call answered at `now` without throttling: give back some of a cut rate. Returns the
    /// new rate when it changed.
    pub(super) fn succeeded(&mut self, now: Instant) -> Option<f64> {
        let full = self.budget.rate();
        if self.rate >= full || self.just_cut(now) {
            return None;
        }
        let since = self
            .changed
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .as_secs_f64();
        let from = self.cut.map_or(full, |(_, from)| from);
        let rate = if self.rate < from {
            (self.rate + from * RECOVERY_SHARE * since).min(from)
        } else {
            self.rate * (1.0 + GROWTH_SHARE * since)
        };
        let rate = rate.min(full);
        self.changed = Some(now);
        (rate != self.rate).then(|| {
            self.rate = rate;
            rate
        })
    }
}

/// Places asked for in the current window and in the one before it.
#[derive(Debug, Default)]
struct Asks {
    /// When the current window began; `None` before the first ask.
    since: Option<Instant>,
    current: u32,
    before: u32,
}

impl Asks {
    fn roll(&mut self, now: Instant) {
        match self.since.map(|t| (t, now.saturating_duration_since(t))) {
            Some((_, age)) if age < WINDOW => {}
            Some((t, age)) if age < WINDOW * 2 => {
                self.before = self.current;
                self.current = 0;
                self.since = t.checked_add(WINDOW);
            }
            _ => {
                self.before = 0;
                self.current = 0;
                self.since = Some(now);
            }
        }
    }

    fn count(&mut self, now: Instant) {
        self.roll(now);
        self.current = self.current.saturating_add(1);
    }

    /// Asks per second lately: the fuller of the two windows.
    fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        f64::from(self.current.max(self.before)) / WINDOW.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Clock;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn asked(adapt: &mut Adapt, at: Instant, n: usize) {
        for _ in 0..n {
            adapt.asked(at);
        }
    }

    /// A process whose budget is the whole quota (100/s) sends 20 requests and is throttled:
    /// the cut starts from the 20, not from the 100 it never used. (Before, the rate went
    /// 100 → 50 → 25, a budget the process never reached, and nothing it sent was spaced.)
    #[test]
    fn a_cut_starts_from_what_was_sent() {
        let t0 = crate::ManualClock::new().now();
        let mut adapt = Adapt::new(RequestBudget::per_second(100));
        asked(&mut adapt, t0, 20);
        assert_eq!(adapt.throttled(t0 + MS(20)), Some(10.0));
        // The answers to the rest of the 20 are no news, and give nothing back.
        assert_eq!(adapt.throttled(t0 + MS(30)), None);
        assert_eq!(adapt.succeeded(t0 + MS(40)), None);
        // A refusal a second later is news: half of the 10 it has been sending at since, as
        // its places waited.
        adapt.waited(t0 + S(1));
        assert_eq!(adapt.throttled(t0 + MS(1_100)), Some(5.0));
        // Asked for less than its rate, unbound: half of what it asked for.
        asked(&mut adapt, t0 + S(5), 2);
        assert_eq!(adapt.throttled(t0 + S(5)), Some(1.0));
    }

    /// A refusal answered long after its call was asked for (an API server that queues, then
    /// refuses) still counts that call: the rate is halved from one a second, not cut to the
    /// floor. (Before, with nothing asked for in the last two seconds, it fell to one call a
    /// minute, and the next call was refused by the budget itself for a minute.)
    #[test]
    fn a_slow_refusal_counts_its_own_call() {
        let t0 = crate::ManualClock::new().now();
        let mut adapt = Adapt::new(RequestBudget::per_second(5).with_burst(10));
        asked(&mut adapt, t0, 1);
        assert_eq!(adapt.throttled(t0 + MS(2_100)), Some(0.5));
    }

    /// Refused on and on: never below a ten-thousandth of the budget, nor one call a minute.
    #[test]
    fn cuts_stop_at_the_floor() {
        let t0 = crate::ManualClock::new().now();
        let floor = |budget| {
            let mut adapt = Adapt::new(budget);
            for i in 0..30 {
                adapt.waited(t0 + S(i));
                adapt.throttled(t0 + S(i));
            }
            adapt.rate()
        };
        assert_eq!(floor(RequestBudget::per_second(100)), 1.0 / 60.0);
        assert_eq!(floor(RequestBudget::per_second(10_000)), 1.0, "AWS");
        assert_eq!(floor(RequestBudget::new(4_000, S(10))), 0.04, "Key Vault");
        let mut slow = Adapt::new(RequestBudget::new(1, S(600)));
        slow.throttled(t0);
        assert_eq!(
            slow.rate(),
            1.0 / 600.0,
            "never below the budget's own rate"
        );
    }

    /// Recovery is relative to the rate cut from: a halved rate is whole again 10 s later,
    /// whatever the budget, then grows by half of itself per second up to the budget.
    #[test]
    fn recovery_is_relative_to_the_rate_cut_from() {
        let t0 = crate::ManualClock::new().now();
        let mut adapt = Adapt::new(RequestBudget::per_second(10_000));
        asked(&mut adapt, t0, 20);
        assert_eq!(adapt.throttled(t0), Some(10.0));
        assert_eq!(adapt.succeeded(t0 + S(5)), Some(15.0));
        assert_eq!(adapt.succeeded(t0 + S(10)), Some(20.0));
        assert_eq!(adapt.succeeded(t0 + S(12)), Some(40.0));
        assert_eq!(adapt.succeeded(t0 + S(1_000)), Some(10_000.0));
        assert_eq!(adapt.succeeded(t0 + S(1_001)), None);
    }

    #[test]
    fn a_fixed_budget_is_never_cut() {
        let t0 = crate::ManualClock::new().now();
        let mut fixed = Adapt::new(RequestBudget::per_second(100).fixed());
        asked(&mut fixed, t0, 20);
        assert_eq!(fixed.throttled(t0), None);
        assert_eq!(fixed.rate(), 100.0);
    }
}
