//! Issue 11, for the one backend that cannot avoid it: the Google crates build their own HTTP
//! clients and sign with the process default provider, so `GcpBuilder::build` installs one when
//! the process has none — the given provider if any, else ring's — and never replaces one the
//! application installed. One test, in a binary of its own, since the process default can be
//! set only once per process.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use keyrack_core::SecretSource;
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_fake_server::{FakeServer, Response, counting_provider};
use keyrack_gcp::GcpBuilder;

#[tokio::test]
async fn the_given_provider_is_installed_only_when_there_is_none() {
    assert!(CryptoProvider::get_default().is_none());
    let server = FakeServer::http(|_| async {
        Response::json(200, &access_body("projects/p/secrets/s/versions/1", b"v"))
    })
    .await;
    let (given, _) = counting_provider();
    let build = |provider: Arc<CryptoProvider>| {
        GcpBuilder::new()
            .with_endpoint(server.url())
            .with_anonymous_credentials()
            .with_crypto_provider(provider)
            .build()
    };
    let source = build(given.clone()).await.unwrap();
    let installed = CryptoProvider::get_default().expect("the Google SDK needs a default");
    // The installed default is a copy of the given provider (`install_default` takes it by
    // value): the same randomness source, which no other provider has.
    assert!(std::ptr::addr_eq(
        installed.secure_random,
        given.secure_random
    ));
    source
        .fetch(&gcp_ref("projects/p/secrets/s"))
        .await
        .unwrap();

    // Another provider given later is not installed over it.
    let (other, _) = counting_provider();
    let source = build(other.clone()).await.unwrap();
    source
        .fetch(&gcp_ref("projects/p/secrets/s"))
        .await
        .unwrap();
    let still = CryptoProvider::get_default().unwrap();
    assert!(Arc::ptr_eq(installed, still));
    assert!(!std::ptr::addr_eq(still.secure_random, other.secure_random));
}
