//! Credentials: how each choice of [`GcpBuilder`](crate::GcpBuilder) becomes the auth library's
//! [`Credentials`], and the subject-token provider over [`IdentityToken`] that workload identity
//! federation exchanges at Google's STS.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use google_cloud_auth::credentials::subject_token::{
    Builder as SubjectTokenBuilder, SubjectToken, SubjectTokenProvider,
};
use google_cloud_auth::credentials::{Credentials, anonymous, external_account, service_account};
use google_cloud_auth::errors::SubjectTokenProviderError;
use keyrack_core::{Error, ErrorKind, IdentityToken, Result};

/// STS's token endpoint (AIP-4117 `token_url`).
pub const STS_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";
/// The subject token type of an OIDC ID token such as a Kubernetes projected service-account
/// token (AIP-4117 `subject_token_type`).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Workload identity federation with a subject token read from an [`IdentityToken`] (for
/// example `keyrack-k8s`'s projected service-account token) at every exchange.
///
/// This is the programmatic form of an AIP-4117 `external_account` credentials file: the
/// workload identity pool provider's `audience`, the STS `token_url`, the `subject_token_type`,
/// and optionally the service account to impersonate. The token is asked of the
/// [`IdentityToken`] each time the auth library exchanges it (when its access token is near
/// expiry), so a token the kubelet rotates is picked up without a restart.
#[derive(Clone)]
pub struct WorkloadIdentity {
    pub(crate) audience: String,
    pub(crate) token: Arc<dyn IdentityToken>,
    pub(crate) token_url: String,
    pub(crate) subject_token_type: String,
    pub(crate) impersonate: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("audience", &self.audience)
            // Not the token source's own Debug: an implementation may print the token.
            .field("token_url", &self.token_url)
            .field("subject_token_type", &self.subject_token_type)
            .field("impersonate", &self.impersonate)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// Exchange the tokens of `token` for the pool provider `audience`
    /// (`//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>`),
    /// as JWTs, at Google's STS.
    pub fn new(audience: impl Into<String>, token: Arc<dyn IdentityToken>) -> Self {
        WorkloadIdentity {
            audience: audience.into(),
            token,
            token_url: STS_TOKEN_URL.to_owned(),
            subject_token_type: JWT_TOKEN_TYPE.to_owned(),
            impersonate: None,
            scopes: None,
        }
    }

    /// The STS token endpoint ([`STS_TOKEN_URL`] by default). Must be `https`, except on a
    /// loopback host (`127.0.0.1`, `::1`, `localhost`): the subject token is sent to it;
    /// [`GcpBuilder::build`](crate::GcpBuilder::build) refuses others with
    /// [`ErrorKind::Config`].
    pub fn with_token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// The subject token type ([`JWT_TOKEN_TYPE`] by default; e.g.
    /// `urn:ietf:params:oauth:token-type:id_token` or `…:saml2`).
    pub fn with_subject_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.subject_token_type = token_type.into();
        self
    }

    /// Impersonate the service account `email` with the federated token (IAM Credentials
    /// `generateAccessToken` at `iamcredentials.googleapis.com`); without it the federated
    /// token is used directly (the principal needs the Secret Manager role itself).
    pub fn with_service_account_impersonation(mut self, email: impl Into<String>) -> Self {
        self.impersonate = Some(email.into());
        self
    }

    /// OAuth scopes of the access token (`https://www.googleapis.com/auth/cloud-platform` by
    /// default).
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    fn credentials(&self) -> Result<Credentials> {
        let provider = IdentitySubjectToken::new(self.token.clone());
        let mut b = external_account::ProgrammaticBuilder::new(Arc::new(provider))
            .with_audience(&self.audience)
            .with_subject_token_type(&self.subject_token_type)
            .with_token_url(&self.token_url);
        if let Some(email) = &self.impersonate {
            b = b.with_target_principal(email);
        }
        if let Some(scopes) = &self.scopes {
            b = b.with_scopes(scopes.clone());
        }
        b.build().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("workload identity credentials: {e}"),
            )
        })
    }
}

/// The auth library's subject-token provider over an [`IdentityToken`]: each exchange reads
/// the token that is current then.
#[derive(Clone)]
pub struct IdentitySubjectToken {
    token: Arc<dyn IdentityToken>,
}

impl fmt::Debug for IdentitySubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the token source's own Debug: an implementation may print the token.
        f.debug_struct("IdentitySubjectToken")
            .finish_non_exhaustive()
    }
}

impl IdentitySubjectToken {
    /// Provide the tokens of `token`.
    pub fn new(token: Arc<dyn IdentityToken>) -> Self {
        IdentitySubjectToken { token }
    }
}

/// Why an [`IdentityToken`] gave no subject token; transient when the underlying error is
/// retryable, so the auth library tries again rather than giving up on the credentials.
#[derive(Debug)]
pub struct SubjectTokenError(Error);

impl fmt::Display for SubjectTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no identity token: {}", self.0)
    }
}

impl std::error::Error for SubjectTokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl SubjectTokenProviderError for SubjectTokenError {
    fn is_transient(&self) -> bool {
        self.0.is_retryable()
    }
}

impl SubjectTokenProvider for IdentitySubjectToken {
    type Error = SubjectTokenError;

    async fn subject_token(&self) -> std::result::Result<SubjectToken, Self::Error> {
        let token = self.token.token().await.map_err(SubjectTokenError)?;
        let text = token.expose_str().map_err(|_| {
            SubjectTokenError(Error::invalid_value("the identity token is not UTF-8"))
        })?;
        Ok(SubjectTokenBuilder::new(text).build())
    }
}

/// Which credentials a source uses; kept so they can be made again (see
/// [`Auth::rebuildable`]).
#[derive(Clone)]
pub(crate) enum Auth {
    /// Application Default Credentials, resolved by the auth library.
    Adc,
    /// A JSON credentials file of type `service_account` or `external_account`.
    File(PathBuf),
    /// Programmatic workload identity federation.
    Workload(WorkloadIdentity),
    /// No credentials at all (emulators, tests).
    Anonymous,
    /// Credentials the application built.
    Given(Credentials),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Adc => f.write_str("ApplicationDefault"),
            Auth::File(path) => f.debug_tuple("File").field(path).finish(),
            Auth::Workload(w) => w.fmt(f),
            Auth::Anonymous => f.write_str("Anonymous"),
            // The application's credentials may hold tokens in their caches: not shown.
            Auth::Given(_) => f.write_str("Given(..)"),
        }
    }
}

impl Auth {
    /// Build the credentials. The auth library caches the access token and refreshes it in a
    /// task, so this runs inside the Tokio runtime.
    pub(crate) fn credentials(&self) -> Result<Credentials> {
        let config = |what: &str, e: &dyn fmt::Display| {
            Error::new(
                ErrorKind::Config,
                format!("Google credentials ({what}): {e}"),
            )
        };
        match self {
            Auth::Adc => google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| config("application default credentials", &e)),
            Auth::File(path) => {
                let what = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| config(&what, &e))?;
                // The file holds a private key or client secret: parse errors are not
                // repeated, since serde quotes what it could not read.
                let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        format!("Google credentials ({what}): not a JSON object"),
                    )
                })?;
                match json.get("type").and_then(|t| t.as_str()) {
                    Some("service_account") => service_account::Builder::new(json)
                        .build()
                        .map_err(|e| config(&what, &e)),
                    Some("external_account") => external_account::Builder::new(json)
                        .build()
                        .map_err(|e| config(&what, &e)),
                    other => Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "Google credentials ({what}): type {other:?} is not service_account \
                             or external_account (use application default credentials for \
                             other types)"
                        ),
                    )),
                }
            }
            Auth::Workload(w) => w.credentials(),
            Auth::Anonymous => Ok(anonymous::Builder::new().build()),
            Auth::Given(c) => Ok(c.clone()),
        }
    }

    /// Whether building again gives credentials with a fresh token cache. The auth library's
    /// cache stops refreshing for good after a non-transient failure (an STS 400 for an
    /// expired subject token, say), so such credentials must be built again to recover.
    pub(crate) fn rebuildable(&self) -> bool {
        !matches!(self, Auth::Given(_) | Auth::Anonymous)
    }

    /// The URL the credentials send a token to, when it is one of ours to check.
    pub(crate) fn token_url(&self) -> Option<&str> {
        match self {
            Auth::Workload(w) => Some(&w.token_url),
            _ => None,
        }
    }

    /// The identity token behind the credentials, to invalidate after a refusal.
    pub(crate) fn identity(&self) -> Option<&Arc<dyn IdentityToken>> {
        match self {
            Auth::Workload(w) => Some(&w.token),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use keyrack_core::{SecretValue, async_trait};

    use super::*;

    /// A token source whose own `Debug` prints its token, as an implementation may.
    #[derive(Debug)]
    struct Careless(&'static str);

    #[async_trait]
    impl IdentityToken for Careless {
        async fn token(&self) -> Result<SecretValue> {
            Ok(SecretValue::from_string(self.0.to_owned()))
        }

        fn invalidate(&self) {}
    }

    #[test]
    fn debug_does_not_print_the_token_source() {
        let token: Arc<dyn IdentityToken> = Arc::new(Careless("HEADER.CANARY.SIG"));
        assert!(format!("{token:?}").contains("CANARY"));
        let provider = IdentitySubjectToken::new(token.clone());
        let printed = format!("{provider:?} {:?}", WorkloadIdentity::new("aud", token));
        assert!(!printed.contains("CANARY"), "{printed}");
        assert!(printed.contains("IdentitySubjectToken"), "{printed}");
    }
}
