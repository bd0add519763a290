//! The test ground: OpenBao and PostgreSQL started by `scripts/testground/vault-up` (which
//! `scripts/test` runs), described by the environment it exports.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of this

pub mod fake;

use std::time::Duration;

use keyrack_core::{RotationEvent, RotationEvents, Secret, SecretRef, Secrets};
use keyrack_vault::{Auth, VaultBuilder, VaultSource};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the OpenBao/PostgreSQL test ground; run them \
             through scripts/test (or start scripts/testground/vault-up and source its env file)"
        )
    })
}

/// A source on server #1 with `auth`.
pub fn source(auth: Auth) -> VaultSource {
    VaultBuilder::new()
        .with_address(env("VAULT_ADDR"))
        .with_auth(auth)
        .build()
        .unwrap()
}

/// A client with `source` registered as `vault`.
pub fn client(source: VaultSource) -> Secrets {
    Secrets::builder().source("vault", source).build().unwrap()
}

/// The same, re-checking secrets every `refresh`.
pub fn client_every(source: VaultSource, refresh: Duration) -> Secrets {
    Secrets::builder()
        .source("vault", source)
        .refresh_interval(refresh)
        .build()
        .unwrap()
}

pub fn root() -> VaultSource {
    source(Auth::token(env("VAULT_ROOT_TOKEN")))
}

pub fn uniq(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand_u32())
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap()) as u32
}

/// The tests' setup client: rustls on an explicit ring provider, nothing installed
/// process-wide.
pub use keyrack_fake_server::test_client;

/// Vault's HTTP API with the root token, for writing test data from outside the library.
pub async fn api(
    method: reqwest::Method,
    addr: &str,
    token: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let client = test_client();
    let mut req = client
        .request(method, format!("{addr}/v1/{path}"))
        .header("X-Vault-Token", token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

pub async fn root_api(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    api(
        method,
        &env("VAULT_ADDR"),
        &env("VAULT_ROOT_TOKEN"),
        path,
        body,
    )
    .await
}

/// Write a KV v2 version from outside the library.
pub async fn kv2_put(path: &str, data: serde_json::Value) {
    root_api(
        reqwest::Method::POST,
        &format!("secret/data/{path}"),
        Some(serde_json::json!({ "data": data })),
    )
    .await;
}

#[derive(serde::Deserialize, Clone)]
pub struct DbCreds {
    pub username: String,
    pub password: String,
}

/// Log in to PostgreSQL with `creds` and run a query.
pub async fn pg_login(creds: &DbCreds) -> Result<(), String> {
    let config = format!(
        "host={} port={} dbname={} user={} password={} connect_timeout=5",
        env("PGHOST"),
        env("PGPORT"),
        env("PGDATABASE"),
        creds.username,
        creds.password
    );
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect as {}: {e:?}", creds.username))?;
    let conn = tokio::spawn(connection);
    let result = client
        .query_one("select count(*) from items", &[])
        .await
        .map(|_| ())
        .map_err(|e| format!("query as {}: {e}", creds.username));
    drop(client);
    let _ = conn.await;
    result
}

pub fn creds(secret: &Secret) -> DbCreds {
    secret.json().unwrap()
}

/// The next event matching `pred`, within `within`.
pub async fn next_matching(
    events: &mut RotationEvents,
    within: Duration,
    pred: impl Fn(&RotationEvent) -> bool,
) -> Option<RotationEvent> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Some(ev) if pred(&ev) => return Some(ev),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

pub fn r(uri: &str) -> SecretRef {
    SecretRef::parse(uri).unwrap()
}

/// A database role of this test's own (`lease` default TTL, `max` max TTL), a policy that reads
/// it, and an AppRole role logging in with that policy (`token_ttl`, `token_max_ttl`). Returns
/// the database role's name and the AppRole credentials.
pub async fn own_db_role_and_approle(
    lease: &str,
    max: &str,
    token_ttl: &str,
    token_max_ttl: &str,
) -> (String, String, String) {
    let name = uniq("own");
    let creation = std::fs::read_to_string(format!(
        "{}/policies/db-creation.sql",
        env("TESTGROUND_DIR")
    ))
    .unwrap();
    root_api(
        reqwest::Method::POST,
        &format!("database/roles/{name}"),
        Some(serde_json::json!({
            "db_name": "app-db", "creation_statements": creation,
            "default_ttl": lease, "max_ttl": max,
        })),
    )
    .await;
    let policy = format!(
        r#"path "database/creds/{name}" {{ capabilities = ["read"] }}
path "sys/leases/renew" {{ capabilities = ["update"] }}
path "sys/leases/revoke" {{ capabilities = ["update"] }}
path "auth/token/renew-self" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read", "update"] }}
"#
    );
    root_api(
        reqwest::Method::PUT,
        &format!("sys/policies/acl/{name}"),
        Some(serde_json::json!({ "policy": policy })),
    )
    .await;
    root_api(
        reqwest::Method::POST,
        &format!("auth/approle/role/{name}"),
        Some(serde_json::json!({
            "token_policies": [name], "token_ttl": token_ttl, "token_max_ttl": token_max_ttl
        })),
    )
    .await;
    let (role_id, secret_id) = approle_ids("approle", &name).await;
    (name, role_id, secret_id)
}

/// The role id of AppRole role `role` at auth mount `mount`, and a new secret id for it.
pub async fn approle_ids(mount: &str, role: &str) -> (String, String) {
    let role_id = root_api(
        reqwest::Method::GET,
        &format!("auth/{mount}/role/{role}/role-id"),
        None,
    )
    .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = root_api(
        reqwest::Method::POST,
        &format!("auth/{mount}/role/{role}/secret-id"),
        None,
    )
    .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (role_id, secret_id)
}
