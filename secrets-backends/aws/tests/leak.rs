//! No secret value reaches logs (at TRACE, the SDK's included), `Debug`, `Display`, errors or
//! events. One test in this binary: it installs a log capture for its thread.

#![allow(clippy::unwrap_used)]

mod common;

use keyrack_core::testkit::LogCapture;
use std::time::Duration;

use common::*;
use keyrack_core::{RotationEvent, SecretSource, Secrets};

// Current-thread runtime: every task (the SDK's connections included) logs on this thread.
#[tokio::test]
async fn no_secret_reaches_logs_debug_display_errors_or_events() {
    let capture = LogCapture::start();

    let canary = format!("S3CRET-aws-{:016x}", rand_u64());
    let binary_canary: Vec<u8> = [&[0xff, 0xfe][..], canary.as_bytes()].concat();
    let admin = source().await;
    let name = uniq("leak-logs");
    let bin = uniq("leak-logs-bin");
    let json = uniq("leak-logs-json");
    let throttler = Throttler::default();
    let src = builder()
        .with_interceptor(throttler.clone())
        .build()
        .await
        .unwrap();
    // Seeding requests carry the value by design (PutSecretValue); the capture starts after.
    put(&admin, &name, canary.as_bytes()).await.unwrap();
    put(&admin, &bin, &binary_canary).await.unwrap();
    put(
        &admin,
        &json,
        format!(r#"{{"password":"{canary}","n":"x"}}"#).as_bytes(),
    )
    .await
    .unwrap();
    capture.clear();

    let mut seen = String::new();
    let mut both = |d: &dyn std::fmt::Debug, s: &dyn std::fmt::Display| {
        seen.push_str(&format!("{d:?}\n{s}\n"));
    };
    let refs = [
        aws_ref(&name),
        aws_ref(&bin),
        aws_ref(&json),
        aws_ref(&uniq("absent")),
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
    throttler.arm("", 3);
    for r in src.fetch_many(&refs[..2]).await {
        match r {
            Ok(s) => both(&s, s.value()),
            Err(e) => both(&e, &e),
        }
    }

    let secrets = Secrets::builder()
        .source("aws-sm", src.clone())
        .refresh_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    for r in [
        aws_ref(&json).with_field("absent").unwrap(),
        aws_ref(&json).with_field("password").unwrap(),
        aws_ref(&name).with_field("password").unwrap(),
    ] {
        match secrets.get_secret(&r).await {
            Ok(s) => both(&"field", &format!("{s:?}")),
            Err(e) => both(&e, &e),
        }
    }
    let handle = secrets.handle(aws_ref(&name)).await.unwrap();
    let mut events = handle.subscribe();
    put(&admin, &name, format!("{canary}-next").as_bytes())
        .await
        .unwrap();
    throttler.arm("", 2);
    let _ = handle.refresh_now().await.map_err(|e| both(&e, &e));
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
    both(&handle.current().version(), &"current");
    secrets.shutdown().await;

    let logs = capture.text();
    assert!(logs.len() > 1000, "the capture saw almost nothing: {logs}");
    for text in [&seen, &logs] {
        if let Some(at) = text.find(&canary) {
            let from = at.saturating_sub(300);
            panic!(
                "secret value leaked: ...{}...",
                &text[from..(at + canary.len()).min(text.len())]
            );
        }
    }
    // The value as the JSON wire format and base64 would show it.
    let b64 = aws_smithy_types::base64::encode(&binary_canary);
    assert!(
        !logs.contains(&b64[..b64.len() - 4]),
        "binary value leaked in base64"
    );
}
