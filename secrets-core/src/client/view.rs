//! [`View`]: what one full reference (with its optional `#field`) currently reads as. Handles and
//! cache hits read a view's value with one atomic load; the entry writes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::secret::Secret;

use super::entry::Entry;

pub(crate) struct View {
    pub(crate) entry: Arc<Entry>,
    pub(crate) field: Option<Box<str>>,
    pub(crate) current: ArcSwap<Secret>,
    /// Bumped on every change of value, for `SecretHandle::changed`.
    pub(crate) generation: watch::Sender<u64>,
    handles: AtomicUsize,
    /// The entry moved on to a value this view's field is not in: it serves no more reads.
    detached: AtomicBool,
}

impl View {
    pub(crate) fn new(entry: Arc<Entry>, field: Option<Box<str>>, value: Secret) -> Self {
        View {
            entry,
            field,
            current: ArcSwap::from_pointee(value),
            generation: watch::Sender::new(0),
            handles: AtomicUsize::new(0),
            detached: AtomicBool::new(false),
        }
    }

    pub(crate) fn set(&self, value: Secret, changed: bool) {
        self.current.store(Arc::new(value));
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
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
    }

    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }
}
