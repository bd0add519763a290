//! Google: workload identity federation with a projected token (AIP-4117 `external_account`,
//! file-sourced), exchanged at Google's STS for access tokens.

use std::sync::Arc;

use keyrack_core::Result;
use keyrack_gcp::{GcpBuilder, WorkloadIdentity};

use crate::detect::Pod;
use crate::token::ProjectedToken;

/// Federation for the pool provider `audience`
/// (`//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>`)
/// with `token`, read through [`ProjectedToken`] at every exchange: a rotated token is sent at the
/// next exchange, and one STS refused is re-read from the file.
pub fn workload_identity(audience: impl Into<String>, token: ProjectedToken) -> WorkloadIdentity {
    WorkloadIdentity::new(audience, Arc::new(token))
}

/// A builder with the `external_account` configuration that `GOOGLE_APPLICATION_CREDENTIALS`
/// names ([`Pod::gcp`] checked that it is one and that its token file exists). The auth library
/// reads `credential_source.file` at every exchange, so the kubelet's rotation is followed.
pub fn from_pod(pod: &Pod) -> Result<GcpBuilder> {
    let account = pod.gcp()?;
    Ok(GcpBuilder::from_env().with_credentials_file(account.credentials_file))
}
