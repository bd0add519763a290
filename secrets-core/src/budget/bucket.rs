//! A [`RequestBudget`] in use: places for calls, spaced by the budget's adapted rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::RequestBudget;
use super::adapt::Adapt;

/// A call's place in a [`Bucket`]: when it may be sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub(crate) at: Instant,
    /// The bucket's next due time this place set, and the interval it added.
    next: Instant,
    interval: Duration,
    /// The bucket's plan it is part of.
    plan: u64,
}

/// The token bucket (as the time the next call would be due at the current rate, "virtual
/// scheduling") and the adapted rate.
#[derive(Debug)]
pub(crate) struct Bucket {
    budget: RequestBudget,
    /// A share of one interval, in `[0, 1)`, by which the end of the first burst comes late.
    phase: f64,
    state: Mutex<State>,
    /// The current plan, for callers waiting for their places.
    plans: tokio::sync::watch::Sender<u64>,
}

/// A rate this much above the one the places were planned at plans them again.
const REPLAN_RISE: f64 = 1.5;

#[derive(Debug)]
struct State {
    adapt: Adapt,
    /// When the next call is due if calls came evenly at the rate; `None` before the first.
    due: Option<Instant>,
    /// Plans so far: the places are planned again when the rate is cut, or rises by half
    /// since it was planned (`planned_at`); a place of an earlier plan, still waiting, is
    /// taken again at the new rate.
    plan: u64,
    planned_at: f64,
    /// Places given back while later places were still held, `(next, interval)`: their room
    /// returns when the places after them are given back too (callers that give up together,
    /// a cancelled prefetch, drop their places in any order).
    released: Vec<(Instant, Duration)>,
}

impl Bucket {
    #[cfg(test)]
    pub(crate) fn new(budget: RequestBudget) -> Self {
        Self::with_phase(budget, 0.0)
    }

    /// A bucket whose room comes `phase` (a share of one interval, `[0, 1)`) later than its
    /// first call if the budget is [`spread`](RequestBudget::spread): the last place of the
    /// first burst waits that long, and every place after it keeps that offset.
    pub(crate) fn with_phase(budget: RequestBudget, phase: f64) -> Self {
        Bucket {
            budget,
            phase: if budget.is_spread() {
                phase.clamp(0.0, 1.0)
            } else {
                0.0
            },
            state: Mutex::new(State {
                adapt: Adapt::new(budget),
                due: None,
                plan: 0,
                planned_at: budget.rate(),
                released: Vec::new(),
            }),
            plans: tokio::sync::watch::Sender::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The burst at `rate`, less one, as time: a cut rate cuts the burst with it (one second's
    /// worth stays one second's worth).
    fn slack(&self, rate: f64) -> Duration {
        let burst = (f64::from(self.budget.burst()) * rate / self.budget.rate()).max(1.0);
        Duration::from_secs_f64(1.0 / rate).mul_f64(burst - 1.0)
    }

    /// Take a place for one call asked for at `now`, if it can be sent within `max_wait`: the
    /// place says when it may be sent (`now` when the budget has room). Places are given in the
    /// order asked, so waiting callers go first come, first served. A call that would wait longer
    /// takes no place: `Err` says how long it would have waited.
    pub(crate) fn reserve(&self, now: Instant, max_wait: Duration) -> Result<Place, Duration> {
        let mut st = self.state();
        st.adapt.asked(now);
        self.replan_if_risen(&mut st, now);
        let rate = st.adapt.rate();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let slack = self.slack(rate);
        let first = || now.checked_add(interval.mul_f64(self.phase)).unwrap_or(now);
        let due = st.due.map_or_else(first, |d| d.max(now));
        let at = due.checked_sub(slack).map_or(now, |t| t.max(now));
        if at.saturating_duration_since(now) > max_wait {
            return Err(at - now);
        }
        let next = due.checked_add(interval).unwrap_or(due);
        st.due = Some(next);
        if at > now {
            st.adapt.waited(at);
        }
        // Places given back that are due before now can no longer be reclaimed.
        st.released.retain(|(n, _)| *n > now);
        Ok(Place {
            at,
            next,
            interval,
            plan: st.plan,
        })
    }

    /// Whether the places were planned again since `place` was given: a call waiting for it
    /// takes a new place at the new rate.
    pub(crate) fn replanned_since(&self, place: &Place) -> bool {
        self.state().plan != place.plan
    }

    /// Follows the plans: it changes when the places are planned again.
    pub(crate) fn plans(&self) -> tokio::sync::watch::Receiver<u64> {
        self.plans.subscribe()
    }

    /// Plan the places again at `rate` from `now`: the places given before are dropped, and
    /// the calls after are spaced at the new rate, with no burst at first; after a refusal,
    /// the first of them one interval later.
    fn replan(&self, st: &mut State, now: Instant, rate: f64, refused: bool) {
        st.plan += 1;
        st.planned_at = rate;
        let mut due = now.checked_add(self.slack(rate)).unwrap_or(now);
        if refused {
            due = due
                .checked_add(Duration::from_secs_f64(1.0 / rate))
                .unwrap_or(due);
        }
        st.due = Some(due);
        st.released.clear();
        self.plans.send_replace(st.plan);
    }

    fn replan_if_risen(&self, st: &mut State, now: Instant) {
        let rate = st.adapt.rate();
        if rate >= st.planned_at * REPLAN_RISE {
            self.replan(st, now, rate, false);
        }
    }

    /// Give back a place whose call was never sent (its caller gave up while it waited), if no
    /// later place was given since: the budget's room is not lost to abandoned calls.
    pub(crate) fn release(&self, place: &Place) {
        let mut st = self.state();
        if st.plan != place.plan {
            // The plan it was part of was dropped.
            return;
        }
        if st.due != Some(place.next) {
            // A later place is still held: this room returns when that one is given back.
            st.released.push((place.next, place.interval));
            return;
        }
        let mut due = place.next.checked_sub(place.interval);
        while let Some(i) = st.released.iter().position(|(n, _)| Some(*n) == due) {
            let (next, interval) = st.released.swap_remove(i);
            due = next.checked_sub(interval);
        }
        st.due = due;
    }

    /// The backend throttled a call answered at `now`: cut the rate (adaptive budgets only; see
    /// [`adapt`](super::adapt)) and plan the places again: calls still waiting for theirs take
    /// new ones at the new rate, spaced, with no burst right after the refusal. Returns the new
    /// rate when it changed.
    pub(crate) fn throttled(&self, now: Instant) -> Option<f64> {
        let mut st = self.state();
        let rate = st.adapt.throttled(now)?;
        self.replan(&mut st, now, rate, true);
        Some(rate)
    }

    /// A call answered at `now` without throttling: give back some of a cut rate (and plan the
    /// places again once it has risen by half). Returns the new rate when it changed.
    pub(crate) fn succeeded(&self, now: Instant) -> Option<f64> {
        let mut st = self.state();
        let rate = st.adapt.succeeded(now)?;
        self.replan_if_risen(&mut st, now);
        Some(rate)
    }

    /// The budget this bucket keeps.
    pub(crate) fn budget(&self) -> RequestBudget {
        self.budget
    }

    /// The rate now, in calls per second.
    pub(crate) fn rate(&self) -> f64 {
        self.state().adapt.rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Clock;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_burst_then_the_rate() {
        let bucket = Bucket::new(RequestBudget::per_second(2).with_burst(3));
        let t0 = crate::ManualClock::new().now();
        let at: Vec<Duration> = (0..7)
            .map(|_| bucket.reserve(t0, S(60)).unwrap().at - t0)
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            at,
            [ms(0), ms(0), ms(0), ms(500), ms(1000), ms(1500), ms(2000)]
        );
        // Ten idle seconds refill the burst, no more.
        let t1 = t0 + S(12);
        let at: Vec<Duration> = (0..4)
            .map(|_| bucket.reserve(t1, S(60)).unwrap().at - t1)
            .collect();
        assert_eq!(at, [ms(0), ms(0), ms(0), ms(500)]);
    }

    /// A spread budget begins at its phase: the end of the first burst (with a burst of one,
    /// the first call) and every place after it come that share of an interval later; a budget
    /// not spread ignores the phase.
    #[test]
    fn a_spread_budget_begins_at_its_phase() {
        let t0 = crate::ManualClock::new().now();
        let ms = |n| Duration::from_millis(n);
        let places = |budget: RequestBudget| -> Vec<Duration> {
            let bucket = Bucket::with_phase(budget, 0.25);
            (0..4)
                .map(|_| bucket.reserve(t0, S(60)).unwrap().at - t0)
                .collect()
        };
        let one = RequestBudget::per_second(1).with_burst(1);
        assert_eq!(
            places(one.spread()),
            [ms(250), ms(1250), ms(2250), ms(3250)]
        );
        assert_eq!(places(one), [ms(0), ms(1000), ms(2000), ms(3000)]);
        let three = RequestBudget::per_second(2).with_burst(3).spread();
        assert_eq!(places(three), [ms(0), ms(0), ms(125), ms(625)]);
    }

    /// Callers that give up together (a cancelled prefetch) give all their room back, in
    /// whatever order their places are dropped. (Before, a place dropped while a later one was
    /// held was lost for good.)
    #[test]
    fn places_given_back_in_any_order_return_all_their_room() {
        let t0 = crate::ManualClock::new().now();
        for order in [[0, 1, 2], [2, 1, 0], [0, 2, 1], [1, 0, 2]] {
            let bucket = Bucket::new(RequestBudget::per_second(1).with_burst(1));
            let _first = bucket.reserve(t0, S(60)).unwrap();
            let places: Vec<Place> = (0..3).map(|_| bucket.reserve(t0, S(60)).unwrap()).collect();
            assert_eq!(places[2].at - t0, S(3));
            for i in order {
                bucket.release(&places[i]);
            }
            // Only the first place (sent) still counts: the next is due 1 s later.
            assert_eq!(
                bucket.reserve(t0, S(60)).unwrap().at - t0,
                S(1),
                "{order:?}"
            );
        }
        // A place given back while a later one is used stays lost (the later one was sent at
        // its time), but does not disturb what follows.
        let bucket = Bucket::new(RequestBudget::per_second(1).with_burst(1));
        let _sent = bucket.reserve(t0, S(60)).unwrap();
        let dropped = bucket.reserve(t0, S(60)).unwrap();
        let _used = bucket.reserve(t0, S(60)).unwrap();
        bucket.release(&dropped);
        assert_eq!(bucket.reserve(t0, S(60)).unwrap().at - t0, S(3));
    }

    /// At a cut, places given at the old rate are dropped: a call still waiting for one takes
    /// a new place ([`Bucket::replanned_since`]), and the calls after the cut are spaced at the
    /// new rate from then. Giving back a dropped place changes nothing.
    #[test]
    fn a_cut_drops_the_places_given_at_the_old_rate() {
        let t0 = crate::ManualClock::new().now();
        let bucket = Bucket::new(RequestBudget::per_second(10).with_burst(1));
        let places: Vec<Place> = (0..10)
            .map(|_| bucket.reserve(t0, S(60)).unwrap())
            .collect();
        assert_eq!(places[9].at - t0, Duration::from_millis(900));
        // Ten asked in the second, so the cut starts from 10: 5 per second.
        assert_eq!(bucket.throttled(t0), Some(5.0));
        assert!(places.iter().all(|p| bucket.replanned_since(p)));
        bucket.release(&places[9]);
        let next = bucket
            .reserve(t0 + Duration::from_millis(100), S(60))
            .unwrap();
        assert!(!bucket.replanned_since(&next));
        assert_eq!(
            next.at - t0,
            Duration::from_millis(200),
            "one interval after the cut"
        );
        let after = bucket
            .reserve(t0 + Duration::from_millis(100), S(60))
            .unwrap();
        assert_eq!(
            after.at - t0,
            Duration::from_millis(400),
            "then one per 200 ms"
        );
        // Risen by half or more, the rate plans the places again: waiting calls go sooner.
        assert_eq!(bucket.succeeded(t0 + S(4)), Some(7.0));
        assert!(!bucket.replanned_since(&after));
        assert_eq!(bucket.succeeded(t0 + S(10)), Some(10.0));
        assert!(bucket.replanned_since(&after));
    }
}
