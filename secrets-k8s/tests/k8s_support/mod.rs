//! What the tests of the Kubernetes Secrets source share: the fake API server
//! (`fixtures/k8s/fake_api.rs`), a source pointed at it, and ways to follow a feed and count
//! requests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a part of it
#![allow(clippy::unwrap_used)] // test support: a failure should fail the test loudly

#[path = "../fixtures/k8s/fake_api.rs"]
pub mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use keyrack_core::{
    Backoff, Clock, IdentityToken, Result, SecretRef, SecretSource, SourceEvent, StaticToken,
    SystemClock,
};
use keyrack_fake_server::FakeServer;
use keyrack_k8s::source::KubernetesSecrets;
use tokio::sync::mpsc;

pub(crate) use fake_api::FakeApi;

pub const TOKEN: &str = "tok-1";
/// `secret_get_200_assembled`'s data, decoded: `username: YWRtaW4=`, `password: czNjcjN0`.
pub const USER: &[u8] = b"admin";
pub const PASSWORD: &[u8] = b"s3cr3t";

pub fn source(server: &FakeServer, token: Arc<dyn IdentityToken>) -> KubernetesSecrets {
    KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem(server.ca_pem().unwrap())
        .token(token)
        .watch_backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        })
        .build()
        .unwrap()
}

pub async fn start() -> (FakeServer, FakeApi, KubernetesSecrets) {
    let (server, api) = FakeApi::start(&[TOKEN]).await;
    let k8s = source(&server, Arc::new(StaticToken::new(TOKEN)));
    (server, api, k8s)
}

pub fn r(s: &str) -> SecretRef {
    SecretRef::parse(s).unwrap()
}

/// Polls the source's feed in a task and hands its items over.
pub fn follow(k8s: &KubernetesSecrets, at: &str) -> mpsc::UnboundedReceiver<Result<SourceEvent>> {
    let mut feed = k8s.watch(&r(at)).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = feed.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

pub async fn next(rx: &mut mpsc::UnboundedReceiver<Result<SourceEvent>>) -> Result<SourceEvent> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event from the watch")
        .expect("the watch ended")
}

pub fn watch_requests(server: &FakeServer) -> Vec<keyrack_fake_server::Request> {
    server
        .requests()
        .into_iter()
        .filter(|q| q.query_param("watch").is_some())
        .collect()
}

pub fn gets_of(server: &FakeServer, ns: &str, name: &str) -> usize {
    server
        .requests_to(&format!("/api/v1/namespaces/{ns}/secrets/{name}"))
        .len()
}

/// The GETs of `ns/name` once there are at least `n` (or 5 s passed): a watch opened at the most
/// recent state may be followed by one read of the object, made while the test goes on.
pub async fn gets_reach(server: &FakeServer, ns: &str, name: &str, n: usize) -> usize {
    let deadline = SystemClock.now() + Duration::from_secs(5);
    while gets_of(server, ns, name) < n && SystemClock.now() < deadline {
        SystemClock
            .sleep_until(SystemClock.now() + Duration::from_millis(10))
            .await;
    }
    gets_of(server, ns, name)
}

/// Wait (in real time) until `done`, letting the runtime run.
pub async fn until(done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("condition not reached");
}

/// Lets requests that would follow (a read after a watch opened, say) reach the fake before the
/// test counts.
pub async fn quiet() {
    SystemClock
        .sleep_until(SystemClock.now() + Duration::from_millis(300))
        .await;
}
