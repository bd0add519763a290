//! keyrack-fake-server's loopback fakes of Secret Manager and STS (`keyrack_fake_server::gcp`,
//! which says which fixture each answer is shaped after), and the glue that points a
//! `GcpBuilder` at them.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of this

use std::sync::Arc;

use keyrack_core::testkit::Seeder;
use keyrack_core::{Result, SecretRef, SecretSource, async_trait};
use keyrack_fake_server::FakeServer;
pub use keyrack_fake_server::gcp::*;
use keyrack_gcp::{GcpBuilder, GcpSource};

pub async fn source(server: &FakeServer) -> GcpSource {
    GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .with_project("p1")
        .build()
        .await
        .unwrap()
}

pub fn gcp_ref(path: &str) -> SecretRef {
    SecretRef::parse(&format!("gcp-sm://{path}")).unwrap()
}

/// The conformance suite's view of the fake: `put` adds a version to the fake's state.
pub struct FakeSeeder {
    pub store: Store,
    pub source: Arc<dyn SecretSource>,
}

#[async_trait]
impl Seeder for FakeSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.source.clone()
    }

    fn reference(&self, name: &str) -> SecretRef {
        gcp_ref(&format!("projects/p1/secrets/{name}"))
    }

    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        self.store
            .add_version(&format!("projects/p1/secrets/{name}"), value);
        Ok(())
    }
}
