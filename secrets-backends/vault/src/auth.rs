//! How the source logs in: a static token, AppRole, JWT or Kubernetes auth. The last two take an
//! [`IdentityToken`] (a projected service-account token from `keyrack-k8s`, say) and read it anew
//! at every login.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyrack_core::{Error, ErrorKind, IdentityToken, Result, SecretValue};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::api::{Answer, Body, Http, parse};

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

/// The longest token TTL kept: a hundred years, "never" (a longer one would overflow the
/// keeper's deadlines).
const LONGEST_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A TTL in seconds as Vault answers it (`0`: the token does not expire).
fn ttl_of(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs).min(LONGEST_TTL))
}

/// A token obtained by login (or looked up, for a static token).
pub(crate) struct Login {
    pub(crate) token: SecretValue,
    /// Time to live; `None` for a token that does not expire (root).
    pub(crate) ttl: Option<Duration>,
    pub(crate) renewable: bool,
}

/// The `auth` part of a login's or renew-self's answer. The token is borrowed from the answer's
/// (wiped) body and copied once, into the zeroizing [`SecretValue`].
#[derive(Deserialize)]
struct AuthInfo<'a> {
    #[serde(borrow)]
    client_token: &'a str,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

/// The part of `lookup-self`'s `data` we read (it also holds the token itself, as `id`, which
/// is skipped unread).
#[derive(Deserialize)]
struct TokenInfo {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Serialize)]
struct AppRoleLogin<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(Serialize)]
struct RoleLogin<'a> {
    role: &'a str,
    jwt: &'a str,
}

fn text<'a>(value: &'a SecretValue, what: &str) -> Result<&'a str> {
    value
        .expose_str()
        .map_err(|_| Error::new(ErrorKind::Config, format!("the {what} is not UTF-8 text")))
}

/// The token an answer's `auth` carries.
pub(crate) fn auth_of(answer: &Answer, what: &str) -> Result<Login> {
    let envelope = answer.envelope()?;
    let raw = envelope.auth.ok_or_else(|| {
        Error::new(
            ErrorKind::Backend,
            format!("Vault's answer to {what} has no auth"),
        )
    })?;
    let info: AuthInfo<'_> = parse(raw.get(), &format!("answer to {what}"))?;
    Ok(Login {
        ttl: ttl_of(info.lease_duration),
        renewable: info.renewable,
        token: SecretValue::copy_from_slice(info.client_token.as_bytes()),
    })
}

impl Auth {
    /// The method's name in metrics and logs.
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Auth::Token(_) => "token",
            Auth::AppRole { .. } => "approle",
            Auth::Jwt { .. } => "jwt",
            Auth::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Obtain a token (for a static token: look up its TTL and renewability).
    pub(crate) async fn login(&self, http: &Http) -> Result<Login> {
        match self {
            Auth::Token(token) => {
                let info = Self::lookup_self(http, token).await?;
                Ok(Login {
                    token: token.clone(),
                    ttl: ttl_of(info.ttl),
                    renewable: info.renewable,
                })
            }
            Auth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                let body = Body::json(&AppRoleLogin {
                    role_id,
                    secret_id: text(secret_id, "AppRole secret id")?,
                })?;
                Self::login_at(http, mount, &body, None).await
            }
            Auth::Jwt { mount, role, token } | Auth::Kubernetes { mount, role, token } => {
                let jwt = token.token().await?;
                let body = Body::json(&RoleLogin {
                    role,
                    jwt: text(&jwt, "JWT")?,
                })?;
                Self::login_at(http, mount, &body, Some(token.as_ref())).await
            }
        }
    }

    /// `auth/<mount>/login`. A refusal (400, 401, 403: a bad secret id, signature, audience or
    /// an expired token) is `Unauthenticated`, and a refused identity token is forgotten so the
    /// next login reads a fresh one.
    async fn login_at(
        http: &Http,
        mount: &str,
        body: &Body,
        identity: Option<&dyn IdentityToken>,
    ) -> Result<Login> {
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        let answer = http
            .send(Method::POST, &path, &[], Some(body), None)
            .await?;
        let code = answer.status.as_u16();
        if matches!(code, 400 | 401 | 403) {
            if let Some(identity) = identity {
                identity.invalidate();
            }
            let what = if identity.is_some() {
                "the identity token"
            } else {
                "the login"
            };
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                format!("Vault refused {what} (HTTP {code}): {}", answer.errors()),
            ));
        }
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        auth_of(&answer, "a login")
    }

    /// `auth/token/lookup-self`: whether `token` is valid, and its TTL.
    async fn lookup_self(http: &Http, token: &SecretValue) -> Result<TokenInfo> {
        let answer = http
            .send(
                Method::GET,
                "auth/token/lookup-self",
                &[],
                None,
                Some(token),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        let envelope = answer.envelope()?;
        let raw = envelope
            .data
            .ok_or_else(|| Error::new(ErrorKind::Backend, "Vault's token lookup has no data"))?;
        parse(raw.get(), "token lookup")
    }

    /// Whether `token` is still valid (`auth/token/lookup-self`).
    pub(crate) async fn check_alive(http: &Http, token: &SecretValue) -> Result<()> {
        Self::lookup_self(http, token).await.map(|_| ())
    }

    /// Revoke `token` and every lease issued under it (`auth/token/revoke-self`, allowed by
    /// Vault's `default` policy).
    pub(crate) async fn revoke_self(http: &Http, token: &SecretValue) -> Result<()> {
        let answer = http
            .send(
                Method::POST,
                "auth/token/revoke-self",
                &[],
                Some(&Body::json(&serde_json::json!({}))?),
                Some(token),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        Ok(())
    }

    /// Renew `token` (`auth/token/renew-self`).
    pub(crate) async fn renew_self(http: &Http, token: &SecretValue) -> Result<Login> {
        let answer = http
            .send(
                Method::POST,
                "auth/token/renew-self",
                &[],
                Some(&Body::json(&serde_json::json!({}))?),
                Some(token),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        let mut login = auth_of(&answer, "renew-self")?;
        // renew-self answers with the same token; keep ours (the answer's copy is wiped).
        login.token = token.clone();
        Ok(login)
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    /// Found while checking the `vault_answer` target's `login` decoder: a `lease_duration` of
    /// 2^64 - 1 seconds became a TTL no `Instant` can be added to (the keeper panicked).
    #[test]
    fn a_token_ttl_past_time_is_a_hundred_years() {
        let body = br#"{"auth":{"client_token":"t","lease_duration":18446744073709551615}}"#;
        let answer = Answer::new(StatusCode::OK, None, SecretValue::copy_from_slice(body));
        let login = auth_of(&answer, "login").unwrap();
        assert_eq!(login.ttl, Some(LONGEST_TTL));
        let body = br#"{"auth":{"client_token":"t","lease_duration":768}}"#;
        let answer = Answer::new(StatusCode::OK, None, SecretValue::copy_from_slice(body));
        let login = auth_of(&answer, "login").unwrap();
        assert_eq!(login.ttl, Some(Duration::from_secs(768)));
    }
}
