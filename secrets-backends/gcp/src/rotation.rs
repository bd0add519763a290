//! The rotation schedule of secrets (GetSecret: `rotation.nextRotationTime`, `expireTime`), read
//! only with [`with_rotation_schedule`](crate::GcpBuilder::with_rotation_schedule).
//!
//! GetSecret is a metadata read, on the 600 requests per minute per project quota, so each
//! secret's schedule is cached and read again only when it may have changed:
//! - the first time;
//! - after a read returned a version newer than any the entry has seen (a rotation happened).
//!   The schedule belongs to the secret, not to a version: reads of `latest` and of an alias
//!   at an older version share the entry, and an older or equal version (an alias, a
//!   `latest` read that lagged) never invalidates it;
//! - once its `nextRotationTime` has passed; a `nextRotationTime` already past when it was read
//!   (Google has not moved it on yet) is read again [`PAST_ROTATION_RECHECK`] later, at most
//!   once per that period, never per read;
//! - ⅔ of the way from the GetSecret to its `expireTime`, as the engine's checks of a value
//!   with an expiry are (a check that finds the same expiry schedules the next one ⅔ through
//!   what is left), so an expiry moved (UpdateSecret) before it passes is seen at the engine's
//!   next check; under [`MIN_EXPIRY_STEP`] before it, once it has passed.
//!
//! One GetSecret at a time per secret: concurrent reads wait for it and use its answer. A read
//! whose GetSecret fails (or does not answer in time) keeps the schedule cached before, stale
//! but the best known (without an `expireTime` already past: the secret was just read), so the
//! engine does not drop the expiry it plans with; the entry stays due and the next read asks
//! again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use google_cloud_secretmanager_v1::model;
use keyrack_core::schedule::expiry_delay;
use keyrack_core::{Clock, ErrorKind, Secret, Version};

use crate::errors::from_gax;

/// How long a secret whose GetSecret was refused (PERMISSION_DENIED) is read without asking for
/// its schedule again.
pub(crate) const DENIED_FOR: Duration = Duration::from_secs(3600);

/// How long after a GetSecret that returned a `nextRotationTime` already past (the rotation is
/// late, or Google has not moved the time on yet) the schedule is asked for again.
pub(crate) const PAST_ROTATION_RECHECK: Duration = Duration::from_secs(600);

/// Under this much time left before the cached `expireTime`, the schedule is no longer read
/// again ⅔ of the way there but once the time has passed (the engine stops checking a value
/// with less than a second left).
pub(crate) const MIN_EXPIRY_STEP: Duration = Duration::from_secs(1);

/// How much earlier than the engine's ⅔ point the cached expiry comes due, at most (and at most
/// a tenth of the time left): the engine times its check from before the value's
/// AccessSecretVersion, the GetSecret happens after it, so without this a check could arrive a
/// third of that read's latency before the entry is due and be answered from the cache.
const ENGINE_SKEW: Duration = Duration::from_secs(1);

/// Per-secret schedules, by the secret's full resource name
/// (`projects/<p>[/locations/<l>]/secrets/<s>`).
#[derive(Default)]
pub(crate) struct Schedules {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// One secret's entry.
#[derive(Default)]
struct Entry {
    /// The last schedule GetSecret returned. Also read without waiting for a GetSecret in
    /// flight, by reads that ran out of time waiting.
    known: Mutex<Option<Known>>,
    /// Held while the entry's GetSecret is in flight.
    asking: tokio::sync::Mutex<Asking>,
}

#[derive(Default)]
struct Asking {
    /// Until when GetSecret is not tried again after a PERMISSION_DENIED.
    denied_until: Option<Instant>,
    /// Whether the refusal was already logged at warn (reset by a successful GetSecret).
    warned: bool,
}

/// A schedule as GetSecret returned it.
#[derive(Clone, Debug)]
struct Known {
    /// The highest version number read from the secret when (or before) GetSecret was made:
    /// only a version above it is a rotation. `None`: no numbered version read yet.
    newest: Option<u64>,
    next_rotation: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    /// When the schedule is to be read again whatever the version read (`None`: only after a
    /// newer version).
    due: Option<SystemTime>,
}

/// The number of a version (Secret Manager's are numbers; anything else is not comparable).
fn number(version: Option<&Version>) -> Option<u64> {
    version?.as_str().parse().ok()
}

impl Known {
    /// The schedule of `s`, read at wall time `read_at` after a read of version `newest`.
    fn from_secret(s: &model::Secret, newest: Option<u64>, read_at: SystemTime) -> Self {
        let next_rotation = s
            .rotation
            .as_ref()
            .and_then(|r| r.next_rotation_time)
            .and_then(|t| SystemTime::try_from(t).ok());
        let expires_at = s.expire_time().and_then(|t| SystemTime::try_from(**t).ok());
        let rotation_due = next_rotation.map(|at| {
            if at > read_at {
                at
            } else {
                read_at + PAST_ROTATION_RECHECK
            }
        });
        // An expiry already past when read is not asked for again (the secret is being
        // deleted): asking at every read would not tell more.
        let expiry_due = expires_at
            .and_then(|at| Some((at, at.duration_since(read_at).ok()?)))
            .filter(|(_, left)| !left.is_zero())
            .map(|(at, left)| {
                if left < MIN_EXPIRY_STEP {
                    at
                } else {
                    let skew = ENGINE_SKEW.min(left / 10);
                    read_at + expiry_delay(left).saturating_sub(skew)
                }
            });
        let due = match (rotation_due, expiry_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Known {
            newest,
            next_rotation,
            expires_at,
            due,
        }
    }

    /// Whether `version` is newer than any version this schedule was read with or after.
    fn is_newer(&self, version: Option<u64>) -> bool {
        match (version, self.newest) {
            (Some(v), Some(newest)) => v > newest,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Whether this schedule still holds for a read of `version` at wall time `now`: not a
    /// newer version, and not due.
    fn holds(&self, version: Option<u64>, now: SystemTime) -> bool {
        !self.is_newer(version) && self.due.is_none_or(|due| now < due)
    }

    /// This schedule where a GetSecret failed at `now`: an expiry already past is left out (the
    /// secret was just read, so it was moved, to a time unknown).
    fn stale(&self, now: SystemTime) -> Known {
        Known {
            expires_at: self.expires_at.filter(|at| *at > now),
            ..self.clone()
        }
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

impl Entry {
    /// The cached schedule, if it holds for a read of `version` at `now`.
    fn holding(&self, version: Option<u64>, now: SystemTime) -> Option<Known> {
        lock(&self.known)
            .as_ref()
            .filter(|k| k.holds(version, now))
            .cloned()
    }

    /// The cached schedule, due or not, for a read whose GetSecret failed at `now`.
    fn stale(&self, now: SystemTime) -> Option<Known> {
        lock(&self.known).as_ref().map(|k| k.stale(now))
    }
}

impl Schedules {
    /// `secret` (just read from the secret `name`) with its schedule, from the cache or from
    /// `get_secret` (GetSecret, called only when the cache cannot answer). Never fails: when
    /// GetSecret fails, `secret` gets the schedule cached before (stale), or none. Waiting for
    /// another read's GetSecret and this one's together take at most `timeout`.
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
            Output = keyrack_core::Result<Result<model::Secret, google_cloud_gax::error::Error>>,
        >,
    {
        let entry = lock(&self.entries)
            .entry(name.to_owned())
            .or_default()
            .clone();
        let version = number(secret.version());
        if let Some(known) = entry.holding(version, clock.wall()) {
            return known.apply(secret);
        }
        let found = tokio::time::timeout(timeout, async {
            let mut asking = entry.asking.lock().await;
            // Another read's GetSecret may have answered meanwhile.
            if let Some(known) = entry.holding(version, clock.wall()) {
                return Some(known);
            }
            if asking.denied_until.is_some_and(|until| clock.now() < until) {
                return entry.stale(clock.wall());
            }
            let read_at = clock.wall();
            let e = match get_secret().await {
                Ok(Ok(s)) => {
                    let mut known = lock(&entry.known);
                    let newest = known.as_ref().and_then(|k| k.newest).max(version);
                    let fresh = Known::from_secret(&s, newest, read_at);
                    *known = Some(fresh.clone());
                    asking.denied_until = None;
                    asking.warned = false;
                    return Some(fresh);
                }
                Ok(Err(e)) => from_gax("GetSecret", &e),
                Err(e) => e,
            };
            if e.kind() == &ErrorKind::PermissionDenied {
                asking.denied_until = Some(clock.now() + DENIED_FOR);
                if !std::mem::replace(&mut asking.warned, true) {
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
                    "rotation schedule not read again (keeping the one read before, if any); \
                     asking again at the next read"
                );
            }
            entry.stale(clock.wall())
        })
        .await;
        match found {
            Ok(Some(known)) => known.apply(secret),
            Ok(None) => secret,
            Err(_elapsed) => {
                tracing::debug!(
                    secret = name,
                    "rotation schedule not read again: no GetSecret answer within {timeout:?} \
                     (keeping the one read before, if any); asking again at the next read"
                );
                match entry.stale(clock.wall()) {
                    Some(known) => known.apply(secret),
                    None => secret,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use google_cloud_gax::error::rpc::{Code, Status};
    use keyrack_core::ManualClock;
    use keyrack_core::testkit::LogCapture;
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
        // Past nextRotationTime: asked again, once, even when the answer is still that time
        // (then not before ten minutes later).
        clock.advance(S(601)).await;
        let s = read(&schedules, &clock, "2", &calls, || Ok(scheduled())).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// GetSecret's answer with only `expireTime` (RFC 3339).
    fn expiring(at: &str) -> Result<model::Secret, google_cloud_gax::error::Error> {
        Ok(serde_json::from_value(json!({ "name": NAME, "expireTime": at })).unwrap())
    }

    fn unavailable() -> Result<model::Secret, google_cloud_gax::error::Error> {
        Err(google_cloud_gax::error::Error::service(
            Status::default().set_code(Code::Unavailable),
        ))
    }

    // The engine checks a value with an expiry ⅔ of the way from its last check to the expiry,
    // and stops under a second before it. Each of these checks makes a GetSecret (so a moved
    // expiry is seen), reads between them do not, and they are few (a shrinking series).
    #[tokio::test]
    async fn an_expiry_is_asked_again_at_each_of_the_engines_two_thirds_checks() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let in_an_hour = || expiring("2027-01-15T09:00:00Z");
        read(&schedules, &clock, "1", &calls, in_an_hour).await;
        let end = at(&clock, S(3600));
        let mut checks = 1;
        loop {
            let left = end.duration_since(clock.wall()).unwrap();
            if left < MIN_EXPIRY_STEP {
                break;
            }
            let step = expiry_delay(left);
            clock.advance(step / 2).await;
            let s = read(&schedules, &clock, "1", &calls, || unreachable!()).await;
            assert_eq!(s.metadata().expires_at, Some(end));
            clock.advance(step - step / 2).await;
            let s = read(&schedules, &clock, "1", &calls, in_an_hour).await;
            assert_eq!(s.metadata().expires_at, Some(end));
            checks += 1;
            assert_eq!(calls.load(Ordering::SeqCst), checks);
        }
        assert!(checks <= 10, "{checks}");
        // Under a second left: not again until it has passed; read after it (still there), the
        // expiry was moved: asked once more.
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        clock
            .advance(end.duration_since(clock.wall()).unwrap())
            .await;
        let s = read(&schedules, &clock, "1", &calls, || {
            expiring("2027-01-16T09:00:00Z")
        })
        .await;
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(25 * 3600))));
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), checks + 1);
    }

    // An expiry moved (UpdateSecret) long before it would pass is seen at the first ⅔ check,
    // not only once the old time has passed.
    #[tokio::test]
    async fn an_expiry_moved_early_is_seen_at_the_first_two_thirds_check() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        read(&schedules, &clock, "1", &calls, || {
            expiring("2027-01-15T09:00:00Z")
        })
        .await;
        clock.advance(S(2300)).await;
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        clock.advance(S(100)).await;
        let s = read(&schedules, &clock, "1", &calls, || {
            expiring("2027-01-16T09:00:00Z")
        })
        .await;
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(25 * 3600))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    // `latest` at version 2 and an alias at version 1 of one secret: one schedule (it belongs to
    // the secret), read once; only a version above 2 is a rotation.
    #[tokio::test]
    async fn an_older_version_shares_the_schedule_and_only_a_newer_one_asks_again() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        read(&schedules, &clock, "2", &calls, || Ok(scheduled())).await;
        for v in ["1", "2", "1", "2"] {
            let s = read(&schedules, &clock, v, &calls, || unreachable!()).await;
            assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))), "{v}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        read(&schedules, &clock, "3", &calls, || Ok(scheduled())).await;
        for v in ["1", "2", "3"] {
            read(&schedules, &clock, v, &calls, || unreachable!()).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The alias read first: the newer `latest` asks once, then neither does.
        let other = Schedules::default();
        let calls = AtomicUsize::new(0);
        read(&other, &clock, "1", &calls, || Ok(scheduled())).await;
        read(&other, &clock, "2", &calls, || Ok(scheduled())).await;
        // A GetSecret that came due (the passed rotation time) on the alias's read keeps 2 as
        // the newest version seen.
        clock.advance(S(601)).await;
        read(&other, &clock, "1", &calls, || Ok(scheduled())).await;
        for v in ["1", "2", "1", "2"] {
            read(&other, &clock, v, &calls, || unreachable!()).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    // A GetSecret that fails once the entry is due (a new version, here) leaves the read with
    // the schedule read before rather than none, so the engine keeps planning with it; the next
    // read asks again.
    #[tokio::test]
    async fn a_failed_get_secret_keeps_the_schedule_read_before() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        read(&schedules, &clock, "1", &calls, || Ok(scheduled())).await;
        let s = read(&schedules, &clock, "2", &calls, unavailable).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(30 * 86400))));
        let s = read(&schedules, &clock, "2", &calls, unavailable).await;
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(30 * 86400))));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        read(&schedules, &clock, "2", &calls, || Ok(scheduled())).await;
        read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    // Failing after the cached expiry has passed (the secret, just read, is still there): the
    // passed expiry is left out (it would make the engine report the value expired), the
    // rest is kept.
    #[tokio::test]
    async fn a_failed_get_secret_leaves_out_an_expiry_already_past() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let both = || {
            Ok(serde_json::from_value(json!({
                "name": NAME,
                "rotation": { "nextRotationTime": "2027-01-16T08:00:00Z" },
                "expireTime": "2027-01-15T09:00:00Z",
            }))
            .unwrap())
        };
        read(&schedules, &clock, "1", &calls, both).await;
        clock.advance(S(3601)).await;
        let s = read(&schedules, &clock, "1", &calls, unavailable).await;
        assert_eq!(s.metadata().expires_at, None);
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(86400))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    // A GetSecret that does not answer within the time limit: the schedule read before, too.
    #[tokio::test]
    async fn a_get_secret_without_an_answer_keeps_the_schedule_read_before() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        read(&schedules, &clock, "1", &calls, || Ok(scheduled())).await;
        let s = schedules
            .apply(
                NAME,
                Secret::new("v").versioned("2"),
                &clock,
                Duration::from_millis(50),
                std::future::pending,
            )
            .await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(30 * 86400))));
    }

    // A refusal after a schedule was read: reads keep that schedule for the hour.
    #[tokio::test]
    async fn a_refusal_keeps_the_schedule_read_before() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let denied = || {
            Err(google_cloud_gax::error::Error::service(
                Status::default().set_code(Code::PermissionDenied),
            ))
        };
        read(&schedules, &clock, "1", &calls, || Ok(scheduled())).await;
        let s = read(&schedules, &clock, "2", &calls, denied).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(600))));
        let s = read(&schedules, &clock, "2", &calls, || unreachable!()).await;
        assert_eq!(s.metadata().expires_at, Some(at(&clock, S(30 * 86400))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    // A nextRotationTime already past when read (Google has not moved it on yet): read again
    // ten minutes later, and every ten minutes while it stays past, never per read.
    #[tokio::test]
    async fn a_rotation_time_already_past_is_asked_again_every_ten_minutes() {
        let clock = ManualClock::new();
        let schedules = Schedules::default();
        let calls = AtomicUsize::new(0);
        let rotating = |next: &str| {
            Ok(serde_json::from_value(json!({
                "name": NAME,
                "rotation": { "nextRotationTime": next },
            }))
            .unwrap())
        };
        let past = || rotating("2027-01-15T07:00:00Z");
        let s = read(&schedules, &clock, "1", &calls, past).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(0)) - S(3600)));
        for round in 1..=2 {
            for _ in 0..3 {
                clock.advance(PAST_ROTATION_RECHECK / 4).await;
                read(&schedules, &clock, "1", &calls, || unreachable!()).await;
            }
            clock.advance(PAST_ROTATION_RECHECK / 4).await;
            read(&schedules, &clock, "1", &calls, past).await;
            assert_eq!(calls.load(Ordering::SeqCst), 1 + round);
        }
        // Moved on at last: the new time is kept, and asked for after it.
        let s = read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(0)) - S(3600)));
        clock.advance(PAST_ROTATION_RECHECK).await;
        let s = read(&schedules, &clock, "1", &calls, || {
            rotating("2027-01-16T07:00:00Z")
        })
        .await;
        assert_eq!(s.metadata().next_rotation, Some(at(&clock, S(23 * 3600))));
        clock.advance(S(3 * 3600)).await;
        read(&schedules, &clock, "1", &calls, || unreachable!()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
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
