//! The door between a call to a source and its request budget: a place is taken before the
//! call's first backend request, and, through [`another_request`](crate::budget::another_request),
//! before each further request the source sends within the same call (a metadata read beside the
//! value, single reads after a refused batch). The budget is in backend requests, whatever a
//! source makes of one call.

use std::pin::Pin;
use std::sync::Arc;
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
    /// Further requests may be sent until then (set when the first is sent).
    pub(crate) further_until: Option<Instant>,
    /// Requests the call cannot do without may wait for room until then (set when the first
    /// is sent).
    pub(crate) needed_until: Option<Instant>,
}

impl Gate {
    /// Wait for a place for one request: at once when the budget has room; refused as
    /// `Throttled` (with the wait as its hint) when it would wait longer than `max_wait`.
    pub(crate) async fn enter(&mut self) -> Result<()> {
        self.wait_for_place(self.max_wait).await?;
        let now = self.clock.now();
        self.further_until = Some(now + self.max_wait / 2);
        self.needed_until = Some(now + self.max_wait.mul_f64(0.9));
        Ok(())
    }

    /// A place for a request the call cannot do without, taken now: the future waits for it
    /// while the call's time allows; when the room is further away the place is taken from
    /// the budget's future and the future is ready at once (the calls after it wait for it
    /// instead). Dropped before its time, the future gives the place back.
    fn reserve_needed(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let now = self.clock.now();
        let left = self
            .needed_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        match self.bucket.reserve(now, left) {
            Ok(place) => {
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
        let now = self.clock.now();
        let left = self
            .further_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        self.wait_for_place(left).await
    }

    /// A place for a further request of the call if the budget has room now, without waiting.
    fn try_enter_further(&self) -> bool {
        self.bucket
            .reserve(self.clock.now(), Duration::ZERO)
            .is_ok()
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

/// See [`crate::budget::another_request`].
pub(crate) async fn another_request() -> Result<()> {
    let Ok(gate) = GATE.try_with(Gate::clone) else {
        return Ok(());
    };
    gate.enter_further().await
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
