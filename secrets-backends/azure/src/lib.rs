//! Azure Key Vault for [`keyrack_core`], on the official `azure_security_keyvault_secrets` 1.0
//! SDK, with one TLS stack (rustls through the workspace's reqwest; no OpenSSL).
//!
//! **Crypto provider.** The SDK is given the source's own HTTP client as its transport, so every
//! request (Key Vault, Entra ID, managed identity) uses a rustls configuration built on the
//! provider given with [`AzureBuilder::with_crypto_provider`], else the process default if the
//! application installed one, else ring's. Nothing is installed process-wide. An application
//! with an HTTP client of its own (a proxy, an in-process fake) gives it with
//! [`AzureBuilder::with_http_client`]; TLS is then that client's.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_azure::AzureBuilder;
//! use keyrack_core::Secrets;
//!
//! // Workload identity (AKS), else a client secret, else managed identity.
//! let azure = AzureBuilder::from_env().with_default_vault("payments-kv").build()?;
//! let secrets = Secrets::builder().source("azure-kv", azure).build()?;
//! let password = secrets.get_secret("azure-kv://payments-kv/db-password").await?;
//! let api_key = secrets.get_secret("azure-kv://stripe#api_key").await?; // default vault
//! let db = secrets.handle("azure-kv://payments-kv/db").await?; // re-read on the refresh interval
//! # let _ = (password, api_key, db);
//! # Ok(())
//! # }
//! ```
//!
//! In Kubernetes without the workload-identity webhook, or with a token source of your own,
//! hand the token over as an [`IdentityToken`](keyrack_core::IdentityToken):
//!
//! ```no_run
//! # fn run(token: std::sync::Arc<dyn keyrack_core::IdentityToken>) -> keyrack_core::Result<()> {
//! use keyrack_azure::{AzureBuilder, WorkloadIdentity};
//!
//! let identity = WorkloadIdentity::new("tenant-id", "client-id", token);
//! let azure = AzureBuilder::new().with_workload_identity(identity).build()?;
//! # let _ = azure;
//! # Ok(())
//! # }
//! ```
//!
//! What references read, how errors map and why there is no version probe is described on
//! [`AzureSource`]; configuration and the credential chain on [`AzureBuilder`].
//!
//! # Permissions
//!
//! Every read is one `GET /secrets/<name>[/<version>]` (Get Secret), so the identity needs to
//! get secrets and nothing else (no list, no metadata read), granted the way the vault is set up:
//!
//! - **A vault that uses Azure RBAC** (the default for new vaults): the role **Key Vault Secrets
//!   User** (`4633458b-17de-408a-b874-0445c86b69e6`; its data action
//!   `Microsoft.KeyVault/vaults/secrets/getSecret/action`), assigned on the vault, or on single
//!   secrets to narrow it. A refusal names it (`ForbiddenByRbac`); new assignments take a few
//!   minutes to apply.
//!
//!   ```text
//!   az role assignment create --role "Key Vault Secrets User" --assignee <principal id> \
//!       --scope /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<vault>/secrets/<name>
//!   ```
//! - **A vault that uses access policies**: an access policy for the identity with the secret
//!   permission **Get** (`az keyvault set-policy --name <vault> --object-id <id>
//!   --secret-permissions get`). A refusal names it (`AccessDenied`).
//!
//! The vault's network must let the client in: a firewall refusal (`ForbiddenByFirewall`) or a
//! vault reachable only through its private endpoints (`ForbiddenByConnection`) is not fixed by a
//! role, and the error says which it is. For the login, workload identity needs a federated
//! identity credential on the application (or user-assigned managed identity) whose issuer is
//! the cluster's OIDC issuer, whose subject is `system:serviceaccount:<namespace>:<name>` and
//! whose audience is `api://AzureADTokenExchange` (the projected token's audience).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod challenge;
mod credential;
mod errors;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod source;

pub use builder::{AzureBuilder, PUBLIC_VAULT_AUDIENCE, PUBLIC_VAULT_URL_TEMPLATE};
pub use credential::{PUBLIC_AUTHORITY_HOST, WorkloadIdentity};
pub use source::AzureSource;

/// The SDK crates this one is built on, for callers who pass their own credential or use the
/// [`SecretClient`](azure_security_keyvault_secrets::SecretClient) directly.
pub use {azure_core, azure_identity, azure_security_keyvault_secrets};
