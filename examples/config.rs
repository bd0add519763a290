//! Configuration with secret references: a TOML file and environment variables whose values
//! name secrets (`secret:<reference>`), resolved at load time into a typed struct, with the
//! credential that rotates kept as a live handle. Runs with no server: the secrets come from the
//! in-memory source here, and a Vault, AWS, … source registers the same way.
//!
//! ```text
//! cargo run -p keyrack-examples --example config
//! APP_DB__USER=secret:mem://missing#user cargo run -p keyrack-examples --example config   # the error
//! ```
#![allow(clippy::print_stdout)] // a program whose output is the point

use keyrack::figment::figment::Figment;
use keyrack::figment::figment::providers::{Env, Format, Toml};
use keyrack::figment::{Resolver, SecretRefField};
use keyrack::{Secrets, sources::MemorySource};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// What `app.toml` would hold.
const APP_TOML: &str = r#"
name = "payments"
api_key = "secret:mem://payments#api_key"
banner = "secret::shown as is"   # a literal that starts with `secret:`

[db]
host = "db.internal"
user = "secret:mem://db#username"
password = "secret:mem://db#password"   # rotates: kept live
"#;

#[derive(Debug, Deserialize)]
struct Config {
    name: String,
    banner: String,
    api_key: SecretString,
    db: Db,
}

#[derive(Debug, Deserialize)]
struct Db {
    host: String,
    user: String,
    password: SecretRefField,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = MemorySource::new();
    memory.set("payments", r#"{"api_key":"k-123"}"#);
    memory.set("db", r#"{"username":"app","password":"first"}"#);
    let secrets = Secrets::builder().source("mem", memory.clone()).build()?;

    // `Toml::file("app.toml")` in an application; `APP_DB__USER=…` overrides `db.user`.
    let figment = Figment::from(Toml::string(APP_TOML)).merge(Env::prefixed("APP_").split("__"));
    let resolved = match Resolver::new(&secrets)
        .live("db.password")
        .resolve(&figment)
        .await
    {
        Ok(resolved) => resolved,
        Err(e) => {
            // Every failing key, where it came from and why; never a value.
            println!("{e}");
            std::process::exit(1);
        }
    };
    let config: Config = resolved.extract()?;
    println!(
        "{} ({}): api key of {} bytes, db {}@{}",
        config.name,
        config.banner,
        config.api_key.expose_secret().len(),
        config.db.user,
        config.db.host
    );
    println!("resolved: {resolved:?}");

    // The live key: the handle follows rotations.
    let password = resolved.handle("db.password").expect("db.password is live");
    let mut changes = password.clone();
    memory.set("db", r#"{"username":"app","password":"second"}"#);
    password.refresh_now().await?;
    changes.changed().await?;
    println!(
        "{} rotated to version {:?} ({} bytes)",
        config.db.password,
        password.current().version(),
        password.current().expose_bytes().len()
    );
    secrets.shutdown().await;
    Ok(())
}
