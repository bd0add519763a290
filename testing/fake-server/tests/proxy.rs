//! The fault proxy forwards, refuses, resets, hangs and answers for the server behind it, and
//! counts the requests that pass.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keyrack_fake_server::proxy::{Fault, FaultProxy};
use keyrack_fake_server::{FakeServer, Response};

/// The shared test client, with a short timeout so a held connection shows as an error.
fn client() -> reqwest::Client {
    keyrack_fake_server::test_client_builder(&[])
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test]
async fn each_fault_does_what_it_says() {
    let server = FakeServer::http(|req| async move {
        Response::json(200, &serde_json::json!({ "path": req.path }))
    })
    .await;
    let proxy = FaultProxy::start(server.addr()).await;
    let http = client();
    let get = |path: &str| {
        http.post(format!("{}{path}", proxy.url()))
            .body("abc")
            .send()
    };

    let ok = get("/v1/a").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), r#"{"path":"/v1/a"}"#);

    proxy.set(Fault::too_many_requests(Some("7")));
    let throttled = get("/v1/b").await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "7");

    proxy.set(Fault::bad_gateway_page());
    let page = get("/v1/c").await.unwrap();
    assert_eq!(page.status(), 502);
    assert!(page.text().await.unwrap().contains("<html>"));

    proxy.set(Fault::Hang);
    let hung = get("/v1/d").await.unwrap_err();
    assert!(hung.is_timeout(), "{hung}");

    proxy.set(Fault::Cut);
    assert!(get("/v1/e").await.is_err());
    proxy.set(Fault::Reset);
    assert!(get("/v1/f").await.is_err());

    proxy.set(Fault::Pass);
    assert_eq!(get("/v1/g").await.unwrap().status(), 200);

    let seen: Vec<(String, bool)> = proxy
        .seen()
        .into_iter()
        .map(|s| (s.path, s.forwarded))
        .collect();
    assert_eq!(
        seen,
        [
            ("/v1/a", true),
            ("/v1/b", false),
            ("/v1/c", false),
            ("/v1/d", false),
            ("/v1/g", true)
        ]
        .map(|(p, f)| (p.to_owned(), f))
    );
    // Only forwarded requests reached the server.
    let reached: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(reached, ["/v1/a", "/v1/g"]);
}

#[tokio::test]
async fn an_open_connection_follows_the_fault() {
    let server = FakeServer::http(|_| async move { Response::status(204) }).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let http = client();
    // Keep-alive: the second request goes over the connection the first opened.
    for _ in 0..2 {
        let r = http
            .get(format!("{}/v1/x", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert_eq!(proxy.connections(), 1);
    proxy.set(Fault::Hang);
    let hung = http.get(format!("{}/v1/x", proxy.url())).send().await;
    assert!(hung.is_err());
}
