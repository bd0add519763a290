//! No secret value reaches a log line, `Debug`, `Display`, an error or an event.
//!
//! Tracing is on at TRACE and captured; the fetch, field, JSON-decoding, refresh, rotation, lease
//! renewal and re-issue, failure, throttling, expiry, deletion and shutdown paths all run; every
//! value, secret, error, event and handle met on the way is formatted with `{:?}` and `{}`; then
//! the captured text is searched for every secret byte string.

use keyrack_core::testkit::LogCapture;
use std::time::Duration;

use futures_util::FutureExt;
use keyrack_core::sources::MemorySource;
use keyrack_core::{
    ErrorKind, ManualClock, RotationEvent, RotationEvents, SecretRef, SecretValue, Secrets,
};

/// Everything formatted during the test.
#[derive(Default)]
struct Seen(String);

impl Seen {
    fn both<T: std::fmt::Debug + std::fmt::Display>(&mut self, t: &T) {
        self.0.push_str(&format!("{t:?}\n{t}\n{t:#?}\n"));
    }
    fn debug<T: std::fmt::Debug>(&mut self, t: &T) {
        self.0.push_str(&format!("{t:?}\n{t:#?}\n"));
    }
    fn events(&mut self, events: &mut RotationEvents) -> usize {
        let mut n = 0;
        while let Some(Some(ev)) = events.recv().now_or_never() {
            if let RotationEvent::RefreshFailed { error, .. } = &ev {
                self.both(error);
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    self.0.push_str(&format!("{cause:?}\n{cause}\n"));
                    source = cause.source();
                }
            }
            self.both(&ev);
            n += 1;
        }
        n
    }
}

const STATIC: &str = "S3CRET-static-value-5521";
const ROTATED: &str = "S3CRET-rotated-value-8812";
const JSON_PASSWORD: &str = "S3CRET-json-password-3301";
const JSON_USER: &str = "S3CRET-json-user-4410";
const NOT_JSON: &str = "S3CRET-not-json-7007";

#[tokio::test]
async fn no_secret_reaches_logs_debug_display_errors_or_events() {
    let capture = LogCapture::start();

    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .refresh_interval(Duration::from_secs(60))
        .max_staleness(Duration::from_secs(3600))
        .jitter_seed(1)
        .build()
        .expect("client");
    let mut seen = Seen::default();
    let mut all = secrets.events();
    let mut secret_strings: Vec<String> = [STATIC, ROTATED, JSON_PASSWORD, JSON_USER, NOT_JSON]
        .map(String::from)
        .to_vec();

    memory.set("static", STATIC);
    memory.set(
        "json",
        format!(r#"{{"user":"{JSON_USER}","password":"{JSON_PASSWORD}","port":"not-a-number"}}"#),
    );
    memory.set("plain", NOT_JSON);
    memory.lease("db", Duration::from_secs(30), Duration::from_secs(90), true);

    // Reads, fields, typed decoding and its errors.
    let s = secrets.get_secret("mem://static").await.expect("static");
    seen.debug(&s);
    seen.both(s.value());
    let pw = secrets
        .get_secret("mem://json#password")
        .await
        .expect("field");
    seen.debug(&pw);
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Creds {
        user: String,
        port: u16,
    }
    let e = secrets
        .get_secret("mem://json")
        .await
        .expect("json")
        .json::<Creds>()
        .expect_err("port is not a number");
    seen.both(&e);
    let e = secrets
        .get_secret("mem://plain#field")
        .await
        .expect_err("not JSON");
    seen.both(&e);
    let e = SecretValue::from(NOT_JSON)
        .json::<Creds>()
        .expect_err("not JSON");
    seen.both(&e);
    let e = secrets
        .get_secret("mem://json#absent")
        .await
        .expect_err("no field");
    seen.both(&e);
    let e = secrets
        .get_secret("mem://missing")
        .await
        .expect_err("missing");
    seen.both(&e);
    for r in secrets
        .prefetch(&["mem://static", "mem://json#user", "mem://nope"])
        .await
    {
        match r {
            Ok(s) => seen.debug(&s),
            Err(e) => seen.both(&e),
        }
    }

    // Handles, rotation, leases.
    let static_handle = secrets.handle("mem://static").await.expect("handle");
    let field_handle = secrets.handle("mem://json#user").await.expect("handle");
    let db = secrets.handle("mem://db").await.expect("handle");
    let mut db_events = db.subscribe();
    seen.debug(&static_handle);
    seen.debug(&field_handle);
    seen.debug(&db);
    seen.debug(&db.current());
    memory.set("static", ROTATED);
    clock.advance(Duration::from_secs(61)).await;
    seen.debug(&static_handle.current());
    for _ in 0..10 {
        secret_strings.push(db.current().expose_str().expect("text").to_owned());
        clock.advance(Duration::from_secs(10)).await;
        seen.debug(&db.current());
    }
    seen.events(&mut db_events);

    // Failures: unavailable, throttled, permission denied, deletion, expiry.
    memory.fail(ErrorKind::Unavailable);
    clock.advance(Duration::from_secs(120)).await;
    memory.throttle(Some(Duration::from_secs(5)));
    clock.advance(Duration::from_secs(120)).await;
    memory.fail(ErrorKind::PermissionDenied);
    let e = static_handle.refresh_now().await.expect_err("denied");
    seen.both(&e);
    memory.recover();
    memory.delete("static");
    clock.advance(Duration::from_secs(120)).await;
    memory.fail(ErrorKind::Unavailable);
    clock.advance(Duration::from_secs(4000)).await;
    if let Err(e) = static_handle.try_current() {
        seen.both(&e);
    }
    if let Err(e) = secrets.get_secret("mem://static").await {
        seen.both(&e);
    }
    memory.recover();
    clock.advance(Duration::from_secs(600)).await;
    seen.debug(&db.current());
    let n = seen.events(&mut all);
    assert!(n > 10, "the paths above produced events ({n})");
    seen.debug(&secrets);
    seen.debug(&memory);
    seen.debug(&SecretRef::parse("mem://json#password").expect("ref"));
    secrets.shutdown().await;
    seen.events(&mut all);

    let logs = capture.text();
    assert!(
        logs.contains("refresh failed"),
        "logging was captured: {logs}"
    );
    let haystack = format!("{}\n{logs}", seen.0);
    for secret in &secret_strings {
        assert!(
            !haystack.contains(secret.as_str()),
            "secret `{secret}` leaked into:\n{haystack}"
        );
        // Not even a fragment of it (serde errors quote a few characters).
        let fragment = &secret[..12.min(secret.len())];
        assert!(
            !haystack.contains(fragment),
            "fragment `{fragment}` leaked into:\n{haystack}"
        );
    }
}
