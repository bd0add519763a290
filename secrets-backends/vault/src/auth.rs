//! How the source logs in: a static token, AppRole, JWT or Kubernetes auth. The last two take an
//! [`IdentityToken`] (a projected service-account token from `keyrack-k8s`, say) and read it anew
//! at every login.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyrack_core::{Error, ErrorKind, IdentityToken, Result, SecretValue};
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::http::{Http, classify};

/// A login method.
#[derive(Clone)]
#[non_exhaustive]
pub enum Auth {
    /// A token obtained elsewhere (`VAULT_TOKEN`). Renewed while renewable; cannot be re-obtained.
    Token(SecretValue),
    /// AppRole: `auth/<mount>/login` with a role id and secret id.
    AppRole {
        /// Mount path of the auth method (default `approle`).
        mount: String,
        /// The role id (not secret on its own).
        role_id: String,
        /// The secret id.
        secret_id: SecretValue,
    },
    /// JWT auth: `auth/<mount>/login` with a role and a signed token.
    Jwt {
        /// Mount path of the auth method (default `jwt`).
        mount: String,
        /// The Vault role.
        role: String,
        /// Where the JWT comes from; read at every login.
        token: Arc<dyn IdentityToken>,
    },
    /// Kubernetes auth: `auth/<mount>/login` with a role and a service-account token.
    Kubernetes {
        /// Mount path of the auth method (default `kubernetes`).
        mount: String,
        /// The Vault role.
        role: String,
        /// Where the service-account token comes from; read at every login.
        token: Arc<dyn IdentityToken>,
    },
}

impl Auth {
    /// A static token.
    pub fn token(token: impl Into<SecretValue>) -> Self {
        Auth::Token(token.into())
    }

    /// AppRole at the default mount `approle`.
    pub fn approle(role_id: impl Into<String>, secret_id: impl Into<SecretValue>) -> Self {
        Auth::AppRole {
            mount: "approle".into(),
            role_id: role_id.into(),
            secret_id: secret_id.into(),
        }
    }

    /// JWT auth at the default mount `jwt`.
    pub fn jwt(role: impl Into<String>, token: impl IdentityToken) -> Self {
        Auth::Jwt {
            mount: "jwt".into(),
            role: role.into(),
            token: Arc::new(token),
        }
    }

    /// Kubernetes auth at the default mount `kubernetes`.
    pub fn kubernetes(role: impl Into<String>, token: impl IdentityToken) -> Self {
        Auth::Kubernetes {
            mount: "kubernetes".into(),
            role: role.into(),
            token: Arc::new(token),
        }
    }

    /// The same method at another mount path (no effect on [`Auth::Token`]).
    pub fn at_mount(mut self, path: impl Into<String>) -> Self {
        match &mut self {
            Auth::Token(_) => {}
            Auth::AppRole { mount, .. }
            | Auth::Jwt { mount, .. }
            | Auth::Kubernetes { mount, .. } => {
                *mount = path.into();
            }
        }
        self
    }

    /// Whether a new token can be obtained when the current one ends.
    pub(crate) fn can_login(&self) -> bool {
        !matches!(self, Auth::Token(_))
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token([REDACTED])"),
            Auth::AppRole { mount, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .field("secret_id", &"[REDACTED]")
                .finish(),
            Auth::Jwt { mount, role, token } => f
                .debug_struct("Jwt")
                .field("mount", mount)
                .field("role", role)
                .field("token", token)
                .finish(),
            Auth::Kubernetes { mount, role, token } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("token", token)
                .finish(),
        }
    }
}

/// A token obtained by login (or looked up, for a static token).
pub(crate) struct Login {
    pub(crate) token: SecretValue,
    /// Time to live; `None` for a token that does not expire (root).
    pub(crate) ttl: Option<Duration>,
    pub(crate) renewable: bool,
}

/// A vaultrs client over our HTTP client, for the endpoints we take from vaultrs.
fn vaultrs_client(http: &Http, token: &str) -> Result<VaultClient> {
    let address = http.address.as_str().trim_end_matches('/');
    let mut settings = VaultClientSettingsBuilder::default();
    settings
        .address(address)
        .token(token)
        .verify(true)
        .ca_certs(Vec::new())
        .identity(None);
    if let Some(ns) = &http.namespace {
        settings.set_namespace(ns.clone());
    }
    let settings = settings
        .build()
        .map_err(|e| Error::new(ErrorKind::Config, format!("Vault client settings: {e}")))?;
    Ok(VaultClient {
        http: rustify::clients::reqwest::Client::new(address, http.client.clone()),
        middle: EndpointMiddleware {
            token: token.to_owned(),
            version: "v1".into(),
            wrap: None,
            namespace: http.namespace.clone(),
        },
        settings,
    })
}

/// Map a vaultrs error (it carries no secret values: API errors are Vault's messages).
pub(crate) fn from_vaultrs(e: ClientError) -> Error {
    match e {
        ClientError::APIError { code, errors } => match reqwest::StatusCode::from_u16(code) {
            Ok(status) => classify(status, &errors.join("; "), None),
            Err(_) => Error::new(ErrorKind::Backend, format!("Vault answered status {code}")),
        },
        ClientError::RestClientError { source } => {
            Error::new(ErrorKind::Unavailable, "could not reach Vault").with_cause(source)
        }
        other => Error::new(ErrorKind::Backend, other.to_string()),
    }
}

fn text(value: &SecretValue, what: &str) -> Result<String> {
    value
        .expose_str()
        .map(str::to_owned)
        .map_err(|_| Error::new(ErrorKind::Config, format!("the {what} is not UTF-8 text")))
}

fn login_from(info: vaultrs::api::AuthInfo) -> Login {
    Login {
        ttl: (info.lease_duration > 0).then(|| Duration::from_secs(info.lease_duration)),
        renewable: info.renewable,
        token: SecretValue::from_string(info.client_token),
    }
}

impl Auth {
    /// Obtain a token (for a static token: look up its TTL and renewability).
    pub(crate) async fn login(&self, http: &Http) -> Result<Login> {
        match self {
            Auth::Token(token) => {
                let client = vaultrs_client(http, &text(token, "Vault token")?)?;
                let info = vaultrs::token::lookup_self(&client)
                    .await
                    .map_err(from_vaultrs)?;
                Ok(Login {
                    token: token.clone(),
                    ttl: (info.ttl > 0).then(|| Duration::from_secs(info.ttl)),
                    renewable: info.renewable.unwrap_or(false),
                })
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let client = vaultrs_client(http, "")?;
                let info = vaultrs::auth::approle::login(
                    &client,
                    mount,
                    role_id,
                    &text(secret_id, "AppRole secret id")?,
                )
                .await
                .map_err(from_vaultrs)?;
                Ok(login_from(info))
            }
            Auth::Jwt { mount, role, token } => {
                let jwt = token.token().await?;
                let client = vaultrs_client(http, "")?;
                let result = vaultrs::auth::oidc::login(
                    &client,
                    mount,
                    &text(&jwt, "JWT")?,
                    Some(role.clone()),
                )
                .await;
                Self::identity_result(result, token.as_ref())
            }
            Auth::Kubernetes { mount, role, token } => {
                let jwt = token.token().await?;
                let client = vaultrs_client(http, "")?;
                let result =
                    vaultrs::auth::kubernetes::login(&client, mount, role, &text(&jwt, "JWT")?)
                        .await;
                Self::identity_result(result, token.as_ref())
            }
        }
    }

    /// A refused identity token is forgotten, so the next login reads a fresh one; Vault answers
    /// a bad signature or an expired token with 400 or 403, both of which mean "not you".
    fn identity_result(
        result: std::result::Result<vaultrs::api::AuthInfo, ClientError>,
        token: &dyn IdentityToken,
    ) -> Result<Login> {
        match result {
            Ok(info) => Ok(login_from(info)),
            Err(ClientError::APIError { code, errors })
                if code == 400 || code == 401 || code == 403 =>
            {
                token.invalidate();
                Err(Error::new(
                    ErrorKind::Unauthenticated,
                    format!(
                        "Vault refused the identity token (HTTP {code}): {}",
                        errors.join("; ")
                    ),
                ))
            }
            Err(e) => Err(from_vaultrs(e)),
        }
    }

    /// Whether `token` is still valid (`auth/token/lookup-self`).
    pub(crate) async fn lookup_self(http: &Http, token: &SecretValue) -> Result<()> {
        let client = vaultrs_client(http, &text(token, "Vault token")?)?;
        // The answer carries the token itself: it is dropped here, unread.
        vaultrs::token::lookup_self(&client)
            .await
            .map(|_| ())
            .map_err(from_vaultrs)
    }

    /// Renew `token` (`auth/token/renew-self`).
    pub(crate) async fn renew_self(http: &Http, token: &SecretValue) -> Result<Login> {
        let client = vaultrs_client(http, &text(token, "Vault token")?)?;
        let info = vaultrs::token::renew_self(&client, None)
            .await
            .map_err(from_vaultrs)?;
        let mut login = login_from(info);
        // renew-self answers with the same token; keep ours (the answer's copy is dropped).
        login.token = token.clone();
        Ok(login)
    }
}
