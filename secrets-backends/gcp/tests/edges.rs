//! Edges of the Secret Manager source against a loopback fake: answers that are not a
//! `google.rpc.Status` (a proxy, a load balancer), `Retry-After` in its forms, and references that
//! would address another path than the one they name. Each test names what its answers are
//! shaped after.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use keyrack_core::{ErrorKind, SecretSource};
use keyrack_fake_server::{FakeServer, Response};
use serde_json::json;

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
