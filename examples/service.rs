//! A service whose configuration lives in keyrack handles, with the endpoints an orchestrator
//! and a metrics scraper ask for: `/healthz` (liveness), `/readyz` (readiness, from
//! `Secrets::health()`) and `/metrics` (Prometheus text, with keyrack's counters and gauges),
//! on axum (`examples/src/probes.rs`).
//!
//! It runs anywhere: its secrets are files in a temporary directory (a `file://` source, as a
//! mounted Kubernetes Secret would be). `cargo run -p keyrack-examples --example service` serves
//! on `APP_LISTEN` (`127.0.0.1:8080`) until Ctrl-C; `-- --check` requests each endpoint, rotates
//! a secret, requests `/metrics` again, prints what it saw and exits (non-zero if an endpoint
//! did not answer as it should or a secret's value appeared in any answer).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program whose output is the point
#![allow(clippy::disallowed_methods)] // a program on real time

use std::path::Path;
use std::time::Duration;

use keyrack::sources::FileSource;
use keyrack::{RotationEvent, Secrets};
use keyrack_examples::probes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const VALUES: [&str; 2] = ["s3cr3t-api-key-one", "s3cr3t-api-key-two"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let check = std::env::args().any(|a| a == "--check");
    let listen = std::env::var("APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let prometheus = probes::install_prometheus()?;

    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("api_key");
    write_atomically(&key_file, VALUES[0].as_bytes())?;
    let secrets = Secrets::builder()
        .source("file", FileSource::new())
        .build()?;
    // The configuration, held as a live handle: a request reads `api_key.current()`.
    let api_key = secrets
        .handle(format!("file://{}", key_file.display()))
        .await?;
    let mut events = api_key.subscribe();

    // Port 0 (`APP_LISTEN=127.0.0.1:0`) picks a free one; the check uses whatever was bound.
    let listener = TcpListener::bind(if check { "127.0.0.1:0" } else { &listen }).await?;
    let addr = listener.local_addr()?;
    println!("serving /healthz, /readyz and /metrics on http://{addr}");
    let app = probes::router(secrets.clone(), prometheus);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    if !check {
        tokio::signal::ctrl_c().await?;
        secrets.shutdown().await;
        return Ok(());
    }

    let mut problems = Vec::new();
    let mut answers = Vec::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = get(&addr.to_string(), path).await?;
        println!("GET {path} -> {status}");
        if status != 200 {
            problems.push(format!("{path} answered {status}"));
        }
        answers.push(body);
    }
    // Rotate the secret as a syncer would, wait for the handle to see it, look again.
    write_atomically(&key_file, VALUES[1].as_bytes())?;
    let rotated = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if let RotationEvent::Rotated { .. } = event {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !rotated {
        problems.push("no Rotated event within 10 s".to_owned());
    }
    let (_, metrics) = get(&addr.to_string(), "/metrics").await?;
    for line in metrics.lines().filter(|l| l.starts_with("keyrack_")) {
        println!("  {line}");
    }
    for expected in [
        "keyrack_events_total{kind=\"rotated\"} 1",
        "keyrack_handles{source=\"file\"} 1",
        "keyrack_secrets_held{source=\"file\"} 1",
    ] {
        if !metrics.contains(expected) {
            problems.push(format!("/metrics lacks `{expected}`"));
        }
    }
    answers.push(metrics);
    if answers
        .iter()
        .any(|body| VALUES.iter().any(|v| body.contains(v)))
    {
        problems.push("a secret's value appeared in an answer".to_owned());
    }
    secrets.shutdown().await;
    server.abort();
    if problems.is_empty() {
        println!("check: every endpoint answered; no value in any answer");
        Ok(())
    } else {
        Err(problems.join("; ").into())
    }
}

/// One HTTP/1.1 GET; the status code and the body.
async fn get(addr: &str, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// Replace `path` in one step (write beside it, rename), as the kubelet's and syncers' writes are.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}
