//! Azure Key Vault: the `keyrack-azure` source, whose SDK sends to an in-process fake through
//! `AzureBuilder::with_http_client`. Quota from "Azure Key Vault service limits": 4,000 secret
//! GET transactions per 10 seconds per vault (and region); the fake keeps it as a bucket of
//! 4,000 refilled at 400 per second (the service's window is not documented further) and counts
//! every request it answers against it, the unauthenticated challenge included (an assumption:
//! the documents do not say whether Key Vault counts it). Past the quota it answers 429 with
//! Key Vault's `Throttled` error and no `Retry-After` (the throttling guidance tells clients to
//! back off 1, 2, 4, 8, 16 s when there is none; whether the service sends one is not
//! documented either).
//!
//! Answers are shaped after the recordings in `testing/fake-server/fixtures/azure/`: the 401
//! challenge of `list_secrets_by_pages_verify_telemetry.excerpt.json` entry 0, the 200 of
//! `get_secret.excerpt.json` entry 1 with the value, id and dates substituted. Every pod's
//! credential is a fixed token (Entra ID has quotas of its own, not simulated here).

use std::sync::{Arc, Mutex};

use keyrack_azure::AzureBuilder;
use keyrack_azure::azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use keyrack_azure::azure_core::http::headers::{HeaderName, Headers};
use keyrack_azure::azure_core::http::{AsyncRawResponse, HttpClient, Request, StatusCode};
use keyrack_azure::azure_core::time::{Duration as AzureDuration, OffsetDateTime};
use keyrack_core::{RequestBudget, SecretRef, SecretSource, async_trait};
use keyrack_fake_server::azure::entry;
use serde_json::{Value, json};

use crate::{Backend, Bucket, LATENCY, Ledger, SECRETS, SimClock, even_share};

/// Secret GETs per vault: 4,000 per 10 s.
const QUOTA: f64 = 4_000.0;
const WINDOW_SECS: f64 = 10.0;
const VAULT: &str = "fleet";
const VAULT_URL: &str = "https://fleet.vault.azure.net";
const TOKEN: &str = "fleet-access-token";

/// The fake Key Vault every pod's SDK sends to.
#[derive(Debug, Clone)]
pub(crate) struct Azure {
    bucket: Arc<Mutex<Bucket>>,
    ledger: Ledger,
    /// The recorded 401 challenge: status, `WWW-Authenticate`, body.
    challenge: Arc<(u16, String, Vec<u8>)>,
    /// The recorded 200 of a read, its fields substituted per answer.
    read: Arc<Value>,
}

fn name(i: usize) -> String {
    format!("secret-{i:02}")
}

fn answer(status: u16, headers: &[(&'static str, String)], body: Vec<u8>) -> AsyncRawResponse {
    let mut h = Headers::new();
    h.insert("content-type", "application/json; charset=utf-8");
    for (name, value) in headers {
        h.insert(HeaderName::from_static(name), value.clone());
    }
    AsyncRawResponse::from_bytes(StatusCode::from(status), h, body)
}

impl Azure {
    fn respond(&self, request: &Request) -> AsyncRawResponse {
        let authorized = request
            .headers()
            .get_optional_str(&HeaderName::from_static("authorization"))
            == Some(&format!("Bearer {TOKEN}"));
        let operation = if authorized { "GetSecret" } else { "challenge" };
        let allowed = self.bucket.lock().unwrap().take();
        if !self.ledger.count(operation, allowed) {
            // Key Vault's error body (REST reference, KeyVaultError) with the code and message
            // of "Azure Key Vault throttling guidance".
            let body = json!({"error": {
                "code": "Throttled",
                "message": "Request was not processed because too many requests were received. \
                            Reason: A maximum of 4000 requests in 10 seconds is allowed per vault.",
            }});
            return answer(429, &[], body.to_string().into_bytes());
        }
        if !authorized {
            let (status, www, body) = &*self.challenge;
            return answer(*status, &[("www-authenticate", www.clone())], body.clone());
        }
        // GET /secrets/{name}/ : the latest version.
        let path = request.url().path().to_owned();
        let secret = path
            .strip_prefix("/secrets/")
            .map(|p| p.trim_end_matches('/'))
            .unwrap_or_default();
        let Some(version) = self.ledger.version_of_name(secret) else {
            let body = json!({"error": {"code": "SecretNotFound",
                "message": format!("A secret with (name/id) {secret} was not found in this key vault.")}});
            return answer(404, &[], body.to_string().into_bytes());
        };
        let mut body = (*self.read).clone();
        body["value"] = json!(format!("value {version} of {secret}"));
        body["id"] = json!(format!("{VAULT_URL}/secrets/{secret}/{version:032x}"));
        body["attributes"]["created"] = json!(1_800_000_000u64 + version);
        body["attributes"]["updated"] = json!(1_800_000_000u64 + version);
        answer(200, &[], body.to_string().into_bytes())
    }
}

#[async_trait]
impl HttpClient for Azure {
    async fn execute_request(
        &self,
        request: &Request,
    ) -> keyrack_azure::azure_core::Result<AsyncRawResponse> {
        let response = self.respond(request);
        tokio::time::sleep(LATENCY).await;
        Ok(response)
    }
}

/// A credential with one long-lived token: Entra ID is not what this simulates.
#[derive(Debug)]
struct FixedToken;

#[async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> keyrack_azure::azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            TOKEN,
            OffsetDateTime::now_utc() + AzureDuration::days(1),
        ))
    }
}

impl Backend for Azure {
    const LABEL: &'static str = "azure";
    const SOURCE: &'static str = "azure-kv";
    const QUOTAS: &'static str = "secret GETs 4,000 per 10 s per vault";

    fn new() -> Self {
        let recorded = entry("list_secrets_by_pages_verify_telemetry.excerpt.json", 0);
        let challenge = (
            recorded["StatusCode"].as_u64().unwrap() as u16,
            recorded["ResponseHeaders"]["WWW-Authenticate"]
                .as_str()
                .unwrap()
                .to_owned(),
            recorded["ResponseBody"].to_string().into_bytes(),
        );
        let read = entry("get_secret.excerpt.json", 1)["ResponseBody"].clone();
        Azure {
            bucket: Arc::new(Mutex::new(Bucket::new(QUOTA / WINDOW_SECS, QUOTA))),
            ledger: Ledger::new((0..SECRETS).map(name)),
            challenge: Arc::new(challenge),
            read: Arc::new(read),
        }
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn reference(i: usize) -> SecretRef {
        SecretRef::parse(&format!("azure-kv://{VAULT}/{}", name(i))).unwrap()
    }

    async fn source(&self, clock: SimClock) -> Arc<dyn SecretSource> {
        let source = AzureBuilder::new()
            .with_vault_url(VAULT, VAULT_URL)
            .with_credential(Arc::new(FixedToken))
            .with_http_client(Arc::new(self.clone()))
            .with_clock(clock)
            .build()
            .unwrap();
        Arc::new(source)
    }

    fn share(pods: usize) -> RequestBudget {
        // The vault's 400 per second and its 4,000 at once split evenly (without the share of
        // the burst, 1,000 pods took 1.24 times the floor: the floor drains the vault's burst
        // first).
        even_share(QUOTA / WINDOW_SECS, QUOTA, pods)
    }

    /// Every pod's challenge and 20 reads through the bucket (starting full), plus one
    /// request's latency.
    fn floor(pods: usize) -> f64 {
        let requests = (pods * (SECRETS + 1)) as f64;
        ((requests - QUOTA) / (QUOTA / WINDOW_SECS)).max(0.0) + LATENCY.as_secs_f64()
    }
}
