//! The core of [keyrack](https://docs.rs/keyrack): the [`SecretSource`] contract every backend
//! implements, the [`Secrets`] client (cache, single-flight, handles that follow rotations,
//! lease renewal and re-issue, backoff, [`RotationEvent`]s), and built-in [`sources`]: memory,
//! environment, files.
//!
//! Most applications depend on the `keyrack` crate, which re-exports this one and adds each
//! backend behind a feature; a backend's own crate depends on this one alone.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keyrack_core::Error> {
//! use keyrack_core::{RotationEvent, Secrets, sources::MemorySource};
//!
//! let memory = MemorySource::new();
//! memory.set("db", r#"{"user":"app","password":"first"}"#);
//! let secrets = Secrets::builder().source("mem", memory.clone()).build()?;
//!
//! let user = secrets.get_secret("mem://db#user").await?;
//! assert_eq!(user.expose_str()?, "app");
//!
//! let handle = secrets.handle("mem://db#password").await?;
//! let mut events = secrets.events();
//! memory.set("db", r#"{"user":"app","password":"second"}"#);
//! handle.refresh_now().await?;
//! assert_eq!(handle.current().expose_str()?, "second");
//! assert!(matches!(events.recv().await, Some(RotationEvent::Rotated { .. })));
//! # Ok(())
//! # }
//! ```
//!
//! Tokio is required: handles and leases are maintained by tasks spawned on the runtime that is
//! current when they are made.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod budget;
mod client;
pub mod clock;
pub mod error;
pub mod identity;
pub mod reference;
pub mod schedule;
pub mod secret;
pub mod source;
pub mod sources;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "tls")]
pub mod tls;
pub mod value;

pub use backoff::Backoff;
pub use budget::RequestBudget;
pub use client::telemetry;
pub use client::{
    Current, Health, RotationEvent, RotationEvents, SecretHandle, SecretHealth, SecretState,
    Secrets, SecretsBuilder, ToSecretRef, Verdict,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorKind, Result};
pub use identity::{IdentityToken, StaticToken};
pub use reference::{RefError, RefErrorKind, RefPart, SecretRef, Selector};
pub use secret::{Lease, Metadata, Secret, Version};
pub use source::{
    Capabilities, SecretSource, SourceEvent, fetch_each, fetch_each_within, timed_request,
};
pub use value::SecretValue;

/// Re-exported so sources can implement [`SecretSource`] without naming the crate themselves.
pub use async_trait::async_trait;
