//! [`SecretHandle`]: a live secret, kept fresh by the client while the handle exists.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use arc_swap::Guard;

use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::{Secret, Version};

use super::entry::Trigger;
use super::events::RotationEvents;
use super::view::View;

/// A live secret. While any handle to it exists the client checks, renews and re-issues it in the
/// background; [`current`](Self::current) always reads the latest value without waiting.
///
/// Cloning a handle is cheap and keeps the same secret alive.
pub struct SecretHandle {
    view: Arc<View>,
    /// The value generation this handle last reported through `changed`.
    seen: u64,
}

/// The value a handle held at the moment of [`SecretHandle::current`]; derefs to [`Secret`].
///
/// Hold it briefly (for the duration of a connection setup, say): it pins that value in memory.
/// Clone the `Secret` to keep it longer.
pub struct Current(Guard<Secret>);

impl Deref for Current {
    type Target = Secret;

    fn deref(&self) -> &Secret {
        &self.0
    }
}

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl SecretHandle {
    /// A handle on `view`, whose handle count the caller already raised
    /// ([`Entry::attach`](super::entry::Entry::attach)).
    pub(crate) fn attached(view: Arc<View>) -> Self {
        view.entry.acquire();
        let seen = view.generation();
        SecretHandle { view, seen }
    }

    /// The latest value: one atomic load, no lock, no await. After the value's hard expiry it is
    /// still the last good value; use [`try_current`](Self::try_current) to be told.
    pub fn current(&self) -> Current {
        Current(self.view.load())
    }

    /// The latest value, or [`ErrorKind::Expired`] once it is past its hard expiry (lease end,
    /// expiry, or the configured maximum staleness) with no replacement in place.
    pub fn try_current(&self) -> Result<Secret> {
        let entry = &self.view.entry;
        if let Some(snap) = entry.snapshot()
            && snap.is_expired(entry.ctx.clock.now())
        {
            return Err(Error::new(
                ErrorKind::Expired,
                "the last good value is past its hard expiry and no replacement could be fetched",
            )
            .with_ref(&self.reference())
            .with_source_name(&*entry.source_name));
        }
        Ok(self.view.value())
    }

    /// Wait until the value changes, then return the new one.
    pub async fn changed(&mut self) -> Result<Secret> {
        loop {
            let notified = self.view.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a change between the two is not missed.
            notified.as_mut().enable();
            let generation = self.view.generation();
            if generation != self.seen {
                self.seen = generation;
                return Ok(self.view.value());
            }
            if self.view.entry.is_closed() {
                return Err(Error::new(
                    ErrorKind::Shutdown,
                    "the client was shut down; the secret is no longer maintained",
                ));
            }
            notified.await;
        }
    }

    /// This secret's state (fresh, stale, failing, expired), as in [`Secrets::health`]; makes
    /// no backend call.
    ///
    /// [`Secrets::health`]: super::Secrets::health
    pub fn health(&self) -> super::SecretState {
        self.view.entry.health().state
    }

    /// Events about this secret (rotations, renewals, failures). Field handles see the events of
    /// the whole secret they select from.
    pub fn subscribe(&self) -> RotationEvents {
        RotationEvents::new(self.view.entry.subscribe())
    }

    /// Check the backend now (after a failed login with the current value, say), instead of at
    /// the next scheduled check. A leased secret is re-issued. Returns the check's error, if any;
    /// the last good value stays in place either way.
    pub async fn refresh_now(&self) -> Result<()> {
        let result = self.view.entry.maintain(Trigger::Forced).await;
        self.view.entry.replan();
        result
    }

    /// Refresh only if this handle still serves `version` (the one a connection just failed
    /// with): many connections failing with the same old credential cause one refresh (for a
    /// leased secret, one re-issue), and a caller that comes after the new value is in place
    /// causes none. Returns whether a refresh was made or joined.
    pub async fn refresh_if_current(&self, version: Option<&Version>) -> Result<bool> {
        if self.view.load().version() != version {
            return Ok(false);
        }
        self.refresh_now().await.map(|()| true)
    }

    /// The reference this handle reads (with its `#field`, if any).
    pub fn reference(&self) -> SecretRef {
        self.view.key.clone()
    }
}

impl Clone for SecretHandle {
    fn clone(&self) -> Self {
        // A view with a handle is never detached, so it can take another directly.
        self.view.add_handle();
        let mut handle = SecretHandle::attached(self.view.clone());
        handle.seen = self.seen;
        handle
    }
}

impl Drop for SecretHandle {
    fn drop(&mut self) {
        self.view.remove_handle();
        self.view.entry.release();
    }
}

impl fmt::Debug for SecretHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretHandle")
            .field("ref", &format_args!("{}", self.reference()))
            .field("version", &self.current().version())
            .finish()
    }
}
