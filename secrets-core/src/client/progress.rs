//! How long a source call may take: the request timeout from its last sign of life.
//!
//! A call that sends one request gets one timeout, as before. A call that sends many
//! ([`fetch_each`](crate::fetch_each): a prefetch's reads, a few at a time) is bounded by the
//! timeout from the latest of its requests sent or answered, and each of those requests by the
//! timeout on its own. A busy backend that answers every read within the timeout is then never
//! cut off in the middle of a prefetch (which dropped every answer the call had already
//! received). A hung one still costs one timeout: once a request of the call has timed out, the
//! call sends no more (each further request fails at once, and those waiting for a place in the
//! budget stop waiting), and a timeout is no sign of life.
//! The call's own deadline stays a moment ([`GRACE`]) past that of its last request, so a
//! request timing out at the call's deadline ends the call with its answers, not without them.
//! A request given a later place in the source's request budget ([`expect`]) counts as sent at
//! its place, for the call and for the request it is sent within (a login within a read): a
//! call that waits for its budget is not hung, and neither it nor that request is cut off while
//! a request waits for a place the budget gave it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};

use super::context::later;

tokio::task_local! {
    /// The source call being run on this task, when a client runs it.
    static CALL: Progress;
    /// The latest sign of life of the request (of such a call) being run: when it was sent, or
    /// a later place in the budget given to a request it needs first.
    static REQUEST: Arc<Mutex<Instant>>;
}

/// How long past its last request's deadline a call of several requests waits for it to end.
const GRACE: Duration = Duration::from_millis(100);

/// A call's timeout and its last sign of life.
#[derive(Clone)]
struct Progress {
    clock: Arc<dyn Clock>,
    timeout: Duration,
    /// The last sign of life, and whether it was a request of the call (whose own deadline is
    /// then the same as the call's, which waits [`GRACE`] longer).
    last: Arc<Mutex<(Instant, bool)>>,
    /// A request of the call timed out: the call sends no more.
    timed_out: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Progress {
    fn mark(&self) {
        self.mark_at(self.clock.now());
    }

    /// A request of the call is (or will be) sent at `at`: a sign of life then, unless a later
    /// one is known already.
    fn mark_at(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if at >= last.0 {
            *last = (at, true);
        }
    }

    fn has_timed_out(&self) -> bool {
        *self.timed_out.borrow()
    }

    /// Ready once a request of the call has timed out.
    async fn stopped(&self) {
        let mut timed_out = self.timed_out.subscribe();
        if timed_out.wait_for(|t| *t).await.is_err() {
            // Not reached: the sender lives as long as `self`.
            std::future::pending::<()>().await;
        }
    }

    fn deadline(&self) -> Instant {
        let (last, requests) = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = later(last, self.timeout);
        if requests {
            later(deadline, GRACE)
        } else {
            deadline
        }
    }
}

fn timed_out(timeout: Duration) -> Error {
    Error::new(ErrorKind::Timeout, format!("no answer within {timeout:?}"))
}

fn not_sent() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "not sent: another request of this call got no answer in time",
    )
}

/// `call`, or [`ErrorKind::Timeout`] once `timeout` has passed on `clock` without a sign of
/// life: since it started, or since a request within it (see [`request`]) was sent or ended.
pub(crate) async fn bounded_call<T>(
    clock: &Arc<dyn Clock>,
    timeout: Duration,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let progress = Progress {
        clock: clock.clone(),
        timeout,
        last: Arc::new(Mutex::new((clock.now(), false))),
        timed_out: Arc::new(tokio::sync::watch::Sender::new(false)),
    };
    let call = CALL.scope(progress.clone(), call);
    tokio::pin!(call);
    loop {
        let deadline = progress.deadline();
        tokio::select! {
            biased;
            result = &mut call => return result,
            () = clock.sleep_until(deadline) => {
                // A request sent or answered meanwhile moved the deadline on.
                if progress.deadline() <= clock.now() {
                    return Err(timed_out(timeout));
                }
            }
        }
    }
}

/// One request of a call that sends several: bounded by the call's timeout on its own, and a
/// sign of life for the call when it is sent and when it is answered (a timeout is none). A
/// request that waits for a place in the budget for a request of its own (a login before a
/// read) is bounded from that place, not from its start: the wait is the budget's, not the
/// backend's. Once one request of the call has timed out, the others not sent yet are not sent.
/// Outside a client's call (a source used directly), the request as it is.
pub(crate) async fn request<T>(request: impl Future<Output = Result<T>>) -> Result<T> {
    let Ok(progress) = CALL.try_with(Progress::clone) else {
        return request.await;
    };
    if progress.has_timed_out() {
        return Err(not_sent());
    }
    progress.mark();
    // This request's latest sign of life: sent now, or a later place it was given.
    let own = Arc::new(Mutex::new(progress.clock.now()));
    let deadline = || {
        later(
            *own.lock().unwrap_or_else(|p| p.into_inner()),
            progress.timeout,
        )
    };
    let request = REQUEST.scope(own.clone(), request);
    tokio::pin!(request);
    // Another request of the call timed out: this one gives up if it is still waiting for a
    // place in the budget (for a request of its own, a login), as a request not sent yet does;
    // under way, it keeps its own deadline.
    let stopped = progress.stopped();
    tokio::pin!(stopped);
    let mut watching = true;
    let result = loop {
        tokio::select! {
            biased;
            result = &mut request => break result,
            () = progress.clock.sleep_until(deadline()) => {
                // A place given meanwhile moved the deadline on.
                if deadline() <= progress.clock.now() {
                    break Err(timed_out(progress.timeout));
                }
            }
            () = &mut stopped, if watching => {
                if *own.lock().unwrap_or_else(|p| p.into_inner()) > progress.clock.now() {
                    // Dropping it gives its place back.
                    return Err(not_sent());
                }
                watching = false;
            }
        }
    };
    if result
        .as_ref()
        .is_err_and(|e| e.kind() == &ErrorKind::Timeout)
    {
        progress.timed_out.send_replace(true);
    } else {
        progress.mark();
    }
    result
}

/// The latest sign of life of the client's call running on this task (`None` outside one).
pub(crate) fn last_sign() -> Option<Instant> {
    CALL.try_with(|p| p.last.lock().unwrap_or_else(|p| p.into_inner()).0)
        .ok()
}

/// A request of the client's call running on this task has a place in the budget at `at`: the
/// call is not cut off before that request's own deadline (nothing outside a call).
pub(crate) fn expect(at: Instant) {
    let _ = CALL.try_with(|p| p.mark_at(at));
    // And the request it is sent for, if it is sent within one: its own deadline moves on.
    let _ = REQUEST.try_with(|own| {
        let mut own = own.lock().unwrap_or_else(|p| p.into_inner());
        *own = (*own).max(at);
    });
}

/// Ready with the error of a request not sent once a request of the client's call running on
/// this task has timed out (at once if one has); never outside a call. A request waiting for a
/// place in the budget gives up then, rather than wait to fail.
pub(crate) async fn stopped() -> Error {
    match CALL.try_with(Progress::clone) {
        Ok(progress) => {
            progress.stopped().await;
            not_sent()
        }
        Err(_) => std::future::pending().await,
    }
}
