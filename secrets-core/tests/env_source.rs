//! `EnvSource` against the real process environment.
//!
//! Changing the environment is `unsafe` since another thread may be reading it at the same time
//! (`std::env::set_var`): this binary therefore holds a single test, which changes variables only
//! while it is the sole thread that can touch them (its runtime is current-thread and spawns none).
#![allow(unsafe_code)]
// `allow-unwrap-in-tests` covers `#[test]` functions only, not the helpers they share.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use keyrack_core::sources::EnvSource;
use keyrack_core::testkit::{Seeder, assert_conformance};
use keyrack_core::{ErrorKind, SecretRef, SecretSource, Secrets, async_trait};

fn env(name: &str) -> SecretRef {
    SecretRef::new("env", name).unwrap()
}

#[test]
fn env_source_reads_the_environment_at_call_time() {
    let name = format!("SECRETS_CORE_ENV_TEST_{}", std::process::id());
    let binary = format!("{name}_BINARY");
    // SAFETY: the only test of this binary; no runtime or other thread of ours exists yet.
    unsafe { std::env::set_var(&name, "s3cr3t") };
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: as above.
        unsafe { std::env::set_var(&binary, std::ffi::OsStr::from_bytes(&[0xff, 0xfe, b'a'])) };
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = EnvSource::new();
    runtime.block_on(async {
        let secret = source.fetch(&env(&name)).await.unwrap();
        assert_eq!(secret.expose_str().unwrap(), "s3cr3t");
        assert_eq!(secret.version(), None);
        #[cfg(unix)]
        {
            let secret = source.fetch(&env(&binary)).await.unwrap();
            assert_eq!(secret.expose_bytes(), [0xff, 0xfe, b'a']);
            assert_eq!(
                secret.expose_str().unwrap_err().kind(),
                &ErrorKind::InvalidValue
            );
        }

        let caps = source.capabilities();
        assert_eq!(caps, keyrack_core::Capabilities::NONE);
        assert_eq!(
            source.version(&env(&name)).await.unwrap_err().kind(),
            &ErrorKind::Unsupported
        );
        assert!(source.watch(&env(&name)).is_none());
        let many = source
            .fetch_many(&[env(&name), env("SECRETS_CORE_ENV_TEST_UNSET")])
            .await;
        assert_eq!(many[0].as_ref().unwrap().expose_str().unwrap(), "s3cr3t");
        assert_eq!(many[1].as_ref().unwrap_err().kind(), &ErrorKind::NotFound);

        for bad in ["A=B", "A\0B"] {
            let e = source.fetch(&env(bad)).await.unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad:?}");
        }
        let nul = SecretRef::parse("env://A%00B").unwrap();
        assert_eq!(
            source.fetch(&nul).await.unwrap_err().kind(),
            &ErrorKind::InvalidRef
        );
        for query in ["?version=1", "?stage=current", "?x=1"] {
            let r = SecretRef::parse(&format!("env://{name}{query}")).unwrap();
            assert_eq!(
                source.fetch(&r).await.unwrap_err().kind(),
                &ErrorKind::Unsupported
            );
        }

        let secrets = Secrets::builder()
            .source("env", EnvSource::new())
            .build()
            .unwrap();
        let via_engine = secrets.get_secret(format!("env://{name}")).await.unwrap();
        assert_eq!(via_engine.expose_str().unwrap(), "s3cr3t");
        assert!(!format!("{via_engine:?}").contains("s3cr3t"));
        secrets.shutdown().await;
    });
    drop(runtime);

    // SAFETY: as above; the runtime (and any thread it had) is gone.
    unsafe { std::env::remove_var(&name) };
    assert_unset_is_not_found(&source, &name);

    // The conformance suite, on a current-thread runtime: the engine's tasks run on this one
    // thread, so nothing reads the environment while the seeder writes it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(assert_conformance(&EnvSeeder));
}

struct EnvSeeder;

#[async_trait]
impl Seeder for EnvSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        Arc::new(EnvSource::new())
    }
    fn reference(&self, name: &str) -> SecretRef {
        env(&name.replace('-', "_").to_uppercase())
    }
    async fn put(&self, name: &str, value: &[u8]) -> keyrack_core::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let var = name.replace('-', "_").to_uppercase();
        // SAFETY: called on the single thread of a current-thread runtime (see above).
        unsafe { std::env::set_var(var, std::ffi::OsStr::from_bytes(value)) };
        Ok(())
    }
}

/// Reads after the variable is unset: it is looked up at call time, not cached by the source.
fn assert_unset_is_not_found(source: &EnvSource, name: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = runtime.block_on(source.fetch(&env(name))).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotFound);
    assert!(e.to_string().contains(name), "{e}");
}
