//! In-cluster identity for `secrets-core` (being written, issue 5).
//!
//! * [`source`]: the `k8s://<namespace>/<name>#<key>` Kubernetes Secrets source (GET + watch).

pub mod source;
