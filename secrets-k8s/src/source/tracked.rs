//! What the source knows of each object it reads or watches, shared by its reads, its version
//! probe and its watches.
//!
//! The source's version probe answers from here, or through here: a watch not connected yet is
//! found here and connected by the probe (see [`Watch::look`](super::watch::Watch::look)), and a
//! deletion an open watch reported is answered without a request (that watch reports a
//! re-creation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use keyrack_core::Version;

use super::watch::{Shared, Watch};

/// The shared records, by [`Target::id`](super::Target).
#[derive(Clone, Default)]
pub(super) struct Tracked(Arc<Mutex<HashMap<String, Record>>>);

#[derive(Default)]
struct Record {
    /// The latest state of the data the target reads, as last read or reported by a watch:
    /// `Some(Some(v))` present at version `v`, `Some(None)` absent, `None` never seen.
    latest: Option<Option<Version>>,
    /// Bumped by every watch report: a read that started before one may be older than it, and
    /// does not overwrite it.
    epoch: u64,
    /// Watches of the target that vouch for `latest`.
    vouching: usize,
    /// The target's watches (their feeds hold them).
    watches: Vec<Weak<tokio::sync::Mutex<Watch>>>,
}

/// A read's place among the watch reports, taken when it starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadStart(u64);

impl Tracked {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        // Plain fields, each update complete: a panic elsewhere cannot leave them torn.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read of `id` starts.
    pub(super) fn read_starts(&self, id: &str) -> ReadStart {
        ReadStart(self.lock().get(id).map_or(0, |r| r.epoch))
    }

    /// A read that started at `start` found `state`; kept unless a watch reported since.
    pub(super) fn read(&self, id: &str, start: ReadStart, state: Option<Version>) {
        let mut records = self.lock();
        let record = records.entry(id.to_owned()).or_default();
        if record.epoch == start.0 {
            record.latest = Some(state);
        }
    }

    /// A watch saw `state` on the server.
    pub(super) fn reported(&self, id: &str, state: Option<Version>) {
        let mut records = self.lock();
        let record = records.entry(id.to_owned()).or_default();
        record.latest = Some(state);
        record.epoch += 1;
    }

    /// The latest known state of `id`, if any.
    pub(super) fn latest(&self, id: &str) -> Option<Option<Version>> {
        self.lock().get(id).and_then(|r| r.latest.clone())
    }

    /// The latest known state of `id` when a watch vouches for it (it reports any change from
    /// it); `None` when no watch does, or nothing is known.
    pub(super) fn vouched(&self, id: &str) -> Option<Option<Version>> {
        let records = self.lock();
        let record = records.get(id)?;
        if record.vouching == 0 {
            return None;
        }
        record.latest.clone()
    }

    /// A watch of `id` was made.
    pub(super) fn register(&self, id: &str, watch: &Shared) {
        let mut records = self.lock();
        let record = records.entry(id.to_owned()).or_default();
        record.watches.retain(|w| w.strong_count() > 0);
        record.watches.push(Arc::downgrade(watch));
    }

    /// The watches of `id` that are still alive.
    pub(super) fn watches(&self, id: &str) -> Vec<Shared> {
        let records = self.lock();
        records
            .get(id)
            .map(|r| r.watches.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// A watch of `id` vouches for its latest state until the guard is dropped.
    pub(super) fn vouch(&self, id: &str) -> Vouch {
        self.lock().entry(id.to_owned()).or_default().vouching += 1;
        Vouch {
            tracked: self.clone(),
            id: id.to_owned(),
        }
    }
}

/// Held by a watch while it vouches for its target's latest state.
pub(super) struct Vouch {
    tracked: Tracked,
    id: String,
}

impl Drop for Vouch {
    fn drop(&mut self) {
        let mut records = self.tracked.lock();
        if let Some(record) = records.get_mut(&self.id) {
            record.vouching = record.vouching.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_older_than_a_watch_report_does_not_overwrite_it() {
        let t = Tracked::default();
        let start = t.read_starts("a/b");
        t.reported("a/b", Some(Version::new("2")));
        t.read("a/b", start, Some(Version::new("1")));
        assert_eq!(t.latest("a/b"), Some(Some(Version::new("2"))));
        let start = t.read_starts("a/b");
        t.read("a/b", start, None);
        assert_eq!(t.latest("a/b"), Some(None));
    }

    #[test]
    fn only_a_vouching_watch_answers() {
        let t = Tracked::default();
        t.reported("a/b", Some(Version::new("1")));
        assert_eq!(t.vouched("a/b"), None);
        let guard = t.vouch("a/b");
        assert_eq!(t.vouched("a/b"), Some(Some(Version::new("1"))));
        let second = t.vouch("a/b");
        drop(guard);
        assert!(t.vouched("a/b").is_some());
        drop(second);
        assert_eq!(t.vouched("a/b"), None);
        // Nothing known yet: nothing to vouch for.
        let _guard = t.vouch("c/d");
        assert_eq!(t.vouched("c/d"), None);
    }
}
