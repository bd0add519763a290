//! Request budgets: how many backend calls one source is given, so that a process (and a fleet of
//! them) stays within what the backend accepts.
//!
//! A [`RequestBudget`] is a rate, written as backends document their quotas ("4,000 per 10 s"),
//! with a burst. The client spaces its calls to a source by it (a token bucket: a call waits until
//! the budget has room, in the order calls asked), and, unless the budget is
//! [`fixed`](RequestBudget::fixed), adapts it to the backend's answers as the AWS SDKs' adaptive
//! retry mode does, from the rate the source was sending at: a throttling answer (at most one
//! per second) halves what it sent in the last second or two (its rate, while calls waited for
//! room), never below a ten-thousandth of the budget or one call a minute; calls already
//! waiting are planned again at the new rate, in the order they asked. Successes give back 5 %
//! per second of the rate cut from, then about half of the rate itself per second, up to the
//! budget. So a fleet that together exceeds a shared quota slows down until the backend stops
//! refusing, even when each process's budget is the whole quota, then creeps back. Lease
//! renewals and version probes are calls like any other; revocations are not budgeted (they
//! end access, and shutdown must not wait for room). A call that would wait longer than the
//! client's request timeout for room is not queued: it fails at once with
//! [`Throttled`](crate::ErrorKind::Throttled) and the wait as its retry hint
//! ([`Error::is_budget_refusal`](crate::Error::is_budget_refusal): the backend never saw it, and
//! such refusals do not cut the rate; a waiting call that a cut pushes past the timeout fails
//! the same way then), so callers that give up and retry cannot build an unbounded queue; a
//! call whose caller gives up while it waits gives its place back. The further requests of a
//! call ([`another_request`]) are bounded by the call instead: each may wait up to half a
//! request timeout after the call's latest place or sign of life, so a call whose requests keep
//! going at the budget's pace (a prefetch a small share spreads over minutes) is never refused
//! midway, and no request of it is cut off by its timeout while it waits for its own place.
//!
//! The budget counts backend requests. The client takes a place before each call to a source;
//! a source whose one call sends several requests (AWS's batch read that falls back to single
//! reads, say) calls [`another_request`] before each request after the first, so that a fleet's
//! share of a quota holds whatever the source makes of a call.

use std::time::Duration;

mod adapt;
mod bucket;

pub(crate) use bucket::{Bucket, Place};

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
/// [`Throttled`](crate::ErrorKind::Throttled) when the room is further away than half the
/// client's request timeout after the call's latest place or sign of life (a request sent or
/// answered through [`timed_request`](crate::timed_request)): return that error rather than
/// send the request. A call whose requests keep going at the budget's pace therefore waits as
/// long as the budget needs, however long that is in all. Once a request of the call has timed
/// out, it fails at once with [`Timeout`](crate::ErrorKind::Timeout). Outside a call from a
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
/// it. It waits while the call's time allows (nine tenths of the request timeout after the
/// call's latest place or sign of life); when the
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

/// For [`SecretSource`](crate::SecretSource) implementations: the rate the budget of the source
/// whose call is running allows now, in requests per second: the budget's own, or less once the
/// backend throttled (an adaptive budget cuts it). `None` outside a client call and for an
/// unbudgeted source. A source that divides its budget among APIs of different quotas divides
/// this rate, so a cut reaches them all.
pub fn current_rate() -> Option<f64> {
    crate::client::gate::current_rate()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
