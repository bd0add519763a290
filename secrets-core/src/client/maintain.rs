//! How an [`Entry`] is kept fresh: check, renew, re-issue and retry, one maintenance at a time.
//!
//! A maintenance is a task of its own that later triggers join (N callers of `refresh_now` make
//! one call). It decides what to do under the entry's schedule lock, asks the backend with no
//! lock held (each call bounded by the request timeout), and applies the answer under the lock
//! again, on the clock read when the answer arrived: a hanging backend delays nobody but the
//! maintenance itself, and deadlines computed after it are not computed for a moment in the past.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tracing::Instrument;

use crate::backoff::MAX_RETRY_AFTER;
use crate::error::{Error, ErrorKind, Result};
use crate::schedule;
use crate::secret::{Lease, Secret, Version};

use super::context::{MIN_GAP, later};
use super::entry::{Entry, Sched, Snapshot, Trigger, lock};
use super::events::RotationEvent;

/// However long an outage lasted, a value that is past its hard deadline (or missing) is retried
/// within this, jittered down to the source's retry floor.
const RECOVERY_RETRY: Duration = Duration::from_secs(5);

/// A maintenance under way.
pub(crate) struct Maintenance {
    trigger: Trigger,
    id: u64,
    result: Shared<BoxFuture<'static, Result<()>>>,
    task: tokio::task::AbortHandle,
}

impl Maintenance {
    pub(crate) fn abort(&self) {
        self.task.abort();
    }
}

/// What a maintenance asks the backend.
enum Action {
    /// Extend the current lease.
    Renew(Lease),
    /// Obtain a new lease (the current one is capped, refused, expired or unwanted).
    Reissue,
    /// Look whether the value changed: the version probe first (when there is a version to
    /// compare and the probe is allowed), a read if it moved.
    Check { probe: Option<Version> },
}

impl Action {
    /// The `operation` of its `refresh` span.
    fn name(&self) -> &'static str {
        match self {
            Action::Renew(_) => "renew",
            Action::Reissue => "reissue",
            Action::Check { .. } => "check",
        }
    }
}

/// What the backend answered.
enum Answer {
    Renewed(Lease),
    /// A new read; `reissue` when it was meant to replace the lease.
    Fetched {
        secret: Secret,
        reissue: bool,
    },
    /// The probe found the version already held.
    Same,
}

/// Clears the entry's maintenance slot when the maintenance ends, however it ends.
struct Landing {
    entry: Arc<Entry>,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut slot = lock(&self.entry.flight);
        if slot.as_ref().is_some_and(|m| m.id == self.id) {
            *slot = None;
        }
    }
}

impl Entry {
    /// Check, renew or re-issue if due (or now, when forced), joining a maintenance under way.
    /// Returns the error of a failed attempt; the last good value stays in place either way.
    pub(crate) async fn maintain(self: &Arc<Self>, trigger: Trigger) -> Result<()> {
        loop {
            if self.is_closed() {
                return if trigger.is_asked() {
                    Err(shut_down())
                } else {
                    Ok(())
                };
            }
            let (result, ours) = {
                let mut slot = lock(&self.flight);
                match slot.as_ref() {
                    // A forced refresh must not settle for a check that began before it was
                    // asked for (it may have read the value the caller just found stale).
                    Some(m) if !m.trigger.answers(trigger) => (m.result.clone(), false),
                    Some(m) => (m.result.clone(), true),
                    // Closed since the look above (see `revalidate`): start nothing.
                    None if self.is_closed() => continue,
                    None => {
                        let m = self.start(trigger);
                        let result = m.result.clone();
                        *slot = Some(m);
                        (result, true)
                    }
                }
            };
            let result = result.await;
            if ours {
                return result;
            }
        }
    }

    /// [`maintain`](Self::maintain), reporting `Expired` at the hard deadline if the maintenance
    /// is still waiting for the backend then.
    pub(crate) async fn maintain_watching_expiry(self: &Arc<Self>, trigger: Trigger) -> Result<()> {
        let maintenance = self.maintain(trigger);
        tokio::pin!(maintenance);
        loop {
            let expiry = self.snapshot().and_then(|s| self.unreported_expiry(&s));
            let Some(at) = expiry else {
                return maintenance.await;
            };
            tokio::select! {
                result = &mut maintenance => return result,
                () = self.ctx.clock.sleep_until(at) => self.note_expiry(),
            }
        }
    }

    fn start(self: &Arc<Self>, trigger: Trigger) -> Maintenance {
        let id = self
            .flight_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let landing = Landing {
            entry: self.clone(),
            id,
        };
        let task = tokio::spawn(async move {
            let landing = landing;
            landing.entry.run(trigger).await
        });
        let abort = task.abort_handle();
        let result = async move {
            match task.await {
                Ok(result) => result,
                Err(e) if e.is_cancelled() => Err(shut_down()),
                Err(_) => Err(Error::new(
                    ErrorKind::Backend,
                    "the source panicked during a refresh",
                )),
            }
        }
        .boxed()
        .shared();
        Maintenance {
            trigger,
            id,
            result,
            task: abort,
        }
    }

    /// Start a scheduled check in the background unless a maintenance is under way: a read that
    /// found the value due serves it at once and lets this bring the next one
    /// (stale-while-revalidate). Its outcome lands in the schedule (failures, backoff, events).
    pub(crate) fn revalidate(self: &Arc<Self>) {
        // Looked at under the slot's lock: shutdown closes the entry before it takes the lock to
        // stop what runs, so a maintenance is either seen and stopped or never started.
        let mut slot = lock(&self.flight);
        if slot.is_none() && !self.is_closed() {
            *slot = Some(self.start(Trigger::Due));
        }
    }

    /// Stop the maintenance under way (at shutdown) and wait until it has stopped, so nothing
    /// it obtained is applied afterwards.
    pub(crate) async fn stop_maintenance(&self) {
        let running = lock(&self.flight).as_ref().map(|m| {
            m.abort();
            m.result.clone()
        });
        if let Some(result) = running {
            let _ = result.await;
        }
    }

    async fn run(self: &Arc<Self>, trigger: Trigger) -> Result<()> {
        let clock = self.ctx.clock.clone();
        let now = clock.now();
        let (snap, action, wait, attempt) = {
            let mut guard = lock(&self.sched);
            let (Some(sched), Some(snap)) = (guard.as_mut(), self.snapshot()) else {
                return Ok(());
            };
            let leased = snap.secret.lease().is_some();
            if (trigger == Trigger::Due && now < snap.next_check)
                || (trigger == Trigger::FeedOpened && leased)
            {
                return Ok(());
            }
            let mut wait = None;
            if trigger.is_asked() && now < sched.not_before {
                if sched.not_before - now > MIN_GAP {
                    // The backend asked for quiet (Retry-After): a caller's refresh waits too.
                    return Err(self.annotate(Error::throttled(
                        Some(sched.not_before - now),
                        "the backend asked to wait before the next call",
                    )));
                }
                // Forced refreshes within a second of the last call share the next one.
                wait = Some(sched.not_before);
            }
            let action = self.decide(sched, &snap, now, trigger);
            (snap, action, wait, sched.failures.saturating_add(1))
        };
        // Source, what is done, the reference (never a value), which attempt since the last
        // success, and how it went; the backend calls made for it are `backend_call` spans
        // inside it.
        let span = tracing::debug_span!(target: "keyrack_core::refresh", "refresh",
            source = %self.source_name, operation = action.name(), secret = %self.key, attempt,
            outcome = tracing::field::Empty);
        let outcome = self
            .run_action(trigger, snap, action, wait)
            .instrument(span.clone())
            .await;
        let label =
            super::telemetry::outcome_label(outcome.as_ref().map(|_| ()).map_err(Error::kind));
        span.record("outcome", label);
        // Routine: lifecycle and failures are logged where they happen, at INFO and WARN.
        span.in_scope(|| tracing::debug!(target: "keyrack_core::refresh", "refresh finished"));
        outcome
    }

    async fn run_action(
        self: &Arc<Self>,
        trigger: Trigger,
        snap: Arc<Snapshot>,
        action: Action,
        wait: Option<Instant>,
    ) -> Result<()> {
        let clock = self.ctx.clock.clone();
        if let Some(at) = wait {
            clock.sleep_until(at).await;
        }
        // A lease is counted from the request, not the answer: the backend may have issued it
        // at any moment in between, so its end is never placed later than it can be.
        let sent = clock.now();
        let (answer, probe_refused, reissued) = self.ask(&action).await;
        let at = clock.now();
        let mut guard = lock(&self.sched);
        let Some(sched) = guard.as_mut() else {
            return Ok(());
        };
        if self.is_closed() {
            // Shut down while the backend answered: nobody will use a new lease.
            if let Ok(Answer::Fetched { secret, .. }) = &answer
                && let Some(lease) = secret.lease()
            {
                self.retire_lease(lease.clone(), at);
            }
            return Err(shut_down());
        }
        sched.not_before = later(at, MIN_GAP).max(sched.not_before);
        if probe_refused && !sched.probe_refused {
            sched.probe_refused = true;
            tracing::warn!(secret = %self.key, source = %self.source_name,
                "the version probe was refused (the credentials may read the value but not its \
                 metadata): checks read the value instead; grant metadata access to make them cheaper");
        }
        let scheduled = !trigger.is_asked();
        let result = match answer {
            Ok(Answer::Renewed(lease)) => self.apply_renewal(&snap.secret, lease, sched, sent, at),
            Ok(Answer::Fetched { secret, reissue }) => {
                self.apply_fetch(&snap.secret, secret, sched, sent, at, reissue)
            }
            Ok(Answer::Same) => {
                self.succeed(sched, at);
                self.set_state(self.plan(snap.secret.clone(), sched, at));
                Ok(())
            }
            Err(e) => Err(e),
        };
        let kind = result.as_ref().map(|_| ()).map_err(Error::kind);
        super::telemetry::lifecycle(super::telemetry::REFRESHES, &self.source_name, kind);
        if reissued {
            super::telemetry::lifecycle(super::telemetry::REISSUES, &self.source_name, kind);
        }
        match result {
            Ok(()) => {
                // A value can arrive already past its end (an answer slower than the lease):
                // say so now, not when the driver next wakes.
                if let Some(now) = self.snapshot().filter(|s| s.is_expired(at))
                    && !sched.expired
                {
                    sched.expired = true;
                    self.emit(RotationEvent::Expired {
                        secret: self.key.clone(),
                        at: self.ctx.clock.wall(),
                        version: now.secret.version().cloned(),
                    });
                }
                Ok(())
            }
            Err(e) => {
                let e = self.annotate(e);
                self.fail(&snap, sched, at, e.clone(), scheduled);
                Err(e)
            }
        }
    }

    fn decide(&self, sched: &Sched, snap: &Snapshot, now: Instant, trigger: Trigger) -> Action {
        match snap.secret.lease() {
            Some(lease)
                if self.caps().renew
                    && lease.renewable
                    && !sched.capped
                    && matches!(trigger, Trigger::Due | Trigger::Confirm)
                    && !snap.is_expired(now) =>
            {
                Action::Renew(lease.clone())
            }
            Some(_) => Action::Reissue,
            None => {
                let replace = self
                    .replace_at(&snap.secret, sched)
                    .is_some_and(|at| now >= at);
                // An issuing endpoint's probe reports the version it issued, which does not move
                // by itself: a value due for replacement is read straight away.
                let probe = (self.caps().version_probe && !sched.probe_refused && !replace)
                    .then(|| snap.secret.version().cloned())
                    .flatten();
                Action::Check { probe }
            }
        }
    }

    /// Ask the backend, with no lock held. The flags say the version probe was refused and a
    /// re-issue was asked for.
    async fn ask(&self, action: &Action) -> (Result<Answer>, bool, bool) {
        let fetch = |reissue: bool| async move {
            self.ctx
                .call(
                    &self.source_name,
                    "fetch",
                    &self.key,
                    self.source.fetch(&self.key),
                )
                .await
                .map(|secret| Answer::Fetched { secret, reissue })
        };
        match action {
            Action::Renew(lease) => {
                let increment = self.ctx.config.renew_increment;
                let renewal = self.source.renew(lease, increment);
                let renewed = self
                    .ctx
                    .call(&self.source_name, "renew", &self.key, renewal)
                    .await;
                super::telemetry::lifecycle(
                    super::telemetry::RENEWALS,
                    &self.source_name,
                    renewed.as_ref().map(|_| ()).map_err(Error::kind),
                );
                match renewed {
                    Ok(renewed) => (Ok(Answer::Renewed(renewed)), false, false),
                    Err(e) if !e.is_retryable() => {
                        // Revoked, expired or refused: a new lease is the only way forward.
                        tracing::info!(secret = %self.key, source = %self.source_name,
                            kind = ?e.kind(), "lease renewal refused; re-issuing");
                        (fetch(true).await, false, true)
                    }
                    Err(e) => (Err(e), false, false),
                }
            }
            Action::Reissue => (fetch(true).await, false, true),
            Action::Check { probe: None } => (fetch(false).await, false, false),
            Action::Check {
                probe: Some(current),
            } => match self
                .ctx
                .call(
                    &self.source_name,
                    "version",
                    &self.key,
                    self.source.version(&self.key),
                )
                .await
            {
                Ok(Some(v)) if v == *current => (Ok(Answer::Same), false, false),
                Ok(_) => (fetch(false).await, false, false),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::PermissionDenied | ErrorKind::Unsupported
                    ) =>
                {
                    (fetch(false).await, true, false)
                }
                Err(e) => (Err(e), false, false),
            },
        }
    }

    fn apply_renewal(
        &self,
        secret: &Secret,
        renewed: Lease,
        sched: &mut Sched,
        sent: Instant,
        now: Instant,
    ) -> Result<()> {
        let current = secret.lease().map_or(Duration::ZERO, |l| l.ttl);
        let increment = self.ctx.config.renew_increment;
        // A renewal grants the increment asked for (or the previous TTL): less means max TTL.
        let expected = increment.map_or(current, |i| i.min(current));
        if schedule::stopped_extending(expected, renewed.ttl) || renewed.ttl <= sched.grace {
            sched.capped = true;
            // The re-issue this calls for may follow at once: renew -> re-issue is progress,
            // not a loop (the re-issue itself waits its turn).
            sched.not_before = now;
        } else {
            sched.grace = schedule::grace(renewed.ttl, increment, self.ctx.unit());
        }
        sched.received = sent;
        let (ttl, lease_id) = (renewed.ttl, renewed.id.clone());
        self.publish(secret.clone().leased(renewed), sched, now, false)?;
        self.emit(RotationEvent::Renewed {
            secret: self.key.clone(),
            at: self.ctx.clock.wall(),
            lease_id,
            ttl,
        });
        Ok(())
    }

    fn apply_fetch(
        &self,
        current: &Secret,
        fresh: Secret,
        sched: &mut Sched,
        sent: Instant,
        now: Instant,
        reissue: bool,
    ) -> Result<()> {
        if let Some(lease) = fresh.lease() {
            if reissue && current.lease().is_some_and(|l| l.id == lease.id) {
                return Err(Error::new(
                    ErrorKind::Backend,
                    "the backend answered a re-issue with the lease it was to replace",
                ));
            }
            if lease.ttl < MIN_GAP {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!(
                        "the backend issued a lease of {:?}, too short to use",
                        lease.ttl
                    ),
                ));
            }
        }
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
            self.set_state(self.plan(current.clone(), sched, now));
            return Ok(());
        }
        let (old, new) = (current.version().cloned(), fresh.version().cloned());
        let replaced = current.lease().cloned();
        let old_lease_ends = replaced.as_ref().map(|l| l.expires_at());
        let new_lease_ttl = fresh.lease().map(|l| l.ttl);
        let prior = (sched.received, sched.grace, sched.capped);
        sched.received = sent;
        sched.grace = self.lease_grace(&fresh);
        sched.capped = false;
        if let Err(e) = self.publish(fresh, sched, now, true) {
            (sched.received, sched.grace, sched.capped) = prior;
            return Err(e);
        }
        if let Some(lease) = replaced {
            self.retire_lease(lease, now);
        }
        self.emit(RotationEvent::Rotated {
            secret: self.key.clone(),
            at: self.ctx.clock.wall(),
            old,
            new,
            old_lease_ends,
            new_lease_ttl,
        });
        Ok(())
    }

    pub(crate) fn succeed(&self, sched: &mut Sched, now: Instant) {
        sched.last_ok = now;
        sched.expired = false;
        sched.deleted = false;
        sched.streak = 0;
        sched.last_error = None;
        if sched.failures > 0 {
            let failures = std::mem::take(&mut sched.failures);
            self.emit(RotationEvent::Recovered {
                secret: self.key.clone(),
                at: self.ctx.clock.wall(),
                failures,
            });
        }
    }

    fn fail(
        &self,
        snap: &Snapshot,
        sched: &mut Sched,
        now: Instant,
        error: Error,
        scheduled: bool,
    ) {
        sched.failures += 1;
        sched.last_error = Some(error.kind().clone());
        let attempt = sched.streak;
        if scheduled {
            sched.streak = sched.streak.saturating_add(1);
        }
        let config = &self.ctx.config;
        let floor = self.caps().retry_floor;
        let mut delay = config
            .backoff
            .delay(attempt, &error, floor, self.ctx.unit());
        match snap.hard_deadline {
            // Still valid: close in on the deadline rather than sleep past it.
            Some(hard) if hard > now => delay = delay.min((hard - now) / 2).max(floor),
            // Past it, and the backend is only unreachable for now: try again soon, however
            // long the outage has lasted.
            Some(_) if error.is_retryable() => {
                let soon = floor.max(RECOVERY_RETRY.mul_f64(self.ctx.unit()));
                delay = delay.min(soon);
            }
            _ => {}
        }
        if let Some(hint) = error.retry_after() {
            let hint = hint.min(config.backoff.max.max(floor).max(MAX_RETRY_AFTER));
            delay = delay.max(hint);
            sched.not_before = later(now, hint).max(sched.not_before);
        }
        // A forced refresh that fails leaves a scheduled retry where it was, if that is sooner.
        let retry_at = later(now, delay);
        sched.retry_at = if !scheduled && sched.failures > 1 {
            sched.retry_at.min(retry_at).max(sched.not_before)
        } else {
            retry_at
        };
        if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::Deleted) && !sched.deleted {
            sched.deleted = true;
            self.emit(RotationEvent::Deleted {
                secret: self.key.clone(),
                at: self.ctx.clock.wall(),
                version: snap.secret.version().cloned(),
            });
        }
        let retry_in = sched.retry_at.saturating_duration_since(now);
        tracing::warn!(secret = %self.key, source = %self.source_name, error = %error,
            attempt = sched.failures, ?retry_in, "secret refresh failed");
        self.emit(RotationEvent::RefreshFailed {
            secret: self.key.clone(),
            at: self.ctx.clock.wall(),
            error,
            attempt: sched.failures,
            retry_in,
        });
        let next = self.plan(snap.secret.clone(), sched, now);
        if next.is_expired(now) && !sched.expired {
            sched.expired = true;
            self.emit(RotationEvent::Expired {
                secret: self.key.clone(),
                at: self.ctx.clock.wall(),
                version: snap.secret.version().cloned(),
            });
        }
        self.set_state(next);
    }
}

fn shut_down() -> Error {
    Error::new(ErrorKind::Shutdown, "the client was shut down")
}
