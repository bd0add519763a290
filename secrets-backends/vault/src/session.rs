//! The source's own Vault token: obtained by login, renewed at about ⅔ of its TTL, and obtained
//! anew when renewal stops extending it (max TTL) or Vault says it is no longer valid.
//!
//! Leases die with the token that created them, so every new login bumps a generation that the
//! source's change feed reports: the client then re-issues the dynamic secrets it holds.
//!
//! At shutdown the token is revoked (`auth/token/revoke-self`, which revokes the leases issued
//! under it too) when [`TokenCleanup`] says so, within a bounded time: a pod that restarts leaves
//! neither token nor leases behind until their TTLs. A session dropped without shutdown makes
//! the same call as a detached task, if a Tokio runtime is still there to run it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use keyrack_core::backoff::MAX_RETRY_AFTER;
use keyrack_core::{Backoff, Clock, Error, ErrorKind, Result, SecretValue, schedule, telemetry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::api::Http;
use crate::auth::{Auth, Login};

/// The shortest wait before the keeper tries again, and between two of its calls: the Vault Go
/// client's `MinRetryWait` (1 s, `api.DefaultConfig`).
pub(crate) const RETRY_FLOOR: Duration = Duration::from_secs(1);

/// The keeper's waits after failures grow from the floor to a minute ("equal jitter": between
/// half and all of `initial·2ⁿ`, so a run of failures cannot stay at the floor by chance).
const KEEPER_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// A token found alive by `lookup-self` after a refusal is not looked up again for this long:
/// a 403 on a path the policy does not grant would otherwise cost a lookup every time.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(10);

struct TokenState {
    token: SecretValue,
    ttl: Option<Duration>,
    renewable: bool,
    obtained: Instant,
    grace: Duration,
    /// Renewal stopped extending the token: obtain a new one at the next deadline.
    capped: bool,
    generation: u64,
}

pub(crate) struct Session {
    pub(crate) http: Http,
    auth: Auth,
    clock: Arc<dyn Clock>,
    current: ArcSwapOption<TokenState>,
    /// One login at a time; it holds the last login's failure, if it failed.
    login_lock: tokio::sync::Mutex<Option<Error>>,
    /// Logins tried so far.
    logins: AtomicU64,
    /// Taken for a store of the current token, so a renewal is stored only over its own
    /// generation (a login of a newer one may land while the renewal is under way).
    store_lock: Mutex<()>,
    generation: watch::Sender<u64>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// Shut down: the keeper is stopped and never started again.
    closed: AtomicBool,
    /// The last `lookup-self` after a refusal: the generation asked about, and when.
    looked_up: Mutex<Option<(u64, Instant)>>,
    cleanup: TokenCleanup,
    /// The token was revoked at shutdown: no call may log in again (its token would be left
    /// behind).
    revoked: AtomicBool,
}

/// What happens to the source's own token at shutdown.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenCleanup {
    /// Revoke it (`auth/token/revoke-self`).
    pub(crate) revoke: bool,
    /// The longest the revocation may take: a Vault that does not answer does not hold up the
    /// shutdown longer than this.
    pub(crate) timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain data: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.keeper).take() {
            task.abort();
        }
        // Dropped without shutdown: revoke as a detached task, best effort. It runs only if the
        // runtime lives on (a process that exits right after may never send it); the token and
        // its leases then last until their TTLs.
        if !self.cleanup.revoke || self.is_closed() {
            return;
        }
        let Some(state) = self.current.swap(None) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (http, timeout) = (self.http.clone(), self.cleanup.timeout);
        runtime.spawn(async move {
            revoke_within(&http, &state.token, timeout).await;
        });
    }
}

/// Revoke `token` (and the leases issued under it), giving up after `timeout` — real time, as
/// the request timeout: a shutdown must end even under a manual clock nobody advances. Whether
/// it worked is logged, never returned: a shutdown goes on either way.
async fn revoke_within(http: &Http, token: &SecretValue, timeout: Duration) {
    match tokio::time::timeout(timeout, Auth::revoke_self(http, token)).await {
        Ok(Ok(())) => tracing::debug!("revoked the Vault token and its leases"),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "revoking the Vault token at shutdown failed; it and its leases last until their TTLs"
        ),
        Err(_) => tracing::warn!(
            ?timeout,
            "Vault did not answer the token revocation in time; the token and its leases last \
             until their TTLs"
        ),
    }
}

impl Session {
    pub(crate) fn new(
        http: Http,
        auth: Auth,
        clock: Arc<dyn Clock>,
        cleanup: TokenCleanup,
    ) -> Arc<Self> {
        Arc::new(Session {
            http,
            auth,
            clock,
            current: ArcSwapOption::empty(),
            login_lock: tokio::sync::Mutex::new(None),
            logins: AtomicU64::new(0),
            store_lock: Mutex::new(()),
            generation: watch::Sender::new(0),
            keeper: Mutex::new(None),
            closed: AtomicBool::new(false),
            looked_up: Mutex::new(None),
            cleanup,
            revoked: AtomicBool::new(false),
        })
    }

    /// Whether new tokens can be obtained (anything but a static token).
    pub(crate) fn can_login(&self) -> bool {
        self.auth.can_login()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Bumped at every login after the first: leases of older tokens are gone.
    pub(crate) fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The generation of the token held now (0 before the first login).
    pub(crate) fn generation(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |s| s.generation)
    }

    /// The current token and its generation, logging in first if there is none yet (an error
    /// once the token was revoked at shutdown).
    pub(crate) async fn token(self: &Arc<Self>) -> Result<(SecretValue, u64)> {
        if let Some(state) = self.current.load_full() {
            return Ok((state.token.clone(), state.generation));
        }
        self.login(None).await
    }

    /// Whether a token is held (a read would not log in first).
    pub(crate) fn has_token(&self) -> bool {
        self.current.load().is_some()
    }

    /// [`token`](Self::token) for a call whose budget place the login takes through `requests`
    /// (the call's first place, when no other request of the call took it).
    pub(crate) async fn token_within(
        self: &Arc<Self>,
        requests: &keyrack_core::budget::CallRequests,
    ) -> Result<(SecretValue, u64)> {
        if let Some(state) = self.current.load_full() {
            return Ok((state.token.clone(), state.generation));
        }
        self.login_placed(None, Some(requests)).await
    }

    /// Log in, unless another caller already replaced the token of generation `stale` (or, with
    /// `None`, already logged in at all). Callers that wait while a login is under way share
    /// its outcome, a failure too: twenty reads started together against a refused login send
    /// one login, not one each in turn.
    pub(crate) async fn login(self: &Arc<Self>, stale: Option<u64>) -> Result<(SecretValue, u64)> {
        self.login_placed(stale, None).await
    }

    /// [`login`](Self::login), its budget place taken through `requests` if given, else as a
    /// request the calling read cannot do without.
    async fn login_placed(
        self: &Arc<Self>,
        stale: Option<u64>,
        requests: Option<&keyrack_core::budget::CallRequests>,
    ) -> Result<(SecretValue, u64)> {
        let tried = self.logins.load(Ordering::Acquire);
        let mut last_failure = self.login_lock.lock().await;
        if self.revoked.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Shutdown,
                "the Vault source was shut down and its token revoked",
            ));
        }
        let previous = self.current.load_full();
        if let Some(state) = &previous
            && stale != Some(state.generation)
        {
            return Ok((state.token.clone(), state.generation));
        }
        if self.logins.load(Ordering::Acquire) != tried
            && let Some(e) = &*last_failure
        {
            return Err(e.clone());
        }
        let generation = previous.as_ref().map_or(0, |p| p.generation + 1);
        // A login that a read waits for takes a place in that call's budget, ahead of the read
        // (ready at once for the keeper's, outside any call).
        match requests {
            Some(requests) => requests.before_request().await?,
            None => keyrack_core::budget::needed_request().await,
        }
        let method = self.auth.method();
        // Source, method and generation: never a role, a path or a token.
        let span = tracing::info_span!(target: "keyrack_vault::auth", "login", source = "vault",
            method, generation, outcome = tracing::field::Empty);
        let login = self.auth.login(&self.http).instrument(span.clone()).await;
        *last_failure = login.as_ref().err().cloned();
        self.logins.fetch_add(1, Ordering::AcqRel);
        let kind = login.as_ref().map(|_| ()).map_err(Error::kind);
        telemetry::login("vault", method, kind);
        span.record("outcome", telemetry::outcome_label(kind));
        let login = match login {
            Ok(login) => login,
            Err(e) => {
                span.in_scope(|| {
                    tracing::warn!(target: "keyrack_vault::auth", kind = ?e.kind(), error = %e,
                        "Vault login failed");
                });
                return Err(e);
            }
        };
        let token = login.token.clone();
        self.install(login, generation);
        span.in_scope(|| {
            if generation > 0 {
                tracing::info!(target: "keyrack_vault::auth",
                    "logged in to Vault again; leases of the old token are re-issued");
            } else {
                tracing::info!(target: "keyrack_vault::auth", "logged in to Vault");
            }
        });
        if generation > 0 {
            self.generation.send_replace(generation);
        }
        self.ensure_keeper();
        Ok((token, generation))
    }

    fn install(&self, login: Login, generation: u64) {
        let grace = login.ttl.map_or(Duration::ZERO, |ttl| {
            schedule::grace(ttl, None, fastrand::f64())
        });
        let _store = lock(&self.store_lock);
        self.current.store(Some(Arc::new(TokenState {
            token: login.token,
            ttl: login.ttl,
            renewable: login.renewable,
            obtained: self.clock.now(),
            grace,
            capped: false,
            generation,
        })));
    }

    /// Store a renewed token, unless the session moved on to another generation meanwhile.
    fn store_renewed(&self, renewed: TokenState) -> bool {
        let _store = lock(&self.store_lock);
        let same = self
            .current
            .load()
            .as_ref()
            .is_some_and(|s| s.generation == renewed.generation);
        if same {
            self.current.store(Some(Arc::new(renewed)));
        }
        same
    }

    /// After a 403 with the token of `generation`: is the token itself dead (expired, revoked)?
    /// If so, log in again and return the new token and its generation; if not, the 403 is a
    /// policy answer. A token found alive is not asked about again for [`LOOKUP_INTERVAL`].
    pub(crate) async fn recover_from_forbidden(
        self: &Arc<Self>,
        token: &SecretValue,
        generation: u64,
    ) -> Result<Option<(SecretValue, u64)>> {
        if !self.can_login() {
            return Ok(None);
        }
        // Replaced while the request was under way: try the newer token.
        if let Some(state) = self.current.load_full()
            && state.generation != generation
        {
            return Ok(Some((state.token.clone(), state.generation)));
        }
        {
            let now = self.clock.now();
            let mut last = lock(&self.looked_up);
            if let Some((g, at)) = *last
                && g == generation
                && now < at + LOOKUP_INTERVAL
            {
                return Ok(None);
            }
            *last = Some((generation, now));
        }
        match Auth::check_alive(&self.http, token).await {
            // Alive: the 403 was about the path.
            Ok(()) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::Unauthenticated
                ) =>
            {
                // Dead: the next refusal may look again at once (the login may fail).
                *lock(&self.looked_up) = None;
                self.login(Some(generation)).await.map(Some)
            }
            Err(_) => Ok(None),
        }
    }

    /// Stop keeping the token alive, for good, and wait until the keeper has stopped: it makes
    /// no call after this returns. Then revoke the token if so configured, within the cleanup's
    /// timeout; after that, calls that need a token fail with [`ErrorKind::Shutdown`] rather
    /// than log in again.
    pub(crate) async fn shutdown(&self) {
        let task = {
            let mut keeper = lock(&self.keeper);
            self.closed.store(true, Ordering::Release);
            keeper.take()
        };
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        if !self.cleanup.revoke {
            return;
        }
        // Under the login lock, so a login under way lands before the token is taken, and none
        // starts after.
        let state = {
            let _no_login = self.login_lock.lock().await;
            self.revoked.store(true, Ordering::Release);
            self.current.swap(None)
        };
        if let Some(state) = state {
            revoke_within(&self.http, &state.token, self.cleanup.timeout).await;
        }
    }

    fn ensure_keeper(self: &Arc<Self>) {
        let mut keeper = lock(&self.keeper);
        if keeper.is_none() && !self.is_closed() {
            let weak = Arc::downgrade(self);
            *keeper = Some(tokio::spawn(keep(weak)));
        }
    }

    /// One turn of the keeper: renew the token, or log in when it cannot be renewed (any more).
    /// `None` when there is nothing left to do (a static token that can only expire).
    async fn keep_once(self: &Arc<Self>, state: &TokenState) -> Option<Result<()>> {
        let ended = state
            .ttl
            .is_some_and(|ttl| self.clock.now() >= state.obtained + ttl);
        if state.renewable && !state.capped && !ended {
            return Some(match renew(self, state).await {
                // Renewal refused: the token is gone; a new one is the way forward.
                Err(e) if !e.is_retryable() && self.can_login() => {
                    self.login(Some(state.generation)).await.map(|_| ())
                }
                other => other,
            });
        }
        if self.can_login() {
            return Some(self.login(Some(state.generation)).await.map(|_| ()));
        }
        tracing::warn!(
            "the Vault token cannot be renewed further and no login method is configured; it will expire"
        );
        None
    }
}

/// Keep the token alive until the session is dropped or shut down.
async fn keep(session: Weak<Session>) {
    let mut failures = 0u32;
    let mut hint = None;
    let mut last_try = None;
    loop {
        let Some((clock, wake)) = next_wake(&session, failures, hint, last_try) else {
            return;
        };
        clock.sleep_until(wake).await;
        let Some(s) = session.upgrade() else { return };
        if s.is_closed() {
            return;
        }
        let Some(state) = s.current.load_full() else {
            return;
        };
        last_try = Some(s.clock.now());
        match s.keep_once(&state).await {
            None => return,
            Some(Ok(())) => {
                failures = 0;
                hint = None;
            }
            Some(Err(e)) if e.kind() == &ErrorKind::Shutdown => return,
            Some(Err(e)) => {
                failures = failures.saturating_add(1);
                hint = e.retry_after();
                tracing::warn!(error = %e, attempt = failures, "keeping the Vault token alive failed");
            }
        }
    }
}

/// The wait before retry number `attempt` (0-based): between half and all of the backoff step,
/// never under the floor.
fn retry_delay(attempt: u32, unit: f64) -> Duration {
    let step = KEEPER_BACKOFF.ceiling(attempt).max(RETRY_FLOOR);
    step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
        .max(RETRY_FLOOR)
}

fn next_wake(
    session: &Weak<Session>,
    failures: u32,
    hint: Option<Duration>,
    last_try: Option<Instant>,
) -> Option<(Arc<dyn Clock>, Instant)> {
    let s = session.upgrade()?;
    let state = s.current.load_full()?;
    let ttl = state.ttl?; // a token without TTL (root) needs no keeping
    let now = s.clock.now();
    let end = state.obtained + ttl;
    let mut wake = if failures > 0 {
        let mut delay = retry_delay(failures - 1, fastrand::f64());
        if let Some(hint) = hint {
            delay = delay.max(hint.min(MAX_RETRY_AFTER));
        }
        let at = now + delay;
        // While the token still has a while to live, try again before it ends (unless Vault
        // asked for a longer wait); once it has ended, the backoff alone decides.
        if hint.is_none() && end > now + RETRY_FLOOR {
            at.min(end)
        } else {
            at
        }
    } else {
        state.obtained + schedule::lease_delay(ttl, state.grace)
    };
    // A renewal that found the token capped calls for the login at once (renew -> login is
    // progress, and a short token may end within the floor); anything else waits the floor.
    if let Some(last) = last_try
        && (failures > 0 || !state.capped)
    {
        wake = wake.max(last + RETRY_FLOOR);
    }
    Some((s.clock.clone(), wake))
}

async fn renew(s: &Arc<Session>, state: &TokenState) -> Result<()> {
    let span = tracing::debug_span!(target: "keyrack_vault::auth", "token_renewal",
        source = "vault", generation = state.generation, outcome = tracing::field::Empty);
    let renewed = Auth::renew_self(&s.http, &state.token)
        .instrument(span.clone())
        .await;
    let kind = renewed.as_ref().map(|_| ()).map_err(Error::kind);
    telemetry::token_renewal("vault", kind);
    span.record("outcome", telemetry::outcome_label(kind));
    let renewed = renewed.inspect_err(|e| {
        span.in_scope(|| {
            tracing::warn!(target: "keyrack_vault::auth", kind = ?e.kind(), error = %e,
                "Vault token renewal failed");
        });
    })?;
    span.in_scope(|| tracing::debug!(target: "keyrack_vault::auth", "Vault token renewed"));
    let now = s.clock.now();
    let ttl = renewed.ttl.unwrap_or_default();
    let previous = state.ttl.unwrap_or_default();
    let capped = schedule::stopped_extending(previous, ttl) || ttl <= state.grace;
    if capped {
        tracing::debug!(
            ?ttl,
            "Vault token renewal no longer extends it; a new login follows"
        );
    }
    let stored = s.store_renewed(TokenState {
        token: state.token.clone(),
        ttl: Some(ttl),
        renewable: renewed.renewable,
        obtained: now,
        grace: if capped {
            state.grace
        } else {
            schedule::grace(ttl, None, fastrand::f64())
        },
        capped,
        generation: state.generation,
    });
    if !stored {
        tracing::debug!(
            "a newer Vault token was obtained while renewing the old one; kept the newer"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_grow_from_the_floor_and_never_go_under_half_a_step() {
        let s = Duration::from_secs;
        let low: Vec<Duration> = (0..8).map(|n| retry_delay(n, 0.0)).collect();
        assert_eq!(low, [s(1), s(1), s(2), s(4), s(8), s(16), s(30), s(30)]);
        let high: Vec<Duration> = (0..8).map(|n| retry_delay(n, 1.0)).collect();
        assert_eq!(high, [s(1), s(2), s(4), s(8), s(16), s(32), s(60), s(60)]);
    }
}
