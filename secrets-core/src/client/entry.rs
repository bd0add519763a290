//! [`Entry`]: one secret as the backend knows it (a reference without `#field`), the unit that is
//! fetched once, checked, renewed, re-issued and published to its [`View`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Notify, broadcast};

use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::{Lease, Secret};
use crate::source::{Capabilities, SecretSource};

use super::context::Ctx;
use super::events::RotationEvent;
use super::view::View;
use crate::schedule;

/// Below this much time left before a value's expiry, no further check is scheduled for it.
const MIN_EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What readers see of an entry: the value and when it must next be looked at.
pub(crate) struct Snapshot {
    pub(crate) secret: Secret,
    /// When the value is due for a check, renewal, re-issue or retry.
    pub(crate) next_check: Instant,
    /// After this the value must not be served as current (lease end, expiry, max staleness).
    pub(crate) hard_deadline: Option<Instant>,
    /// When a replaced lease is due for revocation.
    pub(crate) next_revoke: Option<Instant>,
}

impl Snapshot {
    pub(crate) fn wake_at(&self) -> Instant {
        match self.next_revoke {
            Some(r) => r.min(self.next_check),
            None => self.next_check,
        }
    }

    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.hard_deadline.is_some_and(|h| now >= h)
    }
}

/// Bookkeeping of the maintenance state machine; only touched while its lock is held.
struct Sched {
    failures: u32,
    last_ok: Instant,
    /// When the current lease was received or last renewed.
    received: Instant,
    grace: Duration,
    /// Renewal stopped extending (max TTL): re-issue at the next deadline.
    capped: bool,
    expired: bool,
    deleted: bool,
    /// When to retry; meaningful while `failures > 0`.
    retry_at: Instant,
    /// Replaced leases waiting for revocation. Boxed: one pointer instead of a `Vec`'s three on
    /// every cached secret, for a list that is almost always empty.
    #[allow(clippy::box_collection)]
    revokes: Option<Box<Vec<(Instant, Lease)>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The snapshot's deadline passed.
    Due,
    /// A caller or a push feed asked for a check now (a leased secret is re-issued).
    Forced,
    /// A push feed just opened: look whether an unleased value changed before it did. A lease
    /// is left alone (its own schedule covers it).
    FeedOpened,
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
    pub(crate) caps: Capabilities,
    pub(crate) ctx: Arc<Ctx>,
    state: ArcSwapOption<Snapshot>,
    /// `min(next_check, hard deadline)` of the current snapshot, in nanoseconds after the
    /// client's epoch: the hit path's freshness test without loading the snapshot.
    fresh_until: AtomicU64,
    sched: tokio::sync::Mutex<Option<Sched>>,
    views: Mutex<Vec<Weak<View>>>,
    driver: Mutex<DriverSlot>,
    /// Made on first subscription: most cached secrets never have a subscriber.
    events: OnceLock<broadcast::Sender<RotationEvent>>,
    /// Shut down: no more maintenance; `changed()` waiters are told.
    closed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    pub(crate) fn new(
        key: SecretRef,
        source_name: Arc<str>,
        source: Arc<dyn SecretSource>,
        ctx: Arc<Ctx>,
    ) -> Self {
        let caps = source.capabilities();
        Entry {
            key,
            source_name,
            source,
            caps,
            ctx,
            state: ArcSwapOption::empty(),
            fresh_until: AtomicU64::new(0),
            sched: tokio::sync::Mutex::new(None),
            views: Mutex::new(Vec::new()),
            driver: Mutex::new(DriverSlot::default()),
            events: OnceLock::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current snapshot (the entry is loaded before any view of it exists).
    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.state.load_full()
    }

    fn annotate(&self, e: Error) -> Error {
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

    pub(crate) fn is_loaded(&self) -> bool {
        self.state.load().is_some()
    }

    /// Fetch and install the first value (the client makes sure only one caller does).
    pub(crate) async fn load(&self) -> Result<()> {
        if self.is_loaded() {
            return Ok(());
        }
        let secret = self
            .source
            .fetch(&self.key)
            .await
            .map_err(|e| self.annotate(e))?;
        self.install_first(secret).await;
        Ok(())
    }

    /// Install the first value (from a fetch or a batch); no-op if one is in place.
    pub(crate) async fn install_first(&self, secret: Secret) {
        let now = self.ctx.clock.now();
        let mut guard = self.sched.lock().await;
        if guard.is_some() {
            return;
        }
        let sched = guard.insert(Sched {
            failures: 0,
            last_ok: now,
            received: now,
            grace: self.lease_grace(&secret),
            capped: false,
            expired: false,
            deleted: false,
            retry_at: now,
            revokes: None,
        });
        let snap = self.plan(secret, sched, now);
        self.set_state(snap);
    }

    fn set_state(&self, snap: Snapshot) {
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

    fn lease_grace(&self, secret: &Secret) -> Duration {
        secret.lease().map_or(Duration::ZERO, |l| {
            schedule::grace(l.ttl, self.ctx.config.renew_increment, self.ctx.unit())
        })
    }

    fn plan(&self, secret: Secret, sched: &Sched, now: Instant) -> Snapshot {
        let clock = &self.ctx.clock;
        let config = &self.ctx.config;
        let meta = secret.metadata();
        let mut hard = meta.lease.as_ref().map(|l| sched.received + l.ttl);
        if let Some(exp) = meta.expires_at {
            let d = clock.deadline_for(exp);
            hard = Some(hard.map_or(d, |h| h.min(d)));
        }
        if let Some(max) = config.max_staleness {
            let d = sched.last_ok + max;
            hard = Some(hard.map_or(d, |h| h.min(d)));
        }
        let next_check = match sched.failures {
            0 => {
                let interval = config.interval_for(&self.key);
                let mut next = match &meta.lease {
                    // Less left than the grace: replace it now rather than after it ends.
                    Some(l) if sched.capped && l.ttl <= sched.grace => now,
                    Some(l) => sched.received + schedule::lease_delay(l.ttl, sched.grace),
                    None => {
                        sched.last_ok
                            + schedule::check_delay(interval, config.jitter, self.ctx.unit())
                    }
                };
                if let Some(at) = self.replace_at(&secret, sched).filter(|at| *at > now) {
                    next = next.min(at);
                }
                if let Some(rotation) = meta.next_rotation {
                    let at = clock.deadline_for(rotation);
                    if at > now {
                        let spread = interval.mul_f64(config.jitter).min(Duration::from_secs(60));
                        next = next.min(at + spread.mul_f64(self.ctx.unit()));
                    }
                }
                next
            }
            _ => sched.retry_at,
        };
        Snapshot {
            secret,
            next_check,
            hard_deadline: hard,
            next_revoke: sched
                .revokes
                .iter()
                .flat_map(|r| r.iter())
                .map(|(at, _)| *at)
                .min(),
        }
    }

    /// Events of this secret.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.events
            .get_or_init(|| broadcast::channel(self.ctx.config.event_capacity.max(1)).0)
            .subscribe()
    }

    fn emit(&self, ev: RotationEvent) {
        tracing::debug!(target: "keyrack_core::events", event = %ev, "secret event");
        if let Some(events) = self.events.get() {
            let _ = events.send(ev.clone());
        }
        let _ = self.ctx.events.send(ev);
    }

    /// Check, renew or re-issue if due (or now, when forced). Returns the error of a failed
    /// attempt; the last good value stays in place either way.
    pub(crate) async fn maintain(&self, trigger: Trigger) -> Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        let mut guard = self.sched.lock().await;
        let Some(sched) = guard.as_mut() else {
            return Ok(());
        };
        let Some(snap) = self.snapshot() else {
            return Ok(());
        };
        let now = self.ctx.clock.now();
        self.revoke_due(sched, now).await;
        let leased = snap.secret.lease().is_some();
        if (trigger == Trigger::Due && now < snap.next_check)
            || (trigger == Trigger::FeedOpened && leased)
        {
            self.store(snap.secret.clone(), sched, now);
            return Ok(());
        }
        let result = match snap.secret.lease() {
            Some(lease)
                if self.caps.renew
                    && lease.renewable
                    && !sched.capped
                    && trigger == Trigger::Due
                    && !snap.is_expired(now) =>
            {
                match self.renew(&snap.secret, lease, sched, now).await {
                    Err(e) if !e.is_retryable() => {
                        // Revoked, expired or refused: a new lease is the only way forward.
                        tracing::debug!(secret = %self.key, error = %e, "renewal refused; re-issuing");
                        self.fetch(&snap.secret, sched, now, true).await
                    }
                    other => other,
                }
            }
            Some(_) => self.fetch(&snap.secret, sched, now, true).await,
            None => self.check(&snap.secret, sched, now).await,
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self.annotate(e);
                self.fail(&snap, sched, now, e.clone());
                Err(e)
            }
        }
    }

    async fn renew(
        &self,
        secret: &Secret,
        lease: &Lease,
        sched: &mut Sched,
        now: Instant,
    ) -> Result<()> {
        let increment = self.ctx.config.renew_increment;
        let renewed = self.source.renew(lease, increment).await?;
        // A renewal grants the increment asked for (or the previous TTL): less means max TTL.
        let expected = increment.map_or(lease.ttl, |i| i.min(lease.ttl));
        if schedule::stopped_extending(expected, renewed.ttl) || renewed.ttl <= sched.grace {
            sched.capped = true;
        } else {
            sched.grace = schedule::grace(renewed.ttl, increment, self.ctx.unit());
        }
        sched.received = now;
        let ttl = renewed.ttl;
        let lease_id = renewed.id.clone();
        self.publish(secret.with_lease(renewed), sched, now, false)?;
        self.emit(RotationEvent::Renewed {
            secret: self.key.clone(),
            lease_id,
            ttl,
        });
        Ok(())
    }

    /// When a value with its own expiry should be replaced: ⅔ of the way from its receipt to its
    /// expiry (a certificate's not-after, Azure's `exp`).
    /// When a value with an expiry is due for a check: ⅔ of the way from the last successful
    /// check (or its arrival) to the expiry. A check that finds the same expiry moves the next one
    /// ⅔ through what is left, so an expiry the backend extends late is still seen; under a second
    /// left, the value is let expire.
    fn replace_at(&self, secret: &Secret, sched: &Sched) -> Option<Instant> {
        let end = self.ctx.clock.deadline_for(secret.metadata().expires_at?);
        let from = sched.last_ok.max(sched.received);
        let left = end.saturating_duration_since(from);
        (left >= MIN_EXPIRY_CHECK).then(|| from + schedule::expiry_delay(left))
    }

    /// Routine check of an unleased secret: the cheap version probe first, a read only if it moved
    /// — or a read straight away once a value with an expiry is due for replacement (an issuing
    /// endpoint's probe reports the version it issued, which does not move by itself).
    async fn check(&self, current: &Secret, sched: &mut Sched, now: Instant) -> Result<()> {
        let replace = self.replace_at(current, sched).is_some_and(|at| now >= at);
        if self.caps.version_probe
            && !replace
            && let Some(cur) = current.version()
        {
            let probed = self.source.version(&self.key).await?;
            if probed.as_ref() == Some(cur) {
                self.succeed(sched, now);
                self.store(current.clone(), sched, now);
                return Ok(());
            }
        }
        self.fetch(current, sched, now, false).await
    }

    async fn fetch(
        &self,
        current: &Secret,
        sched: &mut Sched,
        now: Instant,
        reissue: bool,
    ) -> Result<()> {
        let fresh = self.source.fetch(&self.key).await?;
        let changed = match (current.version(), fresh.version()) {
            (Some(a), Some(b)) if a != b => true,
            _ if reissue => current.lease().map(|l| &l.id) != fresh.lease().map(|l| &l.id),
            (Some(_), Some(_)) => false,
            _ => !current.value().same_bytes(fresh.value()),
        };
        if !changed {
            let moved = current.metadata().expires_at != fresh.metadata().expires_at
                || current.metadata().next_rotation != fresh.metadata().next_rotation;
            if moved {
                // Same value, new schedule (an extended expiry, a rescheduled rotation): keep
                // the schedule the backend gives now, quietly (no `Rotated`, no `changed()`).
                return self.publish(fresh, sched, now, false);
            }
            self.succeed(sched, now);
            self.store(current.clone(), sched, now);
            return Ok(());
        }
        let (old, new) = (current.version().cloned(), fresh.version().cloned());
        let replaced = current.lease().cloned();
        let prior = (sched.received, sched.grace, sched.capped);
        sched.received = now;
        sched.grace = self.lease_grace(&fresh);
        sched.capped = false;
        if let Err(e) = self.publish(fresh, sched, now, true) {
            (sched.received, sched.grace, sched.capped) = prior;
            return Err(e);
        }
        if let (Some(lease), Some(after)) = (replaced, self.ctx.config.revoke_replaced_after)
            && self.caps.revoke
        {
            sched
                .revokes
                .get_or_insert_default()
                .push((now + after, lease));
            self.store(self.current_secret(), sched, now);
        }
        self.emit(RotationEvent::Rotated {
            secret: self.key.clone(),
            old,
            new,
        });
        Ok(())
    }

    fn current_secret(&self) -> Secret {
        self.state
            .load()
            .as_ref()
            .map(|s| s.secret.clone())
            .unwrap_or_else(|| Secret::new(Vec::new()))
    }

    fn succeed(&self, sched: &mut Sched, now: Instant) {
        sched.last_ok = now;
        sched.expired = false;
        sched.deleted = false;
        if sched.failures > 0 {
            let failures = std::mem::take(&mut sched.failures);
            self.emit(RotationEvent::Recovered {
                secret: self.key.clone(),
                failures,
            });
        }
    }

    fn fail(&self, snap: &Snapshot, sched: &mut Sched, now: Instant, error: Error) {
        sched.failures += 1;
        let mut delay = self
            .ctx
            .config
            .backoff
            .delay(sched.failures - 1, &error, self.ctx.unit());
        // Try once more right at the hard deadline rather than sleeping past it.
        if let Some(hard) = snap.hard_deadline.filter(|h| *h > now) {
            delay = delay.min(hard - now);
        }
        sched.retry_at = now + delay;
        if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::Deleted) && !sched.deleted {
            sched.deleted = true;
            self.emit(RotationEvent::Deleted {
                secret: self.key.clone(),
                version: snap.secret.version().cloned(),
            });
        }
        tracing::warn!(secret = %self.key, source = %self.source_name, error = %error,
            attempt = sched.failures, retry_in = ?delay, "secret refresh failed");
        self.emit(RotationEvent::RefreshFailed {
            secret: self.key.clone(),
            error,
            attempt: sched.failures,
            retry_in: delay,
        });
        let next = self.plan(snap.secret.clone(), sched, now);
        if next.is_expired(now) && !sched.expired {
            sched.expired = true;
            self.emit(RotationEvent::Expired {
                secret: self.key.clone(),
                version: snap.secret.version().cloned(),
            });
        }
        self.set_state(next);
    }

    fn store(&self, secret: Secret, sched: &Sched, now: Instant) {
        self.set_state(self.plan(secret, sched, now));
    }

    /// Install a new value in the entry and every view of it, and count the attempt a success.
    /// Fails (changing nothing, counting nothing) if a view that a live handle depends on cannot
    /// select its field from the new value. Views are written before the entry's snapshot, so a
    /// hit never pairs new freshness with an old value.
    fn publish(
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
        self.store(secret, sched, now);
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
        views.push(Arc::downgrade(&view));
        Ok(view)
    }

    async fn revoke_due(&self, sched: &mut Sched, now: Instant) {
        let Some(revokes) = sched.revokes.take() else {
            return;
        };
        let (due, later): (Vec<_>, Vec<_>) = (*revokes).into_iter().partition(|(at, _)| *at <= now);
        if !later.is_empty() {
            sched.revokes = Some(Box::new(later));
        }
        for (_, lease) in due {
            self.revoke_lease(&lease).await;
        }
    }

    async fn revoke_lease(&self, lease: &Lease) {
        if let Err(e) = self.source.revoke(lease).await {
            tracing::warn!(secret = %self.key, lease_id = %lease.id, error = %e, "lease revocation failed");
        }
    }

    /// Stop the driver and, if asked, revoke the current and any replaced lease.
    pub(crate) async fn shut_down(&self, revoke: bool) {
        if let Some(task) = lock(&self.driver).task.take() {
            task.abort();
        }
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        for view in lock(&self.views).iter().filter_map(Weak::upgrade) {
            view.changed.notify_waiters();
        }
        if !(revoke && self.caps.revoke) {
            return;
        }
        let mut guard = self.sched.lock().await;
        if let Some(sched) = guard.as_mut() {
            for (_, lease) in sched.revokes.take().into_iter().flat_map(|r| *r) {
                self.revoke_lease(&lease).await;
            }
        }
        if let Some(lease) = self.snapshot().and_then(|s| s.secret.lease().cloned()) {
            self.revoke_lease(&lease).await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Tell the driver (if any) that the deadlines moved.
    pub(crate) fn replan(&self) {
        if let Some(replan) = &lock(&self.driver).replan {
            replan.notify_one();
        }
    }

    pub(crate) fn has_driver(&self) -> bool {
        lock(&self.driver).task.is_some()
    }

    /// A handle starts watching: the first one starts the driver.
    pub(crate) fn acquire(self: &Arc<Self>) {
        let mut slot = lock(&self.driver);
        slot.handles += 1;
        if slot.task.is_none() && !self.is_closed() {
            // The feed is opened before the handle is returned, so a change made right after
            // `handle()` returns is not missed while the task starts.
            let feed = super::driver::open_feed(self);
            let replan = Arc::new(Notify::new());
            slot.replan = Some(replan.clone());
            let entry = self.clone();
            slot.task =
                Some(tokio::spawn(super::driver::drive(entry, feed, replan)).abort_handle());
        }
    }

    /// A handle stopped watching: the last one stops the driver.
    pub(crate) fn release(&self) {
        let mut slot = lock(&self.driver);
        slot.handles = slot.handles.saturating_sub(1);
        if slot.handles == 0
            && let Some(task) = slot.task.take()
        {
            task.abort();
            slot.replan = None;
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
