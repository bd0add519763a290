//! ProjectedToken against files written the way the kubelet writes them (testkit::TokenProjector):
//! re-read on the `..data` swap, at 80 % of the lifetime, after `invalidate`; last good token kept.
//! Claim shapes follow fixtures/k8s/projected_sa_token_claims.samples.json
//! (`official_docs_pod_bound_token`).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // waits for the real directory watch

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use keyrack_core::{Clock, ErrorKind, IdentityToken, ManualClock, SystemClock};
use keyrack_k8s::testkit::{TokenProjector, unsigned_jwt};
use keyrack_k8s::{InCluster, ProjectedToken};

fn claims(jti: &str, iat: u64, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "aud": ["vault"], "iss": "https://kubernetes.default.svc.cluster.local",
        "iat": iat, "nbf": iat, "exp": exp, "jti": jti,
        "sub": "system:serviceaccount:payments:app",
        "kubernetes.io": { "namespace": "payments", "pod": { "name": "app-7d9f", "uid": "u1" },
                           "serviceaccount": { "name": "app", "uid": "u2" } }
    })
}

fn wall_secs(clock: &dyn Clock) -> u64 {
    clock.wall().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn text(t: &ProjectedToken) -> String {
    t.token().await.unwrap().expose_str().unwrap().to_owned()
}

/// Whether `token` serves `want` within 5 s (the directory watch delivers on its own thread).
async fn seen_within_5s(token: &ProjectedToken, want: &str) -> bool {
    let deadline = SystemClock.now() + Duration::from_secs(5);
    while text(token).await != want {
        if SystemClock.now() >= deadline {
            return false;
        }
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(20))
            .await;
    }
    true
}

/// A token whose file is a symlink into a directory nobody watches: a change to `target` is seen
/// only by time or `invalidate`, never by the directory watch.
struct Unwatched {
    _dir: tempfile::TempDir,
    elsewhere: tempfile::TempDir,
    target: std::path::PathBuf,
    token: ProjectedToken,
}

fn unwatched(clock: &ManualClock, content: &str) -> Unwatched {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real");
    std::fs::write(&target, content).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("token")).unwrap();
    let token = ProjectedToken::new(dir.path().join("token")).with_clock(clock.clone());
    Unwatched {
        _dir: dir,
        elsewhere,
        target,
        token,
    }
}

#[tokio::test]
async fn a_kubelet_swap_is_seen_without_waiting_for_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut projector = TokenProjector::new(dir.path(), "token").unwrap();
    let now = wall_secs(&SystemClock);
    let first = unsigned_jwt(&claims("one", now, now + 3600));
    projector.project(&first).unwrap();
    let token = ProjectedToken::new(projector.path());
    assert_eq!(text(&token).await, first);
    assert_eq!(
        token.claims().unwrap().service_account.as_deref(),
        Some("app")
    );

    let second = unsigned_jwt(&claims("two", now, now + 3600));
    projector.project(&second).unwrap();
    // Far from 80 % of an hour: only the directory watch can explain a re-read.
    assert!(
        seen_within_5s(&token, &second).await,
        "the swap was not seen within 5 s"
    );
    // The kubelet removed the old payload directory; exactly one remains.
    let payloads = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("..") && name != "..data"
        })
        .count();
    assert_eq!(payloads, 1);
}

/// The token is a symlink into a directory that is not watched, so changing the target is seen
/// only by time: at 80 % of `iat → exp`, not before.
#[tokio::test]
async fn re_read_at_eighty_percent_of_the_lifetime() {
    let clock = ManualClock::new();
    let iat = wall_secs(&clock);
    let Unwatched {
        target,
        token,
        elsewhere: _elsewhere,
        _dir,
    } = unwatched(&clock, &unsigned_jwt(&claims("one", iat, iat + 50)));
    assert!(text(&token).await.contains('.'));
    let first = text(&token).await;

    let second = unsigned_jwt(&claims("two", iat, iat + 3600));
    std::fs::write(&target, &second).unwrap();
    clock.advance(Duration::from_secs(39)).await; // 78 %
    assert_eq!(
        text(&token).await,
        first,
        "re-read before 80 % of the lifetime"
    );
    clock.advance(Duration::from_secs(2)).await; // 82 %
    assert_eq!(text(&token).await, second);
}

#[tokio::test]
async fn a_token_without_expiry_is_re_read_every_minute() {
    let clock = ManualClock::new();
    let Unwatched {
        target,
        token,
        elsewhere: _elsewhere,
        _dir,
    } = unwatched(&clock, &unsigned_jwt(&serde_json::json!({ "sub": "x" })));
    let first = text(&token).await;
    let second = unsigned_jwt(&serde_json::json!({ "sub": "y" }));
    std::fs::write(&target, &second).unwrap();
    clock.advance(Duration::from_secs(59)).await;
    assert_eq!(text(&token).await, first);
    clock.advance(Duration::from_secs(1)).await;
    assert_eq!(text(&token).await, second);
}

#[tokio::test]
async fn invalidate_forces_a_re_read() {
    let clock = ManualClock::new();
    let iat = wall_secs(&clock);
    let Unwatched {
        target,
        token,
        elsewhere: _elsewhere,
        _dir,
    } = unwatched(&clock, &unsigned_jwt(&claims("one", iat, iat + 3600)));
    let first = text(&token).await;
    let second = unsigned_jwt(&claims("two", iat, iat + 3600));
    std::fs::write(&target, &second).unwrap();
    assert_eq!(text(&token).await, first);
    token.invalidate(); // a backend answered 401
    assert_eq!(text(&token).await, second);
}

#[tokio::test]
async fn a_failed_re_read_keeps_the_last_good_token_until_it_expires() {
    let clock = ManualClock::new();
    let iat = wall_secs(&clock);
    let good = unsigned_jwt(&claims("good", iat, iat + 100));
    let Unwatched {
        target,
        token,
        elsewhere: _elsewhere,
        _dir,
    } = unwatched(&clock, &good);
    assert_eq!(text(&token).await, good);

    std::fs::write(&target, "half-written-garbage").unwrap();
    token.invalidate();
    assert_eq!(
        text(&token).await,
        good,
        "a bad re-read must not lose the good token"
    );
    std::fs::remove_file(&target).unwrap();
    clock.advance(Duration::from_secs(2)).await;
    token.invalidate();
    assert_eq!(
        text(&token).await,
        good,
        "a missing file must not lose the good token"
    );

    // Once the last good token has expired there is nothing to fall back on.
    clock.advance(Duration::from_secs(100)).await;
    let e = token.token().await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config, "{e}");
    assert!(!e.to_string().contains(&good));
}

#[tokio::test]
async fn bad_files_are_typed_errors_that_never_show_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let clock = ManualClock::new();
    let now = wall_secs(&clock);

    let missing = ProjectedToken::new(&path).with_clock(clock.clone());
    let e = missing.token().await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    assert!(
        e.to_string()
            .contains("is the service-account token volume mounted"),
        "{e}"
    );

    std::fs::write(&path, "").unwrap();
    let e = ProjectedToken::new(&path)
        .with_clock(clock.clone())
        .token()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidValue, "{e}");

    std::fs::write(&path, "opaque-not-a-jwt-value").unwrap();
    let e = ProjectedToken::new(&path)
        .with_clock(clock.clone())
        .token()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidValue, "{e}");
    assert!(!format!("{e} {e:?}").contains("opaque-not-a-jwt-value"));

    let expired = unsigned_jwt(&claims("old", now - 7200, now - 3600));
    std::fs::write(&path, &expired).unwrap();
    let e = ProjectedToken::new(&path)
        .with_clock(clock.clone())
        .token()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Expired, "{e}");
    assert!(!format!("{e} {e:?}").contains(&expired));

    let good = unsigned_jwt(&claims("fine", now, now + 600));
    std::fs::write(&path, &good).unwrap();
    let token = ProjectedToken::new(&path).with_clock(clock.clone());
    token.token().await.unwrap();
    let shown = format!("{token:?}");
    assert!(!shown.contains(&good), "{shown}");
    assert!(
        shown.contains("payments"),
        "the claims say who the pod is: {shown}"
    );
}

#[test]
fn in_cluster_reads_the_service_account_mount_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let e = InCluster::from_parts(None, None, dir.path()).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    for piece in ["KUBERNETES_SERVICE_HOST", "namespace", "ca.crt", "token"] {
        assert!(e.to_string().contains(piece), "{piece} not named in: {e}");
    }

    std::fs::write(dir.path().join("namespace"), "payments\n").unwrap();
    std::fs::write(dir.path().join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(dir.path().join("token"), "x.y.z").unwrap();
    let c = InCluster::from_parts(Some("10.96.0.1"), Some("443"), dir.path()).unwrap();
    assert_eq!(c.api_server().as_str(), "https://10.96.0.1/");
    assert_eq!(c.namespace(), "payments");
    let c = InCluster::from_parts(Some("fd00::1"), Some("6443"), dir.path()).unwrap();
    assert_eq!(c.api_server().as_str(), "https://[fd00::1]:6443/");
}

/// A token at a sub-path of the volume is read through `<mount>/vault -> ..data/vault`; a watch
/// on `<mount>/vault` would follow the link into a payload directory the kubelet deletes at the
/// first swap, so every later swap must still be seen (the watch is on the directory holding
/// `..data`).
#[tokio::test]
async fn every_swap_of_a_sub_path_token_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut projector = TokenProjector::new(dir.path(), "vault/token").unwrap();
    let now = wall_secs(&SystemClock);
    projector
        .project(&unsigned_jwt(&claims("one", now, now + 3600)))
        .unwrap();
    let token = ProjectedToken::new(projector.path());
    token.token().await.unwrap();
    for jti in ["two", "three", "four"] {
        let next = unsigned_jwt(&claims(jti, now, now + 3600));
        projector.project(&next).unwrap();
        assert!(
            seen_within_5s(&token, &next).await,
            "swap to {jti} not seen within 5 s"
        );
    }
}

/// Counts opens of files in `dir` with a watch of its own.
fn count_opens(dir: &std::path::Path) -> (notify::RecommendedWatcher, Arc<AtomicUsize>) {
    use notify::Watcher;
    let opens = Arc::new(AtomicUsize::new(0));
    let counter = opens.clone();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && matches!(
                e.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            )
        {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .unwrap();
    (watcher, opens)
}

async fn let_notify_deliver() {
    SystemClock
        .sleep_until(SystemClock.now() + Duration::from_millis(100))
        .await;
}

/// The opens counted once at least `expected` were delivered (or 3 s passed) and 150 ms more
/// went by for any extra one: inotify delivers on its own thread, late on a loaded machine.
async fn opens_after(opens: &AtomicUsize, expected: usize) -> usize {
    let deadline = SystemClock.now() + Duration::from_secs(3);
    while opens.load(Ordering::SeqCst) < expected && SystemClock.now() < deadline {
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(20))
            .await;
    }
    let_notify_deliver().await;
    opens.load(Ordering::SeqCst)
}

/// Past 80 % the kubelet swaps at its next sync, or not at all while it cannot reach the API
/// server: meanwhile calls must not each open the file.
#[tokio::test]
async fn past_eighty_percent_an_unchanged_token_is_re_read_at_most_every_five_seconds() {
    let clock = ManualClock::new();
    let iat = wall_secs(&clock);
    let Unwatched {
        target: _target,
        token,
        elsewhere,
        _dir,
    } = unwatched(&clock, &unsigned_jwt(&claims("one", iat, iat + 3600)));
    token.token().await.unwrap();

    clock.advance(Duration::from_secs(2916)).await; // 81 %
    let (_watch, opens) = count_opens(elsewhere.path());
    for _ in 0..20 {
        token.token().await.unwrap();
    }
    clock.advance(Duration::from_secs(4)).await;
    token.token().await.unwrap();
    assert_eq!(
        opens_after(&opens, 1).await,
        1,
        "one re-read at the refresh point, none within 5 s"
    );
    clock.advance(Duration::from_secs(2)).await;
    token.token().await.unwrap();
    assert_eq!(opens_after(&opens, 2).await, 2, "re-read again after 5 s");
}

/// inotify reports the reader's own opens of a plain file in the watched directory: those are
/// not changes.
#[tokio::test]
async fn a_plain_token_file_is_not_re_read_because_it_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let now = wall_secs(&SystemClock);
    std::fs::write(&path, unsigned_jwt(&claims("plain", now, now + 3600))).unwrap();
    let token = ProjectedToken::new(&path);
    token.token().await.unwrap();
    let_notify_deliver().await;
    let (_watch, opens) = count_opens(dir.path());
    for _ in 0..10 {
        token.token().await.unwrap();
        let_notify_deliver().await;
    }
    assert_eq!(opens.load(Ordering::SeqCst), 0);
}
