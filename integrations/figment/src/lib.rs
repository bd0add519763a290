//! Secret references in [figment](https://docs.rs/figment) configuration, resolved through a
//! keyrack [`Secrets`](keyrack_core::Secrets) client at load time, or kept as live handles.
//!
//! A string value that is, as a whole, `secret:<reference>` names a secret
//! (`db_password = "secret:vault://secret/db#password"`, with any
//! [`SecretRef`](keyrack_core::SecretRef) after the prefix). [`resolve`] fetches each distinct
//! reference once (batched per source where the source can) and returns the configuration with
//! the values in place; [`Resolver::live`] keeps chosen keys as [`SecretHandle`]s that follow
//! rotations, and [`SecretRefField`] is the field type such a key deserializes into. A literal
//! string that starts with `secret:` is written `secret::…` (`"secret::x"` reads as `secret:x`):
//! a reference never starts with `:`, so the escape cannot be taken for one. Only whole strings
//! are placeholders: `"user=secret:…"` is plain text. The profiles the selected one reads
//! (`default`, the selected one, `global`) are resolved, every profile with
//! [`Resolver::all_profiles`].
//!
//! Why figment and not the `config` crate: figment keeps each value's provenance (which file,
//! which environment variable, through a tag on every value), so an error names the key and
//! where it came from, and a resolved value can say it came from the secret source. It is
//! provider-based and serde-native, so resolution is one more provider merged over the
//! application's own, and the result extracts into the application's typed struct as before.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use figment::{Figment, providers::Serialized};
//! use keyrack_core::{Secrets, sources::MemorySource};
//! use secrecy::{ExposeSecret, SecretString};
//!
//! let memory = MemorySource::new();
//! memory.set("db", r#"{"password":"hunter2"}"#);
//! let secrets = Secrets::builder().source("mem", memory).build()?;
//!
//! // Any providers: TOML files, `Env::prefixed("APP_")`, ...
//! let figment = Figment::from(Serialized::defaults(serde_json::json!({
//!     "db": { "host": "db.internal", "password": "secret:mem://db#password" },
//! })));
//!
//! #[derive(serde::Deserialize)]
//! struct Db { host: String, password: SecretString }
//!
//! let config = keyrack_figment::resolve(&figment, &secrets).await?;
//! let db: Db = config.extract_inner("db")?;
//! assert_eq!(db.password.expose_secret(), "hunter2");
//! assert_eq!(db.host, "db.internal");
//! // Provenance: the key says it came from the secret source.
//! let from = config.figment().find_metadata("db.password").unwrap();
//! assert_eq!(from.name, keyrack_figment::PROVIDER_NAME);
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! [`ConfigError::Secrets`] lists every key that failed, not only the first, each with its
//! path (`db.password`), its profile, where the value came from (figment's
//! [`Metadata`](figment::Metadata): a file's path, the environment variable's name) and a
//! [`ProblemKind`]: an invalid reference, an unregistered source, not found, permission denied,
//! unauthenticated, unreachable, not text. No error quotes a secret value or the text of a
//! placeholder that does not parse (it may be a value pasted where a reference belongs).
//!
//! # What holds the values
//!
//! Figment stores strings, so the resolved figment holds each value as a plain `String` until it
//! is dropped, and its `Debug` prints them: [`Resolved`] wraps it with a redacted `Debug` and
//! with [`Resolved::extract`], whose errors withhold resolved values (figment's own type errors
//! quote the string they found). Extract into `secrecy::SecretString` fields and drop the
//! [`Resolved`]; the copies this crate makes on the way are wiped. Use a live key where the
//! value rotates: the handle reads the current value from keyrack's zeroized storage.
//!
//! [`SecretHandle`]: keyrack_core::SecretHandle
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod field;
mod placeholder;
mod redact;
mod resolver;

pub use error::{ConfigError, Problem, ProblemKind};
pub use field::SecretRefField;
pub use placeholder::{ESCAPE, PREFIX};
pub use resolver::{PROVIDER_NAME, Resolved, Resolver, resolve};

/// Re-exported so applications name the same figment version.
pub use figment;
