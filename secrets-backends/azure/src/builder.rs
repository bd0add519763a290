//! [`AzureBuilder`]: which vaults, where they are served, and how the source gets its tokens.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, HttpClient, RetryOptions, Transport, Url};
use azure_security_keyvault_secrets::SecretClientOptions;
use keyrack_core::tls::Trust;
use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::{Clock, Error, ErrorKind, Result, SystemClock};

use crate::credential::{
    self, CredentialMaker, EnvVars, PUBLIC_AUTHORITY_HOST, ScopeGuard, WorkloadIdentity,
};
use crate::source::{AzureSource, Vaults, check_vault};

/// The public cloud's vault URLs; `{name}` is replaced by the vault name.
pub const PUBLIC_VAULT_URL_TEMPLATE: &str = "https://{name}.vault.azure.net";
/// The resource Key Vault tokens are issued for in the public cloud.
pub const PUBLIC_VAULT_AUDIENCE: &str = "https://vault.azure.net";

enum Credential {
    /// `from_env` with nothing given explicitly: the chain.
    Chain,
    Given(Arc<dyn TokenCredential>),
    WorkloadIdentity(WorkloadIdentity),
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: String,
    },
    None,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Chain => f.write_str("Chain"),
            Credential::Given(c) => f.debug_tuple("Given").field(c).finish(),
            Credential::WorkloadIdentity(w) => f.debug_tuple("WorkloadIdentity").field(w).finish(),
            Credential::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("secret", &"[REDACTED]")
                .finish(),
            Credential::None => f.write_str("None"),
        }
    }
}

/// Builds an [`AzureSource`].
///
/// Two starting points:
/// - [`AzureBuilder::new`] reads nothing from the environment: give a credential
///   ([`with_credential`](Self::with_credential),
///   [`with_workload_identity`](Self::with_workload_identity) or
///   [`with_client_secret`](Self::with_client_secret)).
/// - [`AzureBuilder::from_env`] reads the variables listed there and, unless a credential is
///   given explicitly, uses the first of these that applies: **workload identity**
///   (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, as the AKS webhook
///   injects them), **client secret** (`AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`,
///   `AZURE_CLIENT_ID`), **managed identity** (App Service or the instance metadata service;
///   user-assigned when `AZURE_CLIENT_ID` is set). The Azure SDK 1.0 has no
///   `DefaultAzureCredential`; this is that chain, minus developer tools. When nothing applies
///   the error lists why each was skipped, e.g. "workload identity: AZURE_FEDERATED_TOKEN_FILE
///   not set; client secret: AZURE_CLIENT_SECRET not set; managed identity: …".
///
/// Vaults are named in references (`azure-kv://<vault>/<secret>`); their URLs come from
/// [`with_vault_url`](Self::with_vault_url) or the template (default
/// `https://{name}.vault.azure.net`; for sovereign clouds e.g. `https://{name}.vault.azure.cn`
/// or `https://{name}.vault.usgovcloudapi.net`, with the matching
/// [`with_authority_host`](Self::with_authority_host) and
/// [`with_vault_audience`](Self::with_vault_audience)).
///
/// **Challenge check.** Key Vault tells a client which token to get in a 401 challenge
/// (`WWW-Authenticate: Bearer authorization="…", resource="https://vault.azure.net"`); the SDK
/// then checks that the vault's host ends with the challenge resource's host. A vault served
/// elsewhere (a loopback test server, a private endpoint under another name) fails that check;
/// [`with_challenge_resource_verification(false)`](Self::with_challenge_resource_verification)
/// turns it off, and in exchange this crate refuses to request a token for anything but the
/// vault audience, so a server at a misconfigured URL cannot obtain a token for another
/// resource.
///
/// The SDK's retries are off (one attempt per request): the engine's backoff, which honours
/// `Retry-After`, is the only retry loop, so a throttled fleet does not multiply its requests.
pub struct AzureBuilder {
    env: Option<EnvVars>,
    credential: Credential,
    default_vault: Option<String>,
    vault_urls: HashMap<String, String>,
    template: String,
    audience: String,
    authority_host: Option<String>,
    managed_identity: bool,
    verify_challenge_resource: bool,
    ca_pems: Vec<String>,
    timeout: Duration,
    api_version: Option<String>,
    clock: Arc<dyn Clock>,
    crypto_provider: Option<Arc<CryptoProvider>>,
    http_client: Option<Arc<dyn HttpClient>>,
}

impl fmt::Debug for AzureBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBuilder")
            .field("env", &self.env)
            .field("credential", &self.credential)
            .field("default_vault", &self.default_vault)
            .field("vault_urls", &self.vault_urls)
            .field("template", &self.template)
            .field("audience", &self.audience)
            .field("authority_host", &self.authority_host)
            .field("managed_identity", &self.managed_identity)
            .field("verify_challenge_resource", &self.verify_challenge_resource)
            .field("extra_cas", &self.ca_pems.len())
            .field("timeout", &self.timeout)
            .field("crypto_provider", &self.crypto_provider.is_some())
            .field("http_client", &self.http_client.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for AzureBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AzureBuilder {
    /// A builder that reads nothing from the environment.
    pub fn new() -> Self {
        AzureBuilder {
            env: None,
            credential: Credential::None,
            default_vault: None,
            vault_urls: HashMap::new(),
            template: PUBLIC_VAULT_URL_TEMPLATE.to_owned(),
            audience: PUBLIC_VAULT_AUDIENCE.to_owned(),
            authority_host: None,
            managed_identity: true,
            verify_challenge_resource: true,
            ca_pems: Vec::new(),
            timeout: Duration::from_secs(30),
            api_version: None,
            clock: Arc::new(SystemClock),
            crypto_provider: None,
            http_client: None,
        }
    }

    /// A builder on the environment. Reads, once, now:
    /// - `AZURE_CLIENT_ID`: the application (client) id; for managed identity, a user-assigned
    ///   identity's client id;
    /// - `AZURE_TENANT_ID`: the Entra ID tenant;
    /// - `AZURE_FEDERATED_TOKEN_FILE`: the projected service-account token (workload identity),
    ///   re-read at every token request;
    /// - `AZURE_AUTHORITY_HOST`: the Entra ID authority (default
    ///   `https://login.microsoftonline.com`), unless
    ///   [`with_authority_host`](Self::with_authority_host) is given;
    /// - `AZURE_CLIENT_SECRET`: a client secret.
    ///
    /// Managed identity, when reached, is configured by the SDK from `IDENTITY_ENDPOINT`,
    /// `IDENTITY_HEADER` (App Service) or the instance metadata service. Empty variables count
    /// as unset.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up through `var` (for tests, or
    /// configuration that is not in the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        AzureBuilder {
            env: Some(EnvVars::read(var)),
            credential: Credential::Chain,
            ..Self::new()
        }
    }

    /// References without a vault (`azure-kv://<secret>`) read from this vault.
    pub fn with_default_vault(mut self, name: impl Into<String>) -> Self {
        self.default_vault = Some(name.into());
        self
    }

    /// Serve vault `name` from `url` (e.g. `https://payments.vault.azure.net`, a private
    /// endpoint, a test server) instead of the template's URL. `name` is the vault name
    /// references use (3-24 letters, digits and hyphens; `build` refuses others).
    pub fn with_vault_url(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.vault_urls.insert(name.into(), url.into());
        self
    }

    /// Vault URLs for names without [`with_vault_url`](Self::with_vault_url): `{name}` is
    /// replaced by the vault name. Default `https://{name}.vault.azure.net`.
    pub fn with_vault_url_template(mut self, template: impl Into<String>) -> Self {
        self.template = template.into();
        self
    }

    /// The resource tokens are requested for when the challenge check is off (default
    /// `https://vault.azure.net`; `https://vault.azure.cn`, `https://vault.usgovcloudapi.net` in
    /// sovereign clouds).
    pub fn with_vault_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Use this credential (any `azure_identity` credential, or your own).
    pub fn with_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Credential::Given(credential);
        self
    }

    /// Workload identity federation with a token from any [`IdentityToken`](keyrack_core::IdentityToken)
    /// (e.g. `keyrack-k8s`'s projected service-account token): see [`WorkloadIdentity`].
    pub fn with_workload_identity(mut self, identity: WorkloadIdentity) -> Self {
        self.credential = Credential::WorkloadIdentity(identity);
        self
    }

    /// A service principal with a client secret.
    pub fn with_client_secret(
        mut self,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.credential = Credential::ClientSecret {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            secret: secret.into(),
        };
        self
    }

    /// The Entra ID authority for the credentials this builder makes (default
    /// `AZURE_AUTHORITY_HOST` with `from_env`, else `https://login.microsoftonline.com`). Must
    /// be `https`.
    pub fn with_authority_host(mut self, url: impl Into<String>) -> Self {
        self.authority_host = Some(url.into());
        self
    }

    /// Whether the `from_env` chain ends with managed identity (default `true`). Turn it off
    /// where the instance metadata service must not be asked, so that a missing configuration
    /// fails at `build` with the list of what is missing.
    pub fn with_managed_identity(mut self, enabled: bool) -> Self {
        self.managed_identity = enabled;
        self
    }

    /// Whether the SDK checks the challenge's resource against the vault host (default
    /// `true`); see the type's documentation for what replaces it when off.
    pub fn with_challenge_resource_verification(mut self, verify: bool) -> Self {
        self.verify_challenge_resource = verify;
        self
    }

    /// Also trust the CA certificates in `pem` (private endpoints behind a TLS-inspecting
    /// proxy, test servers), besides the platform's.
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// The rustls crypto provider of the source's TLS (e.g. aws-lc-rs for FIPS). Without it
    /// the process default is used if the application installed one when `build` runs, else
    /// ring's; either way nothing is installed process-wide. Every request the source makes
    /// (Key Vault, Entra ID, managed identity) goes through the one client built on it; a
    /// credential given with [`with_credential`](Self::with_credential) sends its own token
    /// requests through whatever client it was built with.
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = Some(provider);
        self
    }

    /// Send every request of the source (Key Vault, Entra ID, managed identity) through
    /// `client` instead of the rustls client this crate builds: a proxy-aware client of your
    /// own, or an in-process fake in tests and simulations. TLS is then the client's business:
    /// [`with_ca_pem`](Self::with_ca_pem) and [`with_crypto_provider`](Self::with_crypto_provider)
    /// have nothing to apply to, and `build` refuses them beside it. The client should bound
    /// its own requests; [`with_timeout`](Self::with_timeout) still bounds the first read of a
    /// vault (its challenge), and the engine's request timeout every read. The SDK's retries
    /// stay off.
    pub fn with_http_client(mut self, client: Arc<dyn HttpClient>) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Time limit of one HTTP request (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock whose wall time a `Retry-After` given as an HTTP-date is counted from (the
    /// system clock by default).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The Key Vault REST API version (the SDK's default, `2025-07-01`, when not given).
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = Some(version.into());
        self
    }

    /// Check the configuration and build the source. Nothing is sent until the first read.
    pub fn build(self) -> Result<AzureSource> {
        let config = |m: String| Error::new(ErrorKind::Config, m);
        if !self.template.contains("{name}") {
            return Err(config(format!(
                "vault URL template `{}` has no `{{name}}`",
                self.template
            )));
        }
        for (name, url) in &self.vault_urls {
            check_vault(name).map_err(|e| config(format!("with_vault_url: {}", e.message())))?;
            check_url(url).map_err(|m| config(format!("vault `{name}`: {m}")))?;
        }
        check_url(&self.template.replace("{name}", "vault"))
            .map_err(|m| config(format!("vault URL template: {m}")))?;
        let authority_host = self
            .authority_host
            .clone()
            .or_else(|| self.env.as_ref().and_then(|e| e.authority_host.clone()))
            .unwrap_or_else(|| PUBLIC_AUTHORITY_HOST.to_owned());
        match Url::parse(&authority_host) {
            Ok(u) if u.scheme() == "https" => {}
            _ => {
                return Err(config(format!(
                    "authority host `{authority_host}` is not an https URL"
                )));
            }
        }

        let http: Arc<dyn HttpClient> = match &self.http_client {
            Some(client) => {
                if !self.ca_pems.is_empty() || self.crypto_provider.is_some() {
                    return Err(config(
                        "with_ca_pem and with_crypto_provider configure the client this crate \
                         builds; with with_http_client, configure TLS on that client"
                            .into(),
                    ));
                }
                client.clone()
            }
            None => {
                let provider = self
                    .crypto_provider
                    .clone()
                    .unwrap_or_else(keyrack_core::tls::default_provider);
                Arc::new(http_client(provider, &self.ca_pems, self.timeout)?)
            }
        };
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = authority_host.clone();
        let options = ClientOptions {
            transport: Some(Transport::new(http)),
            retry: RetryOptions::none(),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..Default::default()
        };

        // How the credential is made; made again after Key Vault refuses an access token.
        type Make = Box<dyn Fn() -> Result<Arc<dyn TokenCredential>> + Send + Sync>;
        let (make, identity): (Make, _) = match self.credential {
            Credential::Given(c) => (Box::new(move || Ok(c.clone())), None),
            Credential::WorkloadIdentity(w) => {
                let host = w.authority_host.as_deref().unwrap_or(&authority_host);
                let options = credential_options(&options, host)?;
                let identity = w.token.clone();
                (
                    Box::new(move || w.credential(options.clone())),
                    Some(identity),
                )
            }
            Credential::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                let options = options.clone();
                (
                    Box::new(move || {
                        credential::client_secret(&tenant_id, &client_id, &secret, options.clone())
                    }),
                    None,
                )
            }
            Credential::Chain => {
                let env = self.env.clone().unwrap_or_default();
                let managed_identity = self.managed_identity;
                let options = options.clone();
                (
                    Box::new(move || credential::chain(&env, managed_identity, &options)),
                    None,
                )
            }
            Credential::None => {
                return Err(config(
                    "no Azure credential: use from_env, with_credential, with_workload_identity \
                     or with_client_secret"
                        .into(),
                ));
            }
        };
        let guard_scope = (!self.verify_challenge_resource)
            .then(|| format!("{}/.default", self.audience.trim_end_matches('/')));
        let maker = CredentialMaker::new(
            move || {
                let credential = make()?;
                Ok(match &guard_scope {
                    None => credential,
                    Some(scope) => Arc::new(ScopeGuard {
                        inner: credential,
                        scope: scope.clone(),
                    }),
                })
            },
            identity,
        );

        let mut secret_options = SecretClientOptions {
            client_options: options,
            verify_challenge_resource: Some(self.verify_challenge_resource),
            ..Default::default()
        };
        if let Some(v) = self.api_version {
            secret_options.api_version = v;
        }
        if let Some(v) = &self.default_vault {
            check_vault(v).map_err(|e| config(format!("default vault: {}", e.message())))?;
        }
        let vaults = Vaults {
            default_vault: self.default_vault,
            urls: self.vault_urls,
            template: self.template,
        };
        AzureSource::new(vaults, maker, secret_options, self.clock, self.timeout)
    }
}

/// The client every request of the source goes through (Key Vault, Entra ID, managed
/// identity), on rustls with `provider`: the SDK is given it as its transport, so it never
/// builds a client of its own (which would need a process-wide default provider).
pub(crate) fn http_client(
    provider: Arc<CryptoProvider>,
    ca_pems: &[String],
    timeout: Duration,
) -> Result<reqwest::Client> {
    let mut extra = Vec::new();
    for pem in ca_pems {
        let certs = keyrack_core::tls::certificates_from_pem(pem.as_bytes()).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("a CA given with with_ca_pem: {}", e.message()),
            )
        })?;
        extra.extend(certs);
    }
    let tls = keyrack_core::tls::client_config(provider, Trust::Platform(extra), None)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // Key Vault and Entra ID do not redirect; a redirect would carry the token elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::new(ErrorKind::Config, "cannot build the HTTP client").with_cause(e))
}

/// The same options with the authority host of one credential.
fn credential_options(base: &ClientOptions, authority_host: &str) -> Result<ClientOptions> {
    match Url::parse(authority_host) {
        Ok(u) if u.scheme() == "https" => {}
        _ => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("authority host `{authority_host}` is not an https URL"),
            ));
        }
    }
    let mut options = base.clone();
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host.to_owned();
    options.cloud = Some(Arc::new(CloudConfiguration::Custom(cloud)));
    Ok(options)
}

fn check_url(url: &str) -> std::result::Result<(), String> {
    match Url::parse(url) {
        Ok(u) if u.scheme() == "https" && u.host_str().is_some() => Ok(()),
        Ok(u) if u.scheme() == "http" => Err(format!(
            "`{url}` is plain http: tokens must not travel unencrypted"
        )),
        _ => Err(format!("`{url}` is not an https URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_without_credential_is_a_config_error() {
        let e = AzureBuilder::new().build().unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(e.to_string().contains("no Azure credential"), "{e}");
    }

    #[test]
    fn bad_urls_and_vault_names_are_config_errors() {
        let b = || AzureBuilder::new().with_client_secret("t", "c", "s");
        for builder in [
            b().with_vault_url("vault-1", "http://localhost:1"),
            b().with_vault_url("vault-1", "not a url"),
            b().with_vault_url_template("https://vault.example"),
            b().with_authority_host("http://login.example"),
            // Vault names as references take them (3-24 letters, digits and hyphens).
            b().with_vault_url("vault_1", "https://localhost:1"),
            b().with_vault_url("ab", "https://localhost:1"),
        ] {
            let e = builder.build().unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::Config, "{e}");
        }
        b().with_vault_url("vault-1", "https://localhost:1")
            .build()
            .unwrap();
    }

    #[test]
    fn debug_shows_no_secret() {
        let b = AzureBuilder::from_vars(|n| {
            (n == "AZURE_CLIENT_SECRET").then(|| "env-very-secret".to_owned())
        });
        let d = format!("{b:?}");
        assert!(!d.contains("env-very-secret"), "{d}");
        let b = AzureBuilder::new().with_client_secret("t", "c", "very-secret-value");
        let d = format!("{b:?}");
        assert!(!d.contains("very-secret-value"), "{d}");
        let s = b.build().unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("very-secret-value"), "{d}");
    }
}
