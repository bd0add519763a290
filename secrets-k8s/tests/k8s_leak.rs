//! Neither the service-account token nor a Secret's value reaches a log line, `Debug`, `Display`
//! or an error of the Kubernetes Secrets source.
//!
//! Tracing is captured at TRACE (every crate, reqwest's and the client's included) on a
//! current-thread runtime; reads, key selection, a 401 and token refresh, rotation through the
//! watch, a malformed and an ERROR watch line, an expired watch, and 401/403/404/429/500 failures
//! all run against the loopback fake (`fixtures/k8s/fake_api.rs`, every answer shaped after a
//! fixture in `fixtures/k8s/`); every value, error, event and handle met is formatted with `{:?}`,
//! `{:#?}` and `{}`; then all that text is searched for the token, the values and their base64.
#![allow(clippy::unwrap_used)] // helpers of tests: a failure should fail the test loudly

#[path = "fixtures/k8s/fake_api.rs"]
mod fake_api;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use fake_api::FakeApi;
use futures_util::FutureExt;
use keyrack_core::testkit::LogCapture;
use keyrack_core::{
    Backoff, IdentityToken, Result, RotationEvent, RotationEvents, SecretSource, SecretValue,
    Secrets, async_trait,
};
use keyrack_k8s::source::KubernetesSecrets;

const OLD_TOKEN: &str = "tok-LEAK-old-7731";
const NEW_TOKEN: &str = "tok-LEAK-new-9012";
const USER: &str = "S3CRET-k8s-user-2210";
const PASSWORD: &str = "S3CRET-k8s-password-9931";
const ROTATED: &str = "S3CRET-k8s-rotated-6617";
const BINARY: &[u8] = b"S3CRET-k8s-binary-5150\xff\x00";
const IN_BAD_LINE: &str = "S3CRET-k8s-in-a-bad-line-4242";

/// Everything formatted during the test.
#[derive(Default)]
struct Seen(String);

impl Seen {
    fn both<T: fmt::Debug + fmt::Display>(&mut self, t: &T) {
        self.0.push_str(&format!("{t:?}\n{t}\n{t:#?}\n"));
    }

    fn debug<T: fmt::Debug>(&mut self, t: &T) {
        self.0.push_str(&format!("{t:?}\n{t:#?}\n"));
    }

    fn error(&mut self, e: &keyrack_core::Error) {
        self.both(e);
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            self.0.push_str(&format!("{cause:?}\n{cause}\n"));
            source = cause.source();
        }
    }

    fn events(&mut self, events: &mut RotationEvents) -> usize {
        let mut n = 0;
        while let Some(Some(ev)) = events.recv().now_or_never() {
            if let RotationEvent::RefreshFailed { error, .. } = &ev {
                self.error(error);
            }
            self.both(&ev);
            n += 1;
        }
        n
    }
}

/// Answers the old token until invalidated, then the new one.
struct RotatingToken(Mutex<&'static str>);

impl fmt::Debug for RotatingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RotatingToken")
    }
}

#[async_trait]
impl IdentityToken for RotatingToken {
    async fn token(&self) -> Result<SecretValue> {
        Ok(SecretValue::from(*self.0.lock().unwrap()))
    }

    fn invalidate(&self) {
        *self.0.lock().unwrap() = NEW_TOKEN;
    }
}

#[tokio::test]
async fn no_token_or_value_reaches_logs_debug_display_or_errors() {
    let capture = LogCapture::start();
    let mut seen = Seen::default();

    let (server, api) = FakeApi::start(&[NEW_TOKEN]).await;
    api.put(
        "apps",
        "db-creds",
        &[
            ("username", USER.as_bytes()),
            ("password", PASSWORD.as_bytes()),
        ],
    );
    api.put("apps", "store", &[("keystore", BINARY)]);
    api.forbid("registry-credentials");

    let builder = KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem(server.ca_pem().unwrap())
        .token(Arc::new(RotatingToken(Mutex::new(OLD_TOKEN))))
        .watch_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        });
    seen.debug(&builder);
    let k8s = builder.build().expect("source");
    seen.debug(&k8s);

    let secrets = Secrets::builder()
        .source("k8s", k8s.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .expect("client");
    let mut all = secrets.events();

    // Reads (the first one answered 401 for the old token), keys, and their errors.
    let whole = secrets
        .get_secret("k8s://apps/db-creds")
        .await
        .expect("read");
    seen.debug(&whole);
    seen.both(whole.value());
    let user = secrets
        .get_secret("k8s://apps/db-creds#username")
        .await
        .expect("key");
    seen.debug(&user);
    let raw = secrets
        .get_secret("k8s://apps/store?key=keystore")
        .await
        .expect("binary key");
    seen.debug(&raw);
    // The binary key is left out of the JSON map: selecting it fails, reading the map does not.
    let map = secrets.get_secret("k8s://apps/store").await.expect("map");
    seen.debug(&map);
    for failing in [
        "k8s://apps/store#keystore",
        "k8s://apps/db-creds#absent",
        "k8s://apps/missing",
        "k8s://apps/registry-credentials",
        "k8s://apps/db-creds?key=absent",
        "k8s://Apps/db-creds",
    ] {
        let e = secrets.get_secret(failing).await.expect_err(failing);
        seen.error(&e);
    }
    api.fail_next_get(429, Some(3));
    seen.error(
        &k8s.fetch(&"k8s://apps/db-creds".parse().unwrap())
            .await
            .expect_err("429"),
    );
    api.fail_next_get(500, None);
    seen.error(
        &k8s.fetch(&"k8s://apps/db-creds".parse().unwrap())
            .await
            .expect_err("500"),
    );
    // A proxy's page with a Retry-After date, and references refused before any request.
    api.fail_next_get_with(503, "Fri, 15 Jan 2027 08:00:20 GMT", true);
    seen.error(
        &k8s.fetch(&"k8s://apps/db-creds".parse().unwrap())
            .await
            .expect_err("503"),
    );
    for bad in [
        format!("k8s://apps/{}", "n".repeat(254)),
        "k8s://apps/db-creds?Key=password".to_owned(),
    ] {
        seen.error(
            &k8s.fetch(&bad.parse().unwrap())
                .await
                .expect_err("bad reference"),
        );
    }
    api.accept_tokens(&[]);
    seen.error(
        &k8s.fetch(&"k8s://apps/db-creds".parse().unwrap())
            .await
            .expect_err("401"),
    );
    api.accept_tokens(&[NEW_TOKEN]);

    // Rotation through the watch, then a malformed line, an ERROR line and an expired watch.
    let handle = secrets
        .handle("k8s://apps/db-creds#password")
        .await
        .expect("handle");
    let mut events = handle.subscribe();
    seen.debug(&handle);
    api.wait_for_watches(1).await;
    api.put(
        "apps",
        "db-creds",
        &[
            ("username", USER.as_bytes()),
            ("password", ROTATED.as_bytes()),
        ],
    );
    let rotated = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(ev @ RotationEvent::Rotated { .. }) => return ev,
                Some(_) => continue,
                None => panic!("events ended"),
            }
        }
    })
    .await
    .expect("rotated");
    seen.both(&rotated);
    seen.debug(&handle.current());
    let b64 = base64::engine::general_purpose::STANDARD;
    let opened = api.watches_opened();
    api.push_raw(
        format!(
            "{{\"type\":\"MODIFIED\",\"object\":{{\"data\":{{\"password\":\"{}\",\"raw\":\"{IN_BAD_LINE}\"}}}}}} trailing garbage\n",
            b64.encode(IN_BAD_LINE)
        )
        .as_bytes(),
    );
    // Re-read, then watched anew.
    api.wait_for_watches_opened(opened + 1).await;
    // The stream fixture's ERROR line (line 6) with a 500 Status instead of 410.
    api.push_raw(
        br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"internal error","reason":"InternalError","code":500}}
"#,
    );
    api.wait_for_watches_opened(opened + 2).await;
    // The throttling answer of the same line (429 with details.retryAfterSeconds).
    api.push_raw(&api.error_line(429, "TooManyRequests", Some(1)));
    api.wait_for_watches_opened(opened + 3).await;
    api.expire_watches();
    api.wait_for_watches_opened(opened + 4).await;
    seen.debug(&handle.current());
    seen.events(&mut events);
    let n = seen.events(&mut all);
    assert!(n >= 1, "events were produced ({n})");
    seen.debug(&secrets);
    secrets.shutdown().await;
    seen.events(&mut all);

    let logs = capture.text();
    for expected in [
        "watching the Secret",
        "malformed watch event",
        "InternalError",
        "expired (410)",
    ] {
        assert!(logs.contains(expected), "`{expected}` was logged: {logs}");
    }
    let haystack = format!("{}\n{logs}", seen.0);
    let binary_text = String::from_utf8_lossy(&BINARY[..22]).into_owned();
    let mut needles: Vec<String> = [OLD_TOKEN, NEW_TOKEN, USER, PASSWORD, ROTATED, IN_BAD_LINE]
        .map(String::from)
        .to_vec();
    needles.push(binary_text);
    let encoded: Vec<String> = needles
        .iter()
        .map(|n| b64.encode(n))
        .chain([b64.encode(BINARY)])
        .collect();
    needles.extend(encoded);
    for needle in &needles {
        assert!(
            !haystack.contains(needle.as_str()),
            "`{needle}` leaked into:\n{haystack}"
        );
        let fragment = &needle[..12.min(needle.len())];
        assert!(
            !haystack.contains(fragment),
            "fragment `{fragment}` leaked into:\n{haystack}"
        );
    }
}
