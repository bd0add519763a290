//! `KubernetesSecrets` against a loopback fake of the API server over HTTPS
//! (`fixtures/k8s/fake_api.rs`; each answer is shaped after a fixture in `fixtures/k8s/`, named
//! there and at each test).
#![allow(clippy::unwrap_used)] // helpers of tests: a failure should fail the test loudly

mod k8s_support;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_support::*;
use keyrack_core::Clock;
use keyrack_core::testkit::{Seeder, assert_conformance};
use keyrack_core::{
    Backoff, ErrorKind, IdentityToken, ManualClock, Result, RotationEvent, Secret, SecretRef,
    SecretSource, SecretValue, Secrets, SourceEvent, StaticToken, SystemClock, Version,
    async_trait,
};
use keyrack_k8s::source::KubernetesSecrets;

/// The version of a change: versions follow the data (a digest made with keys of the source's
/// own), so tests compare them with each other and with reads, not with resourceVersions.
#[track_caller]
fn changed(event: SourceEvent) -> Version {
    match event {
        SourceEvent::Changed {
            version: Some(version),
        } => version,
        other => panic!("not a change: {other:?}"),
    }
}

/// The conformance suite's secrets live in namespace `conformance`. A JSON object is stored as
/// the Secret's keys (the suite's field checks read them back with `#field`); anything else is
/// stored under the key `value`.
struct K8sSeeder {
    api: FakeApi,
    source: Arc<dyn SecretSource>,
}

#[async_trait]
impl Seeder for K8sSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.source.clone()
    }

    fn reference(&self, name: &str) -> SecretRef {
        r(&format!("k8s://conformance/{name}"))
    }

    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        let members: Vec<(String, Vec<u8>)> =
            match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(value) {
                Ok(object) => object
                    .into_iter()
                    .map(|(k, v)| {
                        let bytes = match v {
                            serde_json::Value::String(s) => s.into_bytes(),
                            other => other.to_string().into_bytes(),
                        };
                        (k, bytes)
                    })
                    .collect(),
                Err(_) => vec![("value".to_owned(), value.to_vec())],
            };
        let data: Vec<(&str, &[u8])> = members
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        // `put` tells open watches (MODIFIED/ADDED), like a write through the API would.
        self.api.put("conformance", name, &data);
        Ok(())
    }

    fn written(&self, secret: &Secret) -> Vec<u8> {
        match secret.field("value") {
            Ok(member) => member.expose_bytes().to_vec(),
            Err(_) => secret.expose_bytes().to_vec(),
        }
    }
}

/// Fixtures: every GET/404/watch answer of the fake (see `fake_api.rs`).
#[tokio::test]
async fn conformance_suite_passes() {
    let (_server, api, k8s) = start().await;
    let seeder = K8sSeeder {
        api,
        source: Arc::new(k8s),
    };
    assert_conformance(&seeder).await;
}

/// Fixture: `secret_api.samples.json` `secret_get_200_assembled` (its data: admin / s3cr3t).
#[tokio::test]
async fn get_decodes_data_and_selects_keys() {
    let (server, api, k8s) = start().await;
    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", PASSWORD)],
    );

    let whole = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    assert_eq!(
        whole.expose_str().unwrap(),
        r#"{"password":"s3cr3t","username":"admin"}"#
    );
    // The version follows the data (a keyed digest), not the resourceVersion.
    let version = whole.version().unwrap().clone();
    assert!(!version.as_str().contains("482"), "{version:?}");
    let again = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    assert_eq!(again.version(), Some(&version));
    let get = &server.requests_to("/api/v1/namespaces/apps/secrets/db-creds")[0];
    assert_eq!(get.method, "GET");
    assert_eq!(get.header("authorization"), Some("Bearer tok-1"));

    // `#key` goes through the client's field selection, like every source's `#field`.
    let secrets = Secrets::builder()
        .source("k8s", k8s.clone())
        .build()
        .unwrap();
    let password = secrets
        .get_secret("k8s://apps/db-creds#password")
        .await
        .unwrap();
    assert_eq!(password.expose_bytes(), PASSWORD);
    let absent = secrets
        .get_secret("k8s://apps/db-creds#absent")
        .await
        .unwrap_err();
    assert_eq!(absent.kind(), &ErrorKind::InvalidValue);

    // A key that is not UTF-8 cannot be in the JSON map; `?key=` reads it byte for byte.
    let binary: &[u8] = &[0xff, 0x00, 0xfe, b'k'];
    api.put("apps", "store", &[("keystore", binary), ("note", b"text")]);
    let raw = secrets
        .get_secret("k8s://apps/store?key=keystore")
        .await
        .unwrap();
    assert_eq!(raw.expose_bytes(), binary);
    let e = k8s
        .fetch(&r("k8s://apps/store?key=missing"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidValue);
    secrets.shutdown().await;
}

/// Issue #13: a key whose bytes are not UTF-8 (a keystore) is left out of the JSON map, which
/// cannot hold it, instead of failing the whole read: `#note` on a text key works whatever the
/// other keys hold; the binary key is read with `?key=`.
/// Fixture: `secret_api.samples.json` `secret_get_200_assembled` with this data.
#[tokio::test]
async fn a_binary_key_does_not_stop_a_text_key_from_being_read() {
    let (_server, api, k8s) = start().await;
    let binary: &[u8] = &[0xff, 0x00, 0xfe, b'k'];
    api.put("apps", "store", &[("keystore", binary), ("note", b"text")]);
    let secrets = Secrets::builder()
        .source("k8s", k8s.clone())
        .build()
        .unwrap();
    let note = secrets.get_secret("k8s://apps/store#note").await.unwrap();
    assert_eq!(note.expose_bytes(), b"text");
    let whole = k8s.fetch(&r("k8s://apps/store")).await.unwrap();
    assert_eq!(whole.expose_str().unwrap(), r#"{"note":"text"}"#);
    let raw = secrets
        .get_secret("k8s://apps/store?key=keystore")
        .await
        .unwrap();
    assert_eq!(raw.expose_bytes(), binary);
    let e = secrets
        .get_secret("k8s://apps/store#keystore")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidValue);
    // A change of the binary key is still a new version of the map.
    let before = whole.version().cloned();
    api.put(
        "apps",
        "store",
        &[("keystore", b"\xff\x01"), ("note", b"text")],
    );
    let after = k8s.fetch(&r("k8s://apps/store")).await.unwrap();
    assert_ne!(after.version().cloned(), before);
    secrets.shutdown().await;
}

/// Fixture: `secret_watch_stream.assembled.jsonl` line 3 (MODIFIED) pushed to the open watch.
#[tokio::test]
async fn a_modified_event_reaches_a_handle_as_rotated() {
    let (server, api, k8s) = start().await;
    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", PASSWORD)],
    );
    // An hour between routine checks: only the watch can explain a rotation within the test.
    let secrets = Secrets::builder()
        .source("k8s", k8s)
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = secrets
        .handle("k8s://apps/db-creds#password")
        .await
        .unwrap();
    let mut events = handle.subscribe();
    let first = handle.current().version().cloned();
    api.wait_for_watches(1).await;
    // The watch starts at the most recent state (no resourceVersion): its synthetic ADDED
    // carries the version just read, so it is no change.
    let watch = &watch_requests(&server)[0];
    assert_eq!(watch.query_param("resourceVersion"), None);

    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", b"n3w-s3cr3t")],
    );
    let rotated = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(RotationEvent::Rotated { old, new, .. }) => return (old, new),
                Some(_) => continue,
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no Rotated event");
    assert_eq!(rotated.0, first);
    assert_eq!(rotated.1.as_ref(), handle.current().version());
    assert_ne!(rotated.0, rotated.1);
    assert_eq!(handle.current().expose_bytes(), b"n3w-s3cr3t");
    secrets.shutdown().await;
}

/// Fixtures: `secret_watch_stream.assembled.jsonl` lines 3 (MODIFIED), 4 (BOOKMARK), 5 (DELETED),
/// 1 (ADDED).
#[tokio::test]
async fn watch_reports_changes_deletion_and_follows_bookmarks() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    let watch = &watch_requests(&server)[0];
    assert_eq!(watch.path, "/api/v1/namespaces/apps/secrets");
    assert_eq!(
        watch.query_param("fieldSelector").as_deref(),
        Some("metadata.name=db-creds")
    );
    assert_eq!(watch.query_param("resourceVersion"), None);
    assert_eq!(
        watch.query_param("allowWatchBookmarks").as_deref(),
        Some("true")
    );

    api.put("apps", "db-creds", &[("password", b"two")]);
    changed(next(&mut feed).await.unwrap());

    // A bookmark moves the resume point without an event; the next watch starts there.
    let marked = api.bookmark(100);
    api.end_watches();
    api.wait_for_watches(1).await;
    let watches = watch_requests(&server);
    assert_eq!(watches.len(), 2);
    assert_eq!(
        watches[1].query_param("resourceVersion"),
        Some(marked.to_string())
    );

    api.delete("apps", "db-creds");
    assert_eq!(next(&mut feed).await.unwrap(), SourceEvent::Deleted);
    api.put("apps", "db-creds", &[("password", b"three")]);
    changed(next(&mut feed).await.unwrap());
    // Nothing but the events: the one read (the watch from the most recent state is a streaming
    // list, which shows the object's state itself; later watches resumed from the bookmark).
    quiet().await;
    assert_eq!(gets_of(&server, "apps", "db-creds"), 1);
}

/// Fixtures: `secret_watch_stream.assembled.jsonl` line 6 (ERROR 410 `Expired`) inside the
/// stream, and the same Status as an HTTP 410 answer (`watch_events_observed.json`).
#[tokio::test]
async fn an_expired_resource_version_relists_and_rewatches() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;

    // A change the watch never hears of, then the history behind it is compacted away.
    api.put_quietly("apps", "db-creds", &[("password", b"hidden")]);
    api.expire_watches();
    changed(next(&mut feed).await.unwrap());
    api.wait_for_watches(1).await;
    // Watched again from the most recent state, not from the object's own (old) version.
    let watches = watch_requests(&server);
    assert_eq!(watches.last().unwrap().query_param("resourceVersion"), None);
    // The read only: a watch from the most recent state is a streaming list.
    quiet().await;
    assert_eq!(gets_of(&server, "apps", "db-creds"), 1);
    // Changes keep arriving on the new watch.
    api.put("apps", "db-creds", &[("password", b"later")]);
    changed(next(&mut feed).await.unwrap());

    // The same when the server answers the watch request itself with HTTP 410.
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    api.put_quietly("apps", "db-creds", &[("password", b"hidden")]);
    api.gone_next_watch();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    changed(next(&mut feed).await.unwrap());
    api.wait_for_watches(1).await;
    let watches = watch_requests(&server);
    assert_eq!(watches.len(), 2);
    assert_eq!(watches[1].query_param("resourceVersion"), None);
}

/// A Secret last written long ago: its resourceVersion is older than the history the server
/// keeps (the fake compacts past it, as `expire_watches` does after `bookmark(500)` moved the
/// cluster on), so no watch may resume from it. Found by a second reading: the first version
/// re-read and re-watched from that version in a loop, ~500 GETs and watches a second.
/// Fixtures: `secret_watch_stream.assembled.jsonl` lines 1 (ADDED), 4 (BOOKMARK), 6 (ERROR 410).
#[tokio::test]
async fn a_secret_older_than_the_watch_history_does_not_make_the_watch_spin() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    api.bookmark(500);
    api.expire_watches();

    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    let idle = tokio::time::timeout(Duration::from_millis(1500), feed.recv()).await;
    assert!(
        idle.is_err(),
        "an unchanged Secret produced an event: {idle:?}"
    );
    let (gets, watches) = (
        gets_of(&server, "apps", "db-creds"),
        watch_requests(&server).len(),
    );
    // The read and one watch (a streaming list shows the object's state without a read).
    assert_eq!(
        (gets, watches),
        (1, 1),
        "{gets} GETs and {watches} watches for a quiet Secret"
    );

    // A compaction ending the open watch (ERROR 410) costs one new watch.
    api.bookmark(500);
    api.expire_watches();
    api.wait_for_watches(1).await;
    let idle = tokio::time::timeout(Duration::from_millis(1500), feed.recv()).await;
    assert!(
        idle.is_err(),
        "an unchanged Secret produced an event: {idle:?}"
    );
    let (gets, watches) = (
        gets_of(&server, "apps", "db-creds"),
        watch_requests(&server).len(),
    );
    assert_eq!((gets, watches), (1, 2));
    // And changes still arrive.
    api.put("apps", "db-creds", &[("password", b"later")]);
    changed(next(&mut feed).await.unwrap());
}

/// A change between the client's read and the start of its watch is reported: the watch's
/// synthetic ADDED carries a version other than the one read.
/// Fixtures: `secret_watch_stream.assembled.jsonl` line 1 (ADDED).
#[tokio::test]
async fn a_change_between_the_read_and_the_watch_is_reported() {
    let (_server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    api.put_quietly("apps", "db-creds", &[("password", b"between")]);
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    changed(next(&mut feed).await.unwrap());
}

/// Fixtures: `secret_watch_stream.assembled.jsonl` lines 3 (MODIFIED) and 4 (BOOKMARK), cut
/// into chunks at arbitrary bytes.
#[tokio::test]
async fn events_split_across_chunks_are_reassembled() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;

    api.put_quietly("apps", "db-creds", &[("password", b"a")]);
    let line_a = api.modified_line("apps", "db-creds");
    let b_rv = api.put_quietly("apps", "db-creds", &[("password", b"b")]);
    let line_b = api.modified_line("apps", "db-creds");
    let mut bytes = line_a.clone();
    bytes.extend(api.bookmark_line(b_rv + 5));
    bytes.extend(&line_b);
    // Cuts inside the first line's JSON, right before its newline, and in the middle of the
    // last line; the bookmark and the start of the last line share a chunk.
    let cuts = [7, 40, line_a.len() - 1, line_a.len() + 20, bytes.len() - 9];
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        api.push_raw(&bytes[from..cut]);
        from = cut;
    }
    let a = changed(next(&mut feed).await.unwrap());
    let b = changed(next(&mut feed).await.unwrap());
    assert_ne!(a, b);
    // Parsed, not recovered by a re-read: no GET after the read.
    quiet().await;
    assert_eq!(gets_of(&server, "apps", "db-creds"), 1);
    assert_eq!(watch_requests(&server).len(), 1);
}

/// A token that answers `old` until invalidated, then `new`; it counts invalidations.
struct RotatingToken {
    current: Mutex<&'static str>,
    new: &'static str,
    invalidated: AtomicUsize,
}

impl fmt::Debug for RotatingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RotatingToken")
    }
}

#[async_trait]
impl IdentityToken for RotatingToken {
    async fn token(&self) -> Result<SecretValue> {
        Ok(SecretValue::from(*self.current.lock().unwrap()))
    }

    fn invalidate(&self) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
        *self.current.lock().unwrap() = self.new;
    }
}

/// Fixtures: `secret_api.samples.json` `status_401_assembled`, `secret_get_200_assembled`.
#[tokio::test]
async fn a_401_invalidates_the_token_and_retries_once() {
    let (server, api) = FakeApi::start(&["tok-new"]).await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    let token = Arc::new(RotatingToken {
        current: Mutex::new("tok-old"),
        new: "tok-new",
        invalidated: AtomicUsize::new(0),
    });
    let k8s = source(&server, token.clone());
    let s = k8s.fetch(&r("k8s://apps/db-creds#password")).await.unwrap();
    assert_eq!(s.expose_bytes(), PASSWORD);
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 1);
    let auth: Vec<_> = server
        .requests()
        .iter()
        .map(|q| q.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(auth, ["Bearer tok-old", "Bearer tok-new"]);

    // Refused again after the fresh token: one retry only, then Unauthenticated.
    api.accept_tokens(&[]);
    let e = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated);
    assert_eq!(token.invalidated.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests().len(), 4);
}

/// Fixtures: `secret_api.samples.json` `status_403_observed`, `status_404_assembled`, and the
/// same Status shape for 429 and 500.
#[tokio::test]
async fn failures_are_typed() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    api.forbid("registry-credentials");

    let e = k8s
        .fetch(&r("k8s://apps/registry-credentials"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PermissionDenied);
    let text = e.to_string();
    assert!(
        text.contains("resourceNames") && text.contains("registry-credentials"),
        "{text}"
    );
    // The watch of a forbidden Secret fails its feed once, and the feed ends (the client then
    // falls back to interval checks).
    let mut feed = follow(&k8s, "k8s://apps/registry-credentials");
    let e = next(&mut feed).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PermissionDenied);
    assert!(feed.recv().await.is_none());

    let e = k8s.fetch(&r("k8s://apps/missing")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotFound);

    api.fail_next_get(429, Some(7));
    let e = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (&ErrorKind::Throttled, Some(Duration::from_secs(7)))
    );
    api.fail_next_get(500, None);
    let e = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable);
    assert!(e.is_retryable());

    let before = server.requests().len();
    for bad in [
        "k8s://only-a-name",
        "k8s://Apps/db-creds",
        "k8s://apps/db_creds",
        "k8s://apps/db-creds/extra",
        "k8s://apps/db-creds?key=a/b",
        "k8s://apps/db-creds?other=1",
    ] {
        let e = k8s.fetch(&r(bad)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}");
    }
    for unsupported in [
        "k8s://apps/db-creds?version=3",
        "k8s://apps/db-creds?stage=x",
    ] {
        let e = k8s.fetch(&r(unsupported)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Unsupported, "{unsupported}");
    }
    assert_eq!(
        server.requests().len(),
        before,
        "refused before any request"
    );

    let token: Arc<dyn IdentityToken> = Arc::new(StaticToken::new(TOKEN));
    let plain = KubernetesSecrets::builder()
        .api_server("http://127.0.0.1:1")
        .token(token.clone())
        .build()
        .unwrap_err();
    assert_eq!(plain.kind(), &ErrorKind::Config);
    let no_token = KubernetesSecrets::builder()
        .api_server(server.url())
        .build()
        .unwrap_err();
    assert_eq!(no_token.kind(), &ErrorKind::Config);
    let bad_ca = KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem("not a certificate")
        .token(token)
        .build()
        .unwrap_err();
    assert_eq!(bad_ca.kind(), &ErrorKind::Config);
}

/// Issue #12: references are checked before any request, against Kubernetes' own limits
/// (namespace: a DNS label, at most 63 characters; Secret name: a DNS subdomain, at most 253;
/// data key: at most 253 of letters, digits, `-`, `_`, `.`), and only `?key=` is a parameter
/// (a near miss is named). The errors say what is wrong and never quote the part they refuse:
/// a reference that does not check out may be a value pasted in the wrong place.
/// No fixture: nothing is sent.
#[tokio::test]
async fn references_are_checked_against_kubernetes_limits_without_quoting_them() {
    let (server, _api, k8s) = start().await;
    let long_name = format!("s3cr3t-{}", "n".repeat(247));
    let long_ns = format!("s3cr3t-{}", "n".repeat(57));
    let long_key = format!("s3cr3t-{}", "k".repeat(247));
    for (bad, says) in [
        (format!("k8s://apps/{long_name}"), "253"),
        (format!("k8s://{long_ns}/db-creds"), "63"),
        (format!("k8s://apps/db-creds?key={long_key}"), "253"),
        ("k8s://apps/S3CRET_name".to_owned(), "Secret name"),
        ("k8s://S3CRET_ns/db-creds".to_owned(), "namespace"),
        ("k8s://apps/db-creds?key=s3cr3t/x".to_owned(), "key"),
    ] {
        let e = k8s.fetch(&r(&bad)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}");
        let shown = format!("{} {:?}", e.message(), e.message());
        assert!(shown.contains(says), "{bad}: {shown}");
        assert!(
            !shown.to_ascii_lowercase().contains("s3cr3t"),
            "the input was quoted: {shown}"
        );
    }
    for (bad, hint) in [
        ("k8s://apps/db-creds?Key=password", "did you mean `key`?"),
        ("k8s://apps/db-creds?keys=password", "did you mean `key`?"),
        ("k8s://apps/db-creds?other=1", "this source takes: key"),
    ] {
        let e = k8s.fetch(&r(bad)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}");
        assert!(e.to_string().contains(hint), "{bad}: {e}");
    }
    assert!(server.requests().is_empty(), "refused before any request");
}

/// Fixtures: the `metav1.Status` shape (`status_404_assembled`) answering the watch request
/// with 503, then 429 with Retry-After; then the stream's MODIFIED line (line 3).
#[tokio::test]
async fn failed_watches_back_off_on_the_clock_and_honour_retry_after() {
    let (server, api) = FakeApi::start(&[TOKEN]).await;
    let clock = ManualClock::new();
    let k8s = KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem(server.ca_pem().unwrap())
        .token(Arc::new(StaticToken::new(TOKEN)))
        .clock(clock.clone())
        .watch_backoff(Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    api.fail_next_watch(503, None);
    api.fail_next_watch(429, Some(30));
    let mut feed = follow(&k8s, "k8s://apps/db-creds");

    // 503: the stream waits on the clock (at most the 1 s ceiling), not in a loop.
    until(|| watch_requests(&server).len() == 1 && clock.sleepers() == 1).await;
    clock.advance(Duration::from_secs(1)).await;
    // 429 with Retry-After: 30 s, far above the backoff ceiling.
    until(|| watch_requests(&server).len() == 2 && clock.sleepers() == 1).await;
    clock.advance(Duration::from_secs(29)).await;
    assert_eq!(
        watch_requests(&server).len(),
        2,
        "retried before Retry-After"
    );
    clock.advance(Duration::from_secs(2)).await;
    api.wait_for_watches(1).await;
    let watches = watch_requests(&server);
    assert_eq!(watches.len(), 3);
    let first = watches[0].query_param("resourceVersion");
    assert!(
        watches
            .iter()
            .all(|w| w.query_param("resourceVersion") == first)
    );

    api.put("apps", "db-creds", &[("password", b"after")]);
    changed(next(&mut feed).await.unwrap());
}

/// A deletion between the client's read and the start of its watch: a watch at the most recent
/// state has no ADDED for a missing object, so the check after it opened must report it. Found
/// by a second reading. Fixtures: `secret_api.samples.json` `status_404_assembled`.
#[tokio::test]
async fn a_deletion_between_the_read_and_the_watch_is_reported() {
    let (_server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    api.delete("apps", "db-creds");
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    assert_eq!(next(&mut feed).await.unwrap(), SourceEvent::Deleted);
    // Reported once, and a re-creation is seen.
    api.put("apps", "db-creds", &[("password", b"again")]);
    changed(next(&mut feed).await.unwrap());
}

/// A server (or proxy) that ends every watch right after its initial ADDED is backed off, not
/// re-asked at once: the initial ADDED is no sign that the stream works.
/// Fixtures: `secret_watch_stream.assembled.jsonl` line 1 (ADDED).
#[tokio::test]
async fn watches_ended_after_their_initial_event_are_backed_off() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let _feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    // For 400 ms every watch is ended as soon as it is open. With a backoff of 10 ms doubling to
    // 100 ms that allows about eight; without one, hundreds.
    let until = SystemClock.now() + Duration::from_millis(400);
    while SystemClock.now() < until {
        api.end_watches();
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(2))
            .await;
    }
    let watches = watch_requests(&server).len();
    assert!(
        (2..=15).contains(&watches),
        "{watches} watches: reopened without backoff"
    );
}
