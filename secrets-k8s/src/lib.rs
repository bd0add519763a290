//! In-cluster identity for `secrets-core` — **not implemented yet**.
//!
//! This crate will hold `ProjectedToken` (the kubelet-rotated service-account token file, as an
//! [`secrets_core::IdentityToken`]), in-cluster detection, the glue that logs each backend in with
//! that token, and a Kubernetes Secrets source. Until then it exports nothing, so nothing can be
//! mistaken for working code. See the project README's feature table for what exists today.
