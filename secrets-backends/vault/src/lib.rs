//! HashiCorp Vault / OpenBao for [`keyrack_core`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_core::Secrets;
//! use keyrack_vault::{Auth, VaultBuilder};
//!
//! let vault = VaultBuilder::from_env() // VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, VAULT_NAMESPACE, …
//!     .with_auth(Auth::approle("role-id", "secret-id"))
//!     .build()?;
//! let secrets = Secrets::builder().source("vault", vault).build()?;
//! let api_key = secrets.get_secret("vault://secret/payments#api_key").await?;
//! let db = secrets.handle("vault://database/creds/app").await?; // renewed, re-issued before max TTL
//! # let _ = (api_key, db);
//! # Ok(())
//! # }
//! ```
//!
//! What each kind of path reads is described on [`VaultSource`]; login methods on [`Auth`].
//! The source's own token is renewed at about ⅔ of its TTL and obtained anew by login when
//! renewal stops extending it or Vault refuses it; every dynamic secret issued under the old token
//! is then re-issued (leases die with their token) and the client emits `Rotated`.

mod auth;
mod builder;
mod http;
mod mounts;
mod session;
mod source;

pub use auth::Auth;
pub use builder::VaultBuilder;
pub use source::VaultSource;
