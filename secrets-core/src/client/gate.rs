//! The door between a call to a source and its request budget: a place is taken before the
//! call's first backend request, and, through [`another_request`](crate::budget::another_request),
//! before each further request the source sends within the same call (a metadata read beside the
//! value, single reads after a refused batch). The budget is in backend requests, whatever a
//! source makes of one call.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::budget::{Bucket, Place};
use crate::clock::Clock;
use crate::error::{Error, Result};

tokio::task_local! {
    /// The budget of the source call being run on this task, if it is budgeted.
    static GATE: Gate;
}

/// One source's budget as a call to it spends it.
#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) source: Arc<str>,
    pub(crate) bucket: Arc<Bucket>,
    pub(crate) clock: Arc<dyn Clock>,
    /// A call's first request that would wait longer than this for room is refused (the
    /// request timeout).
    pub(crate) max_wait: Duration,
    /// The latest place the call was given (set when the first is taken): with the call's
    /// latest sign of life, where its further requests' waits are counted from.
    pub(crate) latest: Arc<Mutex<Option<Instant>>>,
}

/// How long a further request of a call may wait for room, from the call's latest place or sign
/// of life, as a share of the request timeout.
const FURTHER_WAIT: f64 = 0.5;
/// The same for a request the call cannot do without (beyond it, the request is sent owed).
const NEEDED_WAIT: f64 = 0.9;

impl Gate {
    /// Wait for a place for one request: at once when the budget has room; refused as
    /// `Throttled` (with the wait as its hint) when it would wait longer than `max_wait`.
    pub(crate) async fn enter(&self) -> Result<()> {
        self.wait_for_place(self.max_wait).await
    }

    /// A place at `at` was given to the call: its further requests' waits count from it, and
    /// the call lives until that request has had its time.
    fn given(&self, at: Instant) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        *latest = Some(latest.map_or(at, |l| l.max(at)));
        drop(latest);
        super::progress::expect(at);
    }

    /// How long a further request asked for now may wait for room: `share` of the request
    /// timeout from the later of the call's latest place and its latest sign of life (a
    /// request sent or answered). A call whose requests keep going at the budget's pace keeps
    /// waiting for room, however long it takes in all; one whose last place or answer is long
    /// past waits no more.
    fn may_wait(&self, now: Instant, share: f64) -> Duration {
        let latest = *self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let anchor = match (latest, super::progress::last_sign()) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(now),
        };
        anchor
            .checked_add(self.max_wait.mul_f64(share))
            .map_or(Duration::MAX, |until| until.saturating_duration_since(now))
    }

    /// A place for a request the call cannot do without, taken now: the future waits for it
    /// while the call's time allows; when the room is further away the place is taken from
    /// the budget's future and the future is ready at once (the calls after it wait for it
    /// instead). Dropped before its time, the future gives the place back.
    fn reserve_needed(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let now = self.clock.now();
        let left = self.may_wait(now, NEEDED_WAIT);
        match self.bucket.reserve(now, left) {
            Ok(place) => {
                self.given(place.at);
                // Given back if the future is dropped before its request goes.
                let unsent = OwnedUnsent {
                    bucket: self.bucket.clone(),
                    place: Some(place),
                };
                Box::pin(async move {
                    if place.at > now {
                        super::telemetry::budget_wait(&self.source, place.at - now);
                        self.clock.sleep_until(place.at).await;
                    }
                    unsent.sent();
                })
            }
            Err(_) => {
                let _owed = self.bucket.reserve(now, Duration::MAX);
                tracing::trace!(target: "keyrack_core::backend",
                    "a needed request is sent before the budget has room; later calls wait for it");
                Box::pin(async {})
            }
        }
    }

    /// Wait for a place for a further request of the call.
    async fn enter_further(&self) -> Result<()> {
        let left = self.may_wait(self.clock.now(), FURTHER_WAIT);
        self.wait_for_place(left).await
    }

    /// A place for a further request of the call if the budget has room now, without waiting.
    fn try_enter_further(&self) -> bool {
        let place = self.bucket.reserve(self.clock.now(), Duration::ZERO);
        if let Ok(place) = &place {
            self.given(place.at);
        }
        place.is_ok()
    }

    async fn wait_for_place(&self, max_wait: Duration) -> Result<()> {
        let asked = self.clock.now();
        let refused = |wait: Duration| {
            Error::throttled(
                Some(wait),
                "the source's request budget has no room within the request timeout",
            )
            .marked_budget_refusal()
        };
        let mut plans = self.bucket.plans();
        plans.borrow_and_update();
        let place = self.bucket.reserve(asked, max_wait).map_err(refused)?;
        self.given(place.at);
        if place.at <= asked {
            return Ok(());
        }
        tracing::trace!(target: "keyrack_core::backend",
            wait = ?(place.at - asked), "waiting for the source's request budget");
        // Given back if the caller gives up before its turn.
        let unsent = Unsent {
            bucket: &self.bucket,
            place: &place,
        };
        // The places waiting are planned again, in order, when the rate is cut or rises: follow.
        while let Some(at) = self.bucket.turn(&place) {
            if at.saturating_duration_since(asked) > max_wait {
                // Cut past what the call may wait: refused as if asked for now (the place is
                // given back).
                return Err(refused(at.saturating_duration_since(self.clock.now())));
            }
            if at <= self.clock.now() {
                break;
            }
            let mut turn = self.clock.sleep_until(at);
            tokio::select! {
                biased;
                changed = plans.changed() => {
                    if changed.is_err() {
                        // No more plans (the bucket outlives its waiters; not reached).
                        (&mut turn).await;
                        break;
                    }
                }
                () = &mut turn => {}
            }
        }
        std::mem::forget(unsent);
        self.bucket.sent(&place);
        super::telemetry::budget_wait(
            &self.source,
            self.clock.now().saturating_duration_since(asked),
        );
        Ok(())
    }

    /// Run `call` (a source call whose first request has its place) with this gate in reach of
    /// [`another_request`].
    pub(crate) async fn around<T>(self, call: impl Future<Output = T>) -> T {
        GATE.scope(self, call).await
    }
}

/// See [`crate::budget::current`].
pub(crate) fn current() -> Option<crate::budget::RequestBudget> {
    GATE.try_with(|gate| gate.bucket.budget()).ok()
}

/// See [`crate::budget::current_rate`].
pub(crate) fn current_rate() -> Option<f64> {
    GATE.try_with(|gate| gate.bucket.rate()).ok()
}

/// See [`crate::budget::another_request`].
pub(crate) async fn another_request() -> Result<()> {
    let Ok(gate) = GATE.try_with(Gate::clone) else {
        return Ok(());
    };
    // Once a request of the call has timed out, a request waiting for its place gives up.
    tokio::select! {
        biased;
        e = super::progress::stopped() => Err(e),
        entered = gate.enter_further() => entered,
    }
}

/// See [`crate::budget::needed_request`].
pub(crate) fn needed_request() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    match GATE.try_with(Gate::clone) {
        Ok(gate) => gate.reserve_needed(),
        Err(_) => Box::pin(async {}),
    }
}

/// See [`crate::budget::try_another_request`].
pub(crate) fn try_another_request() -> bool {
    GATE.try_with(Gate::try_enter_further).unwrap_or(true)
}

/// [`Unsent`] for a place held by a future that outlives the gate.
struct OwnedUnsent {
    bucket: Arc<Bucket>,
    place: Option<Place>,
}

impl OwnedUnsent {
    fn sent(mut self) {
        if let Some(place) = self.place.take() {
            self.bucket.sent(&place);
        }
    }
}

impl Drop for OwnedUnsent {
    fn drop(&mut self) {
        if let Some(place) = &self.place {
            self.bucket.release(place);
        }
    }
}

/// A budget place whose request was not sent yet: given back when dropped.
struct Unsent<'a> {
    bucket: &'a Bucket,
    place: &'a Place,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.bucket.release(self.place);
    }
}
