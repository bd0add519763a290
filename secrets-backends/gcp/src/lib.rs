//! Google Secret Manager for [`keyrack_core`], on the official `google-cloud-secretmanager-v1`
//! and `google-cloud-auth` crates with one TLS stack (rustls; no OpenSSL).
//!
//! **Crypto provider: this backend installs one process-wide.** The Google crates build their
//! own reqwest clients and sign with the process default rustls provider, and offer no way to
//! pass a client or a provider, so [`GcpBuilder::build`] installs ring's provider (or the one
//! given with [`GcpBuilder::with_crypto_provider`]) as the process default when none is
//! installed. An application that uses another provider (aws-lc-rs for FIPS) installs it
//! before building this source; `CryptoProvider::install_default` fails after. The other
//! backends install nothing, nor does this one when given the application's own SDK client
//! ([`GcpBuilder::with_client`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_core::Secrets;
//! use keyrack_gcp::GcpBuilder;
//!
//! // Application Default Credentials; GOOGLE_CLOUD_PROJECT for short references
//! let gcp = GcpBuilder::from_env().build().await?;
//! let secrets = Secrets::builder().source("gcp-sm", gcp).build()?;
//! let password = secrets.get_secret("gcp-sm://projects/p1/secrets/db#password").await?;
//! let pinned = secrets.get_secret("gcp-sm://projects/p1/secrets/db/versions/3").await?;
//! let regional = secrets
//!     .get_secret("gcp-sm://projects/p1/locations/europe-west1/secrets/db")
//!     .await?;
//! let db = secrets.handle("gcp-sm://db").await?; // re-read on refresh: Rotated on a new version
//! # let _ = (password, pinned, regional, db);
//! # Ok(())
//! # }
//! ```
//!
//! Workload identity federation with a token that rotates (a Kubernetes projected
//! service-account token, through [`keyrack_core::IdentityToken`]):
//!
//! ```no_run
//! # async fn run(token: std::sync::Arc<dyn keyrack_core::IdentityToken>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_gcp::{GcpBuilder, WorkloadIdentity};
//!
//! let audience = "//iam.googleapis.com/projects/123456/locations/global/\
//!                 workloadIdentityPools/POOL_ID/providers/PROVIDER_ID";
//! let gcp = GcpBuilder::new()
//!     .with_project("p1")
//!     .with_workload_identity(WorkloadIdentity::new(audience, token))
//!     .build()
//!     .await?;
//! # let _ = gcp;
//! # Ok(())
//! # }
//! ```
//!
//! What references read, why there is no version probe (and the rotation schedule is read only
//! with [`GcpBuilder::with_rotation_schedule`]`(true)`) and how errors map is described on
//! [`GcpSource`]; configuration on [`GcpBuilder`].
//!
//! # Permissions
//!
//! The identity the source runs as (a service account, or a workload identity federation
//! principal) needs, on each secret it reads (or on the project):
//!
//! - **`secretmanager.versions.access`**, for every read (AccessSecretVersion): the role
//!   **Secret Manager Secret Accessor** (`roles/secretmanager.secretAccessor`).
//! - **`secretmanager.secrets.get`** as well, only with
//!   [`with_rotation_schedule(true)`](GcpBuilder::with_rotation_schedule) (GetSecret, for
//!   `nextRotationTime` and `expireTime`): Secret Accessor does not have it; **Secret Manager
//!   Viewer** (`roles/secretmanager.viewer`) does. Without it reads still work (the schedule is
//!   left out, the refusal logged once an hour).
//!
//! ```text
//! gcloud secrets add-iam-policy-binding db-password --project p1 \
//!     --role roles/secretmanager.secretAccessor --member serviceAccount:app@p1.iam.gserviceaccount.com
//! ```
//!
//! With workload identity federation ([`WorkloadIdentity`], or an `external_account` file) the
//! pool provider must trust the token's issuer and audience, and then either the federated
//! principal (`principal://iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/subject/<subject>`)
//! is granted the roles above directly, or, with service-account impersonation, it is granted
//! **Workload Identity User** (`roles/iam.workloadIdentityUser`) on the service account, which
//! holds the roles above.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod builder;
mod errors;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod name;
mod rotation;
mod source;

pub use auth::{
    IdentitySubjectToken, JWT_TOKEN_TYPE, STS_TOKEN_URL, SubjectTokenError, WorkloadIdentity,
};
pub use builder::{DEFAULT_ENDPOINT, GcpBuilder};
pub use name::LATEST;
pub use source::GcpSource;

/// The SDK crates this one is built on, for callers who build their own credentials or client
/// ([`GcpBuilder::with_client`], whose stubs answer in `google_cloud_gax`'s types) or use the
/// clients for calls this crate does not make.
pub use {google_cloud_auth, google_cloud_gax, google_cloud_secretmanager_v1};
