//! TLS through rustls: an OpenBao dev server of this test's own with a generated CA
//! (`bao server -dev -dev-tls`). Trusting that CA works; not trusting it is refused.

#![allow(clippy::unwrap_used)]
// A real server in real time.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, env};
use keyrack_core::ErrorKind;
use keyrack_vault::VaultBuilder;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port_pair() -> u16 {
    // The dev server also binds port + 1.
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 65000 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_servers_ca_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let _server = Server(
        Command::new(env("TESTGROUND_BAO"))
            .args([
                "server",
                "-dev",
                "-dev-tls",
                "-dev-no-store-token",
                "-dev-root-token-id=tls-root",
                &format!("-dev-tls-cert-dir={}", dir.path().display()),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = dir.path().join("vault-ca.pem");
    let address = format!("https://127.0.0.1:{port}");
    let trusted = client(
        VaultBuilder::new()
            .with_address(&address)
            .with_token("tls-root")
            .with_ca_file(&ca)
            .build_when_ready(&ca),
    );
    // Dev mode mounts KV v2 at secret/; ask until the server is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match trusted.get_secret("vault://secret/missing").await {
            Err(e) if e.kind() == &ErrorKind::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(e.kind(), &ErrorKind::NotFound, "over TLS: {e}");

    // The same server without its CA: the certificate is not trusted.
    let untrusted = client(
        VaultBuilder::new()
            .with_address(&address)
            .with_token("tls-root")
            .build()
            .unwrap(),
    );
    let e = untrusted
        .get_secret("vault://secret/missing")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
}

trait WhenReady {
    fn build_when_ready(self, ca: &std::path::Path) -> keyrack_vault::VaultSource;
}

impl WhenReady for VaultBuilder {
    /// The CA file appears once the server has started.
    fn build_when_ready(self, ca: &std::path::Path) -> keyrack_vault::VaultSource {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ca.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.build().unwrap()
    }
}
