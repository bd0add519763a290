//! [`Scripted`]: a source wrapper whose every operation can be made to fail, hang or misbehave,
//! and which logs every call with the time it was made — for testing what a client (or a
//! service built on it) does on a backend's worst day.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::{Lease, Secret, Version};
use crate::source::{Capabilities, SecretSource, SourceEvent};

/// An operation of [`SecretSource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `fetch` (and each reference of `fetch_many`).
    Fetch,
    /// `version`.
    Version,
    /// `renew`.
    Renew,
    /// `revoke`.
    Revoke,
}

/// How an operation misbehaves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with this kind and, optionally, a `Retry-After`.
    Fail(ErrorKind, Option<Duration>),
    /// Accept the call and never answer (until the fault is cleared).
    Hang,
}

/// One call as the backend saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// When it was made, on the source's clock.
    pub at: Instant,
    /// What was asked.
    pub op: Op,
    /// Whether it came after [`SecretSource::shutdown`].
    pub after_shutdown: bool,
}

#[derive(Default)]
struct State {
    faults: Vec<(Op, Fault)>,
    same_lease: bool,
    last_lease: Option<(SecretRef, Secret)>,
    calls: Vec<Call>,
    shut_down: bool,
}

/// Wraps a source; by default it passes every call through unchanged.
///
/// ```
/// # use keyrack_core::{ErrorKind, ManualClock, sources::MemorySource};
/// # use keyrack_core::testkit::{Scripted, Op, Fault};
/// let clock = ManualClock::new();
/// let backend = Scripted::new(MemorySource::with_clock(clock.clone()), clock);
/// // A least-privilege policy: the value may be read, its metadata may not.
/// backend.set_fault(Op::Version, Some(Fault::Fail(ErrorKind::PermissionDenied, None)));
/// ```
#[derive(Clone)]
pub struct Scripted {
    inner: Arc<dyn SecretSource>,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<State>>,
    cleared: Arc<Notify>,
}

impl Scripted {
    /// Wrap `inner`; calls are timed on `clock`.
    pub fn new(inner: impl SecretSource, clock: impl Clock) -> Self {
        Scripted {
            inner: Arc::new(inner),
            clock: Arc::new(clock),
            state: Arc::default(),
            cleared: Arc::new(Notify::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `op` misbehave (`None`: behave again; hanging calls then go through).
    pub fn set_fault(&self, op: Op, fault: Option<Fault>) {
        let mut st = self.state();
        st.faults.retain(|(o, _)| *o != op);
        if let Some(f) = fault {
            st.faults.push((op, f));
        }
        drop(st);
        self.cleared.notify_waiters();
    }

    /// Make every operation misbehave the same way (`None`: all behave again).
    pub fn set_fault_all(&self, fault: Option<Fault>) {
        for op in [Op::Fetch, Op::Version, Op::Renew, Op::Revoke] {
            self.set_fault(op, fault.clone());
        }
    }

    /// Answer a fetch of a leased secret with the lease fetched before (as a caching proxy in
    /// front of the backend might).
    pub fn reissue_same_lease(&self, on: bool) {
        self.state().same_lease = on;
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Calls of `op` so far.
    pub fn count(&self, op: Op) -> usize {
        self.state().calls.iter().filter(|c| c.op == op).count()
    }

    /// Calls made after the source was shut down.
    pub fn calls_after_shutdown(&self) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.after_shutdown)
            .count()
    }

    /// Record the call, then apply the fault of `op` if any (hanging until it is cleared).
    async fn enter(&self, op: Op) -> Result<()> {
        {
            let mut st = self.state();
            let after_shutdown = st.shut_down;
            st.calls.push(Call {
                at: self.clock.now(),
                op,
                after_shutdown,
            });
        }
        loop {
            let cleared = self.cleared.notified();
            tokio::pin!(cleared);
            cleared.as_mut().enable();
            let fault = self
                .state()
                .faults
                .iter()
                .find(|(o, _)| *o == op)
                .map(|(_, f)| f.clone());
            match fault {
                None => return Ok(()),
                Some(Fault::Fail(kind, retry_after)) => {
                    let e = Error::new(kind, "scripted failure");
                    return Err(match retry_after {
                        Some(d) => e.with_retry_after(d),
                        None => e,
                    });
                }
                Some(Fault::Hang) => cleared.await,
            }
        }
    }
}

impl fmt::Debug for Scripted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scripted")
            .field("inner", &self.inner)
            .field("calls", &self.state().calls.len())
            .finish()
    }
}

#[async_trait]
impl SecretSource for Scripted {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        self.enter(Op::Fetch).await?;
        if self.state().same_lease
            && let Some((last_ref, last)) = self.state().last_lease.clone()
            && last_ref == *r
        {
            return Ok(last);
        }
        let secret = self.inner.fetch(r).await?;
        if secret.lease().is_some() {
            self.state().last_lease = Some((r.clone(), secret.clone()));
        }
        Ok(secret)
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        crate::source::fetch_each(self, refs, 8).await
    }

    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        self.enter(Op::Version).await?;
        self.inner.version(r).await
    }

    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease> {
        self.enter(Op::Renew).await?;
        self.inner.renew(lease, increment).await
    }

    async fn revoke(&self, lease: &Lease) -> Result<()> {
        self.enter(Op::Revoke).await?;
        self.inner.revoke(lease).await
    }

    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        self.inner.watch(r)
    }

    async fn shutdown(&self) {
        self.state().shut_down = true;
        self.inner.shutdown().await;
    }
}
