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
//! TLS is rustls, on the crypto provider given with [`VaultBuilder::with_crypto_provider`], else
//! the process default if the application installed one, else ring's; nothing is installed
//! process-wide.
//!
//! What each kind of path reads is described on [`VaultSource`]; login methods on [`Auth`].
//! The source's own token is renewed at about ⅔ of its TTL and obtained anew by login when
//! renewal stops extending it or Vault refuses it; every dynamic secret issued under the old token
//! is then re-issued (leases die with their token) and the client emits `Rotated`. While Vault
//! is down the token keeper retries after 1 s, then waits longer each time (up to a minute,
//! and at least as long as a `Retry-After` says).
//!
//! # Cleanup at shutdown
//!
//! [`Secrets::shutdown`](keyrack_core::Secrets::shutdown) revokes the source's own token
//! (`auth/token/revoke-self`), and with it every lease issued under it, when the source logged
//! in for that token (AppRole, JWT, Kubernetes); a static token given with [`Auth::Token`] or
//! `VAULT_TOKEN` is left alone, since other processes may share it. Change either with
//! [`VaultBuilder::revoke_token_on_shutdown`]. The revocation waits at most
//! [`VaultBuilder::with_shutdown_timeout`] (5 s by default): a Vault that does not answer does
//! not hold up the shutdown. A pod restarted with a clean shutdown therefore leaves no token and
//! no lease behind, where it used to leave one token and its leases until their TTLs (measured
//! against OpenBao: `tests/openbao_cleanup.rs`). A process that exits without `shutdown` gets a
//! best effort only (a source dropped on a running Tokio runtime sends the revocation as a
//! detached task, which an exiting process may never run): keep token TTLs short
//! (`token_ttl` on the role) so what is left behind ends soon.
//!
//! # Request budget
//!
//! Vault documents no quota: its capacity is the operator's server. A source's default budget
//! ([`Capabilities::request_budget`](keyrack_core::Capabilities)) is therefore only a ceiling,
//! 1,000 requests per second per process, but like every budget it adapts: when OpenBao's
//! rate-limit quota (`sys/quotas/rate-limit`) refuses with 429 (and `Retry-After: 0`), the rate
//! is cut to half what the process was sending, and the engine waits 1, 2, 4 … s before asking
//! again for a refused secret (`tests/openbao_rate_limit.rs`). A fleet can give each process its
//! share with `Secrets::builder().request_budget("vault", …)`.
//!
//! # Permissions
//!
//! The policy of the token the source logs in with needs these capabilities (paths as Vault
//! sees them; `secret`, `kv1`, `database`, `pki` stand for your mounts):
//!
//! | reference | path | capability | needed for |
//! |---|---|---|---|
//! | KV v2 `vault://secret/app` | `secret/data/app` | `read` | every read (`?version=N` too) |
//! | | `secret/metadata/app` | `read` | the version probe of routine checks; optional: when it is refused, checks read the value instead (the client warns once per secret) |
//! | KV v1 `vault://kv1/app` | `kv1/app` | `read` | every read |
//! | dynamic secret `vault://database/creds/app` | `database/creds/app` | `read` | every issue |
//! | | `sys/leases/renew` | `update` | renewing its lease |
//! | | `sys/leases/revoke` | `update` | only if the client revokes leases (replaced ones, or at shutdown) |
//! | issuing write `vault://pki/issue/web?common_name=…` | `pki/issue/web` | `create`, `update` | every issue (a POST) |
//! | any | `sys/internal/ui/mounts/<path>` | none: Vault answers it for any token with a capability on `<path>` | finding the engine; if refused, the path is read as given, as a plain logical path |
//! | the source's own token | `auth/token/renew-self` | `update` | renewal (granted by Vault's `default` policy) |
//! | | `auth/token/lookup-self` | `read` | a static token's TTL at start, and after a 403 whether the token itself is dead (granted by `default`) |
//! | | `auth/token/revoke-self` | `update` | revoking it and its leases at shutdown (granted by `default`) |
//!
//! Logins (`auth/<mount>/login` for AppRole, JWT and Kubernetes) need no policy.
//!
//! # Transport
//!
//! * `https`, or plain `http` to a loopback address only, unless
//!   [`VaultBuilder::allow_plain_http_for_remote`] is set: every request carries the token.
//! * A CA file or directory (`VAULT_CACERT`, `VAULT_CAPATH`, [`VaultBuilder::with_ca_file`])
//!   replaces the platform's trust store, as with the Vault CLI.
//! * Redirects are followed only to the same origin; one to another address is an error
//!   (`Unavailable`) rather than a request carrying the token elsewhere.
//! * [`VaultBuilder::with_transport`] sends every request through a [`Transport`] of your own
//!   (an HTTP stack your service configures, an in-process fake) instead of the built-in
//!   client; TLS and redirects are then its business, and each request is still bounded by
//!   [`VaultBuilder::with_timeout`] on the source's clock.
//!
//! # Secrets in memory
//!
//! Wiped when dropped: the token and the AppRole secret id ([`SecretValue`]s; the token header
//! shares the token's allocation rather than copying it), JWTs read for a login, login request
//! bodies, and every response body (read into a buffer sized once and parsed in place, so a
//! value or a token is copied once, into the zeroizing value the engine gets). Not wiped: the
//! copies reqwest and hyper make on the way (the header and body in their write buffer, each
//! chunk read from the socket) or those of a [`Transport`] of your own, lease ids, and what
//! Vault says in `errors` and `warnings`.
//!
//! [`SecretValue`]: keyrack_core::SecretValue
#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
mod auth;
mod builder;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod mounts;
mod session;
mod source;
mod transport;

pub use auth::Auth;
pub use builder::{DEFAULT_SHUTDOWN_TIMEOUT, VaultBuilder};
pub use source::VaultSource;
pub use transport::Transport;
/// The `http` and `bytes` crates, whose types a [`Transport`] takes and returns.
pub use {bytes, http};
