//! [`AzureSource`]: the [`SecretSource`] over Key Vault's secrets API.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind as AzureKind;
use azure_core::http::{StatusCode, Url};
use azure_security_keyvault_secrets::models::{self, SecretClientGetSecretOptions};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use futures_util::stream::BoxStream;
use keyrack_core::{
    Capabilities, Clock, Error, ErrorKind, Lease, Result, Secret, SecretRef, SecretSource,
    SecretValue, Selector, SourceEvent, Version, async_trait, fetch_each,
};

use crate::challenge::{ScopeDiscovery, ScopeWitness};
use crate::credential::CredentialMaker;
use crate::errors::from_azure;

/// Concurrent reads of one `fetch_many` (Key Vault has no batch read).
const READS_IN_FLIGHT: usize = 8;

/// Where each vault name is served.
#[derive(Clone, Debug)]
pub(crate) struct Vaults {
    pub(crate) default_vault: Option<String>,
    pub(crate) urls: HashMap<String, String>,
    pub(crate) template: String,
}

impl Vaults {
    pub(crate) fn url_for(&self, vault: &str) -> String {
        match self.urls.get(vault) {
            Some(url) => url.clone(),
            None => self.template.replace("{name}", vault),
        }
    }
}

/// Azure Key Vault as a [`SecretSource`].
///
/// References: `azure-kv://<vault-name>/<secret-name>[?version=<id>][#field]`, or
/// `azure-kv://<secret-name>` in the builder's default vault. One source serves any number of
/// vaults; each gets its own SDK client (and its own authentication challenge) on first use.
/// Reads of a vault that start together before its challenge was answered wait for the first
/// one: N cold reads cost one challenge round trip, not N (a failed challenge fails those that
/// waited for it and is tried again by the next read).
///
/// - No selector reads the latest version; `?version=<id>` (the last segment of the secret's
///   id URL) pins one. `?stage=` is `Unsupported`: Key Vault has no staging labels.
/// - The value is the secret's text (`value`), returned as its UTF-8 bytes; Key Vault stores
///   text only, so binary data has to be encoded by whoever writes it.
/// - Metadata: the version is taken from the id URL
///   (`https://<vault>/secrets/<name>/<version>`), `created_at` from `attributes.created`,
///   `expires_at` from `attributes.exp`. An expiry makes the client re-check before that time
///   (at two thirds of the remaining time) and stop serving the value once it has passed.
///   `nbf` is not enforced by Key Vault for secrets and has no slot in the metadata, so it is
///   not reported.
/// - A disabled secret (`attributes.enabled = false`, which Key Vault answers with 403
///   `SecretDisabled`) is `ErrorKind::Disabled`, never a value.
///
/// **No version probe.** Key Vault has no call that answers a secret's current version more
/// cheaply than reading it: listing versions is a paged list operation and every call counts
/// against the same limit (4,000 secret operations per 10 s per vault). A probe followed by a
/// read would double the cost of a change, so `capabilities().version_probe` is `false` and the
/// client re-reads on its refresh interval, which it shortens by a random fraction (the
/// client's `refresh_jitter`, 20 % by default) so a fleet started together spreads its reads
/// over that fraction of the interval instead of hitting the vault at once.
///
/// **Errors.** 404 (`SecretNotFound`) → `NotFound`; 403 → `PermissionDenied` (`Disabled` for a
/// disabled secret), with what would fix it told apart by Key Vault's inner error code (a role
/// or an access policy for the identity; the firewall's network rules; a private endpoint; a
/// proxy in front of the vault when the answer is not Key Vault's); 429 → `Throttled`
/// (retryable); 5xx and failures to connect → `Unavailable`. The wait an answer asks for is kept
/// whatever the status: `retry-after-ms`/`x-ms-retry-after-ms`, else `Retry-After` in seconds or
/// as an HTTP-date (read against the builder's clock). Key Vault's messages are kept on one line. 401 after the challenge and a token → `Unauthenticated`, and the
/// refused token is dropped: the source makes a new credential (and new clients), so the next
/// read requests a new access token instead of sending the refused one until it expires (a
/// credential given with `with_credential` cannot be remade: the new clients ask it again, and
/// it decides whether to serve the same token).
/// No token: Entra ID refused (400 `invalid_grant`, `invalid_client`, 401, …) or nothing is
/// configured → `Unauthenticated` with the reason; Entra ID throttled (429) → `Throttled` with
/// its `Retry-After`; Entra ID unavailable (5xx) or unreachable → `Unavailable`. A challenge
/// naming another resource than the vault audience (when the SDK's challenge check is off) →
/// `Config`. The SDK's own retries are off: the client's backoff, which honours `Retry-After`,
/// is the only retry loop.
///
/// **What is wiped.** The value handed to the engine is zeroized on drop; it takes over the
/// string the SDK parsed (no copy left behind). Not wiped: the HTTP body the SDK parsed it from,
/// the TLS and connection buffers under it, the client assertion `azure_identity` takes as a
/// plain string, and the access tokens its credentials cache.
#[derive(Clone)]
pub struct AzureSource {
    inner: Arc<Inner>,
}

struct Inner {
    vaults: Vaults,
    maker: CredentialMaker,
    options: SecretClientOptions,
    auth: Mutex<Auth>,
    /// Its wall time reads a `Retry-After` given as an HTTP-date.
    clock: Arc<dyn Clock>,
    /// The request timeout; also bounds a vault's first read, which waiting reads depend on.
    timeout: Duration,
}

/// A vault's SDK client and the discovery of its token scope.
#[derive(Clone)]
struct VaultClient {
    client: Arc<SecretClient>,
    discovery: Arc<ScopeDiscovery>,
}

/// The credential and the clients that use it, replaced together when Key Vault refuses an
/// access token the credential obtained.
struct Auth {
    /// Counts replacements, so that reads failing together replace a credential once.
    generation: u64,
    credential: Arc<dyn TokenCredential>,
    clients: HashMap<String, VaultClient>,
}

impl fmt::Debug for AzureSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = self.inner.auth();
        f.debug_struct("AzureSource")
            .field("vaults", &self.inner.vaults)
            .field("credential", &auth.credential)
            .field("generation", &auth.generation)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn auth(&self) -> std::sync::MutexGuard<'_, Auth> {
        // Plain fields, each assignment complete: a panic elsewhere cannot leave them torn.
        self.auth.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidRef, message)
}

/// Key Vault's limits (Azure's naming rules for `Microsoft.KeyVault`): vault names 3–24
/// characters, secret names 1–127, both of letters, digits and hyphens; version ids are 32 hex
/// digits (up to 64 letters and digits accepted).
const VAULT_NAME: std::ops::RangeInclusive<usize> = 3..=24;
const SECRET_NAME: std::ops::RangeInclusive<usize> = 1..=127;
const VERSION_ID: std::ops::RangeInclusive<usize> = 1..=64;

/// A part of a reference against its limit and its characters. The error says which part and
/// which rule but does not quote the part: a reference that does not check out may be a value
/// pasted in the wrong place.
fn check_part(
    what: &str,
    s: &str,
    len: std::ops::RangeInclusive<usize>,
    allowed: fn(u8) -> bool,
    rule: &str,
) -> Result<()> {
    let n = s.chars().count();
    if n > *len.end() {
        return Err(invalid(format!(
            "the {what} is {n} characters long; Key Vault allows at most {}",
            len.end()
        )));
    }
    if !len.contains(&n) || !s.bytes().all(allowed) {
        return Err(invalid(format!(
            "the {what} is not one Key Vault accepts ({rule}, {}-{} characters)",
            len.start(),
            len.end()
        )));
    }
    Ok(())
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Vault names: 3–24 letters, digits and hyphens.
pub(crate) fn check_vault(name: &str) -> Result<()> {
    check_part(
        "vault name",
        name,
        VAULT_NAME,
        name_byte,
        "letters, digits and hyphens",
    )
}

/// Secret names: 1–127 letters, digits and hyphens. Checked here because the SDK pastes the
/// name into the URL path: a `/` or `..` would address another resource.
fn check_secret_name(name: &str) -> Result<()> {
    check_part(
        "secret name",
        name,
        SECRET_NAME,
        name_byte,
        "letters, digits and hyphens",
    )
}

fn check_version(version: &str) -> Result<()> {
    check_part(
        "version id",
        version,
        VERSION_ID,
        |b| b.is_ascii_alphanumeric(),
        "letters and digits",
    )
}

/// The version id: the last path segment of `https://<vault>/secrets/<name>/<version>`.
fn version_from_id(id: &str) -> Option<String> {
    let url = Url::parse(id).ok()?;
    let segments: Vec<&str> = url.path_segments()?.filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [_, _, version] => Some((*version).to_owned()),
        _ => None,
    }
}

fn wall(t: azure_core::time::OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// A secret from Key Vault's answer.
pub(crate) fn secret_from(model: models::Secret) -> Result<Secret> {
    let attributes = model.attributes.unwrap_or_default();
    if attributes.enabled == Some(false) {
        return Err(Error::new(
            ErrorKind::Disabled,
            "the secret version is disabled (attributes.enabled = false)",
        ));
    }
    let Some(value) = model.value else {
        return Err(Error::invalid_value(
            "Key Vault returned the secret without a value",
        ));
    };
    let mut secret = Secret::new(SecretValue::from_string(value));
    if let Some(v) = model.id.as_deref().and_then(version_from_id) {
        secret = secret.versioned(v);
    }
    if let Some(created) = attributes.created {
        secret = secret.created_at(wall(created));
    }
    if let Some(exp) = attributes.expires {
        secret = secret.expires_at(wall(exp));
    }
    Ok(secret)
}

impl AzureSource {
    pub(crate) fn new(
        vaults: Vaults,
        maker: CredentialMaker,
        options: SecretClientOptions,
        clock: Arc<dyn Clock>,
        timeout: Duration,
    ) -> Result<Self> {
        let credential = maker.make()?;
        Ok(AzureSource {
            inner: Arc::new(Inner {
                vaults,
                maker,
                options,
                auth: Mutex::new(Auth {
                    generation: 0,
                    credential,
                    clients: HashMap::new(),
                }),
                clock,
                timeout,
            }),
        })
    }

    /// The SDK client for `vault` (to write secrets, or for calls this crate does not make). It
    /// shares this source's credential, transport and challenge state. When Key Vault refuses
    /// an access token, the source replaces its credential and its clients: ask for the client
    /// again rather than keeping it.
    pub fn client(&self, vault: &str) -> Result<Arc<SecretClient>> {
        self.client_and_generation(vault).map(|(c, _)| c.client)
    }

    /// The client for `vault` and the generation of the credential it uses.
    fn client_and_generation(&self, vault: &str) -> Result<(VaultClient, u64)> {
        check_vault(vault)?;
        let mut auth = self.inner.auth();
        let generation = auth.generation;
        if let Some(c) = auth.clients.get(vault) {
            return Ok((c.clone(), generation));
        }
        let url = self.inner.vaults.url_for(vault);
        let discovery = Arc::new(ScopeDiscovery::default());
        let witness = Arc::new(ScopeWitness {
            inner: auth.credential.clone(),
            discovery: discovery.clone(),
        });
        let client =
            SecretClient::new(&url, witness, Some(self.inner.options.clone())).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("vault `{vault}` at `{url}`: {e}"),
                )
            })?;
        let client = VaultClient {
            client: Arc::new(client),
            discovery,
        };
        auth.clients.insert(vault.to_owned(), client.clone());
        Ok((client, generation))
    }

    /// Key Vault refused an access token of credential `generation` (401 after login): make a
    /// new credential, whose first token request goes to Entra ID rather than to the refused
    /// token's cache, and new clients that use it, and tell the identity token source to drop
    /// its copy. Once per generation: reads that failed with the same credential replace it once.
    fn replace_credential(&self, generation: u64) {
        let mut auth = self.inner.auth();
        if auth.generation != generation {
            return;
        }
        match self.inner.maker.make() {
            Ok(credential) => {
                auth.credential = credential;
                auth.clients.clear();
                auth.generation += 1;
                drop(auth);
                self.inner.maker.invalidate_identity();
                tracing::info!(
                    "Key Vault refused the access token: the credential is replaced, the next \
                     read requests a new token"
                );
            }
            // Cannot happen with a configuration that built once; keep the current credential.
            Err(e) => tracing::warn!("Key Vault refused the access token; no new credential: {e}"),
        }
    }

    /// One Get Secret.
    async fn get_secret(
        &self,
        client: &SecretClient,
        generation: u64,
        name: &str,
        version: Option<String>,
    ) -> Result<Secret> {
        let options = SecretClientGetSecretOptions {
            secret_version: version,
            ..Default::default()
        };
        let response = match client.get_secret(name, Some(options)).await {
            Ok(response) => response,
            Err(e) => {
                // Key Vault's own 401: the SDK answered the challenge with the credential's
                // (cached) token and Key Vault refused it again.
                if e.http_status() == Some(StatusCode::Unauthorized) {
                    self.replace_credential(generation);
                }
                return Err(from_azure("GetSecret", e, self.inner.clock.wall()));
            }
        };
        let model = response.into_model().map_err(|e| match e.kind() {
            AzureKind::DataConversion => Error::new(
                ErrorKind::Backend,
                "Key Vault GetSecret: unreadable response",
            ),
            _ => from_azure("GetSecret", e, self.inner.clock.wall()),
        })?;
        secret_from(model)
    }

    /// The vault and secret a reference names.
    fn locate<'r>(&'r self, r: &'r SecretRef) -> Result<(&'r str, &'r str)> {
        locate(r, self.inner.vaults.default_vault.as_deref())
    }
}

/// The version a reference pins, if any.
pub(crate) fn selected_version(r: &SecretRef) -> Result<Option<String>> {
    match r.selector() {
        None => Ok(None),
        Some(Selector::Version(v)) => {
            check_version(v)?;
            Ok(Some(v.clone()))
        }
        Some(_) => Err(Error::unsupported(
            "Key Vault cannot select a stage: it has versions, not stages",
        )),
    }
}

/// The vault and secret a reference names; `default_vault` serves references without a vault.
pub(crate) fn locate<'r>(
    r: &'r SecretRef,
    default_vault: Option<&'r str>,
) -> Result<(&'r str, &'r str)> {
    // `?version=` is a selector, not a parameter: no parameter is known, a near miss is
    // named, and a misspelt `?version=` does not read the latest version.
    r.expect_params(&[])?;
    let (vault, name) = match r.path().split_once('/') {
        Some((vault, name)) => (vault, name),
        None => match default_vault {
            Some(vault) => (vault, r.path()),
            None => {
                return Err(invalid(
                    "an azure-kv reference needs `<vault-name>/<secret-name>` (no default \
                     vault is configured)",
                ));
            }
        },
    };
    check_vault(vault)?;
    check_secret_name(name)?;
    Ok((vault, name))
}

#[async_trait]
impl SecretSource for AzureSource {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.versions = true;
        // Key Vault's throttling guidance ("Azure Key Vault throttling guidance": back off 1, 2,
        // 4, 8, 16 s after a 429 that gives no Retry-After): no retry sooner than a second.
        caps.retry_floor = Duration::from_secs(1);
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let (vault, name) = self.locate(r)?;
        let version = selected_version(r)?;
        let (client, generation) = self.client_and_generation(vault)?;
        // A cold vault's first read goes alone; concurrent ones wait for its challenge.
        let read = || self.get_secret(&client.client, generation, name, version.clone());
        client.discovery.read(self.inner.timeout, read).await
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        fetch_each(self, refs, READS_IN_FLIGHT).await
    }

    async fn version(&self, _r: &SecretRef) -> Result<Option<Version>> {
        Err(Error::unsupported(
            "Key Vault has no version probe cheaper than a read",
        ))
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(Error::unsupported("Key Vault secrets have no leases"))
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(Error::unsupported("Key Vault secrets have no leases"))
    }

    fn watch(&self, _r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        None
    }

    /// Nothing to stop: the SDK clients and `azure_identity`'s credentials run no task of their
    /// own (tokens are requested when a read needs one), and the source keeps no other.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_id_url() {
        // id of rust/secret_roundtrip.json, entry 0.
        assert_eq!(
            version_from_id(
                "https://t74470a1f9658b2b5.vault.azure.net/secrets/secret-roundtrip/a471deac486e4fe1bc64dfb520bd6fda"
            )
            .as_deref(),
            Some("a471deac486e4fe1bc64dfb520bd6fda")
        );
        assert_eq!(
            version_from_id("https://v.vault.azure.net/secrets/name"),
            None
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_vault("my-vault").is_ok());
        assert!(check_vault("ab").is_err());
        assert!(check_secret_name("db-password").is_ok());
        for bad in ["", "a/b", "..", "a b", "a?x", "ä"] {
            assert_eq!(
                check_secret_name(bad).unwrap_err().kind(),
                &ErrorKind::InvalidRef,
                "{bad}"
            );
        }
        assert!(check_version("a471deac486e4fe1bc64dfb520bd6fda").is_ok());
        assert!(check_version("../x").is_err());
    }
}
