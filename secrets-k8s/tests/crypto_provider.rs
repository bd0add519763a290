//! Issue 11: the Kubernetes Secrets source's TLS uses the provider it was given, else a
//! default, and installs nothing process-wide. A test binary of its own: no test in it installs
//! a provider, so the process-wide default stays empty unless the library installs one
//! (nextest also runs each test in a process of its own).
#![allow(clippy::unwrap_used)]

mod k8s_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_support::*;
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::{SecretSource, StaticToken};
use keyrack_fake_server::counting_provider;
use keyrack_k8s::source::KubernetesSecrets;

async fn read_over_tls(api: &FakeApi, k8s: &KubernetesSecrets) {
    api.put("apps", "db", &[("password", PASSWORD)]);
    let s = k8s.fetch(&r("k8s://apps/db#password")).await.unwrap();
    assert_eq!(s.expose_bytes(), PASSWORD);
}

#[tokio::test]
async fn a_tls_read_installs_no_process_provider() {
    assert!(CryptoProvider::get_default().is_none());
    let (_server, api, k8s) = start().await;
    read_over_tls(&api, &k8s).await;
    assert!(
        CryptoProvider::get_default().is_none(),
        "building and using the source installed a process-wide crypto provider"
    );
}

#[tokio::test]
async fn the_given_provider_makes_the_handshakes() {
    let (server, api) = FakeApi::start(&[TOKEN]).await;
    let (provider, draws) = counting_provider();
    let k8s = KubernetesSecrets::builder()
        .api_server(server.url())
        .ca_pem(server.ca_pem().unwrap())
        .token(Arc::new(StaticToken::new(TOKEN)))
        .with_crypto_provider(provider)
        .build()
        .unwrap();
    let before = draws.load(Ordering::SeqCst);
    read_over_tls(&api, &k8s).await;
    assert!(
        draws.load(Ordering::SeqCst) > before,
        "the given provider was not used"
    );
    assert!(CryptoProvider::get_default().is_none());
}
