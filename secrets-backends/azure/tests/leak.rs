//! No secret value, identity token or access token reaches logs (at TRACE, the SDK's included),
//! `Debug`, `Display`, errors or events. One test in this binary: it installs a log capture for
//! its thread.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyrack_core::testkit::LogCapture;
use keyrack_core::{RotationEvent, SecretSource, Secrets};

// Current-thread runtime: every task (the SDK's connections and the fakes included) logs on
// this thread.
#[tokio::test]
async fn no_secret_reaches_logs_debug_display_errors_or_events() {
    let capture = LogCapture::start();
    let canary = "S3CRET-azure-7c1e5b2d9a";
    let identity_canary = "eyJhbGciOiJSUzI1NiJ9.IDENTITY-CANARY-5f3a.sig";

    let fake = Fake::start().await;
    fake.put("leak-plain", canary);
    fake.put(
        "leak-json",
        &format!(r#"{{"password":"{canary}","n":"x"}}"#),
    );
    fake.put("leak-disabled", canary);
    fake.with_state(|s| s.latest_mut("leak-disabled").enabled = false);
    fake.with_state(|s| s.token_expires_in = Some(60));
    let token = Arc::new(RotatingToken::new(identity_canary));
    let builder = fake.builder(token.clone());
    let mut seen = format!("{builder:?}\n");
    let src = builder.build().unwrap();
    seen.push_str(&format!("{src:?}\n"));

    let mut both = |d: &dyn std::fmt::Debug, s: &dyn std::fmt::Display| {
        seen.push_str(&format!("{d:?}\n{s}\n"));
    };
    let refs = [
        kv_ref("leak-plain"),
        kv_ref("leak-json"),
        kv_ref("leak-disabled"),
        kv_ref("leak-absent"),
    ];
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
    // A refused login and a throttled read.
    fake.with_state(|s| s.refuse_next_token = true);
    let fresh = fake.builder(token.clone()).build().unwrap();
    if let Err(e) = fresh.fetch(&refs[0]).await {
        both(&e, &e);
    }
    fake.with_state(|s| s.throttle = Some((1, 1)));
    if let Err(e) = src.fetch(&refs[0]).await {
        both(&e, &e);
    }
    // Refusals with their own messages: a gateway's page echoing what it was sent (not Key
    // Vault's answer: not repeated), Key Vault's firewall refusal (its message kept, on one
    // line), and a 503 with a Retry-After date.
    fake.with_state(|s| {
        s.canned.push_back(Canned::html(
            403,
            &format!("<html>blocked request for {canary}</html>"),
        ));
        s.canned.push_back(Canned::key_vault(
            403,
            "Forbidden",
            "Client address is not authorized and caller is not a trusted service.\r\nClient address: 203.0.113.7",
            Some("ForbiddenByFirewall"),
        ));
        s.canned.push_back(
            Canned::html(503, &format!("<html>{canary}</html>"))
                .header("retry-after", "Fri, 15 Jan 2027 08:00:30 GMT"),
        );
    });
    for _ in 0..3 {
        if let Err(e) = src.fetch(&refs[0]).await {
            both(&e, &e);
        }
    }

    let secrets = Secrets::builder()
        .source("azure-kv", src.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    for r in [
        kv_ref("leak-json").with_field("absent").unwrap(),
        kv_ref("leak-json").with_field("password").unwrap(),
        kv_ref("leak-plain").with_field("password").unwrap(),
    ] {
        match secrets.get_secret(&r).await {
            Ok(s) => both(&"field", &format!("{s:?}")),
            Err(e) => both(&e, &e),
        }
    }
    let handle = secrets.handle(kv_ref("leak-plain")).await.unwrap();
    let mut events = handle.subscribe();
    fake.put("leak-plain", &format!("{canary}-next"));
    fake.with_state(|s| s.throttle = Some((1, 1)));
    let _ = handle.refresh_now().await.map_err(|e| both(&e, &e));
    handle.refresh_now().await.unwrap();
    let mut rotated = false;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        rotated |= matches!(event, RotationEvent::Rotated { .. });
        both(&event, &event);
    }
    assert!(rotated, "no rotation seen");
    secrets.shutdown().await;

    let logs = capture.text();
    assert!(logs.len() > 1000, "the capture saw almost nothing: {logs}");
    // The SDK's own request logging was captured: token requests and vault reads.
    assert!(logs.contains("/oauth2/v2.0/token"), "{logs}");
    assert!(logs.contains("/secrets/leak-plain/"), "{logs}");
    for needle in [canary, identity_canary, "fake-access-token-"] {
        for text in [&seen, &logs] {
            if let Some(at) = text.find(needle) {
                let from = at.saturating_sub(300);
                panic!(
                    "`{needle}` leaked: ...{}...",
                    &text[from..(at + needle.len()).min(text.len())]
                );
            }
        }
    }
}
