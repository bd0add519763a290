//! AWS: web identity (EKS IRSA, `AssumeRoleWithWebIdentity`) with a projected token.
//!
//! The AWS SDK's web-identity provider reads the token file at every credential load, so the
//! kubelet's rotation is followed as long as the file path is the projected one (never a copy).
//! [`AwsBuilder::with_credentials_refresh_before_expiry`] bounds how long session credentials are
//! kept, and with them how long a rotated token waits to be used.

use keyrack_aws::AwsBuilder;
use keyrack_core::Result;

use crate::detect::Pod;
use crate::token::ProjectedToken;

/// Credentials from `AssumeRoleWithWebIdentity` for `role_arn`, with the token at `token`'s path.
pub fn web_identity(
    builder: AwsBuilder,
    role_arn: impl Into<String>,
    token: &ProjectedToken,
    session_name: Option<String>,
) -> AwsBuilder {
    builder.with_web_identity(role_arn, token.path(), session_name)
}

/// What EKS injects for IRSA (`AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`, optional
/// `AWS_ROLE_SESSION_NAME`) plus the region (`AWS_REGION` or `AWS_DEFAULT_REGION`), from `pod`.
/// The error names every variable that is missing.
pub fn from_pod(pod: &Pod) -> Result<AwsBuilder> {
    let irsa = pod.aws()?;
    let builder = AwsBuilder::new().with_region(irsa.region);
    Ok(web_identity(
        builder,
        irsa.role_arn,
        &ProjectedToken::new(irsa.token_file),
        irsa.session_name,
    ))
}
