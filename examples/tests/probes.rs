//! The probe endpoints of `examples/src/probes.rs` over real HTTP: a source that starts failing
//! leaves `/readyz` at 200 while the last good value is valid, turns it to 503 once a value
//! behind a handle has expired (the body names the reference and its state, never a value),
//! keeps `/healthz` at 200 throughout, and recovers to 200 with the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use keyrack::sources::MemorySource;
use keyrack::{ErrorKind, ManualClock, Secrets};
use keyrack_examples::probes;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const S: fn(u64) -> Duration = Duration::from_secs;

/// One HTTP/1.1 GET; the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(S(10), stream.read_to_string(&mut answer))
        .await
        .expect("the probe answered within 10 s")
        .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn readyz_fails_while_a_handle_holds_an_expired_value_and_recovers() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    // A leased credential (renewable, TTL 120 s) and a static one, both behind handles.
    memory.lease("db", S(120), S(3600), true);
    memory.set("api", "api-key-never-shown");
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .refresh_interval(S(100))
        .jitter_seed(7)
        .source("mem", memory.clone())
        .build()
        .unwrap();
    let db = secrets.handle("mem://db").await.unwrap();
    let api = secrets.handle("mem://api").await.unwrap();
    let db_value = db.current().value().expose_str().unwrap().to_owned();

    // A recorder of our own (not installed process-wide): /metrics renders from its handle.
    let prometheus = PrometheusBuilder::new().build_recorder().handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, probes::router(secrets, prometheus))
            .await
            .unwrap();
    });

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("Ready"), "{body}");
    assert!(body.contains("mem://db fresh"), "{body}");

    // The backend fails every call: the lease's renewal (at about ⅔ of 120 s) fails, the value
    // is still valid, so the service stays ready and the body says what fails and why.
    memory.fail_with(ErrorKind::Unavailable, None);
    clock.advance(S(90)).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("Degraded"), "{body}");
    assert!(body.contains("mem://db failing (Unavailable"), "{body}");

    // Past the lease's end: a handle holds nothing valid; not ready, but alive.
    clock.advance(S(60)).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("Failing"), "{body}");
    assert!(body.contains("mem://db expired (handles: 1)"), "{body}");
    let (status, live) = get(addr, "/healthz").await;
    assert_eq!((status, live.as_str()), (200, "ok\n"));
    for text in [&body, &live, &get(addr, "/metrics").await.1] {
        assert!(!text.contains(&db_value), "a value reached a probe: {text}");
        assert!(!text.contains("api-key-never-shown"), "{text}");
    }

    // The backend is back: a new lease within the short recovery retries, ready again.
    memory.recover();
    clock.advance(S(10)).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mem://db fresh"), "{body}");
    assert_ne!(db.current().value().expose_str().unwrap(), db_value);
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200);

    drop((db, api));
    server.abort();
}
