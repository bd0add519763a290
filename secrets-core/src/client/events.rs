//! [`RotationEvent`]s: what happened to a secret, carrying its reference and versions, never its value.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_core::Stream;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::error::Error;
use crate::reference::SecretRef;
use crate::secret::Version;

/// Something that happened to a secret the client holds.
///
/// The reference is the one the backend is read with (without `#field`): two handles on
/// `vault://db#user` and `vault://db#password` share one lease and see the same events.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RotationEvent {
    /// A new value is in place. For a leased secret, the old lease stays valid until it ends.
    Rotated {
        /// The secret.
        secret: SecretRef,
        /// When it happened (the client's wall clock).
        at: SystemTime,
        /// The version replaced (if the backend versions it).
        old: Option<Version>,
        /// The version now served.
        new: Option<Version>,
        /// When the replaced lease ends, if the old value was leased: the deadline for draining
        /// what still uses it (a pool's old connections).
        old_lease_ends: Option<SystemTime>,
        /// The new value's lease TTL, if it is leased.
        new_lease_ttl: Option<Duration>,
    },
    /// A lease was extended.
    Renewed {
        /// The secret.
        secret: SecretRef,
        /// When it happened (the client's wall clock).
        at: SystemTime,
        /// The lease id.
        lease_id: String,
        /// Time left on the lease after renewal.
        ttl: Duration,
    },
    /// A check, renewal or re-issue failed; the last good value is still served.
    RefreshFailed {
        /// The secret.
        secret: SecretRef,
        /// When it happened (the client's wall clock).
        at: SystemTime,
        /// What failed.
        error: Error,
        /// Consecutive failures so far.
        attempt: u32,
        /// When the next try happens.
        retry_in: Duration,
    },
    /// A check succeeded after failures.
    Recovered {
        /// The secret.
        secret: SecretRef,
        /// When it happened (the client's wall clock).
        at: SystemTime,
        /// How many consecutive failures preceded it.
        failures: u32,
    },
    /// The last good value passed its hard expiry (lease end, `exp`, or the configured maximum
    /// staleness) before a replacement could be had.
    Expired {
        /// The secret.
        secret: SecretRef,
        /// When it happened (the client's wall clock).
        at: SystemTime,
        /// The version that expired.
        version: Option<Version>,
    },
    /// The backend says the secret was deleted; the last good value is kept until it expires.
    Deleted {
        /// The secret.
        secret: SecretRef,
        /// When it happened (the client's wall clock).
        at: SystemTime,
        /// The last version seen.
        version: Option<Version>,
    },
    /// This subscriber fell behind and missed events: re-read what it cares about.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

impl RotationEvent {
    /// When it happened (`None` for [`RotationEvent::Lagged`]).
    pub fn at(&self) -> Option<SystemTime> {
        match self {
            RotationEvent::Rotated { at, .. }
            | RotationEvent::Renewed { at, .. }
            | RotationEvent::RefreshFailed { at, .. }
            | RotationEvent::Recovered { at, .. }
            | RotationEvent::Expired { at, .. }
            | RotationEvent::Deleted { at, .. } => Some(*at),
            RotationEvent::Lagged { .. } => None,
        }
    }

    /// The secret this event is about (`None` for [`RotationEvent::Lagged`]).
    pub fn secret(&self) -> Option<&SecretRef> {
        match self {
            RotationEvent::Rotated { secret, .. }
            | RotationEvent::Renewed { secret, .. }
            | RotationEvent::RefreshFailed { secret, .. }
            | RotationEvent::Recovered { secret, .. }
            | RotationEvent::Expired { secret, .. }
            | RotationEvent::Deleted { secret, .. } => Some(secret),
            RotationEvent::Lagged { .. } => None,
        }
    }
}

struct OptVersion<'a>(&'a Option<Version>);

impl fmt::Display for OptVersion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "version {v}"),
            None => f.write_str("unversioned"),
        }
    }
}

impl fmt::Display for RotationEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotationEvent::Rotated {
                secret, old, new, ..
            } => write!(
                f,
                "{secret} rotated: {} -> {}",
                OptVersion(old),
                OptVersion(new)
            ),
            RotationEvent::Renewed {
                secret,
                lease_id,
                ttl,
                ..
            } => write!(f, "{secret} lease {lease_id} renewed for {ttl:?}"),
            RotationEvent::RefreshFailed {
                secret,
                error,
                attempt,
                retry_in,
                ..
            } => write!(
                f,
                "{secret} refresh failed (attempt {attempt}, retry in {retry_in:?}): {error}"
            ),
            RotationEvent::Recovered {
                secret, failures, ..
            } => {
                write!(f, "{secret} recovered after {failures} failures")
            }
            RotationEvent::Expired {
                secret, version, ..
            } => {
                write!(f, "{secret} expired ({})", OptVersion(version))
            }
            RotationEvent::Deleted {
                secret, version, ..
            } => {
                write!(f, "{secret} deleted (last seen {})", OptVersion(version))
            }
            RotationEvent::Lagged { missed } => write!(f, "{missed} events missed"),
        }
    }
}

/// A stream of [`RotationEvent`]s. Ends when the client (or the secret) is gone.
pub struct RotationEvents {
    inner: BoxStream<'static, RotationEvent>,
}

impl RotationEvents {
    pub(crate) fn new(rx: broadcast::Receiver<RotationEvent>) -> Self {
        let inner = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(target: "keyrack_core::events", missed,
                        "a rotation event subscriber fell behind; events were dropped");
                    super::telemetry::events_dropped(missed);
                    Some((RotationEvent::Lagged { missed }, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed();
        RotationEvents { inner }
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<RotationEvent> {
        self.inner.next().await
    }
}

impl Stream for RotationEvents {
    type Item = RotationEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RotationEvent>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl fmt::Debug for RotationEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RotationEvents")
    }
}
