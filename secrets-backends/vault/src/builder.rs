//! [`VaultBuilder`]: address, TLS, namespace and login method, from code or the environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyrack_core::tls::rustls::crypto::CryptoProvider;
use keyrack_core::tls::{self, ClientIdentity, Trust};
use keyrack_core::{Clock, Error, ErrorKind, Result, SystemClock};
use url::Url;

use crate::api::Http;
use crate::auth::Auth;
use crate::session::{Session, TokenCleanup};
use crate::source::VaultSource;
use crate::transport::{Reqwest, Transport};

/// Configures a [`VaultSource`].
///
/// [`new`](Self::new) reads nothing from the environment; [`from_env`](Self::from_env) reads the
/// variables Vault's own CLI reads. TLS goes through rustls, on the crypto provider given with
/// [`with_crypto_provider`](Self::with_crypto_provider) (else the process default, else ring),
/// passed to the client: nothing is installed process-wide.
#[derive(Debug)]
pub struct VaultBuilder {
    address: Option<String>,
    auth: Option<Auth>,
    namespace: Option<String>,
    ca_files: Vec<PathBuf>,
    ca_dirs: Vec<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    skip_verify: bool,
    allow_skip_verify_remote: bool,
    allow_plain_http_remote: bool,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    crypto_provider: Option<Arc<CryptoProvider>>,
    revoke_token: Option<bool>,
    shutdown_timeout: Duration,
    transport: Option<Custom>,
}

/// A transport given with [`VaultBuilder::with_transport`]; its `Debug` is the user's, which
/// a builder's `Debug` does not print.
struct Custom(Arc<dyn Transport>);

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a transport of your own")
    }
}

/// How long [`SecretSource::shutdown`](keyrack_core::SecretSource::shutdown) waits for Vault to
/// answer the token's revocation by default: well inside Kubernetes' default 30 s grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for VaultBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl VaultBuilder {
    /// Nothing set: give at least an address and a login method.
    pub fn new() -> Self {
        VaultBuilder {
            address: None,
            auth: None,
            namespace: None,
            ca_files: Vec::new(),
            ca_dirs: Vec::new(),
            client_cert: None,
            skip_verify: false,
            allow_skip_verify_remote: false,
            allow_plain_http_remote: false,
            timeout: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            crypto_provider: None,
            revoke_token: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            transport: None,
        }
    }

    /// Read the environment, as Vault's CLI does:
    ///
    /// | variable | sets |
    /// |---|---|
    /// | `VAULT_ADDR` | the address |
    /// | `VAULT_TOKEN` | a static token ([`Auth::Token`]), unless a login method is set later |
    /// | `VAULT_CACERT` | a PEM file of CA certificates to trust instead of the platform's (as the Vault CLI does) |
    /// | `VAULT_CAPATH` | a directory of PEM CA certificates to trust instead of the platform's |
    /// | `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY` | a client certificate and its key (PEM) |
    /// | `VAULT_NAMESPACE` | the namespace (Vault Enterprise, OpenBao) |
    /// | `VAULT_SKIP_VERIFY` | `1`/`true`: skip certificate verification — refused by `build` for a non-loopback address unless [`allow_skip_verify_for_remote`](Self::allow_skip_verify_for_remote) |
    pub fn from_env() -> Self {
        let mut b = Self::new();
        b.address = env("VAULT_ADDR");
        b.auth = env("VAULT_TOKEN").map(Auth::token);
        b.namespace = env("VAULT_NAMESPACE");
        b.ca_files.extend(env("VAULT_CACERT").map(PathBuf::from));
        b.ca_dirs.extend(env("VAULT_CAPATH").map(PathBuf::from));
        if let (Some(c), Some(k)) = (env("VAULT_CLIENT_CERT"), env("VAULT_CLIENT_KEY")) {
            b.client_cert = Some((c.into(), k.into()));
        }
        b.skip_verify = env("VAULT_SKIP_VERIFY")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "t" | "true"));
        b
    }

    /// The server address (`https://vault.example:8200`). Plain `http` is accepted only for a
    /// loopback address (`127.0.0.0/8`, `::1`, `localhost`) unless
    /// [`allow_plain_http_for_remote`](Self::allow_plain_http_for_remote) is set: every request
    /// carries the token.
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// How to log in.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// A static token (shorthand for `with_auth(Auth::token(..))`).
    pub fn with_token(self, token: impl Into<keyrack_core::SecretValue>) -> Self {
        self.with_auth(Auth::token(token))
    }

    /// A namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Trust the CA certificates in this PEM file, and no others: once any CA file (or
    /// `VAULT_CAPATH` directory) is given, the platform's trust store is not used, as with the
    /// Vault CLI.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Present this client certificate (PEM) with its key (PEM).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Skip certificate verification. Allowed only for loopback addresses unless
    /// [`allow_skip_verify_for_remote`](Self::allow_skip_verify_for_remote) is also set.
    pub fn danger_skip_verify(mut self, skip: bool) -> Self {
        self.skip_verify = skip;
        self
    }

    /// Allow skipping certificate verification for a non-loopback address (a man in the middle can
    /// then read every secret and token).
    pub fn allow_skip_verify_for_remote(mut self, allow: bool) -> Self {
        self.allow_skip_verify_remote = allow;
        self
    }

    /// Allow a plain `http` address that is not loopback. The token and every secret then
    /// travel in clear: only for a network that is otherwise protected (a service mesh sidecar
    /// that encrypts, say).
    pub fn allow_plain_http_for_remote(mut self, allow: bool) -> Self {
        self.allow_plain_http_remote = allow;
        self
    }

    /// Timeout of each request (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock the token keeper schedules by, mounts are remembered by and `Retry-After`
    /// dates are counted from (default: the system clock).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The rustls crypto provider of the client's TLS (e.g. aws-lc-rs for FIPS). Without it
    /// the process default is used if the application installed one when `build` runs, else
    /// ring's; either way nothing is installed process-wide.
    pub fn with_crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.crypto_provider = Some(provider);
        self
    }

    /// Whether [`shutdown`](keyrack_core::SecretSource::shutdown) revokes the source's own token
    /// (`auth/token/revoke-self`), which ends every lease issued under it as well: database
    /// users, cloud credentials. Default: **yes for a token the source logged in for** (AppRole,
    /// JWT, Kubernetes): it is the process's own and nobody else can use it; **no for a static
    /// token** ([`Auth::Token`], `VAULT_TOKEN`): it was handed in and may be shared with other
    /// processes (turn it on when the token is this process's alone).
    ///
    /// Without revocation, a restarted pod leaves its token and the leases issued under it alive
    /// until their TTLs. A source dropped without shutdown sends the same revocation as a
    /// detached task on the current Tokio runtime, best effort: a process that exits without
    /// calling [`Secrets::shutdown`](keyrack_core::Secrets::shutdown) may never send it. After a
    /// revocation the source refuses further reads with
    /// [`ErrorKind::Shutdown`](keyrack_core::ErrorKind::Shutdown) instead of logging in again.
    pub fn revoke_token_on_shutdown(mut self, revoke: bool) -> Self {
        self.revoke_token = Some(revoke);
        self
    }

    /// The longest shutdown waits for Vault to answer the token's revocation (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`], 5 s); past it the shutdown goes on and the token lives until
    /// its TTL.
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Send every request through `transport` instead of the built-in client (see
    /// [`Transport`]). The address is still checked and still names where requests go; TLS,
    /// connections and redirects are the transport's, so `build` refuses this together with a
    /// CA file or directory (`VAULT_CACERT`, `VAULT_CAPATH`), a client certificate, skipped
    /// verification or a crypto provider, which only the built-in client would use. Each
    /// request is still bounded by [`with_timeout`](Self::with_timeout) on the source's clock.
    pub fn with_transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Custom(Arc::new(transport)));
        self
    }

    /// Validate and build. No request is made until the first read.
    pub fn build(mut self) -> Result<VaultSource> {
        let config = |m: String| Error::new(ErrorKind::Config, m);
        let address = self
            .address
            .take()
            .ok_or_else(|| config("no Vault address (set VAULT_ADDR or with_address)".into()))?;
        let url = Url::parse(&address)
            .map_err(|e| config(format!("Vault address `{address}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(config(format!(
                "Vault address `{address}` is not an http(s) URL"
            )));
        }
        let auth = self
            .auth
            .take()
            .ok_or_else(|| config("no login method (set VAULT_TOKEN or with_auth)".into()))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
            None => false,
        };
        if url.scheme() == "http" && !loopback && !self.allow_plain_http_remote {
            return Err(config(format!(
                "refusing plain http to the non-loopback address `{address}`: the token would \
                 travel in clear (use https, or allow it explicitly with \
                 allow_plain_http_for_remote)"
            )));
        }
        if self.skip_verify && !loopback && !self.allow_skip_verify_remote {
            return Err(config(format!(
                "refusing to skip TLS verification for non-loopback address `{address}` \
                 (VAULT_SKIP_VERIFY); allow it explicitly with allow_skip_verify_for_remote"
            )));
        }

        let transport = match self.transport.take() {
            Some(Custom(transport)) => {
                let tls_set = [
                    (!self.ca_files.is_empty(), "a CA file (VAULT_CACERT)"),
                    (!self.ca_dirs.is_empty(), "a CA directory (VAULT_CAPATH)"),
                    (self.client_cert.is_some(), "a client certificate"),
                    (
                        self.skip_verify,
                        "skipped TLS verification (VAULT_SKIP_VERIFY)",
                    ),
                    (self.crypto_provider.is_some(), "a crypto provider"),
                ];
                if let Some((_, what)) = tls_set.iter().find(|(set, _)| *set) {
                    return Err(config(format!(
                        "{what} is set together with a transport of your own: TLS is the \
                         transport's, so the setting would be ignored (configure it on the \
                         transport, or leave the transport out)"
                    )));
                }
                transport
            }
            None => Arc::new(Reqwest(self.builtin_client(&url)?)),
        };
        let http = Http {
            transport,
            timeout: self.timeout,
            address: url,
            namespace: self.namespace,
            clock: self.clock.clone(),
        };
        let cleanup = TokenCleanup {
            revoke: self.revoke_token.unwrap_or_else(|| auth.can_login()),
            timeout: self.shutdown_timeout,
        };
        let session = Session::new(http, auth, self.clock.clone(), cleanup);
        Ok(VaultSource::new(session, self.clock))
    }

    /// The built-in transport's client: rustls with the trust, identity and provider asked for.
    fn builtin_client(&self, url: &Url) -> Result<reqwest::Client> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                Error::new(ErrorKind::Config, format!("cannot read `{}`", p.display()))
                    .with_cause(e)
            })
        };
        let mut ca_files = self.ca_files.clone();
        for dir in &self.ca_dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot read `{}`", dir.display()),
                )
                .with_cause(e)
            })?;
            ca_files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
        let trust = if url.scheme() == "http" {
            // Plain HTTP: no trust store to load.
            Trust::Only(Vec::new())
        } else if self.skip_verify {
            Trust::DangerAcceptAnyCertificate
        } else if !ca_files.is_empty() {
            // The given CAs replace the platform's, as VAULT_CACERT / VAULT_CAPATH do for the
            // Vault CLI: a private CA is trusted for this Vault, and nothing else is.
            let mut trusted = Vec::new();
            for path in &ca_files {
                let certs = tls::certificates_from_pem(&read(path)?).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("`{}`: {}", path.display(), e.message()),
                    )
                })?;
                trusted.extend(certs);
            }
            Trust::Only(trusted)
        } else {
            Trust::Platform(Vec::new())
        };
        let identity = match &self.client_cert {
            Some((cert, key)) => Some(ClientIdentity::from_pem(&read(cert)?, &read(key)?)?),
            None => None,
        };
        let provider = self
            .crypto_provider
            .clone()
            .unwrap_or_else(tls::default_provider);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls::client_config(provider, trust, identity)?)
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .redirect(crate::api::redirect_policy());
        client.build().map_err(|e| {
            Error::new(ErrorKind::Config, "cannot build the HTTP client").with_cause(e)
        })
    }
}
