//! Azure: workload identity with a projected token (`AZURE_FEDERATED_TOKEN_FILE`, audience
//! `api://AzureADTokenExchange`), exchanged at Entra ID for Key Vault tokens.
//!
//! The token goes through [`ProjectedToken`], so every client-assertion grant sends the token the
//! kubelet projected last, and a refusal by Entra ID makes the next grant re-read the file.

use std::sync::Arc;

use keyrack_azure::{AzureBuilder, WorkloadIdentity};
use keyrack_core::Result;

use crate::detect::Pod;
use crate::token::ProjectedToken;

/// Workload identity of application `client_id` in `tenant_id`, proved by `token`.
pub fn workload_identity(
    tenant_id: impl Into<String>,
    client_id: impl Into<String>,
    token: ProjectedToken,
) -> WorkloadIdentity {
    WorkloadIdentity::new(tenant_id, client_id, Arc::new(token))
}

/// A builder logging in with what Azure's workload-identity webhook injects ([`Pod::azure`]:
/// `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`).
/// Add the vaults with [`AzureBuilder::with_default_vault`] or references naming them.
pub fn from_pod(pod: &Pod) -> Result<AzureBuilder> {
    let wi = pod.azure()?;
    let mut identity = workload_identity(
        wi.tenant_id,
        wi.client_id,
        ProjectedToken::new(wi.token_file),
    );
    let mut builder = AzureBuilder::new();
    if let Some(host) = wi.authority_host {
        identity = identity.with_authority_host(host.clone());
        builder = builder.with_authority_host(host);
    }
    Ok(builder.with_workload_identity(identity))
}
