//! AWS Secrets Manager for [`keyrack_core`], on the official SDK with one TLS stack (rustls +
//! ring; no OpenSSL, no second hyper).
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
//! **Rotation window.** While a rotation is under way (`AWSPENDING` exists) a handle keeps
//! serving `AWSCURRENT`. An application whose login fails with the current value can ask for an
//! immediate re-check with
//! [`SecretHandle::refresh_now`](keyrack_core::SecretHandle::refresh_now), and with the
//! alternating-users strategy read the other user's credentials with `?stage=AWSPREVIOUS`.

mod builder;
mod errors;
mod source;

pub use builder::AwsBuilder;
pub use source::{AWSCURRENT, AwsSource};

/// The SDK crates this one is built on, for callers who pass an `SdkConfig`, credentials
/// providers or interceptors.
pub use {aws_config, aws_sdk_secretsmanager};
