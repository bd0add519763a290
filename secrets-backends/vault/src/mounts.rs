//! Which secrets engine serves a path: KV v1, KV v2 or anything else. Detected through
//! `sys/internal/ui/mounts/<path>` (the endpoint Vault's own CLI uses, open to any token with a
//! capability on the path) and remembered for [`MOUNT_TTL`]; a mount can be moved or replaced
//! (`sys/remount`, disable and enable), so an answer a remount would explain makes the source
//! detect it again sooner (at most once per mount and [`RECHECK_GAP`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a detected mount is trusted.
pub(crate) const MOUNT_TTL: Duration = Duration::from_secs(300);
/// The shortest time between two detections of one mount prompted by failed reads (a secret
/// that is simply missing must not cost a mount lookup per read).
pub(crate) const RECHECK_GAP: Duration = Duration::from_secs(10);

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Kv1,
    Kv2,
    /// Any other engine (database, aws, pki, …): read as a plain logical path.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The mount path with a trailing slash (`secret/`).
    pub(crate) path: String,
    pub(crate) engine: Engine,
}

impl Mount {
    /// The part of `path` below the mount.
    pub(crate) fn rest<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(self.path.as_str()).unwrap_or(path)
    }
}

#[derive(Deserialize)]
pub(crate) struct UiMount {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    options: Option<UiMountOptions>,
}

#[derive(Deserialize)]
struct UiMountOptions {
    #[serde(default)]
    version: Option<String>,
}

impl From<UiMount> for Mount {
    fn from(m: UiMount) -> Self {
        let version = m.options.and_then(|o| o.version);
        let engine = match (m.kind.as_str(), version.as_deref()) {
            ("kv", Some("2")) => Engine::Kv2,
            ("kv" | "generic", _) => Engine::Kv1,
            _ => Engine::Other,
        };
        let mut path = m.path;
        if !path.ends_with('/') {
            path.push('/');
        }
        Mount { path, engine }
    }
}

/// Mounts seen, with when each was detected.
#[derive(Default, Debug)]
pub(crate) struct Mounts(Mutex<Vec<Known>>);

#[derive(Debug)]
struct Known {
    mount: Mount,
    detected: Instant,
}

impl Mounts {
    fn known(&self) -> std::sync::MutexGuard<'_, Vec<Known>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The known mount `path` lies under (the longest match), if detected less than
    /// [`MOUNT_TTL`] before `now`.
    pub(crate) fn find(&self, path: &str, now: Instant) -> Option<Mount> {
        self.known()
            .iter()
            .filter(|k| now < k.detected + MOUNT_TTL && path.starts_with(k.mount.path.as_str()))
            .max_by_key(|k| k.mount.path.len())
            .map(|k| k.mount.clone())
    }

    pub(crate) fn remember(&self, mount: Mount, now: Instant) {
        let mut known = self.known();
        known.retain(|k| k.mount.path != mount.path && now < k.detected + MOUNT_TTL);
        known.push(Known {
            mount,
            detected: now,
        });
    }

    /// Whether the mount at `path`, which just gave an answer a remount would explain, may be
    /// detected again now: yes if it was detected [`RECHECK_GAP`] ago or more (it is then
    /// forgotten).
    pub(crate) fn may_recheck(&self, path: &str, now: Instant) -> bool {
        let mut known = self.known();
        let due = known
            .iter()
            .any(|k| k.mount.path == path && now >= k.detected + RECHECK_GAP);
        if due {
            known.retain(|k| k.mount.path != path);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ui(path: &str, kind: &str, version: Option<&str>) -> Mount {
        Mount::from(UiMount {
            path: path.into(),
            kind: kind.into(),
            options: Some(UiMountOptions {
                version: version.map(Into::into),
            }),
        })
    }

    #[test]
    fn engines_and_longest_prefix() {
        let now = keyrack_core::Clock::now(&keyrack_core::ManualClock::new());
        let mounts = Mounts::default();
        mounts.remember(ui("secret/", "kv", Some("2")), now);
        mounts.remember(ui("secret/team", "kv", Some("1")), now);
        mounts.remember(ui("database/", "database", None), now);
        assert_eq!(
            mounts.find("secret/app/x", now).unwrap().engine,
            Engine::Kv2
        );
        let team = mounts.find("secret/team/x", now).unwrap();
        assert_eq!(
            (team.engine.clone(), team.rest("secret/team/x")),
            (Engine::Kv1, "x")
        );
        assert_eq!(
            mounts.find("database/creds/app", now).unwrap().engine,
            Engine::Other
        );
        assert!(mounts.find("pki/issue/app", now).is_none());
    }

    #[test]
    fn mounts_are_forgotten_after_their_ttl_and_rechecked_at_most_once_per_gap() {
        let t0 = keyrack_core::Clock::now(&keyrack_core::ManualClock::new());
        let mounts = Mounts::default();
        mounts.remember(ui("secret/", "kv", Some("1")), t0);
        assert!(mounts.find("secret/a", t0 + MOUNT_TTL / 2).is_some());
        assert!(mounts.find("secret/a", t0 + MOUNT_TTL).is_none());

        mounts.remember(ui("secret/", "kv", Some("1")), t0);
        assert!(!mounts.may_recheck("secret/", t0 + RECHECK_GAP / 2));
        assert!(mounts.find("secret/a", t0).is_some(), "kept");
        assert!(mounts.may_recheck("secret/", t0 + RECHECK_GAP));
        assert!(
            mounts.find("secret/a", t0 + RECHECK_GAP).is_none(),
            "forgotten"
        );
        assert!(
            !mounts.may_recheck("secret/", t0 + RECHECK_GAP),
            "nothing to recheck"
        );
    }
}
