//! Edges of the Secret Manager source against a loopback fake: answers that are not a
//! `google.rpc.Status` (a proxy, a load balancer), `Retry-After` in its forms, and references that
//! would address another path than the one they name. Each test names what its answers are
//! shaped after.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

use keyrack_core::{ErrorKind, ManualClock, SecretSource};
use keyrack_fake_server::{FakeServer, Response};
use keyrack_gcp::{GcpBuilder, GcpSource};
use serde_json::json;

async fn on_clock(server: &FakeServer, clock: &ManualClock) -> GcpSource {
    GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .with_project("p1")
        .with_clock(clock.clone())
        .build()
        .await
        .unwrap()
}

/// Issue #16: an error body that is not a `google.rpc.Status` — JSON without `status` (the
/// AIP-193 envelope as a proxy or a front end writes it) or an HTML page — follows the HTTP
/// status: 503 and 502 are `Unavailable`, 429 `Throttled`, all retryable; its text is not
/// repeated.
/// Answers: `google_rpc_status_errors.assembled.json` `aip_0193_examples.minimal_404` with its
/// `status` removed and other codes and messages (no capture of such a body exists: its shape is
/// the envelope's, its text a proxy's), and a load balancer's HTML page.
#[tokio::test]
async fn an_error_body_without_a_status_follows_the_http_status() {
    let server = FakeServer::http(|req| async move {
        let envelope = |code: u16, message: &str| {
            let mut body = fixture(STATUS_ERRORS)["aip_0193_examples"]["minimal_404"].clone();
            body["error"] = json!({ "code": code, "message": message });
            body
        };
        match secret_id(&req.path) {
            "proxy-503" => Response::json(503, &envelope(503, "upstream connect error hunter2")),
            "proxy-429" => Response::json(429, &envelope(429, "rate limited hunter2")),
            "html-503" => Response::text(
                503,
                "text/html",
                "<html><body>503 Service Unavailable hunter2</body></html>",
            ),
            _ => Response::text(502, "text/html", "<html>Bad Gateway hunter2</html>"),
        }
    })
    .await;
    let src = source(&server).await;
    for (id, want) in [
        ("proxy-503", ErrorKind::Unavailable),
        ("proxy-429", ErrorKind::Throttled),
        ("html-503", ErrorKind::Unavailable),
        ("html-502", ErrorKind::Unavailable),
    ] {
        let e = src
            .fetch(&gcp_ref(&format!("projects/p1/secrets/{id}")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &want, "{id}: {e}");
        assert!(e.is_retryable(), "{id}: {e}");
        assert!(e.to_string().contains("HTTP"), "{id}: {e}");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{id}: {e:?}");
    }
}

/// The secret id in a request path (`/v1/projects/p/secrets/<id>/versions/v:access`).
fn secret_id(path: &str) -> &str {
    path.split("/secrets/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
}

/// Issue #8: `Retry-After` is kept whatever the status and whoever sent it (Secret Manager's
/// UNAVAILABLE, its RESOURCE_EXHAUSTED, a proxy's page), in seconds or as an HTTP-date read
/// against the source's clock; `RetryInfo` in the Status comes first. The source's retry floor is
/// a second.
/// Answers: `aip_0193_examples.minimal_404` with the codes AIP-193 gives 503 and 429,
/// `assembled_http_bodies.429_resource_exhausted`, a load balancer's HTML page; the header forms
/// of RFC 9110, 10.2.3.
#[tokio::test]
async fn retry_after_is_kept_on_any_status_and_as_a_date() {
    let server = FakeServer::http(|req| async move {
        let minimal = |code: u16, status: &str| {
            let mut b = fixture(STATUS_ERRORS)["aip_0193_examples"]["minimal_404"].clone();
            b["error"]["code"] = json!(code);
            b["error"]["status"] = json!(status);
            b
        };
        match secret_id(&req.path) {
            "unavailable-seconds" => {
                Response::json(503, &minimal(503, "UNAVAILABLE")).header("retry-after", "7")
            }
            "unavailable-date" => Response::json(503, &minimal(503, "UNAVAILABLE"))
                .header("retry-after", "Fri, 15 Jan 2027 08:00:20 GMT"),
            "throttled-date" => Response::json(
                429,
                &fixture(STATUS_ERRORS)["assembled_http_bodies"]["429_resource_exhausted"],
            )
            .header("retry-after", "Fri, 15 Jan 2027 08:00:45 GMT"),
            _ => Response::text(503, "text/html", "<html>Service Unavailable</html>")
                .header("retry-after", "Fri, 15 Jan 2027 08:00:30 GMT"),
        }
    })
    .await;
    let clock = ManualClock::new(); // its wall clock reads Fri, 15 Jan 2027 08:00:00 GMT
    let src = on_clock(&server, &clock).await;
    assert_eq!(src.capabilities().retry_floor, Duration::from_secs(1));
    for (id, kind, wait) in [
        ("unavailable-seconds", ErrorKind::Unavailable, 7),
        ("unavailable-date", ErrorKind::Unavailable, 20),
        ("throttled-date", ErrorKind::Throttled, 45),
        ("proxy-page", ErrorKind::Unavailable, 30),
    ] {
        let e = src
            .fetch(&gcp_ref(&format!("projects/p1/secrets/{id}")))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.retry_after()),
            (&kind, Some(Duration::from_secs(wait))),
            "{id}: {e}"
        );
    }
}

/// Issue #16: a project of `..` or `.` (as written or percent-encoded) would make the SDK's URL
/// address another path than the reference names, with the access token attached: refused as
/// `InvalidRef` before any request. A domain-scoped project (`example.com:my-project`) is a
/// project.
/// Answers: `access_secret_version.documented.json` (`response.body`) for the one read made.
#[tokio::test]
async fn a_project_that_would_change_the_url_path_is_refused() {
    let server = FakeServer::http(|req| async move {
        let name = req
            .path
            .trim_start_matches("/v1/")
            .trim_end_matches(":access")
            .to_owned();
        Response::json(200, &access_body(&name.replace("latest", "1"), b"v"))
    })
    .await;
    let src = source(&server).await;
    for bad in [
        "projects/../secrets/db",
        "projects/./secrets/db",
        "projects/%2E%2E/secrets/db",
        "projects/%2e/locations/us-east1/secrets/db",
        "projects/../secrets/db/versions/1",
    ] {
        let e = src.fetch(&gcp_ref(bad)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}: {e}");
    }
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.is_empty(), "requests were sent: {paths:?}");
    src.fetch(&gcp_ref("projects/example.com:my-project/secrets/db"))
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].path,
        "/v1/projects/example.com:my-project/secrets/db/versions/latest:access"
    );
}
