//! The fake answers over HTTP and HTTPS, records requests, and streams bodies chunk by chunk.
#![allow(clippy::unwrap_used)]

use keyrack_fake_server::{FakeServer, Response, test_client, test_client_builder};

#[tokio::test]
async fn https_answers_and_records() {
    let server = FakeServer::https(|req| async move {
        Response::json(
            201,
            &serde_json::json!({ "path": req.path, "q": req.query_param("a") }),
        )
    })
    .await;
    let client = test_client_builder(&[server.ca_pem().unwrap()])
        .build()
        .unwrap();
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
    let mut answer = test_client()
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
