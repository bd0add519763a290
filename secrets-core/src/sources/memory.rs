//! [`MemorySource`]: secrets held in process memory. The embedded default, and a controllable
//! backend for tests: versions, deletion, injected failures and throttling, latency, and dynamic
//! secrets with leases (TTL, max TTL, renew, revoke), all on an injected clock.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::{SecretRef, Selector};
use crate::secret::{Lease, Metadata, Secret, Version};
use crate::source::{Capabilities, SecretSource, SourceEvent};
use crate::value::SecretValue;

/// Secrets in memory, addressed as `<name>://<path>[?version=<n>]`. Cloning shares the store.
///
/// Every `set` makes a new version (`"1"`, `"2"`, …). Paths registered with
/// [`lease`](Self::lease) are dynamic: each fetch issues a fresh JSON credential
/// (`{"username":…,"password":…}`) under a new lease that can be renewed up to its max TTL.
#[derive(Clone)]
pub struct MemorySource {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    calls: Calls,
    changes: broadcast::Sender<String>,
    /// Wakes hanging calls at `recover()`.
    answered: tokio::sync::Notify,
    watch: bool,
}

#[derive(Default)]
struct Calls {
    fetch: AtomicU64,
    fetch_many: AtomicU64,
    version: AtomicU64,
    renew: AtomicU64,
    revoke: AtomicU64,
}

/// How many times each method was called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryCalls {
    /// `fetch` calls.
    pub fetch: u64,
    /// `fetch_many` calls (one per batch).
    pub fetch_many: u64,
    /// `version` probes.
    pub version: u64,
    /// `renew` calls.
    pub renew: u64,
    /// `revoke` calls.
    pub revoke: u64,
}

#[derive(Default)]
struct State {
    secrets: HashMap<String, Stored>,
    dynamic: HashMap<String, LeaseSpec>,
    leases: HashMap<String, Issued>,
    issued: u64,
    failure: Option<Failure>,
    hanging: bool,
    latency: Duration,
}

struct Stored {
    versions: Vec<Secret>,
    deleted: bool,
}

#[derive(Clone, Copy)]
struct LeaseSpec {
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
}

struct Issued {
    path: String,
    expires_at: SystemTime,
    max_end: SystemTime,
    ttl: Duration,
    revoked: bool,
}

struct Failure {
    kind: ErrorKind,
    retry_after: Option<Duration>,
    /// `None`: until `recover()`.
    remaining: Option<u32>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store whose timestamps and leases follow `clock` (share the client's clock).
    pub fn with_clock(clock: impl Clock) -> Self {
        Self::build(Arc::new(clock), false)
    }

    /// Also offer a push feed of changes (`watch`), so handles see a `set` without polling.
    pub fn watchable(self) -> Self {
        let clock = self.inner.clock.clone();
        Self::build(clock, true)
    }

    fn build(clock: Arc<dyn Clock>, watch: bool) -> Self {
        let (changes, _) = broadcast::channel(1024);
        MemorySource {
            inner: Arc::new(Inner {
                clock,
                state: Mutex::new(State::default()),
                calls: Calls::default(),
                changes,
                answered: tokio::sync::Notify::new(),
                watch,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a new version of `path`; returns its version.
    pub fn set(&self, path: impl Into<String>, value: impl Into<SecretValue>) -> Version {
        self.set_with(path, value, |_| {})
    }

    /// Store a new version of `path` and adjust its metadata (expiry, next rotation).
    pub fn set_with(
        &self,
        path: impl Into<String>,
        value: impl Into<SecretValue>,
        adjust: impl FnOnce(&mut Metadata),
    ) -> Version {
        let path = path.into();
        let now = self.inner.clock.wall();
        let version = {
            let mut st = self.state();
            let stored = st.secrets.entry(path.clone()).or_insert(Stored {
                versions: Vec::new(),
                deleted: false,
            });
            stored.deleted = false;
            let version = Version::from((stored.versions.len() + 1).to_string());
            let mut meta = Metadata {
                version: Some(version.clone()),
                created_at: Some(now),
                ..Metadata::default()
            };
            adjust(&mut meta);
            meta.version = Some(version.clone());
            stored.versions.push(Secret::with_metadata(value, meta));
            version
        };
        let _ = self.inner.changes.send(path);
        version
    }

    /// Another name for [`set`](Self::set), for tests that read better with it.
    pub fn rotate(&self, path: impl Into<String>, value: impl Into<SecretValue>) -> Version {
        self.set(path, value)
    }

    /// Delete `path` (all versions); fetches answer `NotFound` until it is set again.
    pub fn delete(&self, path: &str) {
        if let Some(s) = self.state().secrets.get_mut(path) {
            s.deleted = true;
        }
        let _ = self.inner.changes.send(path.to_owned());
    }

    /// Make `path` dynamic: each fetch issues a new credential under a lease of `ttl`, renewable
    /// (if `renewable`) until `max_ttl` after issue.
    pub fn lease(
        &self,
        path: impl Into<String>,
        ttl: Duration,
        max_ttl: Duration,
        renewable: bool,
    ) {
        self.state().dynamic.insert(
            path.into(),
            LeaseSpec {
                ttl,
                max_ttl,
                renewable,
            },
        );
    }

    /// Whether lease `id` is still valid (issued, not revoked, not expired).
    pub fn lease_valid(&self, id: &str) -> bool {
        let now = self.inner.clock.wall();
        self.state()
            .leases
            .get(id)
            .is_some_and(|l| !l.revoked && now < l.expires_at)
    }

    /// When lease `id` ends (or ended), unless it was revoked or never issued.
    pub fn lease_end(&self, id: &str) -> Option<SystemTime> {
        self.state()
            .leases
            .get(id)
            .filter(|l| !l.revoked)
            .map(|l| l.expires_at)
    }

    /// Ids of leases currently valid.
    pub fn valid_leases(&self) -> Vec<String> {
        let now = self.inner.clock.wall();
        let mut ids: Vec<String> = self
            .state()
            .leases
            .iter()
            .filter(|(_, l)| !l.revoked && now < l.expires_at)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Every call fails with `kind` until [`recover`](Self::recover).
    pub fn fail(&self, kind: ErrorKind) {
        self.state().failure = Some(Failure {
            kind,
            retry_after: None,
            remaining: None,
        });
    }

    /// The next `n` calls fail with `kind`.
    pub fn fail_next(&self, n: u32, kind: ErrorKind) {
        self.state().failure = Some(Failure {
            kind,
            retry_after: None,
            remaining: Some(n),
        });
    }

    /// Every call is throttled (with this Retry-After hint) until [`recover`](Self::recover).
    pub fn throttle(&self, retry_after: Option<Duration>) {
        self.fail_with(ErrorKind::Throttled, retry_after);
    }

    /// Every call fails with `kind` and this `Retry-After` hint (a 503 that says when to come
    /// back) until [`recover`](Self::recover).
    pub fn fail_with(&self, kind: ErrorKind, retry_after: Option<Duration>) {
        self.state().failure = Some(Failure {
            kind,
            retry_after,
            remaining: None,
        });
    }

    /// Every call is accepted and never answered (a backend that hangs) until
    /// [`recover`](Self::recover); the client's request timeout ends each one.
    pub fn hang(&self) {
        self.state().hanging = true;
    }

    /// Stop failing, throttling and hanging (calls hanging now answer).
    pub fn recover(&self) {
        let mut st = self.state();
        st.failure = None;
        st.hanging = false;
        drop(st);
        self.inner.answered.notify_waiters();
    }

    /// Every call takes `latency` (slept on the source's clock) before answering.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// How often each method was called.
    pub fn calls(&self) -> MemoryCalls {
        let c = &self.inner.calls;
        MemoryCalls {
            fetch: c.fetch.load(Ordering::Relaxed),
            fetch_many: c.fetch_many.load(Ordering::Relaxed),
            version: c.version.load(Ordering::Relaxed),
            renew: c.renew.load(Ordering::Relaxed),
            revoke: c.revoke.load(Ordering::Relaxed),
        }
    }

    /// Count a call, wait out the latency, and apply an injected failure.
    async fn enter(&self, counter: &AtomicU64) -> Result<()> {
        counter.fetch_add(1, Ordering::Relaxed);
        let latency = self.state().latency;
        if !latency.is_zero() {
            let clock = &self.inner.clock;
            clock.sleep_until(clock.now() + latency).await;
        }
        loop {
            let answered = self.inner.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !self.state().hanging {
                break;
            }
            answered.await;
        }
        let mut st = self.state();
        let Some(failure) = st.failure.as_mut() else {
            return Ok(());
        };
        let e = Error::new(failure.kind.clone(), "injected failure");
        let e = match failure.retry_after {
            Some(d) => e.with_retry_after(d),
            None => e,
        };
        if let Some(n) = failure.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.failure = None;
            }
        }
        Err(e)
    }

    fn read(&self, r: &SecretRef) -> Result<Secret> {
        if !r.params().is_empty() {
            return Err(Error::unsupported("the memory source takes no parameters"));
        }
        let mut st = self.state();
        if let Some(spec) = st.dynamic.get(r.path()).copied() {
            if r.selector().is_some() {
                return Err(Error::unsupported("dynamic secrets have no versions"));
            }
            return Ok(self.issue(&mut st, r.path(), spec));
        }
        let stored = st
            .secrets
            .get(r.path())
            .filter(|s| !s.deleted)
            .ok_or_else(|| Error::not_found("no secret at this path"))?;
        match r.selector() {
            None => stored
                .versions
                .last()
                .cloned()
                .ok_or_else(|| Error::not_found("no secret at this path")),
            Some(Selector::Version(v)) => v
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| stored.versions.get(i))
                .cloned()
                .ok_or_else(|| Error::not_found(format!("no version `{v}`"))),
            Some(_) => Err(Error::unsupported("the memory source has no stages")),
        }
    }

    fn issue(&self, st: &mut State, path: &str, spec: LeaseSpec) -> Secret {
        st.issued += 1;
        let n = st.issued;
        let now = self.inner.clock.wall();
        let id = format!("{path}/{n}");
        st.leases.insert(
            id.clone(),
            Issued {
                path: path.to_owned(),
                expires_at: now + spec.ttl,
                max_end: now + spec.max_ttl,
                ttl: spec.ttl,
                revoked: false,
            },
        );
        let value = format!(
            r#"{{"username":"{path}-user-{n}","password":"pw-{n}-{:016x}"}}"#,
            fastrand::u64(..)
        );
        Secret::new(value)
            .versioned(id.as_str())
            .created_at(now)
            .leased(Lease::new(id, spec.ttl, spec.renewable, now))
    }
}

impl fmt::Debug for MemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("MemorySource")
            .field("secrets", &st.secrets.len())
            .field("dynamic", &st.dynamic.len())
            .field("leases", &st.leases.len())
            .finish()
    }
}

#[async_trait]
impl SecretSource for MemorySource {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            version_probe: true,
            batch: true,
            versions: true,
            binary: true,
            renew: true,
            revoke: true,
            watch: self.inner.watch,
            ..Capabilities::NONE
        }
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        self.enter(&self.inner.calls.fetch).await?;
        self.read(r)
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        if let Err(e) = self.enter(&self.inner.calls.fetch_many).await {
            return refs.iter().map(|_| Err(e.clone())).collect();
        }
        refs.iter().map(|r| self.read(r)).collect()
    }

    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        self.enter(&self.inner.calls.version).await?;
        let st = self.state();
        if st.dynamic.contains_key(r.path()) {
            return Ok(None);
        }
        let stored = st
            .secrets
            .get(r.path())
            .filter(|s| !s.deleted)
            .ok_or_else(|| Error::not_found("no secret at this path"))?;
        Ok(stored.versions.last().and_then(|s| s.version().cloned()))
    }

    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease> {
        self.enter(&self.inner.calls.renew).await?;
        let now = self.inner.clock.wall();
        let mut st = self.state();
        let spec_renewable = st
            .leases
            .get(&lease.id)
            .and_then(|l| st.dynamic.get(&l.path))
            .is_some_and(|s| s.renewable);
        let issued = st
            .leases
            .get_mut(&lease.id)
            .filter(|l| !l.revoked && now < l.expires_at)
            .ok_or_else(|| Error::not_found("lease expired or revoked"))?;
        if !spec_renewable {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "lease is not renewable",
            ));
        }
        let wanted = increment.unwrap_or(issued.ttl);
        let left = issued.max_end.duration_since(now).unwrap_or(Duration::ZERO);
        let ttl = wanted.min(left);
        issued.expires_at = now + ttl;
        Ok(Lease::new(lease.id.clone(), ttl, true, now))
    }

    async fn revoke(&self, lease: &Lease) -> Result<()> {
        self.enter(&self.inner.calls.revoke).await?;
        let mut st = self.state();
        let issued = st
            .leases
            .get_mut(&lease.id)
            .ok_or_else(|| Error::not_found("no such lease"))?;
        issued.revoked = true;
        Ok(())
    }

    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        if !self.inner.watch {
            return None;
        }
        let path = r.path().to_owned();
        let rx = self.inner.changes.subscribe();
        let stream = futures_util::stream::unfold(rx, move |mut rx| {
            let path = path.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(p) if p == path => {
                            return Some((Ok(SourceEvent::Changed { version: None }), rx));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Ok(SourceEvent::Resync), rx));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Some(stream.boxed())
    }

    async fn shutdown(&self) {}
}
