//! How long a source call may take: the request timeout from its last sign of life.
//!
//! A call that sends one request gets one timeout, as before. A call that sends many
//! ([`fetch_each`](crate::fetch_each): a prefetch's reads, a few at a time) is bounded by the
//! timeout from the latest of its requests sent or answered, and each of those requests by the
//! timeout on its own. A busy backend that answers every read within the timeout is then never
//! cut off in the middle of a prefetch (which dropped every answer the call had already
//! received). A hung one still costs one timeout: once a request of the call has timed out, the
//! call sends no more and waits for none of its requests under way (each fails at once), and a
//! timeout is no sign of life.
//! The call's own deadline stays a moment ([`GRACE`]) past that of its last request, so a
//! request timing out at the call's deadline ends the call with its answers, not without them.
//! A request given a later place in the source's request budget ([`expect`]) counts as sent at
//! its place: a call that waits for its budget is not hung, and it is never cut off while a
//! request waits for a place the budget gave it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};

use super::context::later;

tokio::task_local! {
    /// The source call being run on this task, when a client runs it.
    static CALL: Progress;
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
/// sign of life for the call when it is sent and when it is answered (a timeout is none). Once
/// one request of the call has timed out, the others fail at once: those not sent yet are not
/// sent, those under way are given up. Outside a
/// client's call (a source used directly), the request as it is.
pub(crate) async fn request<T>(request: impl Future<Output = Result<T>>) -> Result<T> {
    let Ok(progress) = CALL.try_with(Progress::clone) else {
        return request.await;
    };
    if progress.has_timed_out() {
        return Err(not_sent());
    }
    progress.mark();
    let deadline = later(progress.clock.now(), progress.timeout);
    let result = tokio::select! {
        biased;
        result = request => result,
        () = progress.clock.sleep_until(deadline) => Err(timed_out(progress.timeout)),
        // Another request timed out: the backend is not answering this call.
        () = progress.stopped() => return Err(Error::new(
            ErrorKind::Timeout,
            "given up: another request of this call got no answer in time",
        )),
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
