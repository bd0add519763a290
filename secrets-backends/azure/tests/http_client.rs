//! `AzureBuilder::with_http_client`: every request of the source (Entra ID's token endpoint
//! and Key Vault alike) goes through the client given, and TLS options meant for the client
//! this crate builds are refused beside it rather than silently ignored.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use keyrack_azure::azure_core::http::{AsyncRawResponse, HttpClient, Request};
use keyrack_azure::{AzureBuilder, WorkloadIdentity};
use keyrack_core::{ErrorKind, SecretSource, async_trait};
use keyrack_fake_server::{counting_provider, test_client_builder};

/// A client that counts what it sends and hands it to another.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn HttpClient>,
    sent: AtomicUsize,
}

#[async_trait]
impl HttpClient for Counting {
    async fn execute_request(
        &self,
        request: &Request,
    ) -> keyrack_azure::azure_core::Result<AsyncRawResponse> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.inner.execute_request(request).await
    }
}

fn builder_without_cas(fake: &Fake) -> AzureBuilder {
    AzureBuilder::new()
        .with_vault_url(VAULT, fake.vault.url())
        .with_authority_host(fake.entra.url())
        .with_challenge_resource_verification(false)
        .with_workload_identity(WorkloadIdentity::new(
            TENANT,
            CLIENT_ID,
            Arc::new(RotatingToken::new("projected-sa-token-1")),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_given_client_carries_every_request() {
    let fake = Fake::start().await;
    fake.put("db-password", "through-the-given-client");
    let reqwest =
        test_client_builder(&[fake.vault.ca_pem().unwrap(), fake.entra.ca_pem().unwrap()])
            .build()
            .unwrap();
    let client = Arc::new(Counting {
        inner: Arc::new(reqwest),
        sent: AtomicUsize::new(0),
    });
    let source = builder_without_cas(&fake)
        .with_http_client(client.clone())
        .build()
        .unwrap();
    let s = source.fetch(&kv_ref("db-password")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"through-the-given-client");
    let seen = fake.token_requests().len() + fake.vault_requests().len();
    // The challenge, the token, the read.
    assert_eq!(seen, 3, "the fakes saw {seen} requests");
    assert_eq!(client.sent.load(Ordering::SeqCst), seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_options_beside_a_given_client_are_refused() {
    let fake = Fake::start().await;
    let client: Arc<dyn HttpClient> = Arc::new(test_client_builder(&[]).build().unwrap());
    let with_ca = builder_without_cas(&fake)
        .with_http_client(client.clone())
        .with_ca_pem(fake.vault.ca_pem().unwrap());
    let (provider, _) = counting_provider();
    let with_provider = builder_without_cas(&fake)
        .with_crypto_provider(provider)
        .with_http_client(client);
    for builder in [with_ca, with_provider] {
        let e = builder.build().unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Config);
        assert!(e.message().contains("with_http_client"), "{e}");
    }
    assert!(fake.token_requests().is_empty() && fake.vault_requests().is_empty());
}
