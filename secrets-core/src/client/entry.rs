//! [`Entry`]: one secret as the backend knows it (a reference without `#field`), the unit that is
//! fetched once, checked, renewed, re-issued and published to its [`View`]s. How it is maintained
//! lives in `maintain.rs`; this file holds its state, its schedule and its views.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, broadcast};

use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::schedule;
use crate::secret::{Lease, Secret};
use crate::source::{Capabilities, SecretSource};

use super::context::{Ctx, later};
use super::events::RotationEvent;
use super::maintain::Maintenance;
use super::view::View;

/// Below this much time left before a value's expiry, no further check is scheduled for it.
const MIN_EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What readers see of an entry: the value and when it must next be looked at.
pub(crate) struct Snapshot {
    pub(crate) secret: Secret,
    /// When the value is due for a check, renewal, re-issue or retry.
    pub(crate) next_check: Instant,
    /// After this the value must not be served as current (lease end, expiry, max staleness).
    pub(crate) hard_deadline: Option<Instant>,
}

impl Snapshot {
    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.hard_deadline.is_some_and(|h| now >= h)
    }
}

/// Bookkeeping of the maintenance state machine; only touched while its (synchronous) lock is
/// held, never across a backend call.
pub(crate) struct Sched {
    /// Consecutive failed attempts (what events report).
    pub(crate) failures: u32,
    /// Consecutive failed scheduled attempts: the backoff's exponent. Forced refreshes that fail
    /// do not grow it, so a caller's retries cannot push the next scheduled try further out.
    pub(crate) streak: u32,
    pub(crate) last_ok: Instant,
    /// When the current lease was received or last renewed.
    pub(crate) received: Instant,
    pub(crate) grace: Duration,
    /// Renewal stopped extending (max TTL): re-issue at the next deadline.
    pub(crate) capped: bool,
    pub(crate) expired: bool,
    pub(crate) deleted: bool,
    /// When to retry; meaningful while `failures > 0`.
    pub(crate) retry_at: Instant,
    /// No call before this: [`MIN_GAP`](super::context::MIN_GAP) after the last answer, or
    /// later when the backend asked for it (`Retry-After`).
    pub(crate) not_before: Instant,
    /// The version probe was refused (a policy without metadata access): checks read the value.
    pub(crate) probe_refused: bool,
    /// The kind of the last failure (while `failures > 0`).
    pub(crate) last_error: Option<ErrorKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The snapshot's deadline passed.
    Due,
    /// A caller or a push feed asked for a check now (a leased secret is re-issued).
    Forced,
    /// A read that must reach the backend: a check now, as `Forced`, but a renewable lease is
    /// renewed (which proves it alive) rather than re-issued.
    Confirm,
    /// A push feed just opened: look whether an unleased value changed before it did. A lease
    /// is left alone (its own schedule covers it).
    FeedOpened,
}

impl Trigger {
    /// A caller's check now (not a schedule's): it does not settle for a scheduled check under
    /// way (it may have read the value the caller just found stale; it may join another
    /// caller's check under way), it waits out the backend's last-answer gap, and its failure
    /// does not grow the backoff.
    pub(crate) fn is_asked(self) -> bool {
        matches!(self, Trigger::Forced | Trigger::Confirm)
    }

    /// Whether a maintenance started for `self` answers a caller who asked for `wanted`.
    pub(crate) fn answers(self, wanted: Trigger) -> bool {
        match wanted {
            Trigger::Forced => self == Trigger::Forced,
            Trigger::Confirm => self.is_asked(),
            Trigger::Due | Trigger::FeedOpened => true,
        }
    }
}

#[derive(Default)]
struct DriverSlot {
    handles: usize,
    task: Option<tokio::task::AbortHandle>,
    /// Wakes the driver to re-plan after a forced check.
    replan: Option<Arc<Notify>>,
}

pub(crate) struct Entry {
    pub(crate) key: SecretRef,
    pub(crate) source_name: Arc<str>,
    pub(crate) source: Arc<dyn SecretSource>,
    pub(crate) ctx: Arc<Ctx>,
    state: ArcSwapOption<Snapshot>,
    /// `min(next_check, hard deadline)` of the current snapshot, in nanoseconds after the
    /// client's epoch: the hit path's freshness test without loading the snapshot.
    fresh_until: AtomicU64,
    pub(crate) sched: Mutex<Option<Sched>>,
    /// The maintenance under way, which later triggers join.
    pub(crate) flight: Mutex<Option<Maintenance>>,
    pub(crate) flight_ids: AtomicU64,
    views: Mutex<Vec<Weak<View>>>,
    driver: Mutex<DriverSlot>,
    /// The current value carries a lease: it is kept alive in the background even without a
    /// handle (renewed, re-issued after a re-login), as long as the entry is held at all.
    leased: AtomicBool,
    /// Counted by its source's refresh budget (an unleased value, checked by schedule).
    paced: AtomicBool,
    /// Made on first subscription: most cached secrets never have a subscriber.
    events: OnceLock<broadcast::Sender<RotationEvent>>,
    /// Shut down: no more maintenance; `changed()` waiters are told.
    closed: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    pub(crate) fn new(
        key: SecretRef,
        source_name: Arc<str>,
        source: Arc<dyn SecretSource>,
        ctx: Arc<Ctx>,
    ) -> Self {
        Entry {
            key,
            source_name,
            source,
            ctx,
            state: ArcSwapOption::empty(),
            fresh_until: AtomicU64::new(0),
            sched: Mutex::new(None),
            flight: Mutex::new(None),
            flight_ids: AtomicU64::new(0),
            views: Mutex::new(Vec::new()),
            driver: Mutex::new(DriverSlot::default()),
            leased: AtomicBool::new(false),
            paced: AtomicBool::new(false),
            events: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// The current snapshot (the entry is loaded before any view of it exists).
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.state.load_full()
    }

    pub(crate) fn annotate(&self, e: Error) -> Error {
        let e = if e.reference().is_none() {
            e.with_ref(&self.key)
        } else {
            e
        };
        if e.source_name().is_none() {
            e.with_source_name(&*self.source_name)
        } else {
            e
        }
    }

    /// Whether the backend answered for the current value at or after `t` (a load, a check, a
    /// renewal or a re-issue; the answer's arrival counts, so a call sent just before `t` does).
    pub(crate) fn confirmed_since(&self, t: Instant) -> bool {
        lock(&self.sched)
            .as_ref()
            .is_some_and(|s| s.last_ok >= t && s.failures == 0)
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.state.load().is_some()
    }

    /// Fetch and install the first value (the client makes sure only one caller does).
    pub(crate) async fn load(self: &Arc<Self>) -> Result<()> {
        if self.is_loaded() {
            return Ok(());
        }
        let sent = self.ctx.clock.now();
        let secret = self
            .ctx
            .call(
                &self.source_name,
                "fetch",
                &self.key,
                self.source.fetch(&self.key),
            )
            .await
            .map_err(|e| self.annotate(e))?;
        self.install_first(secret, sent);
        Ok(())
    }

    /// Install the first value (from a fetch or a batch sent at `sent`); no-op if one is in
    /// place.
    pub(crate) fn install_first(self: &Arc<Self>, secret: Secret, sent: Instant) {
        let now = self.ctx.clock.now();
        let leased = secret.lease().is_some();
        {
            let mut guard = lock(&self.sched);
            if guard.is_some() {
                return;
            }
            let sched = guard.insert(Sched {
                failures: 0,
                streak: 0,
                last_ok: now,
                received: sent,
                grace: self.lease_grace(&secret),
                capped: false,
                expired: false,
                deleted: false,
                retry_at: now,
                not_before: now,
                probe_refused: false,
                last_error: None,
            });
            self.claim_lease(&secret);
            if !leased {
                // Counted by its source's refresh budget before its first check is planned.
                self.paced.store(true, Ordering::Release);
                self.ctx.paced(&self.source_name, &self.key, true);
            }
            let snap = self.plan(secret, sched, now);
            self.set_state(snap);
        }
        if leased {
            self.leased.store(true, Ordering::Release);
            self.ensure_driver();
        }
    }

    pub(crate) fn set_state(&self, snap: Snapshot) {
        let until = match snap.hard_deadline {
            Some(h) => h.min(snap.next_check),
            None => snap.next_check,
        };
        let nanos = until.saturating_duration_since(self.ctx.epoch).as_nanos();
        self.fresh_until
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
        self.state.store(Some(Arc::new(snap)));
    }

    /// Whether the value may be served without a look at the backend (the hit path).
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        let nanos = now.saturating_duration_since(self.ctx.epoch).as_nanos();
        u64::try_from(nanos).is_ok_and(|n| n < self.fresh_until.load(Ordering::Acquire))
    }

    pub(crate) fn lease_grace(&self, secret: &Secret) -> Duration {
        secret.lease().map_or(Duration::ZERO, |l| {
            schedule::grace(l.ttl, self.ctx.config.renew_increment, self.ctx.unit())
        })
    }

    /// The schedule of `secret` as of `now`: when it is next due and when it stops being
    /// servable. Nothing is due before `sched.not_before`.
    pub(crate) fn plan(&self, secret: Secret, sched: &Sched, now: Instant) -> Snapshot {
        let clock = &self.ctx.clock;
        let config = &self.ctx.config;
        let meta = secret.metadata();
        // A lease ends `ttl` after it was asked for, and never later than the end it states (a
        // caching proxy may answer with a lease issued long ago).
        let mut hard = meta
            .lease
            .as_ref()
            .map(|l| later(sched.received, l.ttl).min(clock.deadline_for(l.expires_at())));
        if let Some(exp) = meta.expires_at {
            let d = clock.deadline_for(exp);
            hard = Some(hard.map_or(d, |h| h.min(d)));
        }
        if let Some(max) = config.max_staleness {
            let d = later(sched.last_ok, max);
            hard = Some(hard.map_or(d, |h| h.min(d)));
        }
        let next_check = match sched.failures {
            0 => {
                let interval = self.ctx.check_interval(&self.source_name, &self.key);
                let mut next = match &meta.lease {
                    // A lease that stopped extending is replaced while the old one still has a
                    // useful overlap left (twice the grace, 20-40 % of a full TTL, or what
                    // is left if less): its holders (a pool draining connections) need that time.
                    Some(l) if sched.capped => {
                        later(sched.received, schedule::replace_delay(l.ttl, sched.grace))
                    }
                    Some(l) => later(sched.received, schedule::lease_delay(l.ttl, sched.grace)),
                    None => later(
                        sched.last_ok,
                        schedule::check_delay(interval, config.jitter, self.ctx.unit()),
                    ),
                };
                if let Some(at) = self.replace_at(&secret, sched).filter(|at| *at > now) {
                    next = next.min(at);
                }
                if let Some(rotation) = meta.next_rotation {
                    let at = clock.deadline_for(rotation);
                    if at > now {
                        let spread = interval.mul_f64(config.jitter).min(Duration::from_secs(60));
                        next = next.min(later(at, spread.mul_f64(self.ctx.unit())));
                    }
                }
                next
            }
            _ => sched.retry_at,
        };
        Snapshot {
            secret,
            next_check: next_check.max(sched.not_before),
            hard_deadline: hard,
        }
    }

    /// When a value with an expiry is due for a check: ⅔ of the way from the last successful
    /// check (or its arrival) to the expiry (a certificate's not-after, Azure's `exp`). A check
    /// that finds the same expiry moves the next one ⅔ through what is left, so an expiry the
    /// backend extends late is still seen; under a second left, the value is let expire.
    pub(crate) fn replace_at(&self, secret: &Secret, sched: &Sched) -> Option<Instant> {
        let end = self.ctx.clock.deadline_for(secret.metadata().expires_at?);
        let from = sched.last_ok.max(sched.received);
        let left = end.saturating_duration_since(from);
        (left >= MIN_EXPIRY_CHECK).then(|| from + schedule::expiry_delay(left))
    }

    /// Events of this secret.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.events
            .get_or_init(|| broadcast::channel(self.ctx.config.event_capacity.max(1)).0)
            .subscribe()
    }

    pub(crate) fn emit(&self, ev: RotationEvent) {
        // What an operator must see at INFO: lifecycle at INFO, trouble at WARN, routine
        // renewals and checks at DEBUG. The event's Display names the reference and versions,
        // never a value.
        match &ev {
            RotationEvent::Rotated { .. }
            | RotationEvent::Recovered { .. }
            | RotationEvent::Deleted { .. } => {
                tracing::info!(target: "keyrack_core::events", event = %ev, "secret event");
            }
            // RefreshFailed is logged at WARN where it happens, with its structured fields.
            RotationEvent::Expired { .. } => {
                tracing::warn!(target: "keyrack_core::events", event = %ev, "secret event");
            }
            _ => tracing::debug!(target: "keyrack_core::events", event = %ev, "secret event"),
        }
        super::telemetry::event(&ev);
        if let Some(events) = self.events.get() {
            let _ = events.send(ev.clone());
        }
        let _ = self.ctx.events.send(ev);
    }

    /// The hard deadline of `snap` if it has not been reported as passed yet.
    pub(crate) fn unreported_expiry(&self, snap: &Snapshot) -> Option<Instant> {
        let hard = snap.hard_deadline?;
        let guard = lock(&self.sched);
        guard.as_ref().filter(|s| !s.expired).map(|_| hard)
    }

    /// Report `Expired` if the value has passed its hard deadline and nobody has said so yet (a
    /// backend call may be hanging meanwhile: the deadline does not wait for its answer).
    pub(crate) fn note_expiry(&self) {
        let now = self.ctx.clock.now();
        let mut guard = lock(&self.sched);
        let (Some(sched), Some(snap)) = (guard.as_mut(), self.snapshot()) else {
            return;
        };
        if snap.is_expired(now) && !sched.expired {
            sched.expired = true;
            self.emit(RotationEvent::Expired {
                secret: self.key.clone(),
                at: self.ctx.clock.wall(),
                version: snap.secret.version().cloned(),
            });
        }
    }

    /// Install a new value in the entry and every view of it. Fails (changing nothing) if a view
    /// that a live handle depends on cannot select its field from the new value. Views are
    /// written before the entry's snapshot, so a hit never pairs new freshness with an old value.
    pub(crate) fn publish(
        &self,
        secret: Secret,
        sched: &mut Sched,
        now: Instant,
        changed: bool,
    ) -> Result<()> {
        let mut views = lock(&self.views);
        let mut updates = Vec::with_capacity(views.len());
        for view in views.iter().filter_map(Weak::upgrade) {
            match project(&secret, view.field()) {
                Ok(p) => updates.push((view, Some(p))),
                Err(e) if view.has_handles() => return Err(e),
                // Only cached: it stops serving, and the next read says why.
                Err(_) => updates.push((view, None)),
            }
        }
        self.succeed(sched, now);
        for (view, projected) in updates {
            match projected {
                Some(p) => view.set(p, changed),
                None => view.detach(),
            }
        }
        views.retain(|w| w.upgrade().is_some_and(|v| !v.is_detached()));
        drop(views);
        self.claim_lease(&secret);
        self.leased
            .store(secret.lease().is_some(), Ordering::Release);
        self.set_state(self.plan(secret, sched, now));
        Ok(())
    }

    /// Count a handle on `view`, unless the view was detached meanwhile (then the caller looks
    /// the reference up again). Under the views lock, so `publish` sees the handle.
    pub(crate) fn attach(&self, view: &View) -> bool {
        let _views = lock(&self.views);
        if view.is_detached() {
            return false;
        }
        view.add_handle();
        true
    }

    /// The view for `r` (this entry's reference, with or without a field), created projecting
    /// the current value if there is none.
    pub(crate) fn view(self: &Arc<Self>, r: &SecretRef) -> Result<Arc<View>> {
        let mut views = lock(&self.views);
        if let Some(v) = views
            .iter()
            .filter_map(Weak::upgrade)
            .find(|v| v.field() == r.field() && !v.is_detached())
        {
            return Ok(v);
        }
        let snap = self
            .snapshot()
            .ok_or_else(|| Error::new(ErrorKind::Backend, "secret not loaded"))?;
        let projected = project(&snap.secret, r.field()).map_err(|e| self.annotate(e))?;
        let view = Arc::new(View::new(self.clone(), r.clone(), projected));
        views.retain(|w| w.strong_count() > 0);
        // Most secrets have one view: room for exactly one (a Vec's first push reserves four).
        views.reserve_exact(1);
        views.push(Arc::downgrade(&view));
        Ok(view)
    }

    pub(crate) fn notify_views(&self) {
        for view in lock(&self.views).iter().filter_map(Weak::upgrade) {
            view.changed.notify_waiters();
        }
    }

    /// A lease this entry now serves is nobody's to revoke, even if an entry the cache let go
    /// handed the same id to the revoker before the backend gave it out again.
    fn claim_lease(&self, secret: &Secret) {
        if let Some(lease) = secret.lease() {
            self.ctx.revoker.keep(&self.source_name, &lease.id);
        }
    }

    /// Hand a lease nobody will use any more to the client's revoker, if the user asked for
    /// replaced leases to be revoked (after the overlap they configured).
    pub(crate) fn retire_lease(&self, lease: Lease, now: Instant) {
        if let Some(after) = self.ctx.config.revoke_replaced_after
            && self.caps().revoke
        {
            self.ctx.revoker.schedule(
                later(now, after),
                self.source.clone(),
                self.source_name.clone(),
                self.key.clone(),
                lease,
            );
        }
    }

    /// Stop the driver and any maintenance under way and, if asked, revoke the current lease.
    pub(crate) async fn shut_down(&self, revoke: bool) {
        {
            let mut slot = lock(&self.driver);
            // Closed under the driver lock: a handle cloned concurrently sees it and starts no
            // task.
            self.closed.store(true, Ordering::Release);
            if let Some(task) = slot.task.take() {
                task.abort();
            }
            slot.replan = None;
        }
        self.stop_maintenance().await;
        self.notify_views();
        if !(revoke && self.caps().revoke) {
            return;
        }
        let Some(lease) = self.snapshot().and_then(|s| s.secret.lease().cloned()) else {
            return;
        };
        let revoked = self
            .ctx
            .call(
                &self.source_name,
                "revoke",
                &self.key,
                self.source.revoke(&lease),
            )
            .await;
        super::telemetry::lifecycle(
            super::telemetry::REVOCATIONS,
            &self.source_name,
            revoked.as_ref().map(|_| ()).map_err(crate::Error::kind),
        );
        if let Err(e) = revoked {
            tracing::warn!(secret = %self.key, source = %self.source_name, lease_id = %lease.id,
                error = %e, "lease revocation at shutdown failed");
        }
    }

    /// What the source can do (asked each time: a field of every entry would cost 24 bytes
    /// per cached secret for what maintenance alone reads).
    pub(crate) fn caps(&self) -> Capabilities {
        self.source.capabilities()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Tell the driver (if any) that the deadlines moved.
    pub(crate) fn replan(&self) {
        if let Some(replan) = &lock(&self.driver).replan {
            replan.notify_one();
        }
    }

    /// Live handles on this entry.
    pub(crate) fn handle_count(&self) -> usize {
        lock(&self.driver).handles
    }

    pub(crate) fn has_driver(&self) -> bool {
        lock(&self.driver).task.is_some()
    }

    /// A handle starts watching: the first one starts the driver (unless a lease already did).
    pub(crate) fn acquire(self: &Arc<Self>) {
        lock(&self.driver).handles += 1;
        self.ensure_driver();
    }

    /// Start the driver if none runs and the entry is open. The feed is opened before this
    /// returns, so a change made right after `handle()` returns is not missed while the task
    /// starts.
    fn ensure_driver(self: &Arc<Self>) {
        let mut slot = lock(&self.driver);
        if slot.task.is_some() || self.is_closed() || self.ctx.is_closed() {
            return;
        }
        let feed = super::driver::open_feed(self);
        let replan = Arc::new(Notify::new());
        slot.replan = Some(replan.clone());
        let entry = Arc::downgrade(self);
        slot.task = Some(tokio::spawn(super::driver::drive(entry, feed, replan)).abort_handle());
    }

    /// A handle stopped watching: the last one stops the driver, unless a lease needs it.
    pub(crate) fn release(&self) {
        let mut slot = lock(&self.driver);
        slot.handles = slot.handles.saturating_sub(1);
        if slot.handles == 0
            && !self.leased.load(Ordering::Acquire)
            && let Some(task) = slot.task.take()
        {
            task.abort();
            slot.replan = None;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if *self.paced.get_mut() {
            self.ctx.paced(&self.source_name, &self.key, false);
        }
        // The driver holds only a weak reference: nobody holds the secret any more.
        if let Some(task) = lock(&self.driver).task.take() {
            task.abort();
        }
        if let Some(m) = lock(&self.flight).take() {
            m.abort();
        }
        if !self.is_closed()
            && let Some(lease) = self.snapshot().and_then(|s| s.secret.lease().cloned())
        {
            // Let go by the cache with no handle on it: the lease is nobody's any more.
            self.retire_lease(lease, self.ctx.clock.now());
        }
    }
}

/// The whole value, or one JSON member of it.
pub(crate) fn project(secret: &Secret, field: Option<&str>) -> Result<Secret> {
    match field {
        None => Ok(secret.clone()),
        Some(f) => secret.field(f),
    }
}
