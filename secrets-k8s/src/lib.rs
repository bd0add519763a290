//! In-cluster identity for `secrets-core`: a pod fetches its secrets in-process, with no sidecar,
//! CSI volume or mutating webhook.
//!
//! * [`ProjectedToken`]: the kubelet-rotated service-account token file as an
//!   [`IdentityToken`](secrets_core::IdentityToken), re-read when the kubelet swaps it, at 80 % of
//!   its lifetime, and after a backend refused it; its [`TokenClaims`] decoded (not verified).
//! * [`InCluster`]: the API server, namespace, CA bundle and token of the pod.
//! * [`Pod`]: which identities the pod was given (Vault, AWS IRSA, Azure and Google workload
//!   identity), with errors that name exactly what is missing; `vault::from_pod`,
//!   `aws::from_pod`, `azure::from_pod` and `gcp::from_pod` (features `vault`, `aws`, `azure`,
//!   `gcp`) turn them into configured builders.
//! * [`source`]: the `k8s://<namespace>/<name>#<key>` Kubernetes Secrets source (GET + watch).
//! * `testkit` (feature `testkit`): a kubelet-style token projector for tests.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod claims;
pub mod detect;
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
