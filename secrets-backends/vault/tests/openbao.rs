//! The Vault source against a real OpenBao dev server (see `common`): the conformance suite,
//! KV v1/v2, versions and deletion, PKI, and the login methods.

#![allow(clippy::unwrap_used)]
// Real servers run in real time: these tests read the clock and sleep (the engine itself is
// tested on a manual clock in keyrack-core).
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use keyrack_core::testkit::{Seeder, assert_conformance};
use keyrack_core::{
    ErrorKind, Result, RotationEvent, Secret, SecretRef, SecretSource, StaticToken, Version,
    async_trait,
};
use keyrack_vault::Auth;
use reqwest::Method;

/// KV v2 under `secret/conformance/`. A JSON object is stored as the secret's map; anything else
/// as `{"value": <text>}`, which `written` reads back.
struct Kv2Seeder(Arc<dyn SecretSource>, String);

#[async_trait]
impl Seeder for Kv2Seeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.0.clone()
    }
    fn reference(&self, name: &str) -> SecretRef {
        r(&format!("vault://secret/{}/{name}", self.1))
    }
    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        let data = match serde_json::from_slice::<serde_json::Value>(value) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => serde_json::json!({ "value": String::from_utf8_lossy(value) }),
        };
        kv2_put(&format!("{}/{name}", self.1), data).await;
        Ok(())
    }
    fn leased(&self) -> Option<SecretRef> {
        Some(r("vault://database/creds/app"))
    }
    fn written(&self, secret: &Secret) -> Vec<u8> {
        match secret.json::<serde_json::Map<String, serde_json::Value>>() {
            Ok(map) if map.len() == 1 => match map.get("value") {
                Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
                _ => secret.expose_bytes().to_vec(),
            },
            _ => secret.expose_bytes().to_vec(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_conforms() {
    assert_conformance(&Kv2Seeder(Arc::new(root()), uniq("conformance"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_write_from_outside_reaches_a_handle_as_rotated() {
    let path = uniq("app/rotating");
    kv2_put(&path, serde_json::json!({ "api_key": "first" })).await;
    let secrets = client_every(root(), Duration::from_secs(1));
    let handle = secrets
        .handle(format!("vault://secret/{path}#api_key"))
        .await
        .unwrap();
    assert_eq!(handle.current().expose_str().unwrap(), "first");
    let mut events = handle.subscribe();
    // Written with the API, as another team's pipeline would.
    kv2_put(&path, serde_json::json!({ "api_key": "second" })).await;
    let ev = next_matching(&mut events, Duration::from_secs(10), |e| {
        matches!(e, RotationEvent::Rotated { .. })
    })
    .await
    .expect("Rotated within the refresh interval");
    let RotationEvent::Rotated { old, new, .. } = ev else {
        unreachable!()
    };
    assert_eq!(
        (old, new),
        (Some(Version::from("1")), Some(Version::from("2")))
    );
    assert_eq!(handle.current().expose_str().unwrap(), "second");
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv1_kv2_versions_metadata_and_deletion() {
    let vault = root();
    // KV v1 (seeded by vault-up): the map, unversioned.
    let v1 = vault.fetch(&r("vault://kv1/app/config")).await.unwrap();
    assert_eq!(v1.field("api_key").unwrap().expose_str().unwrap(), "k1-1");
    assert_eq!(v1.version(), None);

    let path = uniq("app/versions");
    kv2_put(&path, serde_json::json!({ "k": "one" })).await;
    kv2_put(&path, serde_json::json!({ "k": "two" })).await;
    let latest = vault
        .fetch(&r(&format!("vault://secret/{path}")))
        .await
        .unwrap();
    assert_eq!(latest.version(), Some(&Version::from("2")));
    assert!(
        latest.metadata().created_at.is_some(),
        "created_time parsed"
    );
    let first = vault
        .fetch(&r(&format!("vault://secret/{path}?version=1")))
        .await
        .unwrap();
    assert_eq!(first.field("k").unwrap().expose_str().unwrap(), "one");
    assert_eq!(
        vault
            .version(&r(&format!("vault://secret/{path}")))
            .await
            .unwrap(),
        Some(Version::from("2"))
    );

    // Soft-delete the latest version: a typed error, not an empty secret.
    root_api(Method::DELETE, &format!("secret/data/{path}"), None).await;
    let e = vault
        .fetch(&r(&format!("vault://secret/{path}")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Deleted, "{e}");
    let e = vault
        .version(&r(&format!("vault://secret/{path}")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Deleted, "{e}");
    // Destroy version 1.
    root_api(
        Method::PUT,
        &format!("secret/destroy/{path}"),
        Some(serde_json::json!({ "versions": [1] })),
    )
    .await;
    let e = vault
        .fetch(&r(&format!("vault://secret/{path}?version=1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Deleted, "{e}");
    assert!(e.to_string().contains("destroyed"), "{e}");

    // Through the client: a handle sees the deletion as an event and keeps its value.
    let path = uniq("app/deleted");
    kv2_put(&path, serde_json::json!({ "k": "kept" })).await;
    let secrets = client_every(root(), Duration::from_secs(1));
    let handle = secrets
        .handle(format!("vault://secret/{path}#k"))
        .await
        .unwrap();
    let mut events = handle.subscribe();
    root_api(Method::DELETE, &format!("secret/data/{path}"), None).await;
    next_matching(&mut events, Duration::from_secs(10), |e| {
        matches!(e, RotationEvent::Deleted { .. })
    })
    .await
    .expect("Deleted event");
    assert_eq!(handle.current().expose_str().unwrap(), "kept");
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_certificate_carries_its_expiry_and_is_reissued_before_it() {
    let secrets = client_every(
        source(Auth::approle(
            env("VAULT_APPROLE_ROLE_ID"),
            env("VAULT_APPROLE_SECRET_ID"),
        )),
        Duration::from_secs(3600),
    );
    let uri = "vault://pki/issue/app?common_name=svc.example.test&ttl=15s";
    let handle = secrets.handle(uri).await.unwrap();
    let cert = handle.current().clone();
    assert!(
        cert.field("certificate")
            .unwrap()
            .expose_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let serial = cert.version().cloned().expect("serial number as version");
    let expires = cert.metadata().expires_at.expect("not-after as expiry");
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(5) && left <= Duration::from_secs(16),
        "{left:?}"
    );
    // Re-issued at ⅔ of its 15 s life, not at the hourly refresh.
    let mut events = handle.subscribe();
    let ev = next_matching(&mut events, Duration::from_secs(20), |e| {
        matches!(e, RotationEvent::Rotated { .. })
    })
    .await
    .expect("re-issued before expiry");
    let RotationEvent::Rotated { old, new, .. } = ev else {
        unreachable!()
    };
    assert_eq!(old, Some(serial));
    assert_ne!(new, old);
    assert!(
        std::time::SystemTime::now() < expires,
        "replaced before the old one expired"
    );
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_permission_errors() {
    // A token whose policy does not cover the path: PermissionDenied, not NotFound.
    let restricted = client(source(Auth::token(env("VAULT_RESTRICTED_TOKEN"))));
    let e = restricted
        .get_secret("vault://secret/app/config#api_key")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::PermissionDenied, "{e}");
    assert!(
        restricted
            .get_secret("vault://secret/allowed/config#value")
            .await
            .is_ok()
    );

    // AppRole.
    let approle = client(source(Auth::approle(
        env("VAULT_APPROLE_ROLE_ID"),
        env("VAULT_APPROLE_SECRET_ID"),
    )));
    let key = approle
        .get_secret("vault://secret/app/config#api_key")
        .await
        .unwrap();
    assert_eq!(key.expose_str().unwrap(), "k-1");

    // JWT signed by the key the role trusts.
    let jwt = client(source(Auth::jwt(
        "app",
        StaticToken::new(env("VAULT_JWT_TOKEN")),
    )));
    assert!(
        jwt.get_secret("vault://secret/app/config#user")
            .await
            .is_ok()
    );

    // JWT signed by another key: refused as Unauthenticated.
    let wrong = client(source(Auth::jwt(
        "app",
        StaticToken::new(env("VAULT_JWT_TOKEN_WRONG_KEY")),
    )));
    let e = wrong
        .get_secret("vault://secret/app/config#user")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unauthenticated, "{e}");
    assert!(
        !format!("{e:?}").contains(&env("VAULT_JWT_TOKEN_WRONG_KEY")),
        "the token never appears in errors"
    );

    // A wrong AppRole secret id.
    let bad = client(source(Auth::approle(
        env("VAULT_APPROLE_ROLE_ID"),
        "not-the-secret-id",
    )));
    let e = bad
        .get_secret("vault://secret/app/config")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Unauthenticated | ErrorKind::PermissionDenied | ErrorKind::Backend
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("not-the-secret-id"));

    // Nothing listening: Unavailable (retryable).
    let down = client(
        keyrack_vault::VaultBuilder::new()
            .with_address("http://127.0.0.1:9")
            .with_token("x")
            .build()
            .unwrap(),
    );
    let e = down
        .get_secret("vault://secret/app/config")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
}

#[test]
fn builder_refuses_skip_verify_for_remote_addresses() {
    let e = keyrack_vault::VaultBuilder::new()
        .with_address("https://vault.example.com:8200")
        .with_token("x")
        .danger_skip_verify(true)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    assert!(
        keyrack_vault::VaultBuilder::new()
            .with_address("https://127.0.0.1:8200")
            .with_token("x")
            .danger_skip_verify(true)
            .build()
            .is_ok()
    );
    assert!(
        keyrack_vault::VaultBuilder::new()
            .with_address("https://vault.example.com:8200")
            .with_token("x")
            .danger_skip_verify(true)
            .allow_skip_verify_for_remote(true)
            .build()
            .is_ok()
    );
    let e = keyrack_vault::VaultBuilder::new()
        .with_token("x")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("VAULT_ADDR"));
}

/// #15: mounts were remembered forever. A KV v1 mount replaced by a KV v2 one at the same path
/// is detected again after a read there fails (and a while after the last detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_mount_is_detected_again() {
    use keyrack_core::ManualClock;
    let mount = uniq("remount");
    root_api(
        Method::POST,
        &format!("sys/mounts/{mount}"),
        Some(serde_json::json!({ "type": "kv", "options": { "version": "1" } })),
    )
    .await;
    root_api(
        Method::POST,
        &format!("{mount}/app"),
        Some(serde_json::json!({ "k": "v1" })),
    )
    .await;
    let clock = ManualClock::new();
    let vault = keyrack_vault::VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_token(env("VAULT_ROOT_TOKEN"))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let uri = r(&format!("vault://{mount}/app"));
    let v1 = vault.fetch(&uri).await.unwrap();
    assert_eq!(v1.field("k").unwrap().expose_str().unwrap(), "v1");

    root_api(Method::DELETE, &format!("sys/mounts/{mount}"), None).await;
    root_api(
        Method::POST,
        &format!("sys/mounts/{mount}"),
        Some(serde_json::json!({ "type": "kv", "options": { "version": "2" } })),
    )
    .await;
    // A new KV v2 mount may refuse writes for a moment while it sets itself up.
    let written = async {
        for _ in 0..50 {
            let status = common::test_client()
                .post(format!("{}/v1/{mount}/data/app", env("VAULT_ADDR")))
                .header("X-Vault-Token", env("VAULT_ROOT_TOKEN"))
                .json(&serde_json::json!({ "data": { "k": "v2" } }))
                .send()
                .await
                .unwrap()
                .status();
            if status.is_success() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(written.await, "the KV v2 mount never took a write");

    clock.advance(Duration::from_secs(11)).await;
    let v2 = vault.fetch(&uri).await.unwrap();
    assert_eq!(v2.field("k").unwrap().expose_str().unwrap(), "v2");
    assert_eq!(v2.version(), Some(&Version::from("1")), "read as KV v2");
}
