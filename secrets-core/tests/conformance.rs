//! The conformance suite against the built-in memory and file sources (env runs it in
//! `env_source.rs`, the one test binary allowed to change the environment).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyrack_core::sources::{FileSource, MemorySource};
use keyrack_core::testkit::{Seeder, assert_conformance};
use keyrack_core::{Result, SecretRef, SecretSource, async_trait};

struct Memory(MemorySource);

#[async_trait]
impl Seeder for Memory {
    fn source(&self) -> Arc<dyn SecretSource> {
        Arc::new(self.0.clone())
    }
    fn reference(&self, name: &str) -> SecretRef {
        SecretRef::new("mem", name).expect("valid reference")
    }
    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        self.0.set(name, value);
        Ok(())
    }
    fn leased(&self) -> Option<SecretRef> {
        self.0.lease(
            "dynamic",
            Duration::from_secs(60),
            Duration::from_secs(600),
            true,
        );
        Some(SecretRef::new("mem", "dynamic").expect("valid reference"))
    }
}

#[tokio::test]
async fn memory_source_conforms() {
    assert_conformance(&Memory(MemorySource::new())).await;
}

#[tokio::test]
async fn watchable_memory_source_conforms() {
    assert_conformance(&Memory(MemorySource::new().watchable())).await;
}

struct Files(PathBuf);

#[async_trait]
impl Seeder for Files {
    fn source(&self) -> Arc<dyn SecretSource> {
        Arc::new(FileSource::rooted(&self.0))
    }
    fn reference(&self, name: &str) -> SecretRef {
        SecretRef::new("file", &self.0.join(name).to_string_lossy()).expect("valid reference")
    }
    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value)
            .and_then(|()| std::fs::rename(&tmp, self.0.join(name)))
            .map_err(|e| {
                keyrack_core::Error::new(keyrack_core::ErrorKind::Backend, "seeding").with_cause(e)
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_conformance(&Files(dir.path().to_owned())).await;
}

/// A source that answers a method it does not declare, and serves stale data: the suite must
/// say so rather than pass it.
#[derive(Debug)]
struct Liar(MemorySource);

#[async_trait]
impl SecretSource for Liar {
    fn capabilities(&self) -> keyrack_core::Capabilities {
        let mut caps = self.0.capabilities();
        caps.version_probe = false;
        caps
    }
    async fn fetch(&self, r: &SecretRef) -> Result<keyrack_core::Secret> {
        // Always the first version: rotations are never seen.
        let first = r
            .clone()
            .with_version("1")
            .map_err(keyrack_core::Error::from)?;
        self.0
            .fetch(if r.selector().is_some() { r } else { &first })
            .await
    }
    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<keyrack_core::Secret>> {
        keyrack_core::fetch_each(self, refs, 4).await
    }
    async fn version(&self, r: &SecretRef) -> Result<Option<keyrack_core::Version>> {
        self.0.version(r).await
    }
    async fn renew(
        &self,
        lease: &keyrack_core::Lease,
        increment: Option<Duration>,
    ) -> Result<keyrack_core::Lease> {
        self.0.renew(lease, increment).await
    }
    async fn revoke(&self, lease: &keyrack_core::Lease) -> Result<()> {
        self.0.revoke(lease).await
    }
    fn watch(
        &self,
        r: &SecretRef,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<keyrack_core::SourceEvent>>> {
        self.0.watch(r)
    }
    async fn shutdown(&self) {
        self.0.shutdown().await
    }
}

struct LyingSeeder(Arc<Liar>);

#[async_trait]
impl Seeder for LyingSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.0.clone()
    }
    fn reference(&self, name: &str) -> SecretRef {
        SecretRef::new("liar", name).expect("valid reference")
    }
    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        self.0.0.set(name, value);
        Ok(())
    }
}

#[tokio::test]
async fn the_suite_catches_a_nonconforming_source() {
    let failures =
        keyrack_core::testkit::conformance(&LyingSeeder(Arc::new(Liar(MemorySource::new())))).await;
    let text = failures.join("\n");
    for expected in [
        "versions",
        "rotation observed",
        "declared capabilities",
        "leases",
    ] {
        assert!(
            text.contains(expected),
            "{expected} not reported in:\n{text}"
        );
    }
}
