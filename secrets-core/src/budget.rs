//! Request budgets: how many backend calls one source is given, so that a process (and a fleet of
//! them) stays within what the backend accepts.
//!
//! A [`RequestBudget`] is a rate, written as backends document their quotas ("4,000 per 10 s"),
//! with a burst. The client spaces its calls to a source by it (a token bucket: a call waits until
//! the budget has room, in the order calls asked), and, unless the budget is
//! [`fixed`](RequestBudget::fixed), adapts it to the backend's answers as the AWS SDKs' adaptive
//! retry mode does: each throttling answer (at most one per second) halves the rate, and each
//! success after that gives back a twentieth of the budget per second since the last change, so
//! a fleet that together exceeds a shared quota slows down until the backend stops refusing, then
//! creeps back. Lease renewals and version probes are calls like any other; revocations are not
//! budgeted (they end access, and shutdown must not wait for room). A call that would wait longer
//! than the client's request timeout for room is not queued: it fails at once with
//! [`Throttled`](crate::ErrorKind::Throttled) and the wait as its retry hint
//! ([`Error::is_budget_refusal`](crate::Error::is_budget_refusal): the backend never saw it, and
//! such refusals do not cut the rate), so callers that give up and retry cannot build an
//! unbounded queue; a call whose caller gives up while it waits gives its place back.
//!
//! The budget counts backend requests. The client takes a place before each call to a source;
//! a source whose one call sends several requests (AWS's batch read that falls back to single
//! reads, say) calls [`another_request`] before each request after the first, so that a fleet's
//! share of a quota holds whatever the source makes of a call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A budget of backend calls for one source: at most `requests` per `per` on average, and at
/// most `burst` calls at once. See the [module docs](self).
///
/// Sources state a default ([`Capabilities::request_budget`](crate::Capabilities)); the
/// application sets its own with
/// [`SecretsBuilder::request_budget`](crate::SecretsBuilder::request_budget), for example its
/// share of a quota the whole fleet draws on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestBudget {
    requests: u32,
    per: Duration,
    burst: u32,
    adaptive: bool,
    spread: bool,
}

impl RequestBudget {
    /// `requests` per `per` (e.g. `RequestBudget::new(4_000, Duration::from_secs(10))`), with
    /// bursts of up to one second's worth (at least 1), adaptive.
    pub fn new(requests: u32, per: Duration) -> Self {
        let per_second = if per.is_zero() {
            f64::from(requests)
        } else {
            f64::from(requests) / per.as_secs_f64()
        };
        // Whole calls, at least one, at most the budget itself.
        let burst = per_second.ceil().clamp(1.0, f64::from(requests.max(1)));
        RequestBudget {
            requests,
            per,
            // A float that was clamped to a u32's range.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            burst: burst as u32,
            adaptive: true,
            spread: false,
        }
    }

    /// `n` requests per second.
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// At most `burst` calls at once (default: one second's worth). At least 1.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// Keep the rate whatever the backend answers (default: adaptive).
    pub fn fixed(mut self) -> Self {
        self.adaptive = false;
        self
    }

    /// For a share of a quota that a fleet of processes draws on together: begin this budget
    /// at a random point of its interval, so processes started together do not get their room
    /// at the same instants. Without it, 10,000 pods each given one request every 25 s (their
    /// share of Key Vault's 400 per second) send 10,000 requests at once every 25 s, and a
    /// quota that allows a burst of 4,000 refuses most of them; spread, they send 400 per
    /// second. The price: the last call of the first burst (with a burst of 1, the first call)
    /// waits up to one interval (default: not spread).
    pub fn spread(mut self) -> Self {
        self.spread = true;
        self
    }

    /// Whether the budget begins at a random point of its interval ([`spread`](Self::spread)).
    pub fn is_spread(&self) -> bool {
        self.spread
    }

    /// The average rate, in calls per second.
    pub fn rate(&self) -> f64 {
        if self.per.is_zero() {
            return f64::INFINITY;
        }
        f64::from(self.requests) / self.per.as_secs_f64()
    }

    /// At most this many calls at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Whether throttling answers cut the rate.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// Why this budget cannot be used, if it cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.requests == 0 || self.per.is_zero() {
            Some("a request budget needs at least 1 request per a positive duration")
        } else if self.rate() < 1.0 / 86_400.0 {
            Some("a request budget of less than 1 request per day is no budget (use `unbudgeted`)")
        } else {
            None
        }
    }
}

/// For [`SecretSource`](crate::SecretSource) implementations: call before each backend request
/// a call sends after its first, so the request is counted against the source's budget. It
/// returns once the budget has room (at once, usually), or fails with
/// [`Throttled`](crate::ErrorKind::Throttled) when the room is further away than the client's
/// request timeout: return that error rather than send the request. Outside a call from a
/// [`Secrets`](crate::Secrets) client (a source used on its own) and for an unbudgeted source it
/// returns `Ok` at once.
pub async fn another_request() -> crate::Result<()> {
    crate::client::gate::another_request().await
}

/// For [`SecretSource`](crate::SecretSource) implementations: like [`another_request`] for a
/// request without which the call has nothing to return (the read after an authentication
/// round trip: Key Vault's challenge). The place is taken when this is called; the future it
/// returns waits for it: call it when the request becomes certain, await it just before the
/// request is sent, so that places taken meanwhile by the call's other requests come after
/// it. It waits while the call's time allows (nine tenths of the request timeout); when the
/// room is further away, as with a small share of a fleet's quota, the request is counted
/// without waiting, taken from the budget's future, and the calls after it wait for it
/// instead. It never fails: a call that could never fit in one request timeout must not be
/// refused forever. Dropped unawaited (the request was not needed after all), it gives the
/// place back. Outside a client call and for an unbudgeted source it is ready at once.
pub fn needed_request() -> impl Future<Output = ()> + Send + 'static {
    crate::client::gate::needed_request()
}

/// For [`SecretSource`](crate::SecretSource) implementations: like [`another_request`] for a
/// request the call can do without (a metadata read beside the value): `true`, with the request
/// counted, when the budget has room now; `false` when it has not (skip the request rather than
/// make the call wait for it). `true` outside a client call and for an unbudgeted source.
pub fn try_another_request() -> bool {
    crate::client::gate::try_another_request()
}

/// For [`SecretSource`](crate::SecretSource) implementations: the budget of the source whose call
/// is running (the application's, or the source's default), or `None` outside a client call
/// and for an unbudgeted source. A source with APIs of different quotas uses it to choose among
/// them: AWS batches reads only while the budget's share of the batch quota has room.
pub fn current() -> Option<RequestBudget> {
    crate::client::gate::current()
}

/// The requests of one call to a source, for a source that sends several: the first has the
/// place the client took for the call, each further one waits for its own
/// ([`another_request`]). Make one per call and call
/// [`before_request`](Self::before_request) before every request, in whatever order they go.
#[derive(Debug, Default)]
pub struct CallRequests {
    sent: std::sync::atomic::AtomicBool,
}

impl CallRequests {
    /// No request sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Before each request of this call: `Ok` when it may be sent; `Throttled` when the budget
    /// has no room within the request timeout (do not send it).
    pub async fn before_request(&self) -> crate::Result<()> {
        if !self.sent.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        another_request().await
    }

    /// Before a request this call can do without: `true` when it may be sent now (counted), as
    /// [`try_another_request`]; the call's first request is always allowed.
    pub fn try_before_request(&self) -> bool {
        if !self.sent.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return true;
        }
        try_another_request()
    }
}

/// The budget's rate never falls below this share of the budget when cut (nor below one call
/// per 20 s, unless the budget itself is lower).
const FLOOR_SHARE: f64 = 0.01;
const FLOOR_RATE: f64 = 0.05;
/// A cut halves the rate.
const CUT: f64 = 0.5;
/// At most one cut per this: the answers to calls sent before the cut are not news.
const CUT_GAP: Duration = Duration::from_secs(1);
/// After a cut, this share of the budget is given back per second.
const RECOVERY_SHARE: f64 = 0.05;

/// A call's place in a [`Bucket`]: when it may be sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub(crate) at: Instant,
    /// The bucket's next due time this place set, and the interval it added.
    next: Instant,
    interval: Duration,
}

/// A [`RequestBudget`] in use: the token bucket (as the time the next call would be due at the
/// current rate, "virtual scheduling") and the adapted rate.
#[derive(Debug)]
pub(crate) struct Bucket {
    budget: RequestBudget,
    /// A share of one interval, in `[0, 1)`, by which the end of the first burst comes late.
    phase: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Calls per second now (the budget's rate unless cut).
    rate: f64,
    /// When the next call is due if calls came evenly at `rate`; `None` before the first.
    due: Option<Instant>,
    /// The last cut or restoration.
    changed: Option<Instant>,
    last_cut: Option<Instant>,
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
            phase: if budget.spread {
                phase.clamp(0.0, 1.0)
            } else {
                0.0
            },
            state: Mutex::new(State {
                rate: budget.rate(),
                due: None,
                changed: None,
                last_cut: None,
                released: Vec::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a place for one call asked for at `now`, if it can be sent within `max_wait`: the
    /// place says when it may be sent (`now` when the budget has room). Places are given in the
    /// order asked, so waiting callers go first come, first served. A call that would wait longer
    /// takes no place: `Err` says how long it would have waited.
    pub(crate) fn reserve(&self, now: Instant, max_wait: Duration) -> Result<Place, Duration> {
        let mut st = self.state();
        let interval = Duration::from_secs_f64(1.0 / st.rate);
        // A cut rate cuts the burst with it (one second's worth stays one second's worth).
        let burst = (f64::from(self.budget.burst) * st.rate / self.budget.rate()).max(1.0);
        let slack = interval.mul_f64(burst - 1.0);
        let first = || now.checked_add(interval.mul_f64(self.phase)).unwrap_or(now);
        let due = st.due.map_or_else(first, |d| d.max(now));
        let at = due.checked_sub(slack).map_or(now, |t| t.max(now));
        if at.saturating_duration_since(now) > max_wait {
            return Err(at - now);
        }
        let next = due.checked_add(interval).unwrap_or(due);
        st.due = Some(next);
        // Places given back that are due before now can no longer be reclaimed.
        st.released.retain(|(n, _)| *n > now);
        Ok(Place { at, next, interval })
    }

    /// Give back a place whose call was never sent (its caller gave up while it waited), if no
    /// later place was given since: the budget's room is not lost to abandoned calls.
    pub(crate) fn release(&self, place: &Place) {
        let mut st = self.state();
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

    /// The backend throttled a call answered at `now`: cut the rate (adaptive budgets only).
    /// Returns the new rate when it changed.
    pub(crate) fn throttled(&self, now: Instant) -> Option<f64> {
        if !self.budget.adaptive {
            return None;
        }
        let mut st = self.state();
        if st
            .last_cut
            .is_some_and(|t| now.saturating_duration_since(t) < CUT_GAP)
        {
            return None;
        }
        let full = self.budget.rate();
        let floor = (full * FLOOR_SHARE).max(FLOOR_RATE).min(full);
        let rate = (st.rate * CUT).max(floor);
        st.last_cut = Some(now);
        st.changed = Some(now);
        // No burst right after a refusal: the calls that follow are spaced at the new rate.
        let burst = (f64::from(self.budget.burst) * rate / full).max(1.0);
        let slack = Duration::from_secs_f64(1.0 / rate).mul_f64(burst - 1.0);
        let drained = now.checked_add(slack).unwrap_or(now);
        st.due = Some(st.due.map_or(now, |d| d.max(now)).max(drained));
        st.released.clear();
        (rate != st.rate).then(|| {
            st.rate = rate;
            rate
        })
    }

    /// A call answered at `now` without throttling: give back some of a cut rate. Returns the
    /// new rate when it changed.
    pub(crate) fn succeeded(&self, now: Instant) -> Option<f64> {
        let full = self.budget.rate();
        let mut st = self.state();
        if st.rate >= full {
            return None;
        }
        let since = st
            .changed
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let rate = (st.rate + full * RECOVERY_SHARE * since.as_secs_f64()).min(full);
        st.changed = Some(now);
        (rate != st.rate).then(|| {
            st.rate = rate;
            rate
        })
    }

    /// The budget this bucket keeps.
    pub(crate) fn budget(&self) -> RequestBudget {
        self.budget
    }

    /// The rate now, in calls per second.
    pub(crate) fn rate(&self) -> f64 {
        self.state().rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Clock;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn documented_quotas_read_as_written() {
        let azure = RequestBudget::new(4_000, S(10));
        assert_eq!((azure.rate(), azure.burst()), (400.0, 400));
        let slow = RequestBudget::new(1, S(20));
        assert_eq!((slow.rate(), slow.burst()), (0.05, 1));
        assert!(RequestBudget::new(0, S(1)).problem().is_some());
        assert!(RequestBudget::new(5, Duration::ZERO).problem().is_some());
        assert!(RequestBudget::new(1, Duration::MAX).problem().is_some());
        assert!(RequestBudget::new(1, S(86_400)).problem().is_none());
        assert_eq!(RequestBudget::per_second(5).with_burst(0).burst(), 1);
    }

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

    #[test]
    fn throttling_halves_once_per_second_and_success_restores_gradually() {
        let bucket = Bucket::new(RequestBudget::per_second(100));
        let t0 = crate::ManualClock::new().now();
        assert_eq!(bucket.throttled(t0), Some(50.0));
        // Answers to calls sent before the cut are no news.
        assert_eq!(bucket.throttled(t0 + Duration::from_millis(300)), None);
        assert_eq!(bucket.throttled(t0 + S(1)), Some(25.0));
        for i in 2..20 {
            bucket.throttled(t0 + S(i));
        }
        assert_eq!(bucket.rate(), 1.0, "floored at 1 % of the budget");
        // 5 % of the budget back per second: full again 20 s later.
        assert_eq!(bucket.succeeded(t0 + S(29)), Some(51.0));
        assert_eq!(bucket.succeeded(t0 + S(49)), Some(100.0));
        assert_eq!(bucket.succeeded(t0 + S(50)), None);
        // A fixed budget is never cut.
        let fixed = Bucket::new(RequestBudget::per_second(100).fixed());
        assert_eq!(fixed.throttled(t0), None);
        assert_eq!(fixed.rate(), 100.0);
    }
}
