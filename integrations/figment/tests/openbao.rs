//! Resolution against a real OpenBao (the test ground of `scripts/testground/vault-up`, which
//! `scripts/test` starts): a TOML file and environment variables whose references name KV v2
//! secrets and a leased database credential kept live; a missing secret, a refused permission
//! and an unreachable server, each reported with its key.

#![allow(clippy::unwrap_used)]
// figment::Jail's closure returns figment's own (large) error type.
#![allow(clippy::result_large_err)]

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use keyrack_core::{ErrorKind, Secrets};
use keyrack_figment::{ProblemKind, Resolver};
use keyrack_vault::{Auth, VaultBuilder, VaultSource};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the OpenBao/PostgreSQL test ground; run them \
             through scripts/test (or start scripts/testground/vault-up and source its env file)"
        )
    })
}

fn vault(address: &str, token: &str) -> VaultSource {
    VaultBuilder::new()
        .with_address(address)
        .with_auth(Auth::token(token))
        .build()
        .unwrap()
}

/// A KV v2 write from outside the library, with the root token.
async fn kv2_put(path: &str, data: serde_json::Value) {
    let client = keyrack_fake_server::test_client();
    let resp = client
        .post(format!("{}/v1/secret/data/{path}", env("VAULT_ADDR")))
        .header("X-Vault-Token", env("VAULT_ROOT_TOKEN"))
        .json(&serde_json::json!({ "data": data }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{prefix}-{:08x}", RandomState::new().hash_one(0u8) as u32)
}

#[derive(Debug, Deserialize)]
struct Config {
    name: String,
    api_key: SecretString,
    db: Db,
}

#[derive(Debug, Deserialize)]
struct Db {
    host: String,
    user: String,
    password: SecretString,
    creds: keyrack_figment::SecretRefField,
}

#[derive(Deserialize)]
struct DbCreds {
    username: String,
    password: String,
}

#[test]
fn a_toml_and_env_configuration_resolves_against_openbao() {
    let path = unique("figment/db");
    let password = unique("pw-not-for-logs");
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "app.toml",
            &format!(
                r#"
                name = "payments"
                api_key = "secret:vault://secret/app/config#api_key"
                [db]
                host = "db.internal"
                user = "secret:vault://secret/{path}#user"
                creds = "secret:vault://database/creds/app"
                "#
            ),
        )?;
        jail.set_env(
            "KRFIG_DB__PASSWORD",
            format!("secret:vault://secret/{path}#password"),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            kv2_put(
                &path,
                serde_json::json!({ "user": "app", "password": password }),
            )
            .await;
            let secrets = Secrets::builder()
                .source("vault", vault(&env("VAULT_ADDR"), &env("VAULT_ROOT_TOKEN")))
                .build()
                .unwrap();
            let figment =
                Figment::from(Toml::file("app.toml")).merge(Env::prefixed("KRFIG_").split("__"));
            let config = Resolver::new(&secrets)
                .live("db.creds")
                .resolve(&figment)
                .await
                .unwrap();
            let c: Config = config.extract().unwrap();
            assert_eq!(c.name, "payments");
            assert_eq!(c.api_key.expose_secret(), "k-1");
            assert_eq!(c.db.host, "db.internal");
            assert_eq!(c.db.user, "app");
            assert_eq!(c.db.password.expose_secret(), password);
            assert_eq!(
                config.figment().find_metadata("db.password").unwrap().name,
                keyrack_figment::PROVIDER_NAME
            );
            assert!(!format!("{config:?} {c:?}").contains(&password));

            // The live key: a leased database credential behind a handle.
            let handle = config.handle("db.creds").unwrap();
            let creds: DbCreds = handle.current().json().unwrap();
            assert!(creds.username.starts_with("v-"), "{}", creds.username);
            assert!(!creds.password.is_empty());
            assert!(handle.current().lease().is_some());
            assert_eq!(
                c.db.creds.reference().as_str(),
                "vault://database/creds/app"
            );
            secrets.shutdown().await;
        });
        Ok(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_refused_and_unreachable_are_reported_by_key() {
    let secrets = Secrets::builder()
        .source("vault", vault(&env("VAULT_ADDR"), &env("VAULT_ROOT_TOKEN")))
        .source(
            "restricted",
            vault(&env("VAULT_ADDR"), &env("VAULT_RESTRICTED_TOKEN")),
        )
        // Nothing listens on port 9 of the loopback: connections are refused.
        .source("gone", vault("http://127.0.0.1:9", "t"))
        .build()
        .unwrap();
    let figment = Figment::from(Toml::string(
        r#"
        allowed = "secret:restricted://secret/allowed/config#value"
        missing = "secret:vault://secret/figment/does-not-exist#password"
        refused = "secret:restricted://secret/app/config#api_key"
        gone = "secret:gone://secret/app/config#api_key"
        "#,
    ));
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        Resolver::new(&secrets).resolve(&figment),
    )
    .await
    .expect("resolve returns")
    .unwrap_err();
    let got: Vec<(String, ProblemKind)> = err
        .problems()
        .iter()
        .map(|p| (p.key(), p.kind().clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("gone".into(), ProblemKind::Unreachable),
            ("missing".into(), ProblemKind::NotFound),
            ("refused".into(), ProblemKind::PermissionDenied),
        ],
        "{err}"
    );
    let refused = &err.problems()[2];
    assert_eq!(
        refused.cause().unwrap().kind(),
        &ErrorKind::PermissionDenied
    );
    let text = err.to_string();
    assert!(
        text.contains("`refused` (in TOML source string): permission to read the secret denied"),
        "{text}"
    );
    assert!(!text.contains("visible-to-restricted"), "{text}");
    secrets.shutdown().await;
}
