//! Which secrets engine serves a path: KV v1, KV v2 or anything else. Detected through
//! `sys/internal/ui/mounts/<path>` (the endpoint Vault's own CLI uses, open to any token with a
//! capability on the path) and remembered for [`MOUNT_TTL`]; a mount can be moved or replaced
//! (`sys/remount`, disable and enable), so an answer a remount would explain makes the source
//! detect it again sooner (at most once per mount and [`RECHECK_GAP`]).
//!
//! Cold reads started together share a detection ([`Detections`]): a pod that starts by
//! reading twenty secrets of one mount asks once, not once per read in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, WeakShared};
use keyrack_core::{Error, Result};

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

/// Mount detections in flight, by the first segment of the path each was started for
/// (`secret` for `secret/app/db`): a cold read whose path has the same first segment waits for
/// the one in flight instead of sending its own. Most paths under one first segment lie under
/// one mount; a read the detected mount does not cover (a mount nested beside another) is the
/// caller's to detect on its own (see [`Detections::join`]).
///
/// The map holds detections weakly: one whose every waiter gave up (a cancelled prefetch, a
/// client timeout) is dropped with its last waiter, its request and any login it was in
/// abandoned and its budget place given back, rather than left half-done for the next cold
/// read to resume.
#[derive(Default)]
pub(crate) struct Detections(Mutex<HashMap<String, WeakShared<BoxFuture<'static, Result<Mount>>>>>);

impl Detections {
    /// The outcome of the detection in flight for `path`'s first segment, or of `start`'s,
    /// started now. Failures are shared (a timeout, a Vault that is down, a refused login: a
    /// hang costs one timeout, not one per waiting read in turn). A mount that does not cover
    /// `path`, or none (the detection was refused for the path it was started for, which may be
    /// denied where this one is not) is not: the caller gets `None` and detects on its own.
    pub(crate) async fn join(
        &self,
        path: &str,
        start: impl FnOnce() -> BoxFuture<'static, Result<Mount>>,
    ) -> Option<Result<Mount>> {
        let key = first_segment(path).to_owned();
        let (detection, started) = {
            let mut in_flight = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get(&key).and_then(WeakShared::upgrade) {
                Some(d) => (d, false),
                None => {
                    let d = start().shared();
                    if let Some(weak) = d.downgrade() {
                        in_flight.insert(key.clone(), weak);
                    }
                    (d, true)
                }
            }
        };
        let outcome = detection.clone().await;
        {
            let mut in_flight = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let ours = in_flight
                .get(&key)
                .and_then(WeakShared::upgrade)
                .is_some_and(|d| d.ptr_eq(&detection));
            if ours {
                in_flight.remove(&key);
            }
        }
        match outcome {
            Ok(m) if !started && (m.path.is_empty() || !path.starts_with(m.path.as_str())) => None,
            // Vault's message may name the path the detection was started for (its rate limit
            // does): a waiter gets the kind and the wait, not another secret's path.
            Err(e) if !started => Some(Err(lookup_failed_first(&e))),
            outcome => Some(outcome),
        }
    }
}

/// The error of a read whose mount lookup, made for another path, failed with `lookup`: its kind
/// and `Retry-After`, and not its text, which may name that other path.
pub(crate) fn lookup_failed_first(lookup: &Error) -> Error {
    let e = Error::new(
        lookup.kind().clone(),
        format!(
            "the lookup of this path's mount failed ({:?}), for another read of the same first \
             path segment",
            lookup.kind()
        ),
    );
    match lookup.retry_after() {
        Some(wait) => e.with_retry_after(wait),
        None => e,
    }
}

/// The first segment of a path (without its leading `/`): cold reads under it share one mount
/// detection.
pub(crate) fn first_segment(path: &str) -> &str {
    path.split('/').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use keyrack_core::ErrorKind;

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

    /// Three reads join the detection the first starts, which answers `answer` once all three
    /// wait. Returns what each got.
    async fn three_join(answer: Result<Mount>, paths: [&str; 3]) -> Vec<Option<Result<Mount>>> {
        let detections = Detections::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<Mount>>();
        let first = detections.join(paths[0], move || async move { rx.await.unwrap() }.boxed());
        let joins = |path| {
            detections.join(path, || -> BoxFuture<'static, Result<Mount>> {
                panic!("a second detection was started")
            })
        };
        let answered = async move {
            tx.send(answer).unwrap();
        };
        let (first, second, third, ()) =
            tokio::join!(first, joins(paths[1]), joins(paths[2]), answered);
        vec![first, second, third]
    }

    #[tokio::test]
    async fn reads_under_one_first_segment_share_a_detection_and_its_failure() {
        let kv = ui("secret/", "kv", Some("2"));
        let got = three_join(Ok(kv.clone()), ["secret/a", "secret/b", "secret/c/d"]).await;
        for g in got {
            assert_eq!(g.unwrap().unwrap(), kv);
        }
        for kind in [ErrorKind::Timeout, ErrorKind::PermissionDenied] {
            let failed = keyrack_core::Error::new(kind.clone(), "failed");
            let got = three_join(Err(failed), ["secret/a", "secret/b", "secret/c"]).await;
            for g in got {
                assert_eq!(g.unwrap().unwrap_err().kind(), &kind);
            }
        }
        // OpenBao's rate limit names the request's path (recorded): the waiters' errors keep the
        // kind and the wait, not the path of the read that started the detection. Before, each
        // waiter's error quoted it.
        let throttled = keyrack_core::Error::new(
            ErrorKind::Throttled,
            "rate limited (HTTP 429): request path \"secret/data/a\": rate limit quota exceeded",
        )
        .with_retry_after(std::time::Duration::ZERO);
        let got = three_join(Err(throttled), ["secret/a", "secret/b", "secret/c"]).await;
        let errors: Vec<Error> = got.into_iter().map(|g| g.unwrap().unwrap_err()).collect();
        assert!(
            errors[0].to_string().contains("secret/data/a"),
            "the starter's own"
        );
        for e in &errors[1..] {
            assert_eq!(e.kind(), &ErrorKind::Throttled);
            assert_eq!(e.retry_after(), Some(std::time::Duration::ZERO));
            assert!(!e.to_string().contains("secret/data/a"), "{e}");
        }
    }

    #[tokio::test]
    async fn no_mount_or_one_that_does_not_cover_the_path_is_not_shared() {
        // What `mount_from` makes of a detection refused (403) for the path it was started for.
        let none = Mount {
            path: String::new(),
            engine: Engine::Other,
        };
        let got = three_join(Ok(none.clone()), ["kv/team-a/x", "kv/team-b/y", "kv/c"]).await;
        assert_eq!(
            got[0].as_ref().unwrap().as_ref().unwrap(),
            &none,
            "its starter's answer"
        );
        assert!(
            got[1].is_none() && got[2].is_none(),
            "the others detect their own"
        );

        let nested = ui("team/kv/", "kv", Some("1"));
        let got = three_join(Ok(nested.clone()), ["team/kv/a", "team/kv/b", "team/db/c"]).await;
        assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap(), &nested);
        assert_eq!(got[1].as_ref().unwrap().as_ref().unwrap(), &nested);
        assert!(got[2].is_none(), "team/db/c is not under team/kv/");
    }

    #[tokio::test]
    async fn a_detection_every_waiter_gave_up_is_dropped_not_resumed() {
        let detections = Detections::default();
        let (dropped_tx, mut dropped_rx) = tokio::sync::oneshot::channel::<()>();
        // A detection that never answers and reports when it is dropped.
        struct Guard(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = self.0.take().map(|tx| tx.send(()));
            }
        }
        let guard = Guard(Some(dropped_tx));
        let waiting = detections.join("secret/a", move || {
            async move {
                let _guard = guard;
                std::future::pending::<Result<Mount>>().await
            }
            .boxed()
        });
        // Polled once (started), then given up.
        let mut waiting = Box::pin(waiting);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(waiting);
        assert!(
            dropped_rx.try_recv().is_ok(),
            "the detection was not dropped with its last waiter"
        );
        // The next cold read starts a new detection.
        let kv = ui("secret/", "kv", Some("2"));
        let again = kv.clone();
        let got = detections
            .join("secret/b", move || async move { Ok(again) }.boxed())
            .await;
        assert_eq!(got.unwrap().unwrap(), kv);
    }
}
