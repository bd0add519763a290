//! The resolver on the memory and file sources, with certificates made here and real handshakes
//! over in-memory pipes: rotation, every kind of bad input, expiry, and that no key material is
//! ever formatted.

#![allow(clippy::unwrap_used)]
// The pair and file tests run in real time (a file watch, a settle delay): they sleep.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::FutureExt;
use keyrack_core::sources::{FileSource, MemorySource};
use keyrack_core::testkit::LogCapture;
use keyrack_core::{ManualClock, SecretHandle, Secrets};
use keyrack_rustls::{
    CertError, CertErrorKind, CertEvent, CertEvents, CertSource, RotatingCertificate,
};

/// A client on the memory source, checking rarely (tests refresh by hand).
fn memory_client(memory: &MemorySource) -> Secrets {
    Secrets::builder()
        .source("mem", memory.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
}

async fn next_event(events: &mut CertEvents) -> CertEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
}

fn no_event(events: &mut CertEvents) {
    if let Some(Some(ev)) = events.recv().now_or_never() {
        panic!("unexpected event: {ev}");
    }
}

async fn vault_like(memory: &MemorySource, secrets: &Secrets, json: String) -> SecretHandle {
    memory.set("pki/issue/app", json);
    secrets.handle("mem://pki/issue/app").await.unwrap()
}

#[tokio::test]
async fn a_new_certificate_is_served_from_the_next_handshake() {
    let ca = Ca::new("test ca");
    let (one, two) = (ca.leaf(1), ca.leaf(2));
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    let handle = vault_like(&memory, &secrets, one.vault_json(&ca)).await;
    let cert = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(handle.clone()))
            .crypto_provider(provider())
            .build()
            .unwrap(),
    );
    assert_eq!(cert.serving().unwrap().serial(), "01");
    // The CA chain from `ca_chain` is sent after the leaf.
    assert_eq!(cert.certified_key().unwrap().cert.len(), 2);
    let server = server_config(cert.clone(), None);
    let client = client_config(&ca, None);
    assert_eq!(
        handshake(server.clone(), client.clone())
            .await
            .unwrap()
            .server_serial,
        "01"
    );

    let mut events = cert.subscribe();
    memory.set("pki/issue/app", two.vault_json(&ca));
    handle.refresh_now().await.unwrap();
    match next_event(&mut events).await {
        CertEvent::Installed {
            certificate,
            replaced,
            ..
        } => {
            assert_eq!(certificate.serial(), "02");
            assert_eq!(replaced, "01");
        }
        other => panic!("{other}"),
    }
    // The same server configuration, not rebuilt.
    assert_eq!(handshake(server, client).await.unwrap().server_serial, "02");
    secrets.shutdown().await;
}

/// Each bad value, as (what it is, the JSON a Vault-like secret holds, the kind expected).
fn bad_values(ca: &Ca) -> Vec<(&'static str, String, CertErrorKind)> {
    let good = ca.leaf(9);
    let other = ca.leaf(10);
    let expired = ca.leaf_with(11, |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let json = |cert: &str, key: &str| {
        serde_json::json!({ "certificate": cert, "private_key": key, "ca_chain": [ca.pem] })
            .to_string()
    };
    let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA@@\n-----END CERTIFICATE-----\n";
    let not_der =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    let bad_key_base64 = "-----BEGIN PRIVATE KEY-----\nS3CR@T!!\n-----END PRIVATE KEY-----\n";
    let key_not_der =
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n";
    vec![
        (
            "the key of another certificate",
            json(&good.cert_pem, &other.key_pem),
            CertErrorKind::KeyMismatch,
        ),
        (
            "garbage in the certificate's base64",
            json(garbage, &good.key_pem),
            CertErrorKind::Unparsable,
        ),
        (
            "base64 that is not a certificate",
            json(not_der, &good.key_pem),
            CertErrorKind::Unparsable,
        ),
        (
            "no PEM at all",
            json("just some text", &good.key_pem),
            CertErrorKind::MissingCertificate,
        ),
        (
            "an expired certificate",
            json(&expired.cert_pem, &expired.key_pem),
            CertErrorKind::Expired,
        ),
        (
            "a certificate without a key (the key field holds the certificate)",
            json(&good.cert_pem, &good.cert_pem),
            CertErrorKind::MissingKey,
        ),
        (
            "a certificate without a key (empty key field)",
            json(&good.cert_pem, ""),
            CertErrorKind::MissingKey,
        ),
        (
            "garbage in the key's base64",
            json(&good.cert_pem, bad_key_base64),
            CertErrorKind::Unparsable,
        ),
        (
            "base64 that is not a key",
            json(&good.cert_pem, key_not_der),
            CertErrorKind::UnsupportedKey,
        ),
        (
            "wrong field names (a Kubernetes TLS Secret read as Vault PKI)",
            good.k8s_json(),
            CertErrorKind::MissingField,
        ),
        (
            "not JSON at all",
            good.cert_pem.clone(),
            CertErrorKind::MissingField,
        ),
        (
            "a chain field that is neither PEM nor an array of it",
            serde_json::json!({
                "certificate": good.cert_pem, "private_key": good.key_pem, "ca_chain": [garbage]
            })
            .to_string(),
            CertErrorKind::Unparsable,
        ),
    ]
}

#[tokio::test]
async fn a_bad_first_certificate_is_a_typed_error() {
    let ca = Ca::new("test ca");
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    for (i, (what, json, kind)) in bad_values(&ca).into_iter().enumerate() {
        memory.set(format!("pki/issue/app-{i}"), json);
        let handle = secrets
            .handle(format!("mem://pki/issue/app-{i}").as_str())
            .await
            .unwrap();
        let e = RotatingCertificate::builder(CertSource::vault_pki(handle))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{what}: {e}");
    }
    secrets.shutdown().await;
}

#[tokio::test]
async fn a_bad_certificate_is_refused_and_the_previous_one_kept() {
    let ca = Ca::new("test ca");
    let good = ca.leaf(1);
    // A manual clock for the client: one secret is read at most once a second, and that second
    // passes at once. The resolver judges validity on the system clock.
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = manual_client(&clock, &memory);
    let handle = vault_like(&memory, &secrets, good.vault_json(&ca)).await;
    let cert = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(handle.clone()))
            .build()
            .unwrap(),
    );
    let server = server_config(cert.clone(), None);
    let client = client_config(&ca, None);
    let mut events = cert.subscribe();
    for (what, json, kind) in bad_values(&ca) {
        memory.set("pki/issue/app", json);
        clock.advance(Duration::from_secs(1)).await;
        handle.refresh_now().await.unwrap();
        match next_event(&mut events).await {
            CertEvent::Rejected {
                error,
                serving,
                version,
                ..
            } => {
                assert_eq!(error.kind(), kind, "{what}: {error}");
                assert_eq!(serving, "01", "{what}");
                assert!(version.is_some(), "{what}: the refused version is named");
            }
            other => panic!("{what}: {other}"),
        }
        assert_eq!(cert.serving().unwrap().serial(), "01", "{what}");
        let seen = handshake(server.clone(), client.clone()).await.unwrap();
        assert_eq!(
            seen.server_serial, "01",
            "{what}: the previous one is served"
        );
    }
    // A good one after all that is taken.
    memory.set("pki/issue/app", ca.leaf(2).vault_json(&ca));
    clock.advance(Duration::from_secs(1)).await;
    handle.refresh_now().await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        CertEvent::Installed { .. }
    ));
    assert_eq!(handshake(server, client).await.unwrap().server_serial, "02");
    secrets.shutdown().await;
}

#[tokio::test]
async fn kubernetes_tls_secrets_and_custom_fields() {
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(3);
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    memory.set("apps/web-tls", leaf.k8s_json());
    let handle = secrets.handle("mem://apps/web-tls").await.unwrap();
    let cert = RotatingCertificate::builder(CertSource::kubernetes_tls(handle.clone()))
        .build()
        .unwrap();
    assert_eq!(cert.serving().unwrap().serial(), "03");
    // Without a chain field only the leaf is sent.
    assert_eq!(cert.certified_key().unwrap().cert.len(), 1);
    let custom =
        RotatingCertificate::builder(CertSource::fields(handle.clone(), "tls.crt", "tls.key"))
            .build()
            .unwrap();
    assert_eq!(custom.serving().unwrap().serial(), "03");
    // Field names that are not there.
    let e = RotatingCertificate::builder(CertSource::fields(handle, "cert", "key"))
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), CertErrorKind::MissingField);
    assert!(e.to_string().contains("`cert`"), "{e}");
    secrets.shutdown().await;
}

#[tokio::test]
async fn a_pem_bundle_and_a_chain_in_the_certificate_pem() {
    let ca = Ca::new("test ca");
    let leaf = ca.leaf(4);
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    // Key first, chain after the leaf: order between sections does not matter.
    memory.set(
        "bundle.pem",
        format!("{}{}{}", leaf.key_pem, leaf.cert_pem, ca.pem),
    );
    let handle = secrets.handle("mem://bundle.pem").await.unwrap();
    let cert = Arc::new(
        RotatingCertificate::builder(CertSource::pem_bundle(handle))
            .build()
            .unwrap(),
    );
    assert_eq!(cert.certified_key().unwrap().cert.len(), 2);
    let seen = handshake(server_config(cert, None), client_config(&ca, None))
        .await
        .unwrap();
    assert_eq!(seen.server_serial, "04");
    secrets.shutdown().await;
}

#[tokio::test]
async fn a_pair_changing_one_half_at_a_time_is_not_refused() {
    let ca = Ca::new("test ca");
    let (one, two, three) = (ca.leaf(1), ca.leaf(2), ca.leaf(3));
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    memory.set("tls.crt", one.cert_pem.clone());
    memory.set("tls.key", one.key_pem.clone());
    let crt = secrets.handle("mem://tls.crt").await.unwrap();
    let key = secrets.handle("mem://tls.key").await.unwrap();
    let cert = RotatingCertificate::builder(CertSource::pem(crt.clone(), key.clone()))
        .pair_settle(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut events = cert.subscribe();

    // The certificate first, the key 100 ms later: one installation, no refusal.
    memory.set("tls.crt", two.cert_pem.clone());
    crt.refresh_now().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    no_event(&mut events);
    assert_eq!(cert.serving().unwrap().serial(), "01");
    memory.set("tls.key", two.key_pem.clone());
    key.refresh_now().await.unwrap();
    match next_event(&mut events).await {
        CertEvent::Installed { certificate, .. } => assert_eq!(certificate.serial(), "02"),
        other => panic!("{other}"),
    }

    // A certificate whose key never follows is refused once the settle time has passed.
    memory.set("tls.crt", three.cert_pem.clone());
    crt.refresh_now().await.unwrap();
    match next_event(&mut events).await {
        CertEvent::Rejected { error, serving, .. } => {
            assert_eq!(error.kind(), CertErrorKind::KeyMismatch);
            assert_eq!(serving, "02");
        }
        other => panic!("{other}"),
    }
    // Both halves replaced at once with a mismatch: refused at once, not given time.
    memory.set("tls.crt", one.cert_pem.clone());
    memory.set("tls.key", three.key_pem.clone());
    crt.refresh_now().await.unwrap();
    key.refresh_now().await.unwrap();
    let ev = next_event(&mut events).await;
    assert!(
        matches!(&ev, CertEvent::Rejected { error, .. } if error.kind() == CertErrorKind::KeyMismatch),
        "{ev}"
    );
    assert_eq!(cert.serving().unwrap().serial(), "02");
    secrets.shutdown().await;
}

/// PEM files as a Kubernetes volume mounts them (`tls.crt` and `tls.key` links into a `..data`
/// directory swapped as a whole), read by the file source, which watches the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_files_rotated_by_a_volume_swap() {
    let ca = Ca::new("test ca");
    let (one, two) = (ca.leaf(1), ca.leaf(2));
    let dir = tempfile::tempdir().unwrap();
    let write_generation = |name: &str, leaf: &Leaf| {
        let generation = dir.path().join(name);
        std::fs::create_dir(&generation).unwrap();
        std::fs::write(generation.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(generation.join("tls.key"), &leaf.key_pem).unwrap();
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    write_generation("..gen1", &one);
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
    }
    let secrets = Secrets::builder()
        .source("file", FileSource::new())
        .build()
        .unwrap();
    let at = |f: &str| format!("file://{}/{f}", dir.path().display());
    let crt = secrets.handle(at("tls.crt").as_str()).await.unwrap();
    let key = secrets.handle(at("tls.key").as_str()).await.unwrap();
    let cert = Arc::new(
        RotatingCertificate::builder(CertSource::pem(crt, key))
            .build()
            .unwrap(),
    );
    let mut events = cert.subscribe();
    write_generation("..gen2", &two);
    match next_event(&mut events).await {
        CertEvent::Installed { certificate, .. } => assert_eq!(certificate.serial(), "02"),
        other => panic!("{other}"),
    }
    let seen = handshake(server_config(cert, None), client_config(&ca, None))
        .await
        .unwrap();
    assert_eq!(seen.server_serial, "02");
    secrets.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_with_a_rotating_client_certificate() {
    let ca = Ca::new("test ca");
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    let server_handle = vault_like(&memory, &secrets, ca.leaf(1).vault_json(&ca)).await;
    memory.set("pki/issue/client", ca.leaf(0x81).vault_json(&ca));
    let client_handle = secrets.handle("mem://pki/issue/client").await.unwrap();
    let server_cert = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(server_handle))
            .build()
            .unwrap(),
    );
    let client_cert = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(client_handle.clone()))
            .build()
            .unwrap(),
    );
    let server = server_config(server_cert, Some(&ca));
    let client = client_config(&ca, Some(client_cert.clone()));
    let seen = handshake(server.clone(), client.clone()).await.unwrap();
    assert_eq!(seen.client_serial.as_deref(), Some("81"));

    let mut events = client_cert.subscribe();
    memory.set("pki/issue/client", ca.leaf(0x82).vault_json(&ca));
    client_handle.refresh_now().await.unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        CertEvent::Installed { .. }
    ));
    let seen = handshake(server.clone(), client).await.unwrap();
    assert_eq!(seen.client_serial.as_deref(), Some("82"));

    // A client without a certificate is refused by this server: the check above is real.
    let anonymous = client_config(&ca, None);
    assert!(handshake(server, anonymous).await.is_err());
    secrets.shutdown().await;
}

/// The ManualClock starts at 2027-01-15T08:00:00Z.
fn manual_client(clock: &ManualClock, memory: &MemorySource) -> Secrets {
    Secrets::builder()
        .clock(clock.clone())
        .source("mem", memory.clone())
        .refresh_interval(Duration::MAX)
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_expired_certificate_is_never_served() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = manual_client(&clock, &memory);
    let ca = Ca::new("test ca");
    // Ends 16 h after the clock's start.
    let leaf = ca.leaf_with(5, |p| p.not_after = rcgen::date_time_ymd(2027, 1, 16));
    let handle = vault_like(&memory, &secrets, leaf.vault_json(&ca)).await;
    let cert = Arc::new(
        RotatingCertificate::builder(CertSource::vault_pki(handle))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let mut events = cert.subscribe();
    assert!(cert.certified_key().is_some());
    clock.advance(Duration::from_secs(15 * 3600)).await;
    no_event(&mut events);
    assert!(cert.serving().is_some());
    clock.advance(Duration::from_secs(3600)).await;
    match next_event(&mut events).await {
        CertEvent::Expired { certificate, .. } => assert_eq!(certificate.serial(), "05"),
        other => panic!("{other}"),
    }
    assert!(cert.serving().is_none());
    assert!(cert.certified_key().is_none());
    // A server on it fails its handshakes rather than serve the expired certificate.
    let e = handshake(server_config(cert, None), client_config(&ca, None))
        .await
        .err()
        .expect("refused");
    assert!(e.contains("server") || e.contains("client"), "{e}");
    secrets.shutdown().await;
}

#[tokio::test]
async fn a_wall_clock_step_past_the_end_withdraws_it_at_once() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = manual_client(&clock, &memory);
    let ca = Ca::new("test ca");
    let leaf = ca.leaf_with(5, |p| p.not_after = rcgen::date_time_ymd(2027, 1, 16));
    let handle = vault_like(&memory, &secrets, leaf.vault_json(&ca)).await;
    let cert = RotatingCertificate::builder(CertSource::vault_pki(handle))
        .clock(clock.clone())
        .build()
        .unwrap();
    // No timer fired (monotonic time did not move): the check at each handshake is enough.
    clock.jump_wall(Duration::from_secs(24 * 3600));
    assert!(cert.certified_key().is_none());
    secrets.shutdown().await;
}

#[tokio::test]
async fn a_certificate_not_yet_valid_is_installed_when_it_begins() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = manual_client(&clock, &memory);
    let ca = Ca::new("test ca");
    let handle = vault_like(&memory, &secrets, ca.leaf(1).vault_json(&ca)).await;
    let cert = RotatingCertificate::builder(CertSource::vault_pki(handle.clone()))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut events = cert.subscribe();
    let later = ca.leaf_with(2, |p| p.not_before = rcgen::date_time_ymd(2027, 1, 16));
    memory.set("pki/issue/app", later.vault_json(&ca));
    handle.refresh_now().await.unwrap();
    match next_event(&mut events).await {
        CertEvent::Rejected { error, .. } => {
            assert_eq!(error.kind(), CertErrorKind::NotYetValid);
            assert!(error.not_before().is_some());
        }
        other => panic!("{other}"),
    }
    assert_eq!(cert.serving().unwrap().serial(), "01");
    clock.advance(Duration::from_secs(16 * 3600 + 1)).await;
    match next_event(&mut events).await {
        CertEvent::Installed { certificate, .. } => assert_eq!(certificate.serial(), "02"),
        other => panic!("{other}"),
    }
    secrets.shutdown().await;
}

#[tokio::test]
async fn misconfiguration_is_a_config_error() {
    let ca = Ca::new("test ca");
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    let handle = vault_like(&memory, &secrets, ca.leaf(1).vault_json(&ca)).await;
    let e = RotatingCertificate::builder(
        CertSource::pem_bundle(handle.clone()).with_chain_field("ca_chain"),
    )
    .build()
    .unwrap_err();
    assert_eq!(e.kind(), CertErrorKind::Config);
    // Outside a runtime.
    let e = std::thread::spawn(move || {
        RotatingCertificate::builder(CertSource::vault_pki(handle))
            .build()
            .unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(e.kind(), CertErrorKind::Config);
    secrets.shutdown().await;
}

#[tokio::test]
async fn the_client_shutting_down_keeps_the_last_certificate_until_it_ends() {
    let ca = Ca::new("test ca");
    let memory = MemorySource::new();
    let secrets = memory_client(&memory);
    let handle = vault_like(&memory, &secrets, ca.leaf(1).vault_json(&ca)).await;
    let cert = RotatingCertificate::builder(CertSource::vault_pki(handle))
        .build()
        .unwrap();
    secrets.shutdown().await;
    tokio::task::yield_now().await;
    assert_eq!(cert.serving().unwrap().serial(), "01");
}

/// Every error, event, resolver and source met with every bad input is formatted, with tracing
/// at TRACE captured; no line of any key's PEM may appear.
#[tokio::test]
async fn no_key_material_in_debug_display_errors_events_or_logs() {
    let capture = LogCapture::start();
    let ca = Ca::new("test ca");
    let good = ca.leaf(1);
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    let secrets = manual_client(&clock, &memory);
    let handle = vault_like(&memory, &secrets, good.vault_json(&ca)).await;
    let mut seen = String::new();
    let builder = RotatingCertificate::builder(CertSource::vault_pki(handle.clone()));
    keep(&mut seen, &builder);
    let cert = builder.build().unwrap();
    keep(&mut seen, &cert);
    keep(&mut seen, &cert.serving());
    keep(&mut seen, &cert.certified_key().map(|k| k.cert.len()));
    let mut events = cert.subscribe();
    let mut errors: Vec<CertError> = Vec::new();
    let mut keys = good.key_lines();
    for (_, json, _) in bad_values(&ca) {
        // Keys of the bad values too.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
            for field in ["private_key", "tls.key"] {
                if let Some(k) = v.get(field).and_then(|k| k.as_str()) {
                    keys.extend(
                        k.lines()
                            .filter(|l| !l.starts_with("-----") && l.len() >= 8)
                            .map(str::to_owned),
                    );
                }
            }
        }
        memory.set("pki/issue/app", json.clone());
        clock.advance(Duration::from_secs(1)).await;
        handle.refresh_now().await.unwrap();
        let fresh = secrets.handle("mem://pki/issue/app").await.unwrap();
        if let Err(e) = RotatingCertificate::builder(CertSource::vault_pki(fresh)).build() {
            errors.push(e);
        }
        let ev = next_event(&mut events).await;
        keep(&mut seen, &ev);
        seen.push_str(&format!("{ev}\n"));
    }
    for e in &errors {
        keep(&mut seen, e);
        seen.push_str(&format!("{e}\n"));
    }
    memory.set("pki/issue/app", ca.leaf(2).vault_json(&ca));
    clock.advance(Duration::from_secs(1)).await;
    handle.refresh_now().await.unwrap();
    let ev = next_event(&mut events).await;
    seen.push_str(&format!("{ev}\n{ev:?}\n"));
    seen.push_str(&capture.text());
    assert!(errors.len() >= 10, "{errors:?}");
    assert!(seen.contains("WARN"), "the refusals were logged: {seen}");
    for line in &keys {
        assert!(
            !seen.contains(line.as_str()),
            "key material formatted: {line}"
        );
    }
    secrets.shutdown().await;
}

fn keep(seen: &mut String, t: &dyn std::fmt::Debug) {
    seen.push_str(&format!("{t:?}\n{t:#?}\n"));
}
