//! [`Health`]: what a readiness probe and an operator need to know about the secrets a client
//! holds, without a backend call.

use std::fmt;
use std::time::{Instant, SystemTime};

use crate::error::ErrorKind;
use crate::reference::SecretRef;

use super::entry::{Entry, lock};

/// How a client's secrets are doing, from [`Secrets::health`](super::Secrets::health).
///
/// The verdict, and what to do with it:
///
/// | verdict | means | readiness probe | liveness probe |
/// |---|---|---|---|
/// | [`Ready`](Verdict::Ready) | every secret is fresh | ready | alive |
/// | [`Degraded`](Verdict::Degraded) | some refreshes fail or lag, but every value is still valid (the last good one is served) | ready | alive |
/// | [`Failing`](Verdict::Failing) | a secret behind a live handle has expired: its users have nothing valid | not ready | alive |
///
/// Never fail a liveness probe on secrets: a restart does not bring a backend back, and a fleet
/// restarting together makes every pod read every secret at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The overall verdict (rules above).
    pub verdict: Verdict,
    /// Each secret held, cached or behind a handle, in no particular order.
    pub secrets: Vec<SecretHealth>,
}

impl Health {
    /// Whether a readiness probe should pass (`Ready` or `Degraded`).
    pub fn is_ready(&self) -> bool {
        self.verdict != Verdict::Failing
    }
}

/// The overall verdict of a [`Health`] report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every secret is fresh.
    Ready,
    /// Some refreshes fail or lag; every value in use is still valid.
    Degraded,
    /// A secret behind a live handle has expired.
    Failing,
}

/// One secret's state in a [`Health`] report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretHealth {
    /// The secret (as read from the backend, without `#field`).
    pub secret: SecretRef,
    /// Live handles on it (0: only cached).
    pub handles: usize,
    /// Its state.
    pub state: SecretState,
}

/// The state of one secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretState {
    /// Checked, renewed or read on schedule.
    Fresh,
    /// Past its scheduled check without an answer yet (a request in flight, a backend that has
    /// not answered), since `since`.
    Stale {
        /// When the check was due.
        since: SystemTime,
    },
    /// Refreshes fail; the last good value is still valid.
    Failing {
        /// The last success (the value served is from then, or was confirmed then).
        since: SystemTime,
        /// What the last failure was.
        kind: ErrorKind,
        /// Consecutive failures.
        attempts: u32,
    },
    /// The value passed its hard expiry (lease end, `exp`, maximum staleness) at `since`.
    Expired {
        /// When it expired.
        since: SystemTime,
    },
    /// Being read for the first time.
    Loading,
}

impl fmt::Display for SecretState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretState::Fresh => f.write_str("fresh"),
            SecretState::Stale { .. } => f.write_str("stale"),
            SecretState::Failing { kind, attempts, .. } => {
                write!(f, "failing ({kind:?}, {attempts} attempts)")
            }
            SecretState::Expired { .. } => f.write_str("expired"),
            SecretState::Loading => f.write_str("loading"),
        }
    }
}

/// A check may take this long past its time before the value counts as stale (a request's
/// ordinary round trip).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl Entry {
    pub(crate) fn health(&self) -> SecretHealth {
        let clock = &self.ctx.clock;
        let (now, wall) = (clock.now(), clock.wall());
        let at = |t: Instant| wall - now.saturating_duration_since(t);
        let handles = self.handle_count();
        let snap = self.snapshot();
        let state = {
            let sched = lock(&self.sched);
            match (sched.as_ref(), snap) {
                (None, _) | (_, None) => SecretState::Loading,
                (Some(_), Some(snap)) if snap.is_expired(now) => SecretState::Expired {
                    since: at(snap.hard_deadline.unwrap_or(now)),
                },
                (Some(sched), Some(_)) if sched.failures > 0 => SecretState::Failing {
                    since: at(sched.last_ok),
                    kind: sched.last_error.clone().unwrap_or(ErrorKind::Backend),
                    attempts: sched.failures,
                },
                (Some(_), Some(snap)) if now >= snap.next_check + STALE_AFTER => {
                    SecretState::Stale {
                        since: at(snap.next_check),
                    }
                }
                _ => SecretState::Fresh,
            }
        };
        SecretHealth {
            secret: self.key.clone(),
            handles,
            state,
        }
    }
}

/// What the gauges say of one secret.
pub(crate) struct GaugeFacts {
    pub(crate) handles: usize,
    /// Since the backend last answered for it (`None` while loading).
    pub(crate) since_success: Option<std::time::Duration>,
    /// Until its lease ends (`None` without a lease; zero once ended).
    pub(crate) to_lease_end: Option<std::time::Duration>,
}

impl Entry {
    pub(crate) fn gauge_facts(&self, now: Instant) -> GaugeFacts {
        let since_success = lock(&self.sched)
            .as_ref()
            .map(|s| now.saturating_duration_since(s.last_ok));
        let to_lease_end = self.snapshot().and_then(|snap| {
            snap.secret.lease()?;
            Some(snap.hard_deadline?.saturating_duration_since(now))
        });
        GaugeFacts {
            handles: self.handle_count(),
            since_success,
            to_lease_end,
        }
    }
}

/// The verdict over `secrets` (rules on [`Health`]).
pub(crate) fn verdict(secrets: &[SecretHealth]) -> Verdict {
    let expired_in_use = secrets
        .iter()
        .any(|s| s.handles > 0 && matches!(s.state, SecretState::Expired { .. }));
    if expired_in_use {
        return Verdict::Failing;
    }
    let all_fresh = secrets
        .iter()
        .all(|s| matches!(s.state, SecretState::Fresh | SecretState::Loading));
    if all_fresh {
        Verdict::Ready
    } else {
        Verdict::Degraded
    }
}
