//! AWS Secrets Manager for [`keyrack_core`], on the official SDK with one TLS stack (rustls;
//! no OpenSSL, no second hyper).
//!
//! **Crypto provider.** The SDK's own HTTP client takes a rustls provider only from a fixed
//! list chosen by cargo feature, so the source gives the SDK an HTTP client of its own (hyper
//! and hyper-rustls, as the SDK's) built on the provider given with
//! [`AwsBuilder::with_crypto_provider`], else the process default if the application installed
//! one, else ring's. Secrets Manager, STS and the default credentials chain all use it; nothing
//! is installed process-wide. An `SdkConfig` given with its own HTTP client keeps that client.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_aws::AwsBuilder;
//! use keyrack_core::Secrets;
//!
//! // aws-config's default chain: AWS_REGION, env keys, profile, web identity (IRSA), ECS/EKS, IMDS
//! let aws = AwsBuilder::from_env().build().await?;
//! let secrets = Secrets::builder().source("aws-sm", aws).build()?;
//! let password = secrets.get_secret("aws-sm://prod/db#password").await?;
//! let previous = secrets.get_secret("aws-sm://prod/db?stage=AWSPREVIOUS#password").await?;
//! let db = secrets.handle("aws-sm://prod/db").await?; // re-checked with DescribeSecret
//! # let _ = (password, previous, db);
//! # Ok(())
//! # }
//! ```
//!
//! What references read and how errors map is described on [`AwsSource`]; configuration on
//! [`AwsBuilder`].
//!
//! # Permissions
//!
//! The IAM actions the source calls, on the secrets it reads (`Resource` their ARNs):
//!
//! | action | called by | needed |
//! |---|---|---|
//! | `secretsmanager:GetSecretValue` | every read, and the single reads a batch falls back to | yes |
//! | `secretsmanager:DescribeSecret` | the version probe of routine checks, and `NextRotationDate` for the first read | optional: when it is refused, checks read the value instead (the client warns once per secret) and no rotation date is known |
//! | `secretsmanager:BatchGetSecretValue` | `prefetch` / `fetch_many` of `AWSCURRENT` references (AWS's example policy grants it on `"Resource": "*"`; each secret read still needs `GetSecretValue`) | optional: a refused batch is read one by one |
//! | `kms:Decrypt` | on the key of a secret encrypted with a customer managed key | for such secrets |
//!
//! `secretsmanager:ListSecrets` is not needed: batches name their secrets (`SecretIdList`), never
//! filters. With web identity (IRSA) the role's trust policy must allow
//! `sts:AssumeRoleWithWebIdentity` for the pod's service account.
//!
//! **Rotation window.** While a rotation is under way (`AWSPENDING` exists) a handle keeps
//! serving `AWSCURRENT`. An application whose login fails with the current value can ask for an
//! immediate re-check with
//! [`SecretHandle::refresh_now`](keyrack_core::SecretHandle::refresh_now), and with the
//! alternating-users strategy read the other user's credentials with `?stage=AWSPREVIOUS`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch_share;
mod builder;
mod errors;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod source;

pub use builder::AwsBuilder;
pub use source::{AWSCURRENT, AwsSource};

/// The SDK crates this one is built on, for callers who pass an `SdkConfig`, credentials
/// providers or interceptors.
pub use {aws_config, aws_sdk_secretsmanager};
