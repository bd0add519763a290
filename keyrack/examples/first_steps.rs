//! The README's "First steps" program (`cargo run --example first_steps`); everything from the
//! first `use` on is in the README as written (`tests/readme.rs` checks).
#![allow(clippy::print_stdout)] // a program whose output is the point

use keyrack::{RotationEvent, Secrets, sources::MemorySource};

#[derive(serde::Deserialize)]
struct DbCreds {
    username: String,
    password: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let memory = MemorySource::new();
    memory.set("payments", r#"{"api_key":"k-123"}"#);
    memory.set("db", r#"{"username":"app","password":"hunter2"}"#);
    let secrets = Secrets::builder().source("mem", memory.clone()).build()?;

    // A read at startup: one field of a JSON secret. Values never print.
    let key = secrets.get_secret("mem://payments#api_key").await?;
    println!("{key:?}"); // Secret { value: [REDACTED], … }

    // A live handle: refreshed (or its lease renewed) in the background, read without awaiting.
    let db = secrets.handle("mem://db").await?;
    let creds: DbCreds = db.current().json()?;
    connect(&creds.username, &creds.password);

    // Rotations reach running code as events.
    let mut events = db.subscribe();
    memory.set("db", r#"{"username":"app","password":"rotated"}"#);
    db.refresh_now().await?; // normally the scheduled check or the backend's watch does this
    if let Some(RotationEvent::Rotated { old, new, .. }) = events.recv().await {
        println!("rotated {old:?} -> {new:?}");
    }
    secrets.shutdown().await;
    Ok(())
}

fn connect(_user: &str, _password: &str) {}
