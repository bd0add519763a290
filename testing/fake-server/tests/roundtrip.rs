//! The fake answers over HTTP and HTTPS, records requests, and streams bodies chunk by chunk.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

use keyrack_fake_server::{FakeServer, Response};

/// A client with rustls' ring provider passed in, trusting only `ca_pem` (none: no roots, for
/// plain HTTP). Nothing is installed process-wide, so each test passes alone and in any order (a
/// `reqwest::get` here panicked unless another test had installed a default provider first).
fn client(ca_pem: Option<&str>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_answers_and_records() {
    let server = FakeServer::https(|req| async move {
        Response::json(
            201,
            &serde_json::json!({ "path": req.path, "q": req.query_param("a") }),
        )
    })
    .await;
    let client = client(server.ca_pem());
    let answer = client
        .post(format!("{}/x/y?a=1%202", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "path": "/x/y", "q": "1 2" }));
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].form(),
        vec![("grant_type".to_owned(), "client_credentials".to_owned())]
    );
}

#[tokio::test]
async fn streams_chunks_as_sent() {
    let (tx_slot, rx_slot) = tokio::sync::oneshot::channel();
    let slot = std::sync::Mutex::new(Some(tx_slot));
    let server = FakeServer::http(move |_req| {
        let (response, tx) = Response::stream(200, "application/json");
        if let Some(slot) = slot.lock().unwrap().take() {
            let _ = slot.send(tx);
        }
        async move { response }
    })
    .await;
    let mut answer = client(None)
        .get(format!("{}/watch", server.url()))
        .send()
        .await
        .unwrap();
    let tx = rx_slot.await.unwrap();
    tx.send(b"one\n".to_vec()).await.unwrap();
    assert_eq!(answer.chunk().await.unwrap().unwrap().as_ref(), b"one\n");
    tx.send(b"two\n".to_vec()).await.unwrap();
    assert_eq!(answer.chunk().await.unwrap().unwrap().as_ref(), b"two\n");
    drop(tx);
    assert!(answer.chunk().await.unwrap().is_none());
}
