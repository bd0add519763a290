//! Quickstart: no server, no network.
//!
//! A file source reads a directory of secret files (as a Kubernetes volume mounts them). The
//! program reads a secret at startup, opens a live handle, subscribes to its events, rewrites the
//! file the way a rotation would, and prints the `Rotated` event and the new version — never the
//! value.
//!
//! ```text
//! cargo run --example quickstart
//! ```

#![allow(clippy::print_stdout)] // a program whose output is the point

use std::time::Duration;

use keyrack::sources::FileSource;
use keyrack::{RotationEvent, Secrets};

#[derive(serde::Deserialize)]
struct DbConfig {
    user: String,
    #[allow(dead_code)] // a real service would connect with it
    password: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    write_atomically(&path, br#"{"user":"app","password":"first-password"}"#)?;
    let uri = format!("file://{}", path.display());

    let secrets = Secrets::builder()
        .source("file", FileSource::new())
        .build()?;

    // Startup read: typed decoding of a JSON secret, and one field of it.
    let config: DbConfig = secrets.get_secret(&uri).await?.json()?;
    let password = secrets.get_secret(format!("{uri}#password")).await?;
    println!(
        "startup: user={} password={} ({} bytes)",
        config.user,
        password.value(),
        password.value().len()
    );

    // A live handle: kept fresh in the background, read without awaiting.
    let handle = secrets.handle(&uri).await?;
    let mut events = handle.subscribe();
    println!("handle: version {}", version(&handle.current()));

    // Rotate: replace the file as a secret syncer or the kubelet would.
    write_atomically(&path, br#"{"user":"app","password":"second-password"}"#)?;

    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(ev @ RotationEvent::Rotated { .. }) => return Some(ev),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await?
    .ok_or("event stream ended")?;
    println!("event: {event}");
    println!("handle: now version {}", version(&handle.current()));
    let config: DbConfig = handle.current().json()?;
    println!("handle: user={} (password not printed)", config.user);

    secrets.shutdown().await;
    Ok(())
}

fn version(secret: &keyrack::Secret) -> String {
    secret
        .version()
        .map_or_else(|| "none".to_owned(), ToString::to_string)
}

/// Write to a temporary name and rename over the target, so a reader never sees half a file.
fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(tmp, path)
}
