//! Google Secret Manager source for `secrets-core` — being written (issue 6).
