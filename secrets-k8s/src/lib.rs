//! In-cluster identity for `keyrack-core`: a pod fetches its secrets in-process, with no sidecar,
//! CSI volume or mutating webhook.
//!
//! * [`ProjectedToken`]: the kubelet-rotated service-account token file as an
//!   [`IdentityToken`](keyrack_core::IdentityToken), re-read when the kubelet swaps it, at 80 % of
//!   its lifetime, and after a backend refused it; its [`TokenClaims`] decoded (not verified).
//! * [`InCluster`]: the API server, namespace, CA bundle and token of the pod.
//! * [`Pod`]: which identities the pod was given (Vault, AWS IRSA, Azure and Google workload
//!   identity), with errors that name exactly what is missing; `vault::from_pod`,
//!   `aws::from_pod`, `azure::from_pod` and `gcp::from_pod` (features `vault`, `aws`, `azure`,
//!   `gcp`) turn them into configured builders.
//! * [`source`]: the `k8s://<namespace>/<name>#<key>` Kubernetes Secrets source (GET + watch).
//! * `testkit` (feature `testkit`): a kubelet-style token projector for tests.
//!
//! **Crypto provider.** The Kubernetes Secrets source's TLS is rustls on the provider given with
//! [`KubernetesSecretsBuilder::with_crypto_provider`](source::KubernetesSecretsBuilder::with_crypto_provider),
//! else the process default if the application installed one, else ring's; nothing is installed
//! process-wide. The `from_pod` glue returns each backend's builder, which takes a provider the
//! same way; the Google backend alone installs a process default (see `keyrack-gcp`).
//!
//! # Permissions
//!
//! **The Kubernetes Secrets source** (`k8s://<namespace>/<name>`) needs, for its service
//! account, the verbs `get` and `watch` on `secrets`, restricted to the Secrets it reads with
//! `resourceNames` — and not `list`:
//!
//! ```yaml
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: Role
//! metadata: { namespace: apps, name: read-db-creds }
//! rules:
//!   - apiGroups: [""]
//!     resources: ["secrets"]
//!     resourceNames: ["db-creds"]
//!     verbs: ["get", "watch"]
//! ---
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: RoleBinding
//! metadata: { namespace: apps, name: app-reads-db-creds }
//! roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-db-creds }
//! subjects: [{ kind: ServiceAccount, name: app, namespace: apps }]
//! ```
//!
//! - `get`: every read (`GET …/secrets/<name>`).
//! - `watch`: the watch that keeps a handle current. It names the Secret with
//!   `fieldSelector=metadata.name=<name>`, which is what lets the authorizer check it against
//!   `resourceNames`; its streaming-list form (`sendInitialEvents=true`) is a watch request too,
//!   authorized as `watch`. Without `watch` handles still work, on the client's interval checks,
//!   and each check tries the watch again (one refused request and a warning).
//!
//! **Logins with the projected token** need no Kubernetes permission of the pod: the kubelet
//! projects the token. They need the audience each backend expects on the projected token, and
//! on the backend's side: for Vault's kubernetes auth, a Vault role bound to the service account
//! (and, for Vault's own token reviews, its reviewer account bound to `system:auth-delegator`);
//! for AWS, an IAM role whose trust policy accepts the cluster's OIDC issuer and the service
//! account; for Azure, a federated credential on the application for the service account; for
//! Google, a workload identity pool provider for the cluster's issuer. What each backend's
//! identity may then read is listed in that backend's crate.
//!
//! In a pod (the README's "Running in Kubernetes" example; `examples/k8s/` has the manifests):
//!
//! ```no_run
//! # #[cfg(feature = "vault")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_core::Secrets;
//! use keyrack_k8s::{InCluster, Pod, source::KubernetesSecrets};
//!
//! let pod = Pod::from_env(); // VAULT_ADDR, VAULT_K8S_ROLE, VAULT_K8S_TOKEN_FILE, AWS_ROLE_ARN, …
//! let vault = keyrack_k8s::vault::from_pod(&pod)?.build()?; // kubernetes auth, token re-read at each login
//! let k8s = KubernetesSecrets::builder().in_cluster(&InCluster::detect()?).build()?;
//! let secrets = Secrets::builder().source("vault", vault).source("k8s", k8s).build()?;
//! let db = secrets.handle("vault://database/creds/app").await?;
//! let api_key = secrets.get_secret("k8s://payments/app-config#api_key").await?; // watched: `Rotated` on change
//! # let _ = (db, api_key);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod claims;
pub mod detect;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for the fuzz targets in `fuzz/` (only with `--cfg fuzzing`).
    pub use crate::source::fuzzing::*;
}
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod in_cluster;
pub mod source;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod token;
#[cfg(feature = "vault")]
pub mod vault;

pub use claims::TokenClaims;
pub use detect::Pod;
pub use in_cluster::InCluster;
pub use token::ProjectedToken;
