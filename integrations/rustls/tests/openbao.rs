//! Real handshakes against certificates OpenBao's PKI issues with a 30 s TTL (the test ground of
//! `scripts/testground/vault-up`: role `pki/issue/app`, any `*.example.test`): a TLS server on a
//! `RotatingCertificate`, a client connecting every 100 ms over TCP and verifying against the
//! Vault CA; then the same with mutual TLS, the client presenting a rotating certificate too.
//!
//! `TLS_SOAK_SECS` sets how long each runs (default 70 s: at least two re-issues, at ⅔ of each
//! certificate's 30 s). Each prints a `RESULT` line with its figures (`--no-capture` to see it).

#![allow(clippy::unwrap_used, clippy::print_stdout)]
// Real servers run in real time: these tests read the clock and sleep.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use keyrack_core::{RotationEvent, Secrets};
use keyrack_rustls::rustls::client::Resumption;
use keyrack_rustls::rustls::pki_types::pem::PemObject;
use keyrack_rustls::rustls::pki_types::{CertificateDer, ServerName};
use keyrack_rustls::rustls::server::WebPkiClientVerifier;
use keyrack_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use keyrack_rustls::{CertEvent, CertSource, RotatingCertificate};
use keyrack_vault::{Auth, VaultBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{provider, serial_of};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the OpenBao test ground; run them through \
             scripts/test (or start scripts/testground/vault-up and source its env file)"
        )
    })
}

fn soak_duration() -> Duration {
    let secs = std::env::var("TLS_SOAK_SECS")
        .ok()
        .map(|s| s.parse::<u64>().expect("TLS_SOAK_SECS is whole seconds"))
        .unwrap_or(70);
    Duration::from_secs(secs)
}

fn vault_ca() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(env("VAULT_PKI_CA_PEM")).unwrap();
    for ca in CertificateDer::pem_slice_iter(&pem) {
        roots.add(ca.unwrap()).unwrap();
    }
    roots
}

fn secrets() -> Secrets {
    let vault = VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_auth(Auth::approle(
            env("VAULT_APPROLE_ROLE_ID"),
            env("VAULT_APPROLE_SECRET_ID"),
        ))
        .build()
        .unwrap();
    Secrets::builder().source("vault", vault).build().unwrap()
}

/// A certificate for `name` issued by OpenBao with a 30 s TTL, followed.
async fn issued(secrets: &Secrets, name: &str) -> (Arc<RotatingCertificate>, Installs) {
    let reference = format!(
        "vault://{}/issue/{}?common_name={name}&ttl=30s",
        env("VAULT_PKI_MOUNT"),
        env("VAULT_PKI_ROLE")
    );
    let handle = secrets.handle(reference.as_str()).await.unwrap();
    // The Vault source's version of an issue is the serial number it answered.
    let mut rotations = handle.subscribe();
    let cert = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(handle))
            .crypto_provider(provider())
            .build()
            .unwrap(),
    );
    let first = cert.serving().unwrap();
    assert_eq!(
        first.version().map(|v| v.as_str()),
        Some(first.serial()),
        "the resolver writes serials as Vault does"
    );
    let installs = Installs::new(first.serial().to_owned());
    let recorder = installs.clone();
    let mut events = cert.subscribe();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            recorder.record(ev);
        }
    });
    let recorder = installs.clone();
    tokio::spawn(async move {
        while let Some(ev) = rotations.recv().await {
            if let RotationEvent::Rotated { new: Some(v), .. } = ev {
                recorder
                    .0
                    .lock()
                    .unwrap()
                    .reissued
                    .push(v.as_str().to_owned());
            }
        }
    });
    (cert, installs)
}

/// What a resolver installed, and when the test learnt it.
#[derive(Clone)]
struct Installs(Arc<Mutex<InstallLog>>);

struct InstallLog {
    /// Serials in the order served, the first one included.
    serials: Vec<String>,
    /// When each `Installed` (after the first) arrived.
    at: Vec<Instant>,
    /// Serials the Vault handle announced as `Rotated`.
    reissued: Vec<String>,
    /// Anything but `Installed`: refusals, expiry.
    other: Vec<String>,
}

impl Installs {
    fn new(first: String) -> Self {
        Installs(Arc::new(Mutex::new(InstallLog {
            serials: vec![first],
            at: Vec::new(),
            reissued: Vec::new(),
            other: Vec::new(),
        })))
    }

    fn record(&self, ev: CertEvent) {
        let mut log = self.0.lock().unwrap();
        match ev {
            CertEvent::Installed { certificate, .. } => {
                log.serials.push(certificate.serial().to_owned());
                log.at.push(Instant::now());
            }
            other => log.other.push(other.to_string()),
        }
    }

    /// How many installations the test knew of at `t`.
    fn known_at(&self, t: Instant) -> usize {
        self.0
            .lock()
            .unwrap()
            .at
            .iter()
            .filter(|a| **a <= t)
            .count()
    }

    fn index_of(&self, serial: &str) -> Option<usize> {
        self.0
            .lock()
            .unwrap()
            .serials
            .iter()
            .position(|s| s == serial)
    }
}

/// One handshake as the client saw it.
struct Attempt {
    started: Instant,
    result: Result<Shown, String>,
}

struct Shown {
    server_serial: String,
    server_not_after: SystemTime,
    /// The client certificate's serial as the server saw it (mutual TLS).
    client_serial: Option<String>,
    client_not_after: Option<SystemTime>,
}

fn not_after(der: &CertificateDer<'_>) -> SystemTime {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().unsigned_abs())
}

/// A TLS server: after each handshake it writes the client certificate's DER it saw (or
/// nothing), then closes.
async fn serve(config: Arc<ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client reports the failure
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec())
                    .unwrap_or_default();
                let _ = tls.write_all(&client).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<Shown, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("tcp: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let server_leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?;
    // Reading to the end also completes the server's side (its check of our certificate).
    let mut client_der = Vec::new();
    tls.read_to_end(&mut client_der)
        .await
        .map_err(|e| format!("after the handshake: {e}"))?;
    let client_leaf = (!client_der.is_empty()).then(|| CertificateDer::from(client_der));
    Ok(Shown {
        server_serial: serial_of(&server_leaf),
        server_not_after: not_after(&server_leaf),
        client_serial: client_leaf.as_ref().map(serial_of),
        client_not_after: client_leaf.as_ref().map(not_after),
    })
}

/// Handshakes every 100 ms for `duration`, then one more.
async fn handshakes(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
    duration: Duration,
) -> Vec<Attempt> {
    let start = tokio::time::Instant::now();
    let mut attempts = Vec::new();
    let mut n = 0u32;
    loop {
        let started = Instant::now();
        let result =
            tokio::time::timeout(Duration::from_secs(5), connect(addr, config.clone(), name))
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
        attempts.push(Attempt { started, result });
        n += 1;
        let next = start + Duration::from_millis(100) * n;
        if next.duration_since(start) > duration {
            break;
        }
        tokio::time::sleep_until(next).await;
    }
    attempts
}

/// What the soak checks for the certificates one side presented: every handshake after an
/// installation shows the new serial, every installed serial was seen, none was expired.
fn check_side(
    side: &str,
    installs: &Installs,
    shown: impl Iterator<Item = (Instant, String, SystemTime, SystemTime)>,
    failures: &mut Vec<String>,
) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for (started, serial, not_after, at) in shown {
        if not_after <= at {
            failures.push(format!("{side}: expired certificate {serial} served"));
        }
        let Some(index) = installs.index_of(&serial) else {
            failures.push(format!("{side}: serial {serial} was never installed"));
            continue;
        };
        let known = installs.known_at(started);
        // Installed before the handshake began (and announced): the new one, or one installed
        // between the swap and its announcement.
        if index < known || index > known + 1 {
            failures.push(format!(
                "{side}: a handshake begun after installation {known} showed serial #{index}"
            ));
        }
        if seen.last() != Some(&serial) {
            seen.push(serial);
        }
    }
    let log = installs.0.lock().unwrap();
    if seen != log.serials {
        failures.push(format!(
            "{side}: serials shown {seen:?}, installed {:?}",
            log.serials
        ));
    }
    // The handle's `Rotated` and the resolver's `Installed` arrive on two streams: at the very
    // end one may be a step ahead of the other.
    let installed = &log.serials[1..];
    let n = installed.len().min(log.reissued.len());
    if installed[..n] != log.reissued[..n] || installed.len().abs_diff(log.reissued.len()) > 1 {
        failures.push(format!(
            "{side}: installed {:?} but Vault re-issued {:?}",
            log.serials, log.reissued
        ));
    }
    if !log.other.is_empty() {
        failures.push(format!("{side}: events {:?}", log.other));
    }
    seen
}

async fn soak(mutual: bool) {
    let duration = soak_duration();
    let secrets = secrets();
    let domain = env("VAULT_PKI_DOMAIN");
    let server_name = format!("tls.{domain}");
    let (server_cert, server_installs) = issued(&secrets, &server_name).await;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mutual {
        builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(vault_ca()), provider())
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let addr = serve(Arc::new(builder.with_cert_resolver(server_cert.clone()))).await;

    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(vault_ca());
    let (mut client, client_side) = if mutual {
        let (cert, installs) = issued(&secrets, &format!("client.{domain}")).await;
        (client.with_client_cert_resolver(cert), Some(installs))
    } else {
        (client.with_no_client_auth(), None)
    };
    // Every connection a full handshake: a resumed session shows no certificate (the client
    // would report the one of the session it resumed).
    client.resumption = Resumption::disabled();
    let began = Instant::now();
    let attempts = handshakes(addr, Arc::new(client), &server_name, duration).await;
    let elapsed = began.elapsed();

    let mut failures = Vec::new();
    let ok: Vec<(&Attempt, &Shown)> = attempts
        .iter()
        .filter_map(|a| match &a.result {
            Ok(shown) => Some((a, shown)),
            Err(e) => {
                failures.push(format!("handshake failed: {e}"));
                None
            }
        })
        .collect();
    let wall = |a: &Attempt| SystemTime::now() - a.started.elapsed();
    let server_seen = check_side(
        "server",
        &server_installs,
        ok.iter().map(|(a, s)| {
            (
                a.started,
                s.server_serial.clone(),
                s.server_not_after,
                wall(a),
            )
        }),
        &mut failures,
    );
    let client_seen = client_side.as_ref().map(|installs| {
        let shown = ok.iter().filter_map(|(a, s)| {
            Some((
                a.started,
                s.client_serial.clone()?,
                s.client_not_after?,
                wall(a),
            ))
        });
        if ok.iter().any(|(_, s)| s.client_serial.is_none()) {
            failures.push("client: a handshake without the client certificate".into());
        }
        check_side("client", installs, shown, &mut failures)
    });
    println!(
        "RESULT tls_soak mutual={mutual} seconds={} handshakes={} failed={} server_serials={} \
         client_serials={} problems={}",
        elapsed.as_secs(),
        attempts.len(),
        attempts.iter().filter(|a| a.result.is_err()).count(),
        server_seen.len(),
        client_seen.as_ref().map_or(0, Vec::len),
        failures.len(),
    );
    println!("server serials: {server_seen:?}");
    if let Some(seen) = &client_seen {
        println!("client serials: {seen:?}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Re-issued at ⅔ of 30 s: at least one re-issue per 30 s of soak.
    let expected = (duration.as_secs() / 30) as usize;
    assert!(
        server_seen.len() > expected,
        "{} serials in {duration:?}",
        server_seen.len()
    );
    if let Some(seen) = &client_seen {
        assert!(seen.len() > expected, "{} client serials", seen.len());
    }
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_30s_vault_certificate_never_fails_a_handshake() {
    soak(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_30s_vault_certificates_never_fails_a_handshake() {
    soak(true).await;
}

/// The first certificate is checked at construction against OpenBao's real answer: a chain
/// field that is there (`ca_chain`), a PKCS#1 RSA key, the serial as version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_issue_is_a_complete_certificate() {
    let secrets = secrets();
    let (cert, _) = issued(&secrets, &format!("one.{}", env("VAULT_PKI_DOMAIN"))).await;
    let key = cert.certified_key().unwrap();
    assert!(key.cert.len() >= 2, "leaf and the CA chain");
    let info = cert.serving().unwrap();
    let life = info.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(life <= Duration::from_secs(31), "{life:?}");
    // A name the role refuses is a backend error at the handle, before any resolver.
    let refused = secrets
        .handle("vault://pki/issue/app?common_name=evil.example.com&ttl=30s")
        .await;
    assert!(refused.is_err());
    secrets.shutdown().await;
}
