//! The watch of the Kubernetes Secrets source: what counts as a change, what it costs in
//! requests, and how it waits when the API server asks it to. Against the loopback fake of the
//! API server (`fixtures/k8s/fake_api.rs`); every answer is shaped after a fixture in
//! `fixtures/k8s/`, named at each test.
#![allow(clippy::unwrap_used)] // helpers of tests: a failure should fail the test loudly

mod k8s_support;

use std::time::Duration;

use k8s_support::*;
use std::sync::Arc;

use keyrack_core::{
    Backoff, Clock, ManualClock, RotationEvent, SecretSource, Secrets, SourceEvent, StaticToken,
    SystemClock,
};
use keyrack_k8s::source::KubernetesSecrets;

/// Waits for the next `Rotated` of `events`, skipping other events.
async fn rotated(events: &mut keyrack_core::RotationEvents) -> RotationEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(ev @ RotationEvent::Rotated { .. }) => return ev,
                Some(_) => continue,
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no Rotated event")
}

/// Issue #13: a label, an annotation or `kubectl apply`'s last-applied annotation gives the
/// Secret a new resourceVersion and a MODIFIED event but no new data: a handle neither rotates
/// nor wakes `changed()`; the data change after it does, once.
/// Fixtures: `secret_watch_stream.assembled.jsonl` line 3 (MODIFIED) carrying the stored object,
/// `secret_get_200_assembled`'s metadata with a label and the last-applied annotation added.
#[tokio::test]
async fn a_metadata_only_update_is_not_a_rotation() {
    let (_server, api, k8s) = start().await;
    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", PASSWORD)],
    );
    let secrets = Secrets::builder()
        .source("k8s", k8s)
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut handle = secrets
        .handle("k8s://apps/db-creds#password")
        .await
        .unwrap();
    let mut events = handle.subscribe();
    api.wait_for_watches(1).await;
    let before = handle.current().version().cloned();

    api.update_metadata(
        "apps",
        "db-creds",
        &[("team", "payments")],
        &[(
            "kubectl.kubernetes.io/last-applied-configuration",
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db-creds"}}"#,
        )],
    );
    // The engine reads at most once a second after its last answer: a pause lets a read for the
    // metadata update (if one is made) happen before the data change, instead of both sharing it.
    SystemClock
        .sleep_until(SystemClock.now() + Duration::from_millis(1500))
        .await;
    // A data change after it: the first change the handle sees must be this one.
    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", b"n3w-s3cr3t")],
    );
    let woke = tokio::time::timeout(Duration::from_secs(10), handle.changed())
        .await
        .expect("changed() did not wake")
        .unwrap();
    assert_eq!(
        woke.expose_bytes(),
        b"n3w-s3cr3t",
        "changed() woke for a metadata-only update"
    );
    let RotationEvent::Rotated { old, new, .. } = rotated(&mut events).await else {
        unreachable!()
    };
    assert_eq!(old, before, "a Rotated for the metadata-only update");
    assert_ne!(new, before);
    assert_eq!(new.as_ref(), handle.current().version());
    secrets.shutdown().await;
}

/// Issue #13, the feed itself: a metadata-only MODIFIED is no change; the data change after it is
/// reported with the version a read then gives.
/// Fixtures: `secret_watch_stream.assembled.jsonl` line 3 (MODIFIED), as above.
#[tokio::test]
async fn the_feed_reports_data_changes_only() {
    let (_server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    let first = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    api.update_metadata("apps", "db-creds", &[("team", "payments")], &[]);
    api.update_metadata(
        "apps",
        "db-creds",
        &[],
        &[("kubectl.kubernetes.io/last-applied-configuration", "{}")],
    );
    api.put("apps", "db-creds", &[("password", b"two")]);
    let event = next(&mut feed).await.unwrap();
    let now = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    assert_ne!(now.version(), first.version());
    assert_eq!(
        event,
        SourceEvent::Changed {
            version: now.version().cloned()
        },
        "the first event is not the data change"
    );
    // Same data, same version, whatever the resourceVersion.
    api.update_metadata("apps", "db-creds", &[("team", "billing")], &[]);
    let again = k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    assert_eq!(again.version(), now.version());
}

/// A source on `clock` whose watch backoff is at most a second: a longer wait can only come from
/// the server.
fn on_clock(server: &keyrack_fake_server::FakeServer, clock: &ManualClock) -> KubernetesSecrets {
    KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem(server.ca_pem().unwrap())
        .token(Arc::new(StaticToken::new(TOKEN)))
        .clock(clock.clone())
        .watch_backoff(Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        })
        .build()
        .unwrap()
}

/// Issue #13: an ERROR event whose Status carries `details.retryAfterSeconds` (the API server's
/// throttling answer) is waited out before the watch is opened again.
/// Fixtures: `secret_watch_stream.assembled.jsonl` line 6 (the ERROR Status) with code 429,
/// reason `TooManyRequests` and `details.retryAfterSeconds`, a field of `meta.v1.StatusDetails`
/// ("the time in seconds before the operation should be retried", json-schema-v1.37.0
/// `_definitions.json` in the shared fixtures).
#[tokio::test]
async fn an_error_event_retry_after_seconds_is_honoured() {
    let (server, api) = FakeApi::start(&[TOKEN]).await;
    let clock = ManualClock::new();
    let k8s = on_clock(&server, &clock);
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    let opened = api.watches_opened();
    // The open stream waits on the clock too (its idle limit, minutes away), and that sleep is
    // dropped when the error ends the stream: counting sleepers races with it, so look for a
    // wait of the length asked for.
    api.push_raw(&api.error_line(429, "TooManyRequests", Some(30)));
    let asked = Duration::from_secs(30)..=Duration::from_secs(40);
    until(|| clock.sleeping_for().iter().any(|d| asked.contains(d))).await;
    clock.advance(Duration::from_secs(29)).await;
    // Time for a reconnection to show, if one were (wrongly) made.
    SystemClock
        .sleep_until(SystemClock.now() + Duration::from_millis(200))
        .await;
    assert_eq!(
        api.watches_opened(),
        opened,
        "watched again before retryAfterSeconds"
    );
    clock.advance(Duration::from_secs(2)).await;
    api.wait_for_watches_opened(opened + 1).await;
    api.put("apps", "db-creds", &[("password", b"after")]);
    assert!(matches!(
        next(&mut feed).await.unwrap(),
        SourceEvent::Changed { .. }
    ));
}

fn streaming(q: &keyrack_fake_server::Request) -> bool {
    q.query_param("sendInitialEvents").as_deref() == Some("true")
        && q.query_param("resourceVersionMatch").as_deref() == Some("NotOlderThan")
}

/// Issue #13: when the resume point is gone (410), the watch starts again at the most recent
/// state as a streaming list, whose initial events show the object, or its absence, without a
/// GET; a change made while no watch could see it is still reported.
/// Fixtures: `secret_watch_stream.assembled.jsonl` lines 1 (ADDED), 2 (BOOKMARK
/// `k8s.io/initial-events-end`), 6 (ERROR 410), and `secret_api.samples.json`
/// `endpoints.watch_list_streaming` for the request.
#[tokio::test]
async fn a_410_costs_no_read() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    quiet().await;
    assert_eq!(
        gets_of(&server, "apps", "db-creds"),
        1,
        "the first watch read"
    );
    assert!(streaming(&watch_requests(&server)[0]));

    // A change the watch never hears of, then the history behind it is compacted away.
    api.put_quietly("apps", "db-creds", &[("password", b"hidden")]);
    api.expire_watches();
    assert!(matches!(
        next(&mut feed).await.unwrap(),
        SourceEvent::Changed { .. }
    ));
    // An expiry with no change in between: nothing to report, nothing to read.
    api.wait_for_watches(1).await;
    api.expire_watches();
    api.wait_for_watches_opened(3).await;
    quiet().await;
    assert_eq!(gets_of(&server, "apps", "db-creds"), 1, "a 410 made reads");
    let watches = watch_requests(&server);
    assert_eq!(watches.len(), 3);
    assert!(watches.iter().all(streaming));
    api.put("apps", "db-creds", &[("password", b"later")]);
    assert!(matches!(
        next(&mut feed).await.unwrap(),
        SourceEvent::Changed { .. }
    ));
}

/// Issue #13: a server without streaming lists (no `WatchList` feature: 422 `Invalid`) is asked
/// once; the source then watches the plain way, reading the object once after each watch from
/// the most recent state (the only way to see a deletion such a watch cannot show).
/// Fixtures: the 422 Status of `fake_api.rs` (`watch_list_refused`), lines 1 (ADDED) and 6
/// (ERROR 410) of the stream.
#[tokio::test]
async fn without_streaming_lists_the_watch_falls_back_once() {
    let (server, api, k8s) = start().await;
    api.refuse_streaming();
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;
    assert_eq!(gets_reach(&server, "apps", "db-creds", 2).await, 2);
    api.delete("apps", "db-creds");
    assert_eq!(next(&mut feed).await.unwrap(), SourceEvent::Deleted);
    api.put("apps", "db-creds", &[("password", b"again")]);
    assert!(matches!(
        next(&mut feed).await.unwrap(),
        SourceEvent::Changed { .. }
    ));
    api.expire_watches();
    api.wait_for_watches(1).await;
    assert_eq!(gets_reach(&server, "apps", "db-creds", 3).await, 3);
    quiet().await;
    let watches = watch_requests(&server);
    // The refused streaming list, then plain watches only.
    assert_eq!(
        watches.len(),
        3,
        "{:?}",
        watches.iter().map(|w| &w.query).collect::<Vec<_>>()
    );
    assert!(streaming(&watches[0]));
    assert!(
        !watches[1..]
            .iter()
            .any(|w| w.query_param("sendInitialEvents").is_some())
    );
    assert_eq!(gets_of(&server, "apps", "db-creds"), 3);
}

/// Issue #13: a handle costs what client-go's list and watch cost: the read and one watch. The
/// client's look after the feed opens is answered by the source without a request (the watch
/// compares the object's state with the read); a change then costs one read.
/// Fixtures: `secret_api.samples.json` `secret_get_200_assembled` for the read; lines 1 (ADDED),
/// 2 (BOOKMARK `k8s.io/initial-events-end`) and 3 (MODIFIED) of the stream.
#[tokio::test]
async fn a_handle_costs_one_read_and_one_watch() {
    let (server, api, k8s) = start().await;
    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", PASSWORD)],
    );
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
    api.wait_for_watches(1).await;
    quiet().await;
    let cost = (
        gets_of(&server, "apps", "db-creds"),
        watch_requests(&server).len(),
    );
    assert_eq!(cost, (1, 1), "(GETs, watches) of a handle");

    api.put(
        "apps",
        "db-creds",
        &[("username", USER), ("password", b"n3w-s3cr3t")],
    );
    rotated(&mut events).await;
    assert_eq!(handle.current().expose_bytes(), b"n3w-s3cr3t");
    quiet().await;
    let cost = (
        gets_of(&server, "apps", "db-creds"),
        watch_requests(&server).len(),
    );
    assert_eq!(cost, (2, 1), "(GETs, watches) after a change");
    secrets.shutdown().await;
}

/// Issue #13: once the watch has reported a deletion, the client's retries are answered by the
/// source from what the open watch knows, without reading the deleted Secret again; the watch
/// reports its re-creation, which the client then reads.
/// Fixtures: lines 5 (DELETED), 1 (ADDED) of the stream; `status_404_assembled` had a read been
/// made.
#[tokio::test]
async fn after_a_deletion_the_client_relies_on_the_watch() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    let clock = ManualClock::new();
    let secrets = Secrets::builder()
        .source("k8s", k8s)
        .clock(clock.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let handle = secrets
        .handle("k8s://apps/db-creds#password")
        .await
        .unwrap();
    let mut events = handle.subscribe();
    api.wait_for_watches(1).await;

    api.delete("apps", "db-creds");
    // The client checks at most once a second after its last answer: past that on its clock,
    // the feed's report is acted on at once.
    clock.advance(Duration::from_secs(2)).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(RotationEvent::Deleted { .. }) => return,
                Some(_) => continue,
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("no Deleted event");
    let gets = gets_of(&server, "apps", "db-creds");
    // Ten minutes of the client's retries.
    for _ in 0..20 {
        clock.advance(Duration::from_secs(30)).await;
    }
    quiet().await;
    assert_eq!(
        gets_of(&server, "apps", "db-creds"),
        gets,
        "the deleted Secret was read again while its watch was open"
    );

    api.put("apps", "db-creds", &[("password", b"again")]);
    clock.advance(Duration::from_secs(2)).await;
    rotated(&mut events).await;
    assert_eq!(handle.current().expose_bytes(), b"again");
    assert_eq!(gets_of(&server, "apps", "db-creds"), gets + 1);
    secrets.shutdown().await;
}

/// Issue #8: `Retry-After` is kept whatever the status (a 503 as well as a 429), from the API
/// server or a proxy in front of it, and in both its forms: seconds and an HTTP-date (read
/// against the source's clock's wall time). The source's retry floor is a second.
/// Fixtures: the `metav1.Status` shape (`status_404_assembled`) with codes 503 and 429; a
/// proxy's HTML page (no fixture: a load balancer's answer, not the API server's); the
/// `Retry-After` forms of RFC 9110, 10.2.3.
#[tokio::test]
async fn retry_after_is_kept_on_any_status_and_as_a_date() {
    let (server, api) = FakeApi::start(&[TOKEN]).await;
    let clock = ManualClock::new(); // its wall clock reads Fri, 15 Jan 2027 08:00:00 GMT
    let k8s = on_clock(&server, &clock);
    assert_eq!(k8s.capabilities().retry_floor, Duration::from_secs(1));
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    let db = r("k8s://apps/db-creds");

    api.fail_next_get(503, Some(7));
    let e = k8s.fetch(&db).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (
            &keyrack_core::ErrorKind::Unavailable,
            Some(Duration::from_secs(7))
        )
    );
    api.fail_next_get_with(503, "Fri, 15 Jan 2027 08:00:20 GMT", false);
    let e = k8s.fetch(&db).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(20)), "{e}");
    api.fail_next_get_with(429, "Fri, 15 Jan 2027 08:00:45 GMT", false);
    let e = k8s.fetch(&db).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (
            &keyrack_core::ErrorKind::Throttled,
            Some(Duration::from_secs(45))
        )
    );
    api.fail_next_get_with(503, "Fri, 15 Jan 2027 08:00:20 GMT", true);
    let e = k8s.fetch(&db).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (
            &keyrack_core::ErrorKind::Unavailable,
            Some(Duration::from_secs(20))
        )
    );
    assert!(!e.to_string().contains("<html"), "{e}");

    // A watch answered 503 with a date waits until then.
    k8s.fetch(&db).await.unwrap();
    api.fail_next_watch_with(503, "Fri, 15 Jan 2027 08:00:30 GMT");
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    until(|| watch_requests(&server).len() == 1 && clock.sleepers() == 1).await;
    clock.advance(Duration::from_secs(29)).await;
    quiet().await;
    assert_eq!(
        watch_requests(&server).len(),
        1,
        "watched again before the date"
    );
    clock.advance(Duration::from_secs(2)).await;
    api.wait_for_watches(1).await;
    api.put("apps", "db-creds", &[("password", b"after")]);
    assert!(matches!(
        next(&mut feed).await.unwrap(),
        SourceEvent::Changed { .. }
    ));
}

/// `shutdown` stops the source's own work: an open watch ends (its connection is let go, even
/// if its feed is still held), and a feed asked for afterwards ends at once without a request.
/// Fixtures: lines 1 (ADDED) and 2 (BOOKMARK `k8s.io/initial-events-end`) of the stream.
#[tokio::test]
async fn shutdown_ends_the_watches() {
    let (server, api, k8s) = start().await;
    api.put("apps", "db-creds", &[("password", PASSWORD)]);
    k8s.fetch(&r("k8s://apps/db-creds")).await.unwrap();
    let mut feed = follow(&k8s, "k8s://apps/db-creds");
    api.wait_for_watches(1).await;

    k8s.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("the feed did not end at shutdown");
    assert!(end.is_none(), "{end:?}");
    until(|| api.open_watches() == 0).await;
    let mut late = follow(&k8s, "k8s://apps/db-creds");
    let end = tokio::time::timeout(Duration::from_secs(10), late.recv())
        .await
        .expect("a feed made after shutdown did not end");
    assert!(end.is_none(), "{end:?}");
    assert_eq!(watch_requests(&server).len(), 1);
}
