//! The task that follows a secret handle and keeps the pool's connect options on credentials
//! that work, and the pool hooks that retire connections opened with replaced ones.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use keyrack_core::{Clock, RotationEvent, SecretHandle, Version};
use sqlx::ConnectOptions;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::sync::{broadcast, oneshot};

use crate::credentials::{self, Applied, CredentialId};
use crate::error::{PoolError, PoolErrorKind};
use crate::events::PoolEvent;

/// A connection created up to this long after a swap may still have been opened with the
/// replaced credentials (it passed the user check just before the swap and got its creation
/// time just after): it is retired with the old ones, at the cost of one reconnect.
const SWAP_GRACE: Duration = Duration::from_millis(500);
/// Longest pause between two looks at the handle.
const MAX_NAP: Duration = Duration::from_secs(1);
/// Longest pause between two tries of credentials the database refused.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Longest lead before the expiry margin at which the pool asks for new credentials itself.
const MAX_REISSUE_LEAD: Duration = Duration::from_secs(30);

/// What the driver and the pool's hooks share.
pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    state: Mutex<State>,
    pub(crate) events: broadcast::Sender<PoolEvent>,
}

struct State {
    /// The user the pool's connect options log in as.
    user: String,
    /// When the options last changed: connections created before then are retired.
    swapped_at: Option<Instant>,
    /// The credentials in use passed their end with no usable replacement.
    expired: bool,
}

impl Shared {
    pub(crate) fn new(clock: Arc<dyn Clock>, user: String, capacity: usize) -> Arc<Self> {
        Arc::new(Shared {
            clock,
            state: Mutex::new(State {
                user,
                swapped_at: None,
                expired: false,
            }),
            events: broadcast::channel(capacity).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain values, consistent after any panic between two of its writes.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_expired(&self) -> bool {
        self.state().expired
    }

    /// Whether a pooled connection of this age may be handed out (again).
    fn keeps(&self, age: Duration) -> bool {
        let created = self.clock.now().checked_sub(age);
        let state = self.state();
        if state.expired {
            return false;
        }
        match (state.swapped_at, created) {
            (Some(swapped), Some(created)) => created >= swapped + SWAP_GRACE,
            _ => true,
        }
    }

    fn emit(&self, event: PoolEvent) {
        tracing::debug!(target: "keyrack_sqlx", %event, "pool event");
        let _ = self.events.send(event);
    }
}

/// `options` with the hooks that keep replaced credentials out of the pool. They replace any
/// `after_connect`, `before_acquire` or `after_release` set before.
pub(crate) fn hooked(options: PgPoolOptions, shared: &Arc<Shared>) -> PgPoolOptions {
    let on_connect = shared.clone();
    let on_acquire = shared.clone();
    let on_release = shared.clone();
    options
        .after_connect(move |conn: &mut PgConnection, _meta| {
            let shared = on_connect.clone();
            Box::pin(async move {
                // The pool reads its options when a connect starts; a swap during the connect
                // leaves a connection on the replaced user. Ask the server who we are.
                let user: String = sqlx::query_scalar("select current_user::text")
                    .fetch_one(&mut *conn)
                    .await?;
                if shared.state().user != user {
                    return Err(sqlx::Error::Protocol(
                        "connection opened with credentials replaced meanwhile; reconnecting"
                            .into(),
                    ));
                }
                Ok(())
            })
        })
        .before_acquire(move |_conn, meta: PoolConnectionMetadata| {
            let keep = on_acquire.keeps(meta.age);
            Box::pin(async move { Ok(keep) })
        })
        .after_release(move |_conn, meta: PoolConnectionMetadata| {
            let keep = on_release.keeps(meta.age);
            Box::pin(async move { Ok(keep) })
        })
}

/// Try credentials with one connection of their own, closed again.
pub(crate) async fn validate(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<(), PoolError> {
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            Ok(())
        }
        Ok(Err(e)) => Err(PoolError::from_sqlx(
            e,
            "the database did not accept a connection with the new credentials",
        )),
        Err(_) => Err(PoolError::new(
            PoolErrorKind::Unavailable,
            "the database did not answer a connection with the new credentials in time",
        )),
    }
}

/// What the driver knows of the credentials the pool connects with.
pub(crate) struct InUse {
    pub(crate) id: CredentialId,
    pub(crate) version: Option<Version>,
    pub(crate) ends: Option<SystemTime>,
    /// The lease's TTL when issued.
    pub(crate) ttl: Option<Duration>,
    /// The lease can no longer be extended (not renewable, or a renewal came back shorter
    /// than the TTL it was issued with: the max TTL): only a re-issue replaces it.
    pub(crate) capped: bool,
    /// The pool asked the handle for a re-issue of these credentials already.
    pub(crate) reissue_asked: bool,
}

impl InUse {
    pub(crate) fn of(applied: &Applied) -> Self {
        InUse {
            id: applied.id.clone(),
            version: applied.version.clone(),
            ends: applied.ends,
            ttl: applied.ttl,
            capped: !applied.renewable,
            reissue_asked: false,
        }
    }
}

struct Refusal {
    id: CredentialId,
    retry_at: Instant,
    backoff: Duration,
    attempts: u32,
}

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pool: PgPool,
    pub(crate) handle: SecretHandle,
    pub(crate) base: PgConnectOptions,
    pub(crate) in_use: InUse,
    pub(crate) margin: Duration,
    pub(crate) retry: Duration,
    pub(crate) connect_timeout: Duration,
    refusal: Option<Refusal>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        pool: PgPool,
        handle: SecretHandle,
        base: PgConnectOptions,
        in_use: InUse,
        margin: Duration,
        retry: Duration,
        connect_timeout: Duration,
    ) -> Self {
        Driver {
            shared,
            pool,
            handle,
            base,
            in_use,
            margin,
            retry,
            connect_timeout,
            refusal: None,
        }
    }

    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut events = self.handle.subscribe();
        let mut events_open = true;
        loop {
            self.reconcile().await;
            let wake = self.next_wake();
            tokio::select! {
                _ = &mut stop => break,
                event = events.recv(), if events_open => match event {
                    Some(RotationEvent::Rotated { old, old_lease_ends: Some(ends), .. })
                        if old == self.in_use.version && self.in_use.id != CredentialId::of(&self.handle.current()) =>
                    {
                        // The engine's word on when the credentials in use end (a renewal the
                        // driver did not see yet may have moved it).
                        self.in_use.ends = Some(ends);
                    }
                    Some(_) => {}
                    // The client was shut down: nothing renews or replaces the credentials
                    // any more; they are used until they end.
                    None => events_open = false,
                },
                () = self.shared.clock.sleep_until(wake) => {}
            }
        }
    }

    /// The expiry margin, at most an eighth of the lease's TTL. The client renews a lease
    /// when about a quarter of it is left (⅔ of the TTL plus a third of a 10-20 % grace), so a
    /// margin under that leaves the renewal time to arrive: with a quarter (this crate's first
    /// bound) a 3 s lease renewed ~150 ms late was given up although it was being extended.
    fn margin(&self) -> Duration {
        match self.in_use.ttl {
            Some(ttl) => self.margin.min(ttl / 8),
            None => self.margin,
        }
    }

    /// When to ask for new credentials if the client has not re-issued capped ones by then:
    /// a quarter of the TTL (at most 30 s) before the expiry margin. The client re-issues a
    /// capped lease ⅔ of the way through its last stretch, which leaves as little as ~⅓ of
    /// that stretch (0.5 s of a 3 s lease capped at 2 s) — less than the pool's margin; the
    /// pool then gave up the old credentials before their replacement arrived (the ~1 % of
    /// failed queries with 3 s leases). Asking earlier puts the replacement in place while
    /// the old credentials still have the margin plus this lead to run.
    fn reissue_at(&self) -> Option<SystemTime> {
        if !self.in_use.capped || self.in_use.reissue_asked {
            return None;
        }
        let (ends, ttl) = (self.in_use.ends?, self.in_use.ttl?);
        let before = self.margin() + (ttl / 4).min(MAX_REISSUE_LEAD);
        Some(ends.checked_sub(before).unwrap_or(ends))
    }

    fn next_wake(&self) -> Instant {
        let now = self.shared.clock.now();
        let mut wake = now + MAX_NAP;
        if let Some(r) = &self.refusal {
            wake = wake.min(r.retry_at);
        }
        let give_up = self
            .in_use
            .ends
            .map(|ends| ends.checked_sub(self.margin()).unwrap_or(ends));
        for at in [give_up, self.reissue_at()].into_iter().flatten() {
            let deadline = self.shared.clock.deadline_for(at);
            wake = wake.min(deadline.max(now + Duration::from_millis(10)));
        }
        wake
    }

    async fn reconcile(&mut self) {
        let (id, version, applied) = {
            let current = self.handle.current();
            let id = CredentialId::of(&current);
            if id == self.in_use.id {
                // Renewed (or nothing new): the same credentials last longer.
                self.in_use.ends = current.hard_expiry();
                if let (Some(lease), Some(issued)) = (current.lease(), self.in_use.ttl) {
                    // Backends answer whole seconds: more than 1 % short is the max TTL.
                    if !lease.renewable || lease.ttl < issued.saturating_sub(issued / 100) {
                        self.in_use.capped = true;
                    }
                }
                self.refusal = None;
                (id, None, None)
            } else if self
                .refusal
                .as_ref()
                .is_some_and(|r| r.id == id && self.shared.clock.now() < r.retry_at)
            {
                (id, None, None)
            } else {
                let version = current.version().cloned();
                let applied = credentials::apply(&self.base, &current);
                (id, version, Some(applied))
            }
        };
        match applied {
            None => {}
            Some(Err(e)) => self.refuse(id, version, e),
            Some(Ok(new)) => match validate(&new.options, self.connect_timeout).await {
                Ok(()) => self.swap(new).await,
                Err(e) => self.refuse(id, version, e),
            },
        }
        self.ask_reissue();
        self.check_end().await;
    }

    /// Ask the client to re-issue capped credentials now, once, if it has not by
    /// [`reissue_at`](Self::reissue_at). The client joins this with its own maintenance.
    fn ask_reissue(&mut self) {
        let Some(at) = self.reissue_at() else {
            return;
        };
        if self.shared.clock.wall() < at {
            return;
        }
        self.in_use.reissue_asked = true;
        let handle = self.handle.clone();
        let version = self.in_use.version.clone();
        tracing::debug!(
            target: "keyrack_sqlx",
            "credentials in use cannot be renewed past their end; asking for new ones"
        );
        tokio::spawn(async move {
            let _ = handle.refresh_if_current(version.as_ref()).await;
        });
    }

    async fn swap(&mut self, new: Applied) {
        let old_ends = self.in_use.ends;
        let was_expired;
        {
            let mut state = self.shared.state();
            was_expired = state.expired;
            state.user = new.user.clone();
            state.expired = false;
        }
        self.in_use = InUse::of(&new);
        self.pool.set_connect_options(new.options);
        self.shared.state().swapped_at = Some(self.shared.clock.now());
        self.refusal = None;
        // Idle connections all predate the swap: close them now rather than on their next
        // acquire, so the replaced user's sessions end well before its lease does.
        let retired_idle = retire_idle(&self.pool).await;
        self.shared.emit(PoolEvent::Applied {
            version: self.in_use.version.clone(),
            retired_idle,
            replaced_lease_ends: old_ends,
            recovered: was_expired,
        });
    }

    fn refuse(&mut self, id: CredentialId, version: Option<Version>, error: PoolError) {
        let now = self.shared.clock.now();
        let (backoff, attempts) = match &self.refusal {
            Some(r) if r.id == id => ((r.backoff * 2).min(MAX_RETRY), r.attempts + 1),
            _ => (self.retry, 1),
        };
        // Credentials the database keeps refusing will not start working: ask the backend for
        // others (for a lease, a re-issue), once per retry.
        if attempts >= 2 && error.kind() == PoolErrorKind::Refused {
            let handle = self.handle.clone();
            let refused = version.clone();
            tokio::spawn(async move {
                let _ = handle.refresh_if_current(refused.as_ref()).await;
            });
        }
        self.refusal = Some(Refusal {
            id,
            retry_at: now + backoff,
            backoff,
            attempts,
        });
        self.shared.emit(PoolEvent::ReplacementFailed {
            version,
            error,
            attempt: attempts,
            in_use_until: self
                .in_use
                .ends
                .map(|e| e.checked_sub(self.margin()).unwrap_or(e)),
        });
    }

    async fn check_end(&mut self) {
        let Some(ends) = self.in_use.ends else {
            return;
        };
        let past_end = self.shared.clock.wall() + self.margin() >= ends;
        let newly = {
            let mut state = self.shared.state();
            let newly = past_end && !state.expired;
            if past_end {
                state.expired = true;
            } else if state.expired {
                // Renewed after all (the backend answered again in time for the same lease).
                state.expired = false;
                drop(state);
                self.shared.emit(PoolEvent::Applied {
                    version: self.in_use.version.clone(),
                    retired_idle: 0,
                    replaced_lease_ends: None,
                    recovered: true,
                });
            }
            newly
        };
        if newly {
            retire_idle(&self.pool).await;
            self.shared.emit(PoolEvent::Expired {
                version: self.in_use.version.clone(),
            });
        }
    }
}

/// Close every connection idle in the pool now; returns how many.
async fn retire_idle(pool: &PgPool) -> usize {
    let mut closed = 0;
    // Bounded: connections released meanwhile could otherwise keep it going.
    for _ in 0..pool.size() {
        let Some(conn) = pool.try_acquire() else {
            break;
        };
        let _ = conn.close().await;
        closed += 1;
    }
    closed
}
