//! Entra ID credentials: workload identity from any [`IdentityToken`], the environment chain
//! (workload identity → client secret → managed identity), and the scope guard used when the
//! SDK's challenge-resource check is off.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind as AzureKind;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{ClientMethodOptions, ClientOptions, Context, Request};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId,
};
use keyrack_core::{Error, ErrorKind, IdentityToken, Result, SecretValue, async_trait};

use crate::errors::{ScopeRefused, token_error_kind};

/// Entra ID's public-cloud authority, used when none is configured.
pub const PUBLIC_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Workload identity federation: the identity token (a projected Kubernetes service-account
/// token, audience `api://AzureADTokenExchange`) is exchanged at Entra ID for a Key Vault
/// access token (client-credentials grant with a `jwt-bearer` client assertion).
///
/// The token source is asked for the current token at every token request, so a token the
/// kubelet rotated is always the one sent. The source is told to
/// [`invalidate`](IdentityToken::invalidate) its copy when Entra ID refuses it (HTTP 4xx other
/// than 429), and when Key Vault refuses the access token obtained with it (HTTP 401 after
/// login). Entra ID throttling (429) and outages (5xx, no connection) leave it alone.
#[derive(Clone)]
pub struct WorkloadIdentity {
    pub(crate) tenant_id: String,
    pub(crate) client_id: String,
    pub(crate) authority_host: Option<String>,
    pub(crate) token: Arc<dyn IdentityToken>,
}

impl fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("authority_host", &self.authority_host)
            // Not the token source's own Debug: an implementation may print the token.
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentity {
    /// The application (client) id `client_id` of tenant `tenant_id`, proved by `token`.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        token: Arc<dyn IdentityToken>,
    ) -> Self {
        WorkloadIdentity {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            authority_host: None,
            token,
        }
    }

    /// The Entra ID authority (`AZURE_AUTHORITY_HOST`, e.g. `https://login.microsoftonline.us`
    /// for Azure Government). Defaults to the builder's authority host, then the public cloud.
    pub fn with_authority_host(mut self, url: impl Into<String>) -> Self {
        self.authority_host = Some(url.into());
        self
    }

    /// The credential, with its token requests sent through `options` (transport, cloud).
    pub(crate) fn credential(&self, options: ClientOptions) -> Result<Arc<dyn TokenCredential>> {
        let inner = ClientAssertionCredential::new(
            self.tenant_id.clone(),
            self.client_id.clone(),
            IdentityAssertion(self.token.clone()),
            Some(ClientAssertionCredentialOptions {
                client_options: with_entra_errors(options),
            }),
        )
        .map_err(|e| config_error("workload identity", e))?;
        Ok(Arc::new(InvalidatingCredential {
            inner,
            token: self.token.clone(),
        }))
    }
}

/// The client assertion is whatever the token source holds now: never cached here.
struct IdentityAssertion(Arc<dyn IdentityToken>);

impl fmt::Debug for IdentityAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityAssertion")
    }
}

#[async_trait]
impl ClientAssertion for IdentityAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let token = self.0.token().await.map_err(|e| {
            azure_core::Error::with_message(
                AzureKind::Credential,
                format!("the identity token could not be read: {e}"),
            )
        })?;
        // The SDK takes a plain String: this copy is not zeroized (the SDK's form body neither).
        token.expose_str().map(str::to_owned).map_err(|_| {
            azure_core::Error::with_message(
                AzureKind::Credential,
                "the identity token is not UTF-8",
            )
        })
    }
}

/// Tells the token source to drop its copy when Entra ID refuses the assertion, so the next
/// attempt re-reads a (possibly rotated) token instead of sending the refused one again.
struct InvalidatingCredential {
    inner: Arc<ClientAssertionCredential<IdentityAssertion>>,
    token: Arc<dyn IdentityToken>,
}

impl fmt::Debug for InvalidatingCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for InvalidatingCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let result = self.inner.get_token(scopes, options).await;
        if let Err(e) = &result
            && !is_transient(e)
        {
            self.token.invalidate();
        }
        result
    }
}

/// Whether a failed token request may succeed unchanged later (throttling, 5xx, network).
/// Anything else counts as a refusal.
fn is_transient(e: &azure_core::Error) -> bool {
    token_error_kind(e).is_retryable()
}

/// `options` with [`EntraErrors`] among the per-try policies.
fn with_entra_errors(mut options: ClientOptions) -> ClientOptions {
    options.per_try_policies.push(Arc::new(EntraErrors));
    options
}

/// Turns every non-2xx answer of Entra ID's token endpoint into an `HttpResponse` error that
/// keeps the status, the response (for `Retry-After`) and Entra's reason, before
/// `azure_identity` parses it.
///
/// `azure_identity` 1.0 reads an error body's `error_description` into a borrowed `&str`,
/// which fails on the escaped `\r\n` that Entra's descriptions contain ("…\r\nTrace ID: …"):
/// the answer then surfaces as a data-conversion error without a status, and a throttled or
/// unavailable Entra ID would look like a refusal.
#[derive(Debug)]
struct EntraErrors;

// `&Context` as the trait spells it: async_trait gives the elided lifetime a parameter of its
// own, which `Context<'_>` would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait]
impl Policy for EntraErrors {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let Some((first, rest)) = next.split_first() else {
            return Err(azure_core::Error::with_message(
                AzureKind::Other,
                "EntraErrors must not be the last policy",
            ));
        };
        let response = first.send(ctx, request, rest).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let raw = response.try_into_raw_response().await?;
        let (message, error_code) = entra_reason(u16::from(status), raw.body());
        Err(azure_core::Error::with_message(
            AzureKind::HttpResponse {
                status,
                error_code,
                raw_response: Some(Box::new(raw)),
            },
            message,
        ))
    }
}

/// The reason of an Entra ID error body (`{"error", "error_description", "error_codes"}`): a
/// message and the AADSTS codes. The description's lines (Trace ID, Correlation ID, Timestamp)
/// are joined with `"; "`. A body that is not such JSON (a gateway's page) is not quoted.
fn entra_reason(status: u16, body: &[u8]) -> (String, Option<String>) {
    let mut message = format!("Entra ID token endpoint: HTTP {status}");
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (message, None);
    };
    if let Some(error) = v["error"].as_str() {
        message.push(' ');
        message.push_str(error);
    }
    if let Some(description) = v["error_description"].as_str() {
        let lines: Vec<&str> = description
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !lines.is_empty() {
            message.push_str(": ");
            message.push_str(&lines.join("; "));
        }
    }
    let codes: Vec<String> = v["error_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_i64())
                .map(|c| c.to_string())
                .collect()
        })
        .unwrap_or_default();
    let codes = (!codes.is_empty()).then(|| codes.join(","));
    (message, codes)
}

/// An [`IdentityToken`] read from a file at every request (`AZURE_FEDERATED_TOKEN_FILE`): the
/// kubelet replaces the file well before the token expires, and token requests are rare (the
/// SDK caches access tokens), so re-reading is cheap and never sends a stale token.
#[derive(Debug)]
pub(crate) struct FileToken(pub(crate) PathBuf);

#[async_trait]
impl IdentityToken for FileToken {
    async fn token(&self) -> Result<SecretValue> {
        let path = self.0.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path))
            .await
            .map_err(|_| Error::new(ErrorKind::Unavailable, "token file read was cancelled"))?;
        let text = read.map_err(|e| {
            Error::new(
                ErrorKind::Unauthenticated,
                format!(
                    "cannot read the federated token file `{}`",
                    self.0.display()
                ),
            )
            .with_cause(e)
        })?;
        Ok(SecretValue::from_string(text.trim().to_owned()))
    }

    fn invalidate(&self) {}
}

/// Makes the source's credential: once when the source is built, and again each time Key Vault
/// refuses an access token the current one obtained (a credential given by the caller is
/// returned as it is). `azure_identity`'s credentials cache their
/// tokens with no way to drop one, so a revoked token (or one Key Vault stopped accepting for
/// any other reason) would otherwise be sent until it expires.
pub(crate) struct CredentialMaker {
    make: Box<dyn Fn() -> Result<Arc<dyn TokenCredential>> + Send + Sync>,
    /// Told to drop its copy along with the credential (workload identity with a token source).
    identity: Option<Arc<dyn IdentityToken>>,
}

impl CredentialMaker {
    pub(crate) fn new(
        make: impl Fn() -> Result<Arc<dyn TokenCredential>> + Send + Sync + 'static,
        identity: Option<Arc<dyn IdentityToken>>,
    ) -> Self {
        CredentialMaker {
            make: Box::new(make),
            identity,
        }
    }

    /// A new credential, with a token cache of its own.
    pub(crate) fn make(&self) -> Result<Arc<dyn TokenCredential>> {
        (self.make)()
    }

    /// Key Vault refused the access token: the identity token it was obtained with is suspect too.
    pub(crate) fn invalidate_identity(&self) {
        if let Some(token) = &self.identity {
            token.invalidate();
        }
    }
}

/// The environment variables the chain reads, captured once.
#[derive(Clone, Default)]
pub(crate) struct EnvVars {
    pub(crate) client_id: Option<String>,
    pub(crate) tenant_id: Option<String>,
    pub(crate) federated_token_file: Option<String>,
    pub(crate) authority_host: Option<String>,
    pub(crate) client_secret: Option<String>,
}

impl fmt::Debug for EnvVars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVars")
            .field("AZURE_CLIENT_ID", &self.client_id)
            .field("AZURE_TENANT_ID", &self.tenant_id)
            .field("AZURE_FEDERATED_TOKEN_FILE", &self.federated_token_file)
            .field("AZURE_AUTHORITY_HOST", &self.authority_host)
            .field(
                "AZURE_CLIENT_SECRET",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl EnvVars {
    /// Read the variables through `var` (an empty value counts as unset).
    pub(crate) fn read(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        EnvVars {
            client_id: get("AZURE_CLIENT_ID"),
            tenant_id: get("AZURE_TENANT_ID"),
            federated_token_file: get("AZURE_FEDERATED_TOKEN_FILE"),
            authority_host: get("AZURE_AUTHORITY_HOST"),
            client_secret: get("AZURE_CLIENT_SECRET"),
        }
    }
}

fn missing(names: &[(&str, &Option<String>)]) -> Option<String> {
    let absent: Vec<&str> = names
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    match absent.len() {
        0 => None,
        1 => Some(format!("{} not set", absent[0])),
        _ => Some(format!("{} not set", absent.join(", "))),
    }
}

/// The first credential of the chain that applies, or why none does.
///
/// Order: workload identity (`AZURE_FEDERATED_TOKEN_FILE` + `AZURE_TENANT_ID` +
/// `AZURE_CLIENT_ID`), client secret (`AZURE_CLIENT_SECRET` + `AZURE_TENANT_ID` +
/// `AZURE_CLIENT_ID`), managed identity (always applies when enabled: the SDK picks App Service
/// from `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`, else the instance metadata service; a user-assigned
/// identity when `AZURE_CLIENT_ID` is set). Managed identity can only be known not to work by
/// asking it, so its errors carry the reasons the earlier credentials were skipped.
pub(crate) fn chain(
    env: &EnvVars,
    managed_identity: bool,
    options: &ClientOptions,
) -> Result<Arc<dyn TokenCredential>> {
    let mut skipped = Vec::new();
    match (&env.federated_token_file, &env.tenant_id, &env.client_id) {
        (Some(file), Some(tenant), Some(client)) => {
            let token: Arc<dyn IdentityToken> = Arc::new(FileToken(PathBuf::from(file)));
            tracing::debug!("Azure credential: workload identity");
            return WorkloadIdentity::new(tenant, client, token).credential(options.clone());
        }
        _ => skipped.push(format!(
            "workload identity: {}",
            missing(&[
                ("AZURE_FEDERATED_TOKEN_FILE", &env.federated_token_file),
                ("AZURE_TENANT_ID", &env.tenant_id),
                ("AZURE_CLIENT_ID", &env.client_id),
            ])
            .unwrap_or_default()
        )),
    }
    match (&env.client_secret, &env.tenant_id, &env.client_id) {
        (Some(secret), Some(tenant), Some(client)) => {
            tracing::debug!("Azure credential: client secret");
            return client_secret(tenant, client, secret, options.clone());
        }
        _ => skipped.push(format!(
            "client secret: {}",
            missing(&[
                ("AZURE_CLIENT_SECRET", &env.client_secret),
                ("AZURE_TENANT_ID", &env.tenant_id),
                ("AZURE_CLIENT_ID", &env.client_id),
            ])
            .unwrap_or_default()
        )),
    }
    if !managed_identity {
        skipped.push("managed identity: turned off (with_managed_identity(false))".into());
        return Err(Error::new(
            ErrorKind::Config,
            format!("no Azure credential applies: {}", skipped.join("; ")),
        ));
    }
    tracing::debug!("Azure credential: managed identity");
    let inner = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id: env.client_id.clone().map(UserAssignedId::ClientId),
        client_options: options.clone(),
    }))
    .map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!(
                "no Azure credential applies: {}; managed identity: {e}",
                skipped.join("; ")
            ),
        )
    })?;
    Ok(Arc::new(Explained {
        name: "managed identity",
        inner,
        skipped: skipped.join("; "),
    }))
}

/// A client-secret credential (the secret is held by the SDK in its redacting `Secret`).
pub(crate) fn client_secret(
    tenant_id: &str,
    client_id: &str,
    secret: &str,
    options: ClientOptions,
) -> Result<Arc<dyn TokenCredential>> {
    let credential = ClientSecretCredential::new(
        tenant_id,
        client_id.to_owned(),
        azure_core::credentials::Secret::new(secret.to_owned()),
        Some(ClientSecretCredentialOptions {
            client_options: with_entra_errors(options),
        }),
    )
    .map_err(|e| config_error("client secret", e))?;
    Ok(credential)
}

fn config_error(what: &str, e: azure_core::Error) -> Error {
    Error::new(ErrorKind::Config, format!("{what}: {e}"))
}

/// The last credential of the chain: when it fails, the error also says why the ones before it
/// were skipped, so "nothing is configured" reads as such rather than as an IMDS timeout.
struct Explained {
    name: &'static str,
    inner: Arc<dyn TokenCredential>,
    skipped: String,
}

impl fmt::Debug for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainedCredential")
            .field("using", &self.name)
            .field("skipped", &self.skipped)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for Explained {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.inner.get_token(scopes, options).await.map_err(|e| {
            let message = format!("{}; {}: {e}", self.skipped, self.name);
            azure_core::Error::with_error(AzureKind::Credential, e, message)
        })
    }
}

/// Refuses tokens for any scope but the vault audience's. Used when the SDK's check of the
/// challenge's resource against the vault host is off (loopback or private vault URLs): a
/// server answering at the vault URL could otherwise name any resource in its challenge and
/// receive a token for it (Azure Resource Manager, Graph, …).
pub(crate) struct ScopeGuard {
    pub(crate) inner: Arc<dyn TokenCredential>,
    pub(crate) scope: String,
}

impl fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeGuard")
            .field("scope", &self.scope)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for ScopeGuard {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if scopes != [self.scope.as_str()] {
            let refused = ScopeRefused(format!(
                "the vault's challenge asked for a token for {scopes:?}; only `{}` is allowed \
                 (set with_vault_audience for another cloud)",
                self.scope
            ));
            let message = refused.0.clone();
            return Err(azure_core::Error::with_error(
                AzureKind::Credential,
                refused,
                message,
            ));
        }
        self.inner.get_token(scopes, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        EnvVars::read(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    /// Options with the crate's own transport: the SDK's default one would need a process-wide
    /// crypto provider.
    fn options() -> ClientOptions {
        let provider = Arc::new(keyrack_core::tls::rustls::crypto::ring::default_provider());
        let http =
            crate::builder::http_client(provider, &[], std::time::Duration::from_secs(5)).unwrap();
        ClientOptions {
            transport: Some(azure_core::http::Transport::new(Arc::new(http))),
            ..Default::default()
        }
    }

    fn reason(env: &EnvVars) -> String {
        match chain(env, false, &options()) {
            Err(e) => {
                assert_eq!(e.kind(), &ErrorKind::Config);
                e.to_string()
            }
            Ok(c) => panic!("a credential applied: {c:?}"),
        }
    }

    #[test]
    fn entra_reasons_keep_every_line_and_quote_no_page() {
        // The documented `error_response` body (entra_client_assertion_token_exchange.documented.json).
        let (message, codes) = entra_reason(
            400,
            br#"{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for the input parameter 'scope' is not valid.\r\nTrace ID: 255d1aef\r\nCorrelation ID: fb3d2015\r\nTimestamp: 2016-01-09 02:02:12Z","error_codes":[70011]}"#,
        );
        assert_eq!(
            message,
            "Entra ID token endpoint: HTTP 400 invalid_scope: AADSTS70011: The provided value for \
             the input parameter 'scope' is not valid.; Trace ID: 255d1aef; Correlation ID: \
             fb3d2015; Timestamp: 2016-01-09 02:02:12Z"
        );
        assert_eq!(codes.as_deref(), Some("70011"));
        let (message, codes) = entra_reason(503, b"<html>upstream connect error</html>");
        assert_eq!(message, "Entra ID token endpoint: HTTP 503");
        assert_eq!(codes, None);
    }

    #[test]
    fn chain_says_what_is_missing() {
        let text = reason(&vars(&[]));
        assert!(
            text.contains(
                "workload identity: AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID, AZURE_CLIENT_ID \
                 not set; client secret: AZURE_CLIENT_SECRET, AZURE_TENANT_ID, AZURE_CLIENT_ID \
                 not set; managed identity: turned off"
            ),
            "{text}"
        );
        let text = reason(&vars(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "   "),
        ]));
        assert!(
            text.contains(
                "workload identity: AZURE_FEDERATED_TOKEN_FILE not set; client secret: \
                 AZURE_CLIENT_SECRET not set"
            ),
            "{text}"
        );
    }

    #[test]
    fn chain_picks_the_first_that_applies() {
        let all = vars(&[
            ("AZURE_TENANT_ID", "tenant"),
            ("AZURE_CLIENT_ID", "client"),
            ("AZURE_CLIENT_SECRET", "very-secret"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/no/such/file"),
        ]);
        let c = chain(&all, false, &options()).unwrap();
        assert!(format!("{c:?}").contains("WorkloadIdentity"), "{c:?}");
        let secret_only = vars(&[
            ("AZURE_TENANT_ID", "tenant"),
            ("AZURE_CLIENT_ID", "client"),
            ("AZURE_CLIENT_SECRET", "very-secret"),
        ]);
        let c = chain(&secret_only, false, &options()).unwrap();
        let d = format!("{c:?} {secret_only:?}");
        assert!(d.contains("ClientSecretCredential"), "{d}");
        assert!(!d.contains("very-secret"), "{d}");
        let c = chain(&vars(&[]), true, &options()).unwrap();
        assert!(format!("{c:?}").contains("managed identity"), "{c:?}");
    }
}
