//! Secrets for Rust services, fetched in-process: one [`SecretSource`] trait over many backends,
//! a [`Secrets`] client that caches, single-flights, renews leases and re-issues them before
//! they end, and [`RotationEvent`]s that reach running code.
//!
//! This crate gathers the family behind one name; each backend is a feature:
//!
//! | feature | module | crate |
//! |---|---|---|
//! | (always) | everything at the root: [`Secrets`], [`SecretRef`], [`sources`] (memory, env, file) | [`keyrack-core`](https://docs.rs/keyrack-core) |
//! | `vault` | `vault`: HashiCorp Vault / OpenBao | [`keyrack-vault`](https://docs.rs/keyrack-vault) |
//! | `aws` | `aws`: AWS Secrets Manager | [`keyrack-aws`](https://docs.rs/keyrack-aws) |
//! | `azure` | `azure`: Azure Key Vault | [`keyrack-azure`](https://docs.rs/keyrack-azure) |
//! | `gcp` | `gcp`: Google Secret Manager | [`keyrack-gcp`](https://docs.rs/keyrack-gcp) |
//! | `k8s` | `k8s`: the pod's projected token, backend logins with it, `k8s://` Secrets | [`keyrack-k8s`](https://docs.rs/keyrack-k8s) |
//! | `rustls` | `rustls`: certificates that rotate, as rustls server and client certificate resolvers fed by handles | [`keyrack-rustls`](https://docs.rs/keyrack-rustls) |
//! | `sqlx` | `sqlx`: a sqlx PostgreSQL pool on a handle's rotating credentials (Vault dynamic database secrets) | [`keyrack-sqlx`](https://docs.rs/keyrack-sqlx) |
//! | `figment` | `figment`: `secret:<reference>` values in figment configuration, resolved at load time or kept live | [`keyrack-figment`](https://docs.rs/keyrack-figment) |
//! | `testkit` | `testkit`: conformance suite, fault injection, for your tests | |
//!
//! The client runs on Tokio (its tasks are spawned on the runtime current when a handle is
//! made).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keyrack::Error> {
//! use keyrack::{Secrets, sources::MemorySource};
//!
//! let memory = MemorySource::new();
//! memory.set("db", r#"{"user":"app","password":"hunter2"}"#);
//! let secrets = Secrets::builder().source("mem", memory).build()?;
//!
//! let password = secrets.get_secret("mem://db#password").await?;
//! assert_eq!(format!("{:?}", password.value()), "[REDACTED]");
//! let handle = secrets.handle("mem://db").await?; // follows rotations
//! # let _ = handle;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use keyrack_core::*;

/// HashiCorp Vault / OpenBao: the [`keyrack-vault`](https://docs.rs/keyrack-vault) crate.
#[cfg(feature = "vault")]
pub use keyrack_vault as vault;

/// AWS Secrets Manager: the [`keyrack-aws`](https://docs.rs/keyrack-aws) crate.
#[cfg(feature = "aws")]
pub use keyrack_aws as aws;

/// Azure Key Vault: the [`keyrack-azure`](https://docs.rs/keyrack-azure) crate.
#[cfg(feature = "azure")]
pub use keyrack_azure as azure;

/// Google Secret Manager: the [`keyrack-gcp`](https://docs.rs/keyrack-gcp) crate.
#[cfg(feature = "gcp")]
pub use keyrack_gcp as gcp;

/// In-cluster identity and the Kubernetes Secrets source: the
/// [`keyrack-k8s`](https://docs.rs/keyrack-k8s) crate.
#[cfg(feature = "k8s")]
pub use keyrack_k8s as k8s;

/// Secret references in figment configuration: the
/// [`keyrack-figment`](https://docs.rs/keyrack-figment) crate.
#[cfg(feature = "figment")]
pub use keyrack_figment as figment;
/// rustls certificates that rotate (Vault PKI, Kubernetes TLS Secrets, PEM files): the
/// [`keyrack-rustls`](https://docs.rs/keyrack-rustls) crate.
#[cfg(feature = "rustls")]
pub use keyrack_rustls as rustls;
/// sqlx PostgreSQL pools on rotating credentials: the
/// [`keyrack-sqlx`](https://docs.rs/keyrack-sqlx) crate.
#[cfg(feature = "sqlx")]
pub use keyrack_sqlx as sqlx;
