//! Google Secret Manager: read a secret through the client, keep a handle on it, see `Rotated`
//! when a new version appears. Values are never printed, only their versions and sizes.
//!
//! With no Google account (the default when `GOOGLE_CLOUD_PROJECT` is not set, or with
//! `--fake`), it starts an in-process fake of Secret Manager and of Google's STS
//! (`keyrack_fake_server::gcp`, the fake keyrack-gcp's tests use, built from the published
//! API examples), logs in with workload identity federation (a subject token exchanged at STS
//! for the access token Secret Manager accepts), and adds a second version to the fake itself:
//!
//! ```text
//! cargo run -p keyrack-examples --example gcp
//! ```
//!
//! Against a real project, give it and Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login, or the metadata server) and the name of a
//! secret your principal may access (role Secret Manager Secret Accessor):
//!
//! ```text
//! GOOGLE_CLOUD_PROJECT=my-project cargo run -p keyrack-examples --example gcp -- db-password
//! ```
//!
//! The library only reads, so against a real project the example shows the version it finds
//! and whether a forced check finds a newer one (`gcloud secrets versions add` one in between
//! to see it).
//!
//! Like every program on keyrack-gcp, this one gets ring as the process's default rustls
//! provider when it builds the source (the Google crates take no provider; see `GcpBuilder`).
#![allow(clippy::print_stdout)] // a program whose output is the point

use std::sync::Arc;

use keyrack::gcp::{GcpBuilder, WorkloadIdentity};
use keyrack::{RotationEvent, SecretHandle, Secrets, StaticToken, Version};
use keyrack_fake_server::gcp::Fake;

/// The project the fake holds the secret in.
const FAKE_PROJECT: &str = "keyrack-example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fake_asked = args.iter().any(|a| a == "--fake");
    let name = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "keyrack-example-db".to_owned());
    let project = std::env::var("GOOGLE_CLOUD_PROJECT")
        .ok()
        .filter(|p| !p.is_empty());

    match project {
        Some(project) if !fake_asked => real(&project, &name).await,
        _ => fake(&name).await,
    }
}

/// Against `project`, with Application Default Credentials.
async fn real(project: &str, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let gcp = GcpBuilder::from_env().build().await?;
    println!(
        "Secret Manager of project {project} (GOOGLE_CLOUD_PROJECT), Application Default Credentials"
    );
    let secrets = Secrets::builder().source("gcp-sm", gcp).build()?;
    let reference = format!("gcp-sm://{name}");
    let handle = read(&secrets, &reference).await?;
    let before = shown(handle.current().version());
    handle.refresh_now().await?;
    let after = shown(handle.current().version());
    if before == after {
        println!("checked again: still version {after} (add a version to see a rotation)");
    } else {
        println!("checked again: Rotated {before} -> {after}");
    }
    secrets.shutdown().await;
    Ok(())
}

/// Against the in-process fake: adds the versions itself.
async fn fake(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let fake = Fake::start().await;
    println!(
        "fake Secret Manager at {}, fake STS at {} (no Google account used)",
        fake.secret_manager.url(),
        fake.token_url()
    );
    let resource = format!("projects/{FAKE_PROJECT}/secrets/{name}");
    let first = fake.store.add_version(
        &resource,
        br#"{"username":"app","password":"first-password"}"#,
    );
    println!("added {resource} version {first} to the fake");

    // Workload identity federation as a pod does it with its projected token (keyrack-k8s's
    // `ProjectedToken`), with the recorded exchange's subject token and pool provider here.
    let token = Arc::new(StaticToken::new(Fake::subject_token()));
    let gcp = GcpBuilder::new()
        .with_endpoint(fake.secret_manager.url())
        .with_project(FAKE_PROJECT)
        .with_workload_identity(
            WorkloadIdentity::new(Fake::audience(), token).with_token_url(fake.token_url()),
        )
        .build()
        .await?;
    let secrets = Secrets::builder().source("gcp-sm", gcp).build()?;
    // The short form: the builder's project fills in `projects/{project}/secrets/`.
    let reference = format!("gcp-sm://{name}");
    let handle = read(&secrets, &reference).await?;

    let mut events = handle.subscribe();
    let second = fake.store.add_version(
        &resource,
        br#"{"username":"app","password":"second-password"}"#,
    );
    println!("added {resource} version {second} to the fake");
    // A service waits for its scheduled check (an AccessSecretVersion of `latest`: metadata
    // reads are on a far smaller quota); the example asks at once.
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
        "STS exchanged the subject token {} time(s); Secret Manager answered {} request(s)",
        fake.sts.requests().len(),
        fake.secret_manager.requests().len()
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
