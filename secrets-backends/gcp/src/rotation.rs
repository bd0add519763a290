//! The rotation schedule of secrets (GetSecret: `rotation.nextRotationTime`, `expireTime`), read
//! only with [`with_rotation_schedule`](crate::GcpBuilder::with_rotation_schedule).
//!
//! GetSecret is a metadata read, on the 600 requests per minute per project quota, so each
//! secret's schedule is cached and read again only when it may have changed: the first time,
//! after the version read changed (a rotation happened), or once its `nextRotationTime` (or
//! `expireTime`) has passed. One GetSecret at a time per secret: concurrent reads wait for it
//! and use its answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use google_cloud_secretmanager_v1::model;
use secrets_core::{Clock, ErrorKind, Secret, Version};

use crate::errors::from_gax;

/// How long a secret whose GetSecret was refused (PERMISSION_DENIED) is read without asking for
/// its schedule again.
pub(crate) const DENIED_FOR: Duration = Duration::from_secs(3600);

/// Per-secret schedules, by the secret's full resource name
/// (`projects/<p>[/locations/<l>]/secrets/<s>`).
#[derive(Default)]
pub(crate) struct Schedules {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// One secret's entry; its lock is held while its GetSecret is in flight.
#[derive(Default)]
struct Entry {
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    known: Option<Known>,
    /// Until when GetSecret is not tried again after a PERMISSION_DENIED.
    denied_until: Option<Instant>,
    /// Whether the refusal was already logged at warn (reset by a successful GetSecret).
    warned: bool,
}

/// A schedule as GetSecret returned it.
#[derive(Clone, Debug)]
struct Known {
    /// The version the secret was read at when GetSecret was made.
    version: Option<Version>,
    /// Wall time of the GetSecret.
    read_at: SystemTime,
    next_rotation: Option<SystemTime>,
    expires_at: Option<SystemTime>,
}

impl Known {
    fn from_secret(s: &model::Secret, version: Option<Version>, read_at: SystemTime) -> Self {
        let next_rotation = s
            .rotation
            .as_ref()
            .and_then(|r| r.next_rotation_time)
            .and_then(|t| SystemTime::try_from(t).ok());
        let expires_at = s.expire_time().and_then(|t| SystemTime::try_from(**t).ok());
        Known {
            version,
            read_at,
            next_rotation,
            expires_at,
        }
    }

    /// Whether this schedule still holds for a read of `version` at wall time `now`: same
    /// version, no rotation planned after the GetSecret has come due since, and no expiry
    /// either (a secret read after its cached `expireTime` still exists: the expiry was moved).
    /// A time already past when it was read does not count: it would ask again at every read.
    fn holds(&self, version: Option<&Version>, now: SystemTime) -> bool {
        let came_due = |at: &SystemTime| self.read_at < *at && *at <= now;
        self.version.as_ref() == version
            && !self.next_rotation.as_ref().is_some_and(came_due)
            && !self.expires_at.as_ref().is_some_and(came_due)
    }

    fn apply(&self, mut secret: Secret) -> Secret {
        if let Some(at) = self.next_rotation {
            secret = secret.next_rotation(at);
        }
        if let Some(at) = self.expires_at {
            secret = secret.expires_at(at);
        }
        secret
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Schedules {
    /// `secret` (just read from the secret `name`) with its schedule, from the cache or from
    /// `get_secret` (GetSecret, called only when the cache cannot answer). Never fails: without
    /// a schedule, `secret` is returned as it is. Waiting for another read's GetSecret and this
    /// one's together take at most `timeout`.
    pub(crate) async fn apply<F, Fut>(
        &self,
        name: &str,
        secret: Secret,
        clock: &dyn Clock,
        timeout: Duration,
        get_secret: F,
    ) -> Secret
    where
        F: FnOnce() -> Fut,
        Fut: Future<
            Output = secrets_core::Result<Result<model::Secret, google_cloud_gax::error::Error>>,
        >,
    {
        let entry = lock(&self.entries)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let version = secret.version().cloned();
        let found = tokio::time::timeout(timeout, async {
            let mut state = entry.state.lock().await;
            if let Some(known) = state
                .known
                .as_ref()
                .filter(|k| k.holds(version.as_ref(), clock.wall()))
            {
                return Some(known.clone());
            }
            if state.denied_until.is_some_and(|until| clock.now() < until) {
                return None;
            }
            let read_at = clock.wall();
            let e = match get_secret().await {
                Ok(Ok(s)) => {
                    let known = Known::from_secret(&s, version.clone(), read_at);
                    state.known = Some(known.clone());
                    state.denied_until = None;
                    state.warned = false;
                    return Some(known);
                }
                Ok(Err(e)) => from_gax("GetSecret", &e),
                Err(e) => e,
            };
            if e.kind() == &ErrorKind::PermissionDenied {
                state.denied_until = Some(clock.now() + DENIED_FOR);
                if !std::mem::replace(&mut state.warned, true) {
                    tracing::warn!(
                        secret = name,
                        error = %e,
                        "no rotation schedule: GetSecret needs the permission \
                         secretmanager.secrets.get (roles/secretmanager.viewer; \
                         roles/secretmanager.secretAccessor lacks it). Reads go on without the \
                         schedule; GetSecret is not tried again for this secret for an hour"
                    );
                } else {
                    tracing::debug!(
                        secret = name,
                        error = %e,
                        "no rotation schedule (GetSecret still refused)"
                    );
                }
            } else {
                tracing::debug!(
                    secret = name,
                    error = %e,
                    "no rotation schedule; asking again at the next read"
                );
            }
            None
        })
        .await;
        match found {
            Ok(Some(known)) => known.apply(secret),
            Ok(None) => secret,
            Err(_elapsed) => {
                tracing::debug!(
                    secret = name,
                    "no rotation schedule: no GetSecret answer within {timeout:?}; asking again \
                     at the next read"
                );
                secret
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use google_cloud_gax::error::rpc::{Code, Status};
    use secrets_core::ManualClock;
    use secrets_core::testkit::LogCapture;
    use serde_json::json;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const NAME: &str = "projects/p1/secrets/db";
    const TIMEOUT: Duration = Duration::from_secs(30);

    /// ManualClock's wall time is 2027-01-15T08:00:00Z: the fields below are 10 min and 30 days
    /// after it. Shaped after schemas.Secret / schemas.Rotation of secretmanager.v1.json
    /// (without `ttl`, which is input only there, and which the SDK refuses next to
    /// `expireTime`: both are the `expiration` oneof).
    fn scheduled() -> model::Secret {
        serde_json::from_value(json!({
            "name": "projects/p1/secrets/db",
            "createTime": "2027-01-01T00:00:00Z",
            "rotation": { "nextRotationTime": "2027-01-15T08:10:00Z" },
            "expireTime": "2027-02-14T08:00:00Z",
        }))
        .unwrap()
    }

    fn at(clock: &ManualClock, after: Duration) -> SystemTime {
        clock.wall() - clock.elapsed() + after
    }

    /// `apply` of a secret at `version`, counting GetSecret calls, each answered by `answer`.
    async fn read(
        schedules: &Schedules,
        clock: &ManualClock,
        version: &str,
        calls: &AtomicUsize,
        answer: impl FnOnce() -> Result<model::Secret, google_cloud_gax::error::Error>,
    ) -> Secret {
        schedules
            .apply(
                NAME,
                Secret::new("v").versioned(version),
                clock,
                TIMEOUT,
                move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Let concurrent reads reach the entry's lock while this one is in flight.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                    Ok(answer())
                },
            )
            .await
    }

    #[tokio::test]
    async fn read_once_per_version_and_again_after_the_planned_rotation() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let s = read(&schedules, &clock, "1", &calls, || Ok(scheduled())).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(30 * 86400))));
        for _ in 0..5 {
            let s = read(&schedules, &clock, "1", &calls, || unreachable!()).await;
            assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A new version: asked again, once.
        read(&schedules, &clock, "2", &calls, || Ok(scheduled())).await;
        read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Past nextRotationTime: asked again, once, even when the answer is still that time.
        clock.advance(S(601)).await;
        let s = read(&schedules, &clock, "2", &calls, || Ok(scheduled())).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_read_after_the_cached_expiry_asks_again() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let expiring = || {
            Ok(serde_json::from_value(json!({
                "name": NAME,
                "expireTime": "2027-01-15T09:00:00Z",
            }))
            .unwrap())
        };
        read(&schedules, &clock, "1", &calls, expiring).await;
        clock.advance(S(3599)).await;
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Still readable after its expiry: it was moved (UpdateSecret).
        clock.advance(S(1)).await;
        let moved = || {
            Ok(serde_json::from_value(json!({
                "name": NAME,
                "expireTime": "2027-01-16T09:00:00Z",
            }))
            .unwrap())
        };
        let s = read(&schedules, &clock, "1", &calls, moved).await;
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(25 * 3600))));
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_secret_make_one_get_secret() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let reads = (0..8).map(|_| read(&schedules, &clock, "1", &calls, || Ok(scheduled())));
        for s in futures_util::future::join_all(reads).await {
            assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refusal_is_logged_once_and_not_retried_for_an_hour() {
        let logs = LogCapture::start();
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let denied = || {
            Err(google_cloud_gax::error::Error::service(
                Status::default()
                    .set_code(Code::PermissionDenied)
                    .set_message("Permission 'secretmanager.secrets.get' denied for resource"),
            ))
        };
        let s = read(&schedules, &clock, "1", &calls, denied).await;
        assert_eq!(s.metadata().next_rotation, None);
        assert_eq!(s.expose_bytes(), b"v");
        read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        clock.advance(DENIED_FOR - S(1)).await;
        read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        clock.advance(S(1)).await;
        read(&schedules, &clock, "2", &calls, denied).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let text = logs.text();
        assert_eq!(text.matches(" WARN ").count(), 1, "{text}");
        assert!(text.contains("secretmanager.secrets.get"), "{text}");
        // Granted again after the hour: the schedule is read.
        clock.advance(DENIED_FOR).await;
        let s = read(&schedules, &clock, "2", &calls, || Ok(scheduled())).await;
        assert!(s.metadata().next_rotation.is_some());
    }

    #[tokio::test]
    async fn other_failures_are_retried_at_the_next_read() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let unavailable = || {
            Err(google_cloud_gax::error::Error::service(
                Status::default().set_code(Code::Unavailable),
            ))
        };
        let s = read(&schedules, &clock, "1", &calls, unavailable).await;
        assert_eq!(s.metadata().next_rotation, None);
        let s = read(&schedules, &clock, "1", &calls, || Ok(scheduled())).await;
        assert!(s.metadata().next_rotation.is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_secret_without_a_schedule_is_asked_once_per_version() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let plain = || Ok(serde_json::from_value(json!({"name": NAME})).unwrap());
        let s = read(&schedules, &clock, "1", &calls, plain).await;
        assert_eq!(s.metadata().next_rotation, None);
        assert_eq!(s.metadata().expires_at, None);
        clock.advance(S(86400)).await;
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
