//! [`IdentityToken`]: a workload's identity token (a projected service-account JWT, …) that a
//! backend logs in with. `keyrack-k8s` provides one backed by the kubelet's token file.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::value::SecretValue;

/// A source of identity tokens for backend logins.
#[async_trait]
pub trait IdentityToken: Send + Sync + Debug + 'static {
    /// The current token. Implementations re-read or refresh it as needed; callers ask for it at
    /// every login rather than keeping it.
    async fn token(&self) -> Result<SecretValue>;

    /// The backend refused the token (401/403): forget any cached copy so the next
    /// [`token`](Self::token) reads a fresh one.
    fn invalidate(&self);
}

/// A fixed token, for tests and for tokens handed over by other means.
#[derive(Debug, Clone)]
pub struct StaticToken(SecretValue);

impl StaticToken {
    /// Always answer `token`.
    pub fn new(token: impl Into<SecretValue>) -> Self {
        StaticToken(token.into())
    }
}

#[async_trait]
impl IdentityToken for StaticToken {
    async fn token(&self) -> Result<SecretValue> {
        Ok(self.0.clone())
    }

    fn invalidate(&self) {}
}
