//! [`Revoker`]: leases nobody uses any more (replaced by a re-issue, held by an entry the cache
//! let go, obtained while the client shut down) are revoked at their time, whether or not anyone
//! still reads the secret. A failed revocation is retried with backoff until the lease would have
//! ended by itself; at shutdown every pending one is revoked at once.
//!
//! One task per client, alive only while something is pending.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::reference::SecretRef;
use crate::secret::Lease;
use crate::source::SecretSource;

use super::context::bounded;

struct Pending {
    at: Instant,
    /// The lease's own end: past it there is nothing left to revoke.
    end: Instant,
    attempt: u32,
    source: Arc<dyn SecretSource>,
    source_name: Arc<str>,
    key: SecretRef,
    lease: Lease,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    task: Option<tokio::task::AbortHandle>,
    closed: bool,
}

pub(crate) struct Revoker {
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    timeout: Duration,
    /// Whether backend request metrics carry a `secret` label.
    secret_label: bool,
    state: Mutex<State>,
    wake: Notify,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Revoker {
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        backoff: Backoff,
        timeout: Duration,
        secret_label: bool,
    ) -> Self {
        Revoker {
            clock,
            backoff,
            timeout,
            secret_label,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Revoke `lease` at `at` (or now, if that has passed).
    pub(crate) fn schedule(
        self: &Arc<Self>,
        at: Instant,
        source: Arc<dyn SecretSource>,
        source_name: Arc<str>,
        key: SecretRef,
        lease: Lease,
    ) {
        let end = self.clock.deadline_for(lease.expires_at());
        if end <= at {
            // It ends by itself before it would be revoked.
            return;
        }
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        st.pending.push(Pending {
            at,
            end,
            attempt: 0,
            source,
            source_name,
            key,
            lease,
        });
        let running = st.task.as_ref().is_some_and(|t| !t.is_finished());
        if !running && let Ok(rt) = tokio::runtime::Handle::try_current() {
            st.task = Some(rt.spawn(run(Arc::downgrade(self))).abort_handle());
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Lease `id` of `source_name` is in use again (the backend answered a new read with it):
    /// drop any revocation pending for it, or the revoker would end a credential being served.
    pub(crate) fn keep(&self, source_name: &str, id: &str) {
        let mut st = lock(&self.state);
        if !st.pending.is_empty() {
            st.pending
                .retain(|p| !(p.lease.id == id && &*p.source_name == source_name));
        }
    }

    /// Revoke everything pending now, and accept nothing more.
    pub(crate) async fn shutdown(&self) {
        let pending = {
            let mut st = lock(&self.state);
            st.closed = true;
            if let Some(task) = st.task.take() {
                task.abort();
            }
            std::mem::take(&mut st.pending)
        };
        let now = self.clock.now();
        join_all(
            pending
                .into_iter()
                .filter(|p| p.end > now)
                .map(|p| async move {
                    let _ = self.revoke(&p).await;
                }),
        )
        .await;
    }

    async fn revoke(&self, p: &Pending) -> bool {
        let span = tracing::debug_span!(target: "keyrack_core::backend", "backend_call",
            source = %p.source_name, operation = "revoke", secret = %p.key, attempt = p.attempt + 1);
        let call = bounded(&*self.clock, self.timeout, p.source.revoke(&p.lease));
        let started = self.clock.now();
        let result = call.instrument(span).await;
        let took = self.clock.now().saturating_duration_since(started);
        let kind = result.as_ref().map(|_| ()).map_err(crate::Error::kind);
        let secret = self.secret_label.then(|| p.key.to_string());
        super::telemetry::backend_call(&p.source_name, "revoke", secret, kind, took);
        super::telemetry::lifecycle(super::telemetry::REVOCATIONS, &p.source_name, kind);
        match result {
            Ok(()) => {
                tracing::debug!(secret = %p.key, source = %p.source_name, lease_id = %p.lease.id,
                    "replaced lease revoked");
                true
            }
            Err(e) => {
                tracing::warn!(secret = %p.key, source = %p.source_name, lease_id = %p.lease.id,
                    error = %e, attempt = p.attempt + 1, "lease revocation failed");
                false
            }
        }
    }
}

async fn run(revoker: Weak<Revoker>) {
    loop {
        let Some(r) = revoker.upgrade() else { return };
        let now = r.clock.now();
        let due: Vec<Pending> = {
            let mut st = lock(&r.state);
            if st.pending.is_empty() {
                st.task = None;
                return;
            }
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
                .into_iter()
                .partition(|p| p.at <= now);
            st.pending = later;
            due
        };
        let results = join_all(due.iter().map(|p| r.revoke(p))).await;
        let now = r.clock.now();
        {
            let mut st = lock(&r.state);
            for (mut p, done) in due.into_iter().zip(results) {
                if done || st.closed {
                    continue;
                }
                let e = crate::Error::new(crate::ErrorKind::Unavailable, "revocation failed");
                // No randomness: the engine's runs repeat exactly under a seeded simulation.
                let delay = r.backoff.delay(p.attempt, &e, Duration::from_secs(1), 0.5);
                p.attempt += 1;
                p.at = super::context::later(now, delay);
                if p.at < p.end {
                    st.pending.push(p);
                }
            }
        }
        let next = lock(&r.state).pending.iter().map(|p| p.at).min();
        let Some(next) = next else { continue };
        let sleep = r.clock.sleep_until(next);
        let notified = r.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        tokio::select! {
            () = sleep => {}
            () = notified => {}
        }
    }
}
