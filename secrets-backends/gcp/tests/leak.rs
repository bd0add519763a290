//! No secret value (nor the identity token) reaches logs (at TRACE, the SDK's included),
//! `Debug`, `Display`, errors or events. One test in this binary: it installs a log capture
//! for its thread. Responses: access_secret_version.documented.json (response.body) with the
//! canaries as data (and, for `corrupt`, a dataCrc32c that does not match it),
//! google_rpc_status_errors.assembled.json (404_not_found) for misses, its
//! aip_0193_examples.minimal_404 without `status` for a proxy's 503 echoing a canary, and
//! sts_token_exchange.assembled.json (sts_success_response_google_auth_tests) for STS.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use keyrack_core::testkit::LogCapture;
use keyrack_core::{RotationEvent, SecretSource, Secrets, StaticToken};
use keyrack_fake_server::{FakeServer, Response};
use keyrack_gcp::{GcpBuilder, WorkloadIdentity};
use serde_json::json;

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

// Current-thread runtime: every task (the SDK's connections and token refresh included) logs
// on this thread.
#[tokio::test]
async fn no_secret_reaches_logs_debug_display_errors_or_events() {
    let capture = LogCapture::start();
    let canary = format!("S3CRET-gcp-{:016x}", rand_u64());
    let token_canary = format!("JWT-gcp-{:016x}", rand_u64());
    let binary_canary: Vec<u8> = [&[0xff, 0xfe][..], canary.as_bytes()].concat();

    let sts = fixture(STS);
    let issued = sts["sts_success_response_google_auth_tests"].clone();
    let sts_server = FakeServer::http(move |_| {
        let body = issued.clone();
        async move { Response::json(200, &body) }
    })
    .await;
    let store = Store::default();
    store.add_version("projects/p1/secrets/text", canary.as_bytes());
    store.add_version("projects/p1/secrets/bin", &binary_canary);
    store.add_version(
        "projects/p1/secrets/json",
        format!(r#"{{"password":"{canary}","n":"x"}}"#).as_bytes(),
    );
    // A payload corrupted on the way: the response's checksum is the value's, the payload's
    // is not. Both are derived from the value, so neither may be quoted.
    let corrupted = format!("{canary}-corrupted");
    let checksums = [
        crc32c::crc32c(canary.as_bytes()).to_string(),
        crc32c::crc32c(corrupted.as_bytes()).to_string(),
    ];
    let claimed = checksums[0].clone();
    let sm_store = store.clone();
    let echoed = canary.clone();
    let sm = FakeServer::http(move |req| {
        // A payload whose checksum does not match: refused, and not quoted in the error.
        let answer = if req.path.contains("/secrets/proxy/") {
            // A proxy's 503 in the AIP-193 envelope without `status` (minimal_404's shape),
            // echoing what it was given: followed by its HTTP status, its text not repeated.
            let mut body = fixture(STATUS_ERRORS)["aip_0193_examples"]["minimal_404"].clone();
            body["error"] = json!({"code": 503, "message": format!("upstream said {echoed}")});
            Response::json(503, &body).header("retry-after", "3")
        } else if req.path.contains("/secrets/corrupt/") {
            let mut body = access_body(
                "projects/p1/secrets/corrupt/versions/1",
                corrupted.as_bytes(),
            );
            body["payload"]["dataCrc32c"] = json!(claimed);
            Response::json(200, &body)
        } else {
            sm_store.answer(&req)
        };
        async move { answer }
    })
    .await;

    let builder = GcpBuilder::new()
        .with_endpoint(sm.url())
        .with_project("p1")
        .with_workload_identity(
            WorkloadIdentity::new(
                sts["sts_request"]["form"]["audience"].as_str().unwrap(),
                Arc::new(StaticToken::new(token_canary.clone())),
            )
            .with_token_url(format!("{}/v1/token", sts_server.url())),
        );
    let mut seen = format!("{builder:?}\n");
    let src = builder.build().await.unwrap();
    seen.push_str(&format!("{src:?}\n"));
    let mut both = |d: &dyn std::fmt::Debug, s: &dyn std::fmt::Display| {
        seen.push_str(&format!("{d:?}\n{s}\n"));
    };
    let refs = ["text", "bin", "json", "absent", "corrupt", "proxy"].map(gcp_ref);
    for r in &refs {
        match src.fetch(r).await {
            Ok(s) => both(&s, s.value()),
            Err(e) => both(&e, &e),
        }
    }
    for r in src.fetch_many(&refs).await {
        match r {
            Ok(s) => both(&s, s.value()),
            Err(e) => both(&e, &e),
        }
    }

    let secrets = Secrets::builder()
        .source("gcp-sm", src.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    for r in [
        "gcp-sm://json#absent",
        "gcp-sm://json#password",
        "gcp-sm://text#password",
    ] {
        match secrets.get_secret(r).await {
            Ok(s) => both(&"field", &format!("{s:?}")),
            Err(e) => both(&e, &e),
        }
    }
    let handle = secrets.handle("gcp-sm://text").await.unwrap();
    let mut events = handle.subscribe();
    store.add_version(
        "projects/p1/secrets/text",
        format!("{canary}-next").as_bytes(),
    );
    handle.refresh_now().await.unwrap();
    let mut rotated = false;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        rotated |= matches!(event, RotationEvent::Rotated { .. });
        both(&event, &event);
    }
    assert!(rotated, "no rotation seen");
    both(&handle.current().version(), &"current");
    secrets.shutdown().await;

    // The token did reach STS (and only there).
    assert!(sts_server.requests()[0].text().contains(&token_canary));
    let logs = capture.text();
    assert!(logs.len() > 1000, "the capture saw almost nothing: {logs}");
    for needle in [&canary, &token_canary] {
        for text in [&seen, &logs] {
            if let Some(at) = text.find(needle.as_str()) {
                let from = at.saturating_sub(300);
                panic!(
                    "secret leaked: ...{}...",
                    &text[from..(at + needle.len()).min(text.len())]
                );
            }
        }
    }
    // Nor the checksums of the corrupted read.
    for crc in &checksums {
        assert!(
            !seen.contains(crc.as_str()),
            "a checksum leaked to Debug/Display/errors"
        );
        assert!(
            !logs.contains(crc.as_str()),
            "a checksum leaked to the logs"
        );
    }
    assert!(
        seen.contains("CRC32C"),
        "the corrupted read was not seen: {seen}"
    );
    // The value as the JSON wire format shows it.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&binary_canary);
    let b64_text = base64::engine::general_purpose::STANDARD.encode(canary.as_bytes());
    for text in [&seen, &logs] {
        assert!(
            !text.contains(&b64[..b64.len() - 4]),
            "binary value leaked in base64"
        );
        assert!(
            !text.contains(&b64_text[..b64_text.len() - 4]),
            "value leaked in base64"
        );
    }
}
