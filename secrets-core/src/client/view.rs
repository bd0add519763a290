//! [`View`]: what one full reference (with its optional `#field`) currently reads as. Handles and
//! cache hits read a view's value with one atomic load; the entry writes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwapAny, Guard};
use tokio::sync::Notify;

use crate::reference::SecretRef;
use crate::secret::Secret;

use super::entry::Entry;

pub(crate) struct View {
    pub(crate) entry: Arc<Entry>,
    /// The full reference, `#field` included.
    pub(crate) key: SecretRef,
    current: ArcSwapAny<Secret>,
    /// Bumped on every change of value; `changed` wakes waiters of `SecretHandle::changed`.
    generation: AtomicU64,
    pub(crate) changed: Notify,
    handles: AtomicUsize,
    /// The entry moved on to a value this view's field is not in, or the cache let it go: it
    /// serves no more reads.
    detached: AtomicBool,
}

impl View {
    pub(crate) fn new(entry: Arc<Entry>, key: SecretRef, value: Secret) -> Self {
        View {
            entry,
            key,
            current: ArcSwapAny::new(value),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            handles: AtomicUsize::new(0),
            detached: AtomicBool::new(false),
        }
    }

    pub(crate) fn field(&self) -> Option<&str> {
        self.key.field()
    }

    /// The current value, without touching a reference count.
    pub(crate) fn load(&self) -> Guard<Secret> {
        self.current.load()
    }

    /// The current value, as an owned (shared, not copied) secret.
    pub(crate) fn value(&self) -> Secret {
        (*self.load()).clone()
    }

    pub(crate) fn set(&self, value: Secret, changed: bool) {
        self.current.store(value);
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.changed.notify_waiters();
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn has_handles(&self) -> bool {
        self.handles.load(Ordering::Acquire) > 0
    }

    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove_handle(&self) {
        self.handles.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn detach(&self) {
        self.detached.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }
}
