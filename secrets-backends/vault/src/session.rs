//! The source's own Vault token: obtained by login, renewed at about ⅔ of its TTL, and obtained
//! anew when renewal stops extending it (max TTL) or Vault says it is no longer valid.
//!
//! Leases die with the token that created them, so every new login bumps a generation that the
//! source's change feed reports: the client then re-issues the dynamic secrets it holds.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use keyrack_core::{Backoff, Clock, Error, ErrorKind, Result, SecretValue, schedule};
use tokio::sync::watch;

use crate::auth::{Auth, Login};
use crate::http::Http;

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
    login_lock: tokio::sync::Mutex<()>,
    generation: watch::Sender<u64>,
    keeper: Mutex<Option<tokio::task::AbortHandle>>,
    /// Shut down: the keeper is stopped and never started again.
    closed: std::sync::atomic::AtomicBool,
    backoff: Backoff,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Session {
    pub(crate) fn new(http: Http, auth: Auth, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Session {
            http,
            auth,
            clock,
            current: ArcSwapOption::empty(),
            login_lock: tokio::sync::Mutex::new(()),
            generation: watch::Sender::new(0),
            keeper: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(60),
            },
        })
    }

    /// Whether new tokens can be obtained (anything but a static token).
    pub(crate) fn can_login(&self) -> bool {
        self.auth.can_login()
    }

    /// Bumped at every login after the first: leases of older tokens are gone.
    pub(crate) fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current token and its generation, logging in first if there is none yet.
    pub(crate) async fn token(self: &Arc<Self>) -> Result<(SecretValue, u64)> {
        if let Some(state) = self.current.load_full() {
            return Ok((state.token.clone(), state.generation));
        }
        self.login(None).await
    }

    /// Log in, unless another caller already replaced the token of generation `stale` (or, with
    /// `None`, already logged in at all).
    pub(crate) async fn login(self: &Arc<Self>, stale: Option<u64>) -> Result<(SecretValue, u64)> {
        let _one_at_a_time = self.login_lock.lock().await;
        let previous = self.current.load_full();
        if let Some(state) = &previous
            && stale != Some(state.generation)
        {
            return Ok((state.token.clone(), state.generation));
        }
        let login = self.auth.login(&self.http).await?;
        let generation = previous.as_ref().map_or(0, |p| p.generation + 1);
        let token = login.token.clone();
        self.install(login, generation);
        if generation > 0 {
            tracing::info!(
                generation,
                "logged in to Vault again; leases of the old token are re-issued"
            );
            self.generation.send_replace(generation);
        }
        self.ensure_keeper();
        Ok((token, generation))
    }

    fn install(&self, login: Login, generation: u64) {
        let grace = login.ttl.map_or(Duration::ZERO, |ttl| {
            schedule::grace(ttl, None, fastrand::f64())
        });
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

    /// After a 403 with the token of `generation`: is the token itself dead (expired, revoked)?
    /// If so, log in again and return the new token; if not, the 403 is a policy answer.
    pub(crate) async fn recover_from_forbidden(
        self: &Arc<Self>,
        token: &SecretValue,
        generation: u64,
    ) -> Result<Option<SecretValue>> {
        if !self.can_login() {
            return Ok(None);
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
                let (token, _) = self.login(Some(generation)).await?;
                Ok(Some(token))
            }
            Err(_) => Ok(None),
        }
    }

    /// Stop keeping the token alive, for good.
    pub(crate) fn shutdown(&self) {
        let mut keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner());
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(task) = keeper.take() {
            task.abort();
        }
    }

    fn ensure_keeper(self: &Arc<Self>) {
        let mut keeper = self.keeper.lock().unwrap_or_else(|p| p.into_inner());
        if keeper.is_none() && !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            let weak = Arc::downgrade(self);
            *keeper = Some(tokio::spawn(keep(weak)).abort_handle());
        }
    }
}

/// Keep the token alive until the session is dropped.
async fn keep(session: Weak<Session>) {
    let mut failures = 0u32;
    loop {
        let Some((clock, wake)) = next_wake(&session, failures) else {
            return;
        };
        clock.sleep_until(wake).await;
        let Some(s) = session.upgrade() else { return };
        let Some(state) = s.current.load_full() else {
            return;
        };
        let result = if state.renewable && !state.capped {
            renew(&s, &state).await
        } else if s.can_login() {
            s.login(Some(state.generation)).await.map(|_| ())
        } else {
            tracing::warn!(
                "the Vault token cannot be renewed further and no login method is configured; it will expire"
            );
            return;
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "keeping the Vault token alive failed");
                if state.renewable && !state.capped && !e.is_retryable() && s.can_login() {
                    // Renewal refused: the token is gone; a new one is the way forward.
                    if s.login(Some(state.generation)).await.is_ok() {
                        failures = 0;
                    }
                }
            }
        }
    }
}

fn next_wake(session: &Weak<Session>, failures: u32) -> Option<(Arc<dyn Clock>, Instant)> {
    let s = session.upgrade()?;
    let state = s.current.load_full()?;
    let ttl = state.ttl?; // a token without TTL (root) needs no keeping
    let now = s.clock.now();
    let wake = if failures > 0 {
        let e = Error::new(ErrorKind::Unavailable, "retry");
        let delay = s
            .backoff
            .delay(failures - 1, &e, Duration::ZERO, fastrand::f64());
        (now + delay).min(state.obtained + ttl)
    } else {
        state.obtained + schedule::lease_delay(ttl, state.grace)
    };
    Some((s.clock.clone(), wake))
}

async fn renew(s: &Arc<Session>, state: &TokenState) -> Result<()> {
    let renewed = Auth::renew_self(&s.http, &state.token).await?;
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
    s.current.store(Some(Arc::new(TokenState {
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
    })));
    Ok(())
}
