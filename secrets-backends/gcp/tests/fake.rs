//! The source against a loopback fake of Secret Manager (no emulator exists): conformance,
//! the documented sample, integrity, rotation, regional endpoints and error mapping. Each test
//! names the fixture its responses are shaped after.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyrack_core::testkit::assert_conformance;
use keyrack_core::{Backoff, ErrorKind, RotationEvent, SecretSource, Secrets, Version};
use keyrack_fake_server::{FakeServer, Response};
use keyrack_gcp::GcpBuilder;
use serde_json::json;

// Every answer: access_secret_version.documented.json (response.body) for reads,
// google_rpc_status_errors.assembled.json (assembled_http_bodies.404_not_found) for misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let store = Store::default();
    let server = fake(&store).await;
    let seeder = FakeSeeder {
        store: store.clone(),
        source: Arc::new(source(&server).await),
    };
    assert_conformance(&seeder).await;
}

// access_secret_version.documented.json: the documented request and response, verbatim.
#[tokio::test]
async fn the_documented_sample_decodes_to_its_value_and_version() {
    let documented = fixture(DOCUMENTED);
    let server = FakeServer::http(move |_| {
        let body = documented["response"]["body"].clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let src = source(&server).await;
    let s = src
        .fetch(&gcp_ref("projects/123/secrets/my_secret/versions/2"))
        .await
        .unwrap();
    assert_eq!(s.expose_bytes(), b"a\n");
    assert_eq!(s.version(), Some(&Version::new("2")));
    let req = &server.requests()[0];
    assert_eq!(req.method, "GET");
    // The fixture's request URL, on the fake's origin.
    assert_eq!(
        req.path,
        "/v1/projects/123/secrets/my_secret/versions/2:access"
    );
}

// access_secret_version.documented.json with dataCrc32c off by one: the payload must be refused.
#[tokio::test]
async fn a_crc32c_mismatch_is_refused_as_corrupted() {
    let mut body = fixture(DOCUMENTED)["response"]["body"].clone();
    body["payload"]["dataCrc32c"] = json!("163439258");
    let server = FakeServer::http(move |_| {
        let body = body.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let src = source(&server).await;
    let e = src
        .fetch(&gcp_ref("projects/123/secrets/my_secret/versions/2"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Corrupted);
    assert!(!e.is_retryable());
}

// access_secret_version.documented.json (response.body) carrying a 4-digit PIN, with
// dataCrc32c replaced by the checksum of another PIN: the error must quote neither checksum
// (32 bits derived from a short value are enough to find it by brute force).
#[tokio::test]
async fn a_crc32c_mismatch_error_quotes_neither_checksum() {
    let pin = b"4711";
    let claimed = crc32c::crc32c(b"1234");
    let mut body = access_body("projects/p1/secrets/pin/versions/1", pin);
    body["payload"]["dataCrc32c"] = json!(claimed.to_string());
    let server = FakeServer::http(move |_| {
        let body = body.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let src = source(&server).await;
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/pin"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Corrupted);
    let text = format!("{e} {e:?}");
    for crc in [crc32c::crc32c(pin), claimed] {
        assert!(
            !text.contains(&crc.to_string()),
            "a checksum in the error: {text}"
        );
    }
}

// access_secret_version.documented.json (response.body) for the fake's versions: a misspelt
// `?version=` must be refused before any request, not read as `latest`.
#[tokio::test]
async fn an_unknown_query_parameter_is_refused_not_read_as_latest() {
    let store = Store::default();
    store.add_version("projects/p1/secrets/db", b"one");
    store.add_version("projects/p1/secrets/db", b"two");
    let server = fake(&store).await;
    let src = source(&server).await;
    match src
        .fetch(&gcp_ref("projects/p1/secrets/db?verison=1"))
        .await
    {
        Err(e) => {
            assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{e}");
            assert!(e.to_string().contains("verison"), "{e}");
        }
        Ok(s) => panic!("`?verison=1` was read, as version {:?}", s.version()),
    }
    assert!(server.requests().is_empty());
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/db?stage=prod"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unsupported, "{e}");
}

// google_rpc_status_errors.assembled.json: assembled_http_bodies.400_disabled_version with the
// message naming the version asked for, whose secret id contains "DESTROYED".
#[tokio::test]
async fn a_disabled_version_is_disabled_whatever_its_secret_is_called() {
    let server = FakeServer::http(|req| {
        let name = req
            .path
            .trim_start_matches("/v1/")
            .trim_end_matches(":access")
            .to_owned();
        let mut body =
            fixture(STATUS_ERRORS)["assembled_http_bodies"]["400_disabled_version"].clone();
        body["error"]["message"] = json!(format!("Secret Version [{name}] is in DISABLED state."));
        async move { Response::json(400, &body) }
    })
    .await;
    let src = source(&server).await;
    let e = src
        .fetch(&gcp_ref(
            "projects/p1/secrets/DESTROYED-keys-backup/versions/1",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Disabled, "{e}");
}

// Reads: access_secret_version.documented.json (response.body) with the fake's versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_reaches_a_handle_as_rotated() {
    let store = Store::default();
    let server = fake(&store).await;
    store.add_version("projects/p1/secrets/db", br#"{"password":"one"}"#);
    let secrets = Secrets::builder()
        .source("gcp-sm", source(&server).await)
        .refresh_interval(Duration::from_secs(3600))
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        })
        .build()
        .unwrap();
    // The short form, with the builder's default project.
    let handle = secrets.handle("gcp-sm://db").await.unwrap();
    assert_eq!(handle.current().version(), Some(&Version::new("1")));
    let mut events = handle.subscribe();
    store.add_version("projects/p1/secrets/db", br#"{"password":"two"}"#);
    handle.refresh_now().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(RotationEvent::Rotated { old, new, .. }) => return (old, new),
                Some(_) => continue,
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("no Rotated event");
    assert_eq!(event, (Some(Version::new("1")), Some(Version::new("2"))));
    let field = secrets.get_secret("gcp-sm://db#password").await.unwrap();
    assert_eq!(field.expose_str().unwrap(), "two");
    // Refresh re-reads the value (AccessSecretVersion of `latest`): no metadata call was made.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.path == "/v1/projects/p1/secrets/db/versions/latest:access"),
        "{:?}",
        server
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
    secrets.shutdown().await;
}

// Reads: access_secret_version.documented.json (response.body), one fake per endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regional_secrets_go_to_their_endpoint() {
    let global_store = Store::default();
    let eu_store = Store::default();
    let global = fake(&global_store).await;
    let eu = fake(&eu_store).await;
    global_store.add_version("projects/p1/secrets/db", b"global");
    eu_store.add_version("projects/p1/locations/europe-west1/secrets/db", b"regional");
    let src = GcpBuilder::new()
        .with_endpoint(global.url())
        .with_regional_endpoint("europe-west1", eu.url())
        .with_anonymous_credentials()
        .build()
        .await
        .unwrap();
    let regional = gcp_ref("projects/p1/locations/europe-west1/secrets/db");
    for _ in 0..2 {
        let s = src.fetch(&regional).await.unwrap();
        assert_eq!(s.expose_bytes(), b"regional");
        let s = src.fetch(&gcp_ref("projects/p1/secrets/db")).await.unwrap();
        assert_eq!(s.expose_bytes(), b"global");
    }
    assert_eq!(eu.requests().len(), 2);
    assert_eq!(
        eu.requests()[0].path,
        "/v1/projects/p1/locations/europe-west1/secrets/db/versions/latest:access"
    );
    assert_eq!(global.requests().len(), 2);
    // Pinned versions, by path and by ?version=, and an unknown one.
    eu_store.add_version("projects/p1/locations/europe-west1/secrets/db", b"second");
    let pinned = gcp_ref("projects/p1/locations/europe-west1/secrets/db?version=1");
    assert_eq!(
        src.fetch(&pinned).await.unwrap().expose_bytes(),
        b"regional"
    );
    let pinned = gcp_ref("projects/p1/locations/europe-west1/secrets/db/versions/2");
    assert_eq!(src.fetch(&pinned).await.unwrap().expose_bytes(), b"second");
    let gone = gcp_ref("projects/p1/locations/europe-west1/secrets/db/versions/9");
    assert_eq!(
        src.fetch(&gone).await.unwrap_err().kind(),
        &ErrorKind::NotFound
    );
}

/// `(secret id, HTTP status, body)` for each error the fake answers.
fn error_cases() -> Vec<(&'static str, u16, serde_json::Value, ErrorKind)> {
    let errors = fixture(STATUS_ERRORS);
    let bodies = &errors["assembled_http_bodies"];
    // `400_disabled_version` with the message the fixture records for destroyed versions
    // ("'is in DESTROYED state.' for destroyed versions").
    let mut destroyed = bodies["400_disabled_version"].clone();
    destroyed["error"]["message"] =
        json!("Secret Version [projects/153396971788/secrets/X/versions/3] is in DESTROYED state.");
    // The AIP-193 envelope of `aip_0193_examples.minimal_404`, with the codes AIP-193 maps to
    // HTTP 401, 500, 503 and 504 (no Secret Manager capture of these exists).
    let minimal = |code: u16, status: &str| {
        let mut b = errors["aip_0193_examples"]["minimal_404"].clone();
        b["error"]["code"] = json!(code);
        b["error"]["status"] = json!(status);
        b
    };
    vec![
        (
            "not-found",
            404,
            bodies["404_not_found"].clone(),
            ErrorKind::NotFound,
        ),
        (
            "minimal-not-found",
            404,
            errors["aip_0193_examples"]["minimal_404"].clone(),
            ErrorKind::NotFound,
        ),
        (
            "denied",
            403,
            bodies["403_permission_denied"].clone(),
            ErrorKind::PermissionDenied,
        ),
        (
            "disabled",
            400,
            bodies["400_disabled_version"].clone(),
            ErrorKind::Disabled,
        ),
        ("destroyed", 400, destroyed, ErrorKind::Deleted),
        (
            "throttled",
            429,
            bodies["429_resource_exhausted"].clone(),
            ErrorKind::Throttled,
        ),
        (
            "unauthenticated",
            401,
            minimal(401, "UNAUTHENTICATED"),
            ErrorKind::Unauthenticated,
        ),
        // AIP-194: INTERNAL may be retried.
        (
            "internal",
            500,
            minimal(500, "INTERNAL"),
            ErrorKind::Unavailable,
        ),
        (
            "unavailable",
            503,
            minimal(503, "UNAVAILABLE"),
            ErrorKind::Unavailable,
        ),
        (
            "deadline",
            504,
            minimal(504, "DEADLINE_EXCEEDED"),
            ErrorKind::Timeout,
        ),
    ]
}

// google_rpc_status_errors.assembled.json: assembled_http_bodies (404/403/400/429),
// aip_0193_examples.minimal_404, and the DESTROYED message it records; see error_cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_status_maps_to_its_kind() {
    let cases = error_cases();
    let answers = cases
        .iter()
        .map(|(id, status, body, _)| (id.to_string(), (*status, body.clone())))
        .collect::<std::collections::HashMap<_, _>>();
    let server = FakeServer::http(move |req| {
        let answer = answers
            .iter()
            .find(|(id, _)| req.path.contains(&format!("/secrets/{id}/")))
            .map(|(_, a)| a.clone());
        async move {
            match answer {
                Some((status, body)) => Response::json(status, &body),
                // A load balancer's page, not a google.rpc.Status.
                None => Response::text(502, "text/html", "<html>Bad Gateway</html>"),
            }
        }
    })
    .await;
    let src = source(&server).await;
    for (id, _, _, want) in &cases {
        let e = src
            .fetch(&gcp_ref(&format!("projects/p1/secrets/{id}")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), want, "{id}: {e}");
        assert_eq!(
            e.is_retryable(),
            matches!(
                want,
                ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout
            ),
            "{id}"
        );
    }
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/proxy"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert!(!e.to_string().contains("Bad Gateway"), "{e}");
    // One attempt per request: the SDK did not retry the retryable ones.
    assert_eq!(server.requests().len(), cases.len() + 1);
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_and_stages_are_unsupported() {
    // Port 9 (discard) is not listening on loopback in the test environment.
    let src = GcpBuilder::new()
        .with_endpoint("http://127.0.0.1:9")
        .with_anonymous_credentials()
        .build()
        .await
        .unwrap();
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/db"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    let e = src
        .fetch(&gcp_ref("projects/p1/secrets/db?stage=AWSCURRENT"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unsupported);
    let e = src
        .version(&gcp_ref("projects/p1/secrets/db"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unsupported);
}

// No fixture: the fake never answers, which is what a request that outlives its deadline sees.
#[tokio::test]
async fn a_request_that_outlives_the_timeout_is_a_timeout_and_is_not_retried() {
    let server = FakeServer::http(|_| std::future::pending::<Response>()).await;
    let src = GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .with_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(20),
        src.fetch(&gcp_ref("projects/p1/secrets/db")),
    )
    .await
    .expect("the SDK's attempt timeout did not apply")
    .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    assert_eq!(server.requests().len(), 1);
}
