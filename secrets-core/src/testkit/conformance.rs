//! The checks of the conformance suite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::client::{RotationEvent, Secrets};
use crate::error::{ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::{Lease, Secret};
use crate::source::SecretSource;

/// How the suite writes test secrets into the backend under test.
#[async_trait]
pub trait Seeder: Send + Sync {
    /// The source under test.
    fn source(&self) -> Arc<dyn SecretSource>;

    /// The reference of test secret `name` (no version, no field). The suite registers the source
    /// under this reference's source name.
    fn reference(&self, name: &str) -> SecretRef;

    /// Create secret `name` with `value`, or write a new version of it.
    async fn put(&self, name: &str, value: &[u8]) -> Result<()>;

    /// A dynamic secret that is issued with a lease, if the backend has them.
    fn leased(&self) -> Option<SecretRef> {
        None
    }

    /// The bytes `put` wrote, read back out of `secret`. The whole value by default; a backend
    /// whose values are key/value maps (Vault KV, Kubernetes Secrets) stores text under a key
    /// of its choosing and returns that member here.
    fn written(&self, secret: &Secret) -> Vec<u8> {
        secret.expose_bytes().to_vec()
    }
}

/// Run every check; returns the failures (empty when the source conforms).
pub async fn conformance(seeder: &dyn Seeder) -> Vec<String> {
    let run = Run {
        seeder,
        source: seeder.source(),
        tag: format!("{:08x}", fastrand::u32(..)),
    };
    let mut failures = Vec::new();
    macro_rules! check {
        ($name:literal, $f:expr) => {
            if let Err(msg) = $f.await {
                failures.push(format!("{}: {msg}", $name));
            }
        };
    }
    check!("read text", run.read_text());
    check!("read binary", run.read_binary());
    check!("not found", run.not_found());
    check!("field selection", run.fields());
    check!("versions", run.versions());
    check!("fetch_many", run.fetch_many());
    check!("rotation observed", run.rotation());
    check!("declared capabilities", run.declared());
    check!("leases", run.leases());
    failures
}

/// Run every check and panic with the list of failures, if any.
pub async fn assert_conformance(seeder: &dyn Seeder) {
    let failures = conformance(seeder).await;
    assert!(
        failures.is_empty(),
        "{} conformance check(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

type Check = std::result::Result<(), String>;

struct Run<'a> {
    seeder: &'a dyn Seeder,
    source: Arc<dyn SecretSource>,
    tag: String,
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond { Ok(()) } else { Err(msg()) }
}

fn ok<T>(r: Result<T>, what: &str) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

impl Run<'_> {
    fn name(&self, what: &str) -> String {
        format!("conformance-{what}-{}", self.tag)
    }

    async fn seed(&self, what: &str, value: &[u8]) -> std::result::Result<SecretRef, String> {
        let name = self.name(what);
        ok(self.seeder.put(&name, value).await, "seeding")?;
        Ok(self.seeder.reference(&name))
    }

    fn client(&self, r: &SecretRef) -> std::result::Result<Secrets, String> {
        ok(
            Secrets::builder()
                .shared_source(r.source(), self.source.clone())
                .refresh_interval(Duration::from_secs(3600))
                .build(),
            "building a client",
        )
    }

    async fn read_text(&self) -> Check {
        let r = self.seed("text", b"conformance value").await?;
        let s = ok(self.source.fetch(&r).await, "fetch")?;
        ensure(self.seeder.written(&s) == b"conformance value", || {
            "fetch returned other bytes than were written".into()
        })
    }

    async fn read_binary(&self) -> Check {
        if !self.source.capabilities().binary {
            return Ok(());
        }
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        let r = self.seed("binary", &bytes).await?;
        let s = ok(self.source.fetch(&r).await, "fetch")?;
        ensure(self.seeder.written(&s) == bytes, || {
            "binary value not returned byte for byte".into()
        })
    }

    async fn not_found(&self) -> Check {
        let r = self.seeder.reference(&self.name("never-written"));
        let e = match self.source.fetch(&r).await {
            Ok(_) => return Err("fetch of a missing secret succeeded".into()),
            Err(e) => e,
        };
        ensure(e.kind() == &ErrorKind::NotFound, || {
            format!("missing secret gave {:?}, not NotFound", e.kind())
        })?;
        if self.source.capabilities().version_probe {
            match self.source.version(&r).await {
                Err(e) if e.kind() == &ErrorKind::NotFound => {}
                other => return Err(format!("version() of a missing secret gave {other:?}")),
            }
        }
        let client = self.client(&r)?;
        match client.get_secret(&r).await {
            Err(e) if e.kind() == &ErrorKind::NotFound => Ok(()),
            other => Err(format!("get_secret of a missing secret gave {other:?}")),
        }
    }

    /// Field selection by the client. The JSON object is written as it is, so a map-valued
    /// backend's seeder should store an object's members as the map.
    async fn fields(&self) -> Check {
        let r = self
            .seed("json", br#"{"user":"app","password":"p@ss","port":5432}"#)
            .await?;
        let client = self.client(&r)?;
        let field = |f: &str| ok(r.clone().with_field(f).map_err(Into::into), "with_field");
        let user = ok(client.get_secret(field("user")?).await, "get #user")?;
        ensure(user.expose_bytes() == b"app", || {
            "#user selected wrongly".into()
        })?;
        let port = ok(client.get_secret(field("port")?).await, "get #port")?;
        ensure(port.expose_bytes() == b"5432", || {
            "#port selected wrongly".into()
        })?;
        match client.get_secret(field("absent")?).await {
            Err(e) if e.kind() == &ErrorKind::InvalidValue => {}
            other => return Err(format!("a missing field gave {other:?}")),
        }
        let plain = self.seed("plain", b"not json").await?;
        let client = self.client(&plain)?;
        let with_field = ok(plain.with_field("x").map_err(Into::into), "with_field")?;
        match client.get_secret(with_field).await {
            Err(e) if e.kind() == &ErrorKind::InvalidValue => Ok(()),
            other => Err(format!("a field of a non-JSON value gave {other:?}")),
        }
    }

    async fn versions(&self) -> Check {
        let caps = self.source.capabilities();
        let r = self.seed("versions", b"first").await?;
        let first = ok(self.source.fetch(&r).await, "fetch v1")?;
        ok(
            self.seeder.put(&self.name("versions"), b"second").await,
            "seeding v2",
        )?;
        let second = ok(self.source.fetch(&r).await, "fetch v2")?;
        ensure(self.seeder.written(&second) == b"second", || {
            "after a new version, fetch still returns the old value".into()
        })?;
        if let (Some(a), Some(b)) = (first.version(), second.version()) {
            ensure(a != b, || format!("two versions share the id {a}"))?;
        }
        if caps.version_probe {
            let probed = ok(self.source.version(&r).await, "version()")?;
            ensure(probed.as_ref() == second.version(), || {
                format!(
                    "version() says {probed:?}, fetch says {:?}",
                    second.version()
                )
            })?;
        }
        if caps.versions {
            let Some(v1) = first.version() else {
                return Err("versions declared but fetch returns no version".into());
            };
            let old = ok(
                r.clone().with_version(v1.as_str()).map_err(Into::into),
                "ref",
            )?;
            let again = ok(self.source.fetch(&old).await, "fetch ?version=v1")?;
            ensure(self.seeder.written(&again) == b"first", || {
                "?version= of the first version returned other bytes".into()
            })?;
        } else {
            let pinned = ok(r.with_version("1").map_err(Into::into), "ref")?;
            match self.source.fetch(&pinned).await {
                Err(e) if e.kind() == &ErrorKind::Unsupported => {}
                other => {
                    return Err(format!(
                        "versions not declared, but ?version= gave {other:?} (want Unsupported)"
                    ));
                }
            }
        }
        Ok(())
    }

    async fn fetch_many(&self) -> Check {
        let a = self.seed("many-a", b"a").await?;
        let b = self.seed("many-b", b"b").await?;
        let missing = self.seeder.reference(&self.name("many-missing"));
        let out = self
            .source
            .fetch_many(&[a, missing, b])
            .await
            .into_iter()
            .map(|r| r.map(|s: Secret| self.seeder.written(&s)))
            .collect::<Vec<_>>();
        match &out[..] {
            [Ok(a), Err(e), Ok(b)]
                if a == b"a" && b == b"b" && e.kind() == &ErrorKind::NotFound =>
            {
                Ok(())
            }
            _ => Err(format!(
                "fetch_many([a, missing, b]) gave {:?}",
                out.iter()
                    .map(|r| r.as_ref().map(|_| "Ok").map_err(|e| e.kind().clone()))
                    .collect::<Vec<_>>()
            )),
        }
    }

    async fn rotation(&self) -> Check {
        let r = self.seed("rotation", b"before").await?;
        let client = self.client(&r)?;
        let handle = ok(client.handle(&r).await, "handle")?;
        let mut events = handle.subscribe();
        let old = handle.current().version().cloned();
        ok(
            self.seeder.put(&self.name("rotation"), b"after").await,
            "seeding",
        )?;
        ok(handle.refresh_now().await, "refresh_now")?;
        ensure(self.seeder.written(&handle.current()) == b"after", || {
            "the handle did not pick up the new value".into()
        })?;
        let event = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Some(RotationEvent::Rotated { old, new, .. }) => return Some((old, new)),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await;
        client.shutdown().await;
        match event {
            Ok(Some((o, n))) => {
                ensure(o == old && n == handle.current().version().cloned(), || {
                    format!("Rotated carried {o:?} -> {n:?}")
                })
            }
            _ => Err("no Rotated event".into()),
        }
    }

    async fn declared(&self) -> Check {
        let caps = self.source.capabilities();
        let r = self.seed("declared", b"x").await?;
        let lease = Lease::new(
            "conformance-no-such-lease",
            Duration::from_secs(1),
            true,
            std::time::UNIX_EPOCH,
        );
        let unsupported = |res: Result<()>, what: &str| match res {
            Err(e) if e.kind() == &ErrorKind::Unsupported => Ok(()),
            other => Err(format!("{what} not declared but answered {other:?}")),
        };
        if !caps.renew {
            unsupported(self.source.renew(&lease, None).await.map(|_| ()), "renew")?;
        }
        if !caps.revoke {
            unsupported(self.source.revoke(&lease).await, "revoke")?;
        }
        if !caps.version_probe {
            unsupported(self.source.version(&r).await.map(|_| ()), "version")?;
        }
        if !caps.watch {
            ensure(self.source.watch(&r).is_none(), || {
                "watch not declared but a feed was returned".into()
            })?;
        }
        if !caps.stages {
            let staged = ok(r.with_stage("current").map_err(Into::into), "ref")?;
            unsupported(self.source.fetch(&staged).await.map(|_| ()), "stages")?;
        }
        Ok(())
    }

    async fn leases(&self) -> Check {
        let caps = self.source.capabilities();
        let Some(r) = self.seeder.leased() else {
            return ensure(!caps.renew, || {
                "renew declared but the seeder offers no leased secret".into()
            });
        };
        let s = ok(self.source.fetch(&r).await, "fetch leased")?;
        let Some(lease) = s.lease().cloned() else {
            return Err("leased secret came without a lease".into());
        };
        ensure(!lease.ttl.is_zero(), || "lease with zero TTL".into())?;
        if caps.renew && lease.renewable {
            let renewed = ok(self.source.renew(&lease, None).await, "renew")?;
            ensure(renewed.id == lease.id && !renewed.ttl.is_zero(), || {
                format!("renewal returned {renewed:?}")
            })?;
        }
        if caps.revoke {
            ok(self.source.revoke(&lease).await, "revoke")?;
            if caps.renew {
                match self.source.renew(&lease, None).await {
                    Err(e) if !e.is_retryable() => {}
                    other => return Err(format!("renewing a revoked lease gave {other:?}")),
                }
            }
        }
        Ok(())
    }
}
