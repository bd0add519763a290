//! The README's "Testing your service" example, as written there.
#![allow(clippy::unwrap_used)]

use keyrack::{ManualClock, RotationEvent, Secrets, sources::MemorySource};
use std::time::Duration;

#[tokio::test]
async fn reconnects_when_the_password_rotates() {
    let clock = ManualClock::new();
    let memory = MemorySource::with_clock(clock.clone());
    memory.set("db", r#"{"password":"one"}"#);
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("vault", memory.clone()) // the name your service uses in production
        .build()
        .unwrap();
    let db = secrets.handle("vault://db#password").await.unwrap();
    let mut events = db.subscribe();

    memory.set("db", r#"{"password":"two"}"#);
    clock.advance(Duration::from_secs(300)).await; // the next scheduled check
    assert!(matches!(
        events.recv().await,
        Some(RotationEvent::Rotated { .. })
    ));
    assert_eq!(db.current().expose_str().unwrap(), "two");
}

/// The README shows the test above, not an older version of it.
#[test]
fn the_readme_shows_the_test_above() {
    let this = include_str!("readme.rs");
    let test = &this[this.find("#[tokio::test]").unwrap()..this.find("\n}\n").unwrap() + 2];
    assert!(
        include_str!("../README.md").contains(test),
        "README.md's \"Testing your service\" differs from keyrack/tests/readme.rs"
    );
}

/// The README's "First steps" program is `examples/first_steps.rs` after its header, byte for
/// byte (`cargo run --example first_steps` runs it).
#[test]
fn the_readme_shows_the_first_steps_example() {
    let example = include_str!("../examples/first_steps.rs");
    let program = &example[example.find("\nuse ").unwrap() + 1..];
    assert!(
        include_str!("../README.md").contains(program),
        "README.md's \"First steps\" differs from keyrack/examples/first_steps.rs"
    );
}
