//! An HTTPS server (hyper) whose certificate Vault / OpenBao issues and re-issues: each new
//! certificate is served from the next handshake on, without a restart, and its serial printed.
//!
//! Against the test ground's OpenBao (any Vault with a PKI mount works the same):
//!
//! ```text
//! dir=$(scripts/testground/vault-up) && set -a && . "$dir/env" && set +a
//! cargo run -p keyrack-examples --example tls_server          # until Ctrl-C
//! TESTGROUND_DIR=$dir scripts/testground/vault-down
//! ```
//!
//! It listens on `TLS_LISTEN` (`127.0.0.1:8443`) as `tls-example.<VAULT_PKI_DOMAIN>` with a
//! certificate from `<VAULT_PKI_MOUNT>/issue/<VAULT_PKI_ROLE>` (`pki`, `app`, `example.test`) of
//! `TLS_CERT_TTL` (`30s`: a new one every 20 s). Try it with
//! `curl --cacert "$VAULT_PKI_CA_PEM" --resolve tls-example.example.test:8443:127.0.0.1
//! https://tls-example.example.test:8443/`. With `TLS_EXAMPLE_SECS=n` it runs for n seconds
//! and requests itself every second, verifying against the Vault CA and printing the serial each
//! answer came with; it exits with an error if a request failed or no rotation was seen.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program whose output is the point
#![allow(clippy::disallowed_methods)] // a program on real time: it sleeps and reads the clock

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keyrack::Secrets;
use keyrack::rustls::rustls::pki_types::pem::PemObject;
use keyrack::rustls::rustls::pki_types::{CertificateDer, ServerName};
use keyrack::rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use keyrack::rustls::{CertEvent, CertSource, RotatingCertificate};
use keyrack::vault::VaultBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mount, role) = (var("VAULT_PKI_MOUNT", "pki"), var("VAULT_PKI_ROLE", "app"));
    let name = format!("tls-example.{}", var("VAULT_PKI_DOMAIN", "example.test"));
    let ttl = var("TLS_CERT_TTL", "30s");
    let listen = var("TLS_LISTEN", "127.0.0.1:8443");

    // VAULT_ADDR, VAULT_TOKEN (or another login), VAULT_CACERT, … The token needs `update` on
    // `<mount>/issue/<role>`, and `read` on `<mount>/cert/ca` for the self-check below.
    let vault = VaultBuilder::from_env().build()?;
    let secrets = Secrets::builder().source("vault", vault).build()?;
    // Issued now; the client issues a new one at ⅔ of each certificate's life.
    let issued = secrets
        .handle(format!(
            "vault://{mount}/issue/{role}?common_name={name}&ttl={ttl}"
        ))
        .await?;
    // One provider, passed explicitly: nothing is installed process-wide.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(issued))
            .crypto_provider(provider.clone())
            .build()?,
    );
    if let Some(first) = certificate.serving() {
        println!(
            "certificate {} (version {:?})",
            first.serial(),
            first.version()
        );
    }
    let mut events = certificate.subscribe();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                CertEvent::Installed { certificate, .. } => {
                    println!("new certificate {}", certificate.serial());
                }
                other => eprintln!("{other}"),
            }
        }
    });

    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(&listen).await?;
    println!("listening on https://{name} at {listen}");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let hello = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                        b"hello over a certificate that rotates\n",
                    ))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), hello)
                    .await;
            });
        }
    });

    match std::env::var("TLS_EXAMPLE_SECS").ok() {
        Some(secs) => {
            let secs: u64 = secs.parse()?;
            let checked = self_check(&secrets, &mount, &name, &listen, provider, secs).await;
            secrets.shutdown().await;
            checked
        }
        None => {
            tokio::signal::ctrl_c().await?;
            secrets.shutdown().await;
            Ok(())
        }
    }
}

/// Request the server every second for `secs` seconds as a client trusting only the PKI mount's
/// CA, and print the serial of the certificate each answer came with.
async fn self_check(
    secrets: &Secrets,
    mount: &str,
    name: &str,
    listen: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
    secs: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let ca = secrets
        .get_secret(format!("vault://{mount}/cert/ca#certificate"))
        .await?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.expose_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A full handshake each time, to be shown the certificate served now (a resumed session
    // shows none).
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut serials = BTreeSet::new();
    let mut failed = 0;
    for _ in 0..secs {
        match get(&connector, name, listen).await {
            Ok((status, serial)) => {
                println!("GET https://{name}/ -> {status}, certificate {serial}");
                serials.insert(serial);
            }
            Err(e) => {
                println!("GET https://{name}/ failed: {e}");
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{secs} requests: {failed} failed, {} certificates seen",
        serials.len()
    );
    if failed > 0 || serials.len() < 2 {
        return Err("a request failed, or no rotation was seen".into());
    }
    Ok(())
}

async fn get(
    connector: &tokio_rustls::TlsConnector,
    name: &str,
    listen: &str,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let tcp = TcpStream::connect(listen).await?;
    let mut tls = connector
        .connect(ServerName::try_from(name.to_owned())?, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)?;
    let serial = cert.raw_serial_as_string();
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((status, serial))
}
