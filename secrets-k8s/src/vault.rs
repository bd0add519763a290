//! Vault: kubernetes or jwt auth with a projected token, read anew at every login.

use keyrack_core::Result;
use keyrack_vault::{Auth, VaultBuilder};

use crate::detect::{Pod, VaultMethod};
use crate::token::ProjectedToken;

/// Kubernetes auth (Vault reviews the token with the API server) at mount `kubernetes`; use
/// [`Auth::at_mount`] for another path.
pub fn kubernetes_auth(role: impl Into<String>, token: ProjectedToken) -> Auth {
    Auth::kubernetes(role, token)
}

/// JWT auth (Vault checks the signature with the cluster's issuer keys) at mount `jwt`.
pub fn jwt_auth(role: impl Into<String>, token: ProjectedToken) -> Auth {
    Auth::jwt(role, token)
}

/// A builder from the pod's environment ([`Pod::vault`]): `VaultBuilder::from_env()` (address,
/// CA, namespace) with the login it describes.
pub fn from_pod(pod: &Pod) -> Result<VaultBuilder> {
    let login = pod.vault()?;
    let token = ProjectedToken::new(login.token_file);
    let auth = match login.method {
        VaultMethod::Kubernetes => kubernetes_auth(login.role, token),
        VaultMethod::Jwt => jwt_auth(login.role, token),
    };
    Ok(VaultBuilder::from_env()
        .with_address(login.address)
        .with_auth(auth.at_mount(login.mount)))
}
