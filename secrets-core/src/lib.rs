#![doc = include_str!("../../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
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
pub use client::{
    Current, RotationEvent, RotationEvents, SecretHandle, Secrets, SecretsBuilder, ToSecretRef,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorKind, Result};
pub use identity::{IdentityToken, StaticToken};
pub use reference::{RefError, RefErrorKind, RefPart, SecretRef, Selector};
pub use secret::{Lease, Metadata, Secret, Version};
pub use source::{Capabilities, SecretSource, SourceEvent, fetch_each};
pub use value::SecretValue;

/// Re-exported so sources can implement [`SecretSource`] without naming the crate themselves.
pub use async_trait::async_trait;
