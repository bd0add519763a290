//! Azure Key Vault source for `secrets-core` — being written (issue 6).
