//! The Kubernetes Secrets source (being written).
