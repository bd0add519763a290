//! A [`RequestBudget`] in use: places for calls, spaced by the budget's adapted rate.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::RequestBudget;
use super::adapt::Adapt;

/// A call's place in a [`Bucket`]: when it may be sent (until the places are planned again:
/// see [`Bucket::turn`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub(crate) at: Instant,
    /// Places are numbered in the order they were asked for.
    id: u64,
}

/// A place given for later than it was asked for: when it may be sent, the bucket's next due
/// time it set, and the interval it added.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    at: Instant,
    next: Instant,
    interval: Duration,
}

/// The token bucket (as the time the next call would be due at the current rate, "virtual
/// scheduling") and the adapted rate.
#[derive(Debug)]
pub(crate) struct Bucket {
    budget: RequestBudget,
    /// A share of one interval, in `[0, 1)`, by which the end of the first burst comes late.
    phase: f64,
    state: Mutex<State>,
    /// Plans so far, for callers waiting for their places: the places waiting are planned again,
    /// in the order they were asked for, when the rate is cut or has risen by half since they
    /// were planned (`State::planned_at`).
    plans: tokio::sync::watch::Sender<u64>,
}

/// A rate this much above the one the places were planned at plans them again.
const REPLAN_RISE: f64 = 1.5;

#[derive(Debug)]
struct State {
    adapt: Adapt,
    /// When the next call is due if calls came evenly at the rate; `None` before the first.
    due: Option<Instant>,
    /// The rate the places waiting were planned at.
    planned_at: f64,
    /// The places given for later than they were asked for, until sent or given back, by
    /// number; and the next number.
    waiting: BTreeMap<u64, Waiting>,
    next_id: u64,
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
                planned_at: budget.rate(),
                waiting: BTreeMap::new(),
                next_id: 0,
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

    /// The place of a call due at `due` if calls came evenly: when it may be sent (`slack`
    /// earlier, the burst, but not before `now`), and when the call after it is due.
    fn slot(now: Instant, due: Instant, slack: Duration, interval: Duration) -> (Instant, Instant) {
        let at = due.checked_sub(slack).map_or(now, |t| t.max(now));
        (at, due.checked_add(interval).unwrap_or(due))
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
        let (at, next) = Self::slot(now, due, slack, interval);
        if at.saturating_duration_since(now) > max_wait {
            return Err(at - now);
        }
        st.due = Some(next);
        let id = st.next_id;
        st.next_id += 1;
        // Places whose time has come are sent (or about to be): no longer planned.
        st.waiting.retain(|_, w| w.at > now);
        if at > now {
            st.adapt.waited(at);
            st.waiting.insert(id, Waiting { at, next, interval });
        }
        // Places given back that are due before now can no longer be reclaimed.
        st.released.retain(|(n, _)| *n > now);
        Ok(Place { at, id })
    }

    /// When a place given for later may be sent now: its time in the current plan, `None` once
    /// it is no longer waiting (its time came, or it was given back).
    pub(crate) fn turn(&self, place: &Place) -> Option<Instant> {
        self.state().waiting.get(&place.id).map(|w| w.at)
    }

    /// A place given for later was used: its call is sent.
    pub(crate) fn sent(&self, place: &Place) {
        self.state().waiting.remove(&place.id);
    }

    /// Follows the plans: it changes when the places are planned again.
    pub(crate) fn plans(&self) -> tokio::sync::watch::Receiver<u64> {
        self.plans.subscribe()
    }

    /// Plan the places waiting again at `rate` from `now`, in the order they were asked for:
    /// spaced at the new rate, with no burst at first; after a refusal, the first of them one
    /// interval later. Their callers follow ([`turn`](Self::turn), [`plans`](Self::plans)).
    fn replan(&self, st: &mut State, now: Instant, rate: f64, refused: bool) {
        st.planned_at = rate;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let slack = self.slack(rate);
        let mut due = now.checked_add(slack).unwrap_or(now);
        if refused {
            due = due.checked_add(interval).unwrap_or(due);
        }
        st.waiting.retain(|_, w| w.at > now);
        for w in st.waiting.values_mut() {
            let (at, next) = Self::slot(now, due, slack, interval);
            *w = Waiting { at, next, interval };
            due = next;
        }
        st.due = Some(due);
        st.released.clear();
        self.plans.send_modify(|plan| *plan += 1);
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
        let Some(Waiting { next, interval, .. }) = st.waiting.remove(&place.id) else {
            // Its time had come: it counts as sent.
            return;
        };
        if st.due != Some(next) {
            // A later place is still held: this room returns when that one is given back.
            st.released.push((next, interval));
            return;
        }
        let mut due = next.checked_sub(interval);
        while let Some(i) = st.released.iter().position(|(n, _)| Some(*n) == due) {
            let (next, interval) = st.released.swap_remove(i);
            due = next.checked_sub(interval);
        }
        st.due = due;
    }

    /// The backend throttled a call answered at `now`: cut the rate (adaptive budgets only; see
    /// [`adapt`](super::adapt)) and plan the places waiting again at the new rate, spaced, with
    /// no burst right after the refusal. Returns the new rate when it changed.
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

    /// At a cut, the places waiting are planned again at the new rate, in the order they were
    /// asked for, the first one interval after the refusal; the calls asked for after the cut
    /// come after them. A rise by half plans them again too, sooner. Giving a place back takes
    /// it out of the plan.
    #[test]
    fn a_cut_plans_the_places_waiting_again_in_order() {
        let t0 = crate::ManualClock::new().now();
        let ms = |n| t0 + Duration::from_millis(n);
        let bucket = Bucket::new(RequestBudget::per_second(10).with_burst(1));
        let places: Vec<Place> = (0..10)
            .map(|_| bucket.reserve(t0, S(60)).unwrap())
            .collect();
        assert_eq!(places[9].at, ms(900));
        assert_eq!(bucket.turn(&places[0]), None, "sent at once");
        // Ten asked in the second, so the cut starts from 10: 5 per second.
        assert_eq!(bucket.throttled(ms(50)), Some(5.0));
        let turns: Vec<Option<Instant>> = places.iter().map(|p| bucket.turn(p)).collect();
        let planned: Vec<Option<Instant>> = (0..9).map(|i| Some(ms(250 + 200 * i))).collect();
        assert_eq!(turns[1..], planned[..]);
        bucket.release(&places[9]);
        assert_eq!(bucket.turn(&places[9]), None);
        let next = bucket.reserve(ms(100), S(60)).unwrap();
        assert_eq!(next.at, ms(1_850), "after those waiting");
        // Risen by half or more, the rate plans them again: the waiting go sooner.
        let later: Vec<Place> = (0..30)
            .map(|_| bucket.reserve(ms(100), S(60)).unwrap())
            .collect();
        let last = bucket.turn(&later[29]).unwrap();
        assert_eq!(last, ms(1_850 + 30 * 200));
        assert_eq!(bucket.succeeded(ms(4_000)), Some(6.975), "not yet by half");
        assert_eq!(bucket.turn(&later[29]), Some(last));
        assert_eq!(bucket.succeeded(ms(6_000)), Some(7.975));
        let sooner = bucket.turn(&later[29]).unwrap();
        assert!(sooner < last, "{:?}", last - sooner);
        assert_eq!(bucket.turn(&places[8]), None, "its time had come");
    }
}
