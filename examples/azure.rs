//! Azure Key Vault: read a secret through the client, keep a handle on it, see `Rotated` when a
//! new version appears. Values are never printed, only their versions and sizes.
//!
//! With no Azure account (the default when `AZURE_KEYVAULT_URL` is not set, or with `--fake`),
//! it starts an in-process fake of Key Vault and of Entra ID's token endpoint on loopback TLS
//! (`keyrack_fake_server::azure`, the fake keyrack-azure's tests use, built from the Azure SDK's
//! recordings), logs in with workload identity, and writes a second version to the fake itself:
//!
//! ```text
//! cargo run -p keyrack-examples --example azure
//! ```
//!
//! Against a real vault, give its URL and credentials as for the Azure SDK (workload identity,
//! else `AZURE_CLIENT_SECRET`, else managed identity; `AzureBuilder::from_env` lists them) and
//! the name of a secret your identity may `get` (role Key Vault Secrets User):
//!
//! ```text
//! AZURE_KEYVAULT_URL=https://my-vault.vault.azure.net AZURE_TENANT_ID=… AZURE_CLIENT_ID=… \
//!   AZURE_CLIENT_SECRET=… cargo run -p keyrack-examples --example azure -- db-password
//! ```
//!
//! The library only reads, so against a real vault the example shows the version it finds and
//! whether a forced check finds a newer one (`az keyvault secret set` one in between to see it).
#![allow(clippy::print_stdout)] // a program whose output is the point

use std::sync::Arc;

use keyrack::azure::{AzureBuilder, WorkloadIdentity};
use keyrack::{RotationEvent, SecretHandle, Secrets, StaticToken, Version};
use keyrack_fake_server::azure::{CLIENT_ID, Fake, TENANT, VAULT};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fake_asked = args.iter().any(|a| a == "--fake");
    let name = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "keyrack-example-db".to_owned());
    let vault_url = std::env::var("AZURE_KEYVAULT_URL")
        .ok()
        .filter(|u| !u.is_empty());

    match vault_url {
        Some(url) if !fake_asked => real(&url, &name).await,
        _ => fake(&name).await,
    }
}

/// Against the vault at `url`, with credentials from the environment.
async fn real(url: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    // `https://my-vault.vault.azure.net` is the vault `my-vault` in references.
    let vault = url
        .trim_start_matches("https://")
        .split(['.', '/'])
        .next()
        .unwrap_or("vault")
        .to_owned();
    let azure = AzureBuilder::from_env()
        .with_vault_url(&vault, url)
        .build()?;
    println!("Key Vault at {url} (AZURE_KEYVAULT_URL), credentials from the environment");
    let secrets = Secrets::builder().source("azure-kv", azure).build()?;
    let reference = format!("azure-kv://{vault}/{name}");
    let handle = read(&secrets, &reference).await?;
    let before = shown(handle.current().version());
    handle.refresh_now().await?;
    let after = shown(handle.current().version());
    if before == after {
        println!("checked again: still version {after} (set a new version to see a rotation)");
    } else {
        println!("checked again: Rotated {before} -> {after}");
    }
    secrets.shutdown().await;
    Ok(())
}

/// Against the in-process fake: writes the versions itself.
async fn fake(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let fake = Fake::start().await;
    println!(
        "fake Key Vault at {}, fake Entra ID at {} (no Azure account used)",
        fake.vault.url(),
        fake.entra.url()
    );
    let first = fake.put(name, r#"{"username":"app","password":"first-password"}"#);
    println!("wrote {name} version {first} to the fake vault");

    // What `AzureBuilder::from_env()` does with AZURE_FEDERATED_TOKEN_FILE in a pod, with a
    // fixed token in place of the projected file, and the fakes' addresses and CAs.
    let token = Arc::new(StaticToken::new("projected-service-account-token"));
    let azure = AzureBuilder::new()
        .with_vault_url(VAULT, fake.vault.url())
        .with_authority_host(fake.entra.url())
        .with_ca_pem(fake.vault.ca_pem().unwrap_or_default())
        .with_ca_pem(fake.entra.ca_pem().unwrap_or_default())
        // The fake's host is `localhost`, which does not end with the challenge's resource.
        .with_challenge_resource_verification(false)
        .with_workload_identity(WorkloadIdentity::new(TENANT, CLIENT_ID, token))
        .build()?;
    let secrets = Secrets::builder().source("azure-kv", azure).build()?;
    let reference = format!("azure-kv://{VAULT}/{name}");
    let handle = read(&secrets, &reference).await?;

    let mut events = handle.subscribe();
    let second = fake.put(name, r#"{"username":"app","password":"second-password"}"#);
    println!("wrote {name} version {second} to the fake vault");
    // A service waits for its scheduled check (a GET of the latest version: Key Vault has no
    // cheaper probe); the example asks at once.
    handle.refresh_now().await?;
    if let Some(RotationEvent::Rotated { old, new, .. }) = events.recv().await {
        println!(
            "event: Rotated {} -> {}",
            shown(old.as_ref()),
            shown(new.as_ref())
        );
    }
    println!(
        "handle: now version {}, password of {} bytes",
        shown(handle.current().version()),
        handle.current().expose_bytes().len()
    );
    println!(
        "Entra ID issued {} token(s); Key Vault answered {} request(s) (the first a 401 challenge)",
        fake.token_requests().len(),
        fake.vault_requests().len()
    );
    secrets.shutdown().await;
    Ok(())
}

/// Reads `reference`'s password once and keeps a handle on it; prints versions and sizes.
async fn read(
    secrets: &Secrets,
    reference: &str,
) -> Result<SecretHandle, Box<dyn std::error::Error>> {
    let password = secrets.get_secret(format!("{reference}#password")).await?;
    println!(
        "startup: read {reference}#password: version {}, {} bytes (not printed)",
        shown(password.version()),
        password.expose_bytes().len()
    );
    let handle = secrets.handle(format!("{reference}#password")).await?;
    println!(
        "handle: {reference}#password at version {}",
        shown(handle.current().version())
    );
    Ok(handle)
}

/// A version's id, or `none` when the backend gave none.
fn shown(version: Option<&Version>) -> String {
    version.map_or_else(|| "none".to_owned(), |v| v.as_str().to_owned())
}
