//! What every entry of one client shares: the clock, the settings, the global event feed, the
//! queue of leases to revoke and the random numbers for jitter.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::budget::{Bucket, RequestBudget};
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::Secret;

use super::events::RotationEvent;
use super::gate::Gate;
use super::pacing::Pacer;
use super::revoker::Revoker;

/// Longer than any process lives: what "never" becomes, so no deadline overflows an `Instant`.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// No secret is looked at by schedule more than once per this, whatever the backend answers (a
/// lease of TTL 0, the same lease re-issued, a value already expired), and forced refreshes
/// within it share one call.
pub(crate) const MIN_GAP: Duration = Duration::from_secs(1);

/// The shortest routine check interval accepted.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// `t + d`, saturating at [`FOREVER`] from `t` rather than overflowing.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(FOREVER)).unwrap_or(t)
}

/// Settings of a client (set through [`SecretsBuilder`](super::SecretsBuilder)).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) refresh_interval: Duration,
    pub(crate) refresh_overrides: HashMap<SecretRef, Duration>,
    pub(crate) jitter: f64,
    pub(crate) negative_ttl: Duration,
    /// Whether backend request metrics carry a `secret` label.
    pub(crate) secret_label: bool,
    pub(crate) max_staleness: Option<Duration>,
    /// How long past its check time a value is still served at once while a check runs in
    /// the background (`None`: the secret's refresh interval).
    pub(crate) stale_grace: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) capacity: u64,
    pub(crate) revoke_on_shutdown: bool,
    pub(crate) revoke_replaced_after: Option<Duration>,
    pub(crate) renew_increment: Option<Duration>,
    pub(crate) event_capacity: usize,
    pub(crate) request_timeout: Duration,
    /// Request budgets set by the application, by source name (`None`: unbudgeted), over the
    /// sources' defaults.
    pub(crate) budgets: HashMap<String, Option<RequestBudget>>,
    /// Refresh budgets set by the application, by source name (`None`: none), over the default
    /// (half the source's request budget).
    pub(crate) refresh_budgets: HashMap<String, Option<RequestBudget>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_interval: Duration::from_secs(300),
            refresh_overrides: HashMap::new(),
            jitter: 0.2,
            negative_ttl: Duration::from_secs(5),
            secret_label: false,
            max_staleness: None,
            stale_grace: None,
            backoff: Backoff::default(),
            capacity: 10_000,
            revoke_on_shutdown: false,
            revoke_replaced_after: None,
            renew_increment: None,
            event_capacity: 256,
            request_timeout: Duration::from_secs(30),
            budgets: HashMap::new(),
            refresh_budgets: HashMap::new(),
        }
    }
}

impl Config {
    /// How long past its check time a value of `base` is served while it is checked in the
    /// background.
    pub(crate) fn stale_grace_for(&self, base: &SecretRef) -> Duration {
        self.stale_grace.unwrap_or_else(|| self.interval_for(base))
    }

    /// The routine check interval for `base` (a reference without field).
    pub(crate) fn interval_for(&self, base: &SecretRef) -> Duration {
        self.refresh_overrides
            .get(base)
            .copied()
            .unwrap_or(self.refresh_interval)
    }
}

pub(crate) struct Ctx {
    pub(crate) clock: Arc<dyn Clock>,
    /// A fixed point of the clock, to keep deadlines as plain numbers.
    pub(crate) epoch: std::time::Instant,
    pub(crate) config: Config,
    pub(crate) events: broadcast::Sender<RotationEvent>,
    pub(crate) revoker: Arc<Revoker>,
    /// The request budget of each budgeted source, by name.
    buckets: HashMap<Arc<str>, Arc<Bucket>>,
    /// The refresh budget of each source that has one, by name.
    pacers: HashMap<Arc<str>, Arc<Pacer>>,
    /// The client was shut down: no entry starts a task any more.
    closed: AtomicBool,
    rng: Mutex<fastrand::Rng>,
}

impl Ctx {
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        config: Config,
        buckets: HashMap<Arc<str>, Arc<Bucket>>,
        pacers: HashMap<Arc<str>, Arc<Pacer>>,
        seed: Option<u64>,
    ) -> Self {
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let rng = match seed {
            Some(s) => fastrand::Rng::with_seed(s),
            None => fastrand::Rng::new(),
        };
        Ctx {
            epoch: clock.now(),
            revoker: Arc::new(Revoker::new(
                clock.clone(),
                config.backoff,
                config.request_timeout,
                config.secret_label,
            )),
            buckets,
            pacers,
            clock,
            config,
            events,
            closed: AtomicBool::new(false),
            rng: Mutex::new(rng),
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Run one backend call, bounded by the request timeout on the client's clock from its last
    /// sign of life ([`progress`](super::progress)): a backend that accepts and never answers
    /// costs this long, not forever.
    pub(crate) async fn bounded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        super::progress::bounded_call(&self.clock, self.config.request_timeout, call).await
    }

    /// A backend call, bounded by the request timeout, in a `backend_call` span (source,
    /// operation, secret: never a value) that ends with a DEBUG line saying how it went and how
    /// long it took.
    pub(crate) async fn call<T>(
        &self,
        source: &str,
        operation: &'static str,
        secret: &(dyn fmt::Display + Sync),
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.call_judged(source, operation, secret, call, |_| false)
            .await
    }

    /// [`call`](Self::call) for a source call answering several secrets at once
    /// (`fetch_many`): one of them throttled by the backend is a throttling answer for the
    /// budget, as a whole call's would be.
    pub(crate) async fn call_many(
        &self,
        source: &str,
        secret: &(dyn fmt::Display + Sync),
        call: impl Future<Output = Vec<Result<Secret>>>,
    ) -> Result<Vec<Result<Secret>>> {
        self.call_judged(
            source,
            "fetch_many",
            secret,
            async { Ok::<_, Error>(call.await) },
            |answers: &Vec<Result<Secret>>| {
                answers
                    .iter()
                    .any(|a| a.as_ref().is_err_and(refused_by_backend))
            },
        )
        .await
    }

    async fn call_judged<T>(
        &self,
        source: &str,
        operation: &'static str,
        secret: &(dyn fmt::Display + Sync),
        call: impl Future<Output = Result<T>>,
        throttled_within: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let span = tracing::debug_span!(target: "keyrack_core::backend", "backend_call",
            source = %source, operation, secret = %secret);
        // Revocations end access and must not wait at shutdown: they are not budgeted.
        let bucket = (operation != "revoke")
            .then(|| self.buckets.get_key_value(source))
            .flatten();
        let gate = bucket.map(|(name, bucket)| Gate {
            source: name.clone(),
            bucket: bucket.clone(),
            clock: self.clock.clone(),
            max_wait: self.config.request_timeout,
            latest: Arc::default(),
        });
        if let Some(gate) = &gate {
            gate.enter().instrument(span.clone()).await?;
        }
        let bucket = bucket.map(|(_, b)| b);
        let started = self.clock.now();
        // Further requests the source sends within this call take their places through the gate.
        let bounded = self.bounded(call).instrument(span.clone());
        let result = match gate {
            Some(gate) => gate.around(bounded).await,
            None => bounded.await,
        };
        let answered = self.clock.now();
        let took = answered.saturating_duration_since(started);
        if let Some(bucket) = bucket {
            let throttled = match &result {
                Ok(answer) => throttled_within(answer),
                Err(e) => refused_by_backend(e),
            };
            let changed = match &result {
                _ if throttled => {
                    let cut = bucket.throttled(answered);
                    if let Some(rate) = cut {
                        tracing::info!(target: "keyrack_core::backend", source = %source, rate,
                            "the backend throttled: this source's request rate is cut");
                    }
                    cut
                }
                Ok(_) => bucket.succeeded(answered),
                Err(_) => None,
            };
            if let Some(rate) = changed {
                super::telemetry::budget_rate(source, rate);
            }
        }
        super::telemetry::backend_call(
            source,
            operation,
            self.config.secret_label.then(|| secret.to_string()),
            result.as_ref().map(|_| ()).map_err(Error::kind),
            took,
        );
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(target: "keyrack_core::backend", ?took, "backend call ok"),
            Err(e) => tracing::debug!(target: "keyrack_core::backend", ?took,
                kind = ?e.kind(), error = %e, "backend call failed"),
        });
        result
    }

    /// The calls per second source `name`'s budget allows now (`None`: unbudgeted).
    pub(crate) fn budget_rate(&self, name: &str) -> Option<f64> {
        self.buckets.get(name).map(|b| b.rate())
    }

    /// The routine check interval of `base` from source `source` now: its configured interval,
    /// stretched when the source's refresh budget requires it.
    pub(crate) fn check_interval(&self, source: &str, base: &SecretRef) -> Duration {
        let interval = self.config.interval_for(base);
        self.pacers
            .get(source)
            .map_or(interval, |p| p.interval(interval))
    }

    /// `base`, from source `source`, is checked by schedule from now on (`joined`) or no longer:
    /// its source's refresh budget counts it.
    pub(crate) fn paced(&self, source: &str, base: &SecretRef, joined: bool) {
        let Some(pacer) = self.pacers.get(source) else {
            return;
        };
        let interval = self.config.interval_for(base);
        let changed = if joined {
            pacer.add(interval)
        } else {
            pacer.remove(interval)
        };
        if let Some(floor) = changed {
            tracing::debug!(target: "keyrack_core::schedule", source = %source, ?floor,
                "refresh intervals stretched to fit the refresh budget");
            super::telemetry::refresh_floor(source, floor);
        }
    }

    /// The floor the refresh budget of source `name` puts under its refresh intervals now
    /// (`None`: no refresh budget).
    pub(crate) fn refresh_floor(&self, name: &str) -> Option<Duration> {
        self.pacers.get(name).map(|p| p.floor())
    }

    /// A uniform random number in `[0, 1)` for jitter.
    pub(crate) fn unit(&self) -> f64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64()
    }
}

/// A throttling answer from the backend (not the budget's own refusal of a further request,
/// which the backend never saw).
fn refused_by_backend(e: &Error) -> bool {
    e.kind() == &ErrorKind::Throttled && !e.is_budget_refusal()
}

/// `call`, or [`ErrorKind::Timeout`] once `timeout` has passed on `clock`.
pub(crate) async fn bounded<T>(
    clock: &dyn Clock,
    timeout: Duration,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let deadline = later(clock.now(), timeout);
    tokio::select! {
        biased;
        result = call => result,
        () = clock.sleep_until(deadline) => Err(Error::new(
            ErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        )),
    }
}
