//! The test ground: keyrack-fake-server's loopback fakes of Key Vault and of Entra ID's token
//! endpoint (`keyrack_fake_server::azure`, which says which recording in its `fixtures/azure/`
//! each answer is shaped after), and the glue that points an `AzureBuilder` at them.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of this

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use keyrack_azure::{AzureBuilder, AzureSource, WorkloadIdentity};
use keyrack_core::testkit::Seeder;
use keyrack_core::{IdentityToken, Result, SecretRef, SecretSource, SecretValue, async_trait};
pub use keyrack_fake_server::azure::*;

/// A source on the fakes: the glue keyrack-fake-server cannot hold (it does not depend on
/// keyrack-azure).
pub trait SourceOnFake {
    /// A builder pointed at both fakes, logging in with workload identity on `token`.
    fn builder(&self, token: Arc<dyn IdentityToken>) -> AzureBuilder;
    /// A source on both fakes with a fixed projected token.
    fn source(&self) -> AzureSource;
}

impl SourceOnFake for Fake {
    fn builder(&self, token: Arc<dyn IdentityToken>) -> AzureBuilder {
        AzureBuilder::new()
            .with_vault_url(VAULT, self.vault.url())
            .with_ca_pem(self.vault.ca_pem().unwrap())
            .with_ca_pem(self.entra.ca_pem().unwrap())
            .with_authority_host(self.entra.url())
            // The fake is `localhost`, which does not end with the challenge's `vault.azure.net`.
            .with_challenge_resource_verification(false)
            .with_workload_identity(WorkloadIdentity::new(TENANT, CLIENT_ID, token))
    }

    fn source(&self) -> AzureSource {
        self.builder(Arc::new(RotatingToken::new("projected-sa-token-1")))
            .build()
            .unwrap()
    }
}

/// An identity token that tests replace, as the kubelet replaces a projected token.
#[derive(Debug)]
pub struct RotatingToken {
    pub current: Mutex<String>,
    pub invalidated: AtomicUsize,
}

impl RotatingToken {
    pub fn new(token: &str) -> Self {
        RotatingToken {
            current: Mutex::new(token.to_owned()),
            invalidated: AtomicUsize::new(0),
        }
    }

    pub fn set(&self, token: &str) {
        *self.current.lock().unwrap() = token.to_owned();
    }

    pub fn invalidations(&self) -> usize {
        self.invalidated.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl IdentityToken for RotatingToken {
    async fn token(&self) -> Result<SecretValue> {
        Ok(SecretValue::from_string(
            self.current.lock().unwrap().clone(),
        ))
    }

    fn invalidate(&self) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn kv_ref(name: &str) -> SecretRef {
    SecretRef::new("azure-kv", &format!("{VAULT}/{name}")).unwrap()
}

/// The conformance suite's view of the fake: `put` writes into the fake vault's state.
pub struct FakeSeeder {
    pub fake: Fake,
    pub source: Arc<AzureSource>,
}

#[async_trait]
impl Seeder for FakeSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.source.clone()
    }

    fn reference(&self, name: &str) -> SecretRef {
        kv_ref(name)
    }

    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        // Key Vault stores text; the source declares no binary capability, so the suite only
        // writes UTF-8 here.
        let text = std::str::from_utf8(value).map_err(|_| {
            keyrack_core::Error::invalid_value("Key Vault values are text; the seeder got bytes")
        })?;
        self.fake.put(name, text);
        Ok(())
    }
}
