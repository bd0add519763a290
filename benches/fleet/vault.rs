//! Vault / OpenBao: the `keyrack-vault` source, whose requests go to an in-process fake through
//! `VaultBuilder::with_transport` (the source's request building, timeouts and answer parsing
//! are the real ones; reqwest and the socket are not run). Vault documents no quota: its
//! capacity is the operator's machine. The fake has the capacity measured from the OpenBao of
//! the test ground on this machine by `benches/vault_fleet.rs` (2 shared cores, 2026-12-07):
//! 5,094 KV v2 reads and 2,122 AppRole logins per second. It serves requests one after another
//! in arrival order at that rate, as a saturated server does: a request beyond capacity waits,
//! it is not refused (OpenBao refuses only under a rate-limit quota, which is off unless an
//! operator sets one), and one the client gave up on (its 30 s timeout) still costs the server
//! its work. Mount lookups, version probes, renewals and revocations cost a read; a login costs
//! a login.
//!
//! `vault_quota` is the same server behind a rate-limit quota an operator set to protect it
//! (`sys/quotas/rate-limit`, global: every request of every client counts), here 2,000 per
//! second, a bucket holding one second's worth (OpenBao's limiter refills `rate` per
//! `interval`). Past it OpenBao answers the recorded 429 with `Retry-After: 0`; a refused request
//! costs the server nothing here.
//!
//! Answers are OpenBao 2.7.2's, recorded (`keyrack_fake_server::vault`): the AppRole login (a
//! token per login, 1 hour, renewable), the KV v2 mount, the read and the metadata with value
//! and version substituted, and the 403 for anything else (the AppRole's policy grants the
//! fleet's secrets only).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keyrack_core::{RequestBudget, Result, SecretRef, SecretSource, SecretValue, async_trait};
use keyrack_fake_server::vault::{Recorded, recorded};
use keyrack_vault::{Auth, Transport, VaultBuilder};

use crate::{Backend, Bucket, LATENCY, Ledger, SECRETS, SimClock, even_share};

/// KV v2 reads per second the OpenBao of the test ground served (`vault_fleet`).
const READS: f64 = 5_094.0;
/// AppRole logins per second, the same.
const LOGINS: f64 = 2_122.0;
/// Requests a pod's start-up needs besides its reads: the login and the mount lookup.
const LOGIN_COST: f64 = 1.0 / LOGINS;
const READ_COST: f64 = 1.0 / READS;
const ADDRESS: &str = "https://vault.fleet.internal:8200";
const TOKEN_PREFIX: &str = "s.fleet-";

/// The rate-limit quota of `vault_quota`, per second.
pub(crate) const QUOTA: u32 = 2_000;

/// The fake OpenBao every pod's source sends to, behind a rate-limit quota of `LIMIT` requests
/// per second (0: none).
#[derive(Debug, Clone)]
pub(crate) struct Vault<const LIMIT: u32> {
    /// When the server is next free.
    free_at: Arc<Mutex<tokio::time::Instant>>,
    quota: Option<Arc<Mutex<Bucket>>>,
    ledger: Ledger,
    logins: Arc<AtomicUsize>,
}

fn name(i: usize) -> String {
    format!("secret-{i:02}")
}

fn answer(r: &Recorded) -> http::Response<SecretValue> {
    let mut a = http::Response::builder().status(r.status);
    for (k, v) in &r.headers {
        a = a.header(k, v);
    }
    a.body(SecretValue::from_string(r.body.to_string()))
        .unwrap()
}

impl<const LIMIT: u32> Vault<LIMIT> {
    /// The operation a path names, and what it costs the server.
    fn operation(path: &str) -> (&'static str, f64) {
        if path.ends_with("/login") {
            ("login", LOGIN_COST)
        } else if path.starts_with("/v1/sys/internal/ui/mounts/") {
            ("mount", READ_COST)
        } else if path.starts_with("/v1/secret/data/") {
            ("read", READ_COST)
        } else if path.starts_with("/v1/secret/metadata/") {
            ("metadata", READ_COST)
        } else {
            (
                match path {
                    "/v1/auth/token/renew-self" => "renew-self",
                    "/v1/auth/token/revoke-self" => "revoke-self",
                    "/v1/auth/token/lookup-self" => "lookup-self",
                    _ => "other",
                },
                READ_COST,
            )
        }
    }

    fn respond(&self, request: &http::Request<Bytes>) -> http::Response<SecretValue> {
        let path = request.uri().path();
        let (operation, _) = Self::operation(path);
        let token_ok = request
            .headers()
            .get("x-vault-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with(TOKEN_PREFIX));
        if operation == "login" {
            let mut r = recorded("approle_login");
            let n = self.logins.fetch_add(1, Ordering::Relaxed);
            r.body["auth"]["client_token"] = format!("{TOKEN_PREFIX}{n}").into();
            return answer(&r);
        }
        if !token_ok {
            return answer(&recorded("permission_denied"));
        }
        let secret = path.rsplit('/').next().unwrap_or_default();
        match operation {
            "mount" => answer(&recorded("ui_mounts_kv2")),
            "read" | "metadata" => {
                let Some(version) = self.ledger.version_of_name(secret) else {
                    return answer(&recorded("permission_denied"));
                };
                let mut r = if operation == "read" {
                    let mut r = recorded("kv2_read");
                    r.body["data"]["data"]["value"] = format!("value {version} of {secret}").into();
                    r.body["data"]["metadata"]["version"] = version.into();
                    r
                } else {
                    let mut r = recorded("kv2_metadata");
                    r.body["data"]["current_version"] = version.into();
                    r
                };
                r.body["request_id"] = serde_json::Value::Null;
                answer(&r)
            }
            "renew-self" => {
                let mut r = recorded("approle_login");
                let token = request.headers()["x-vault-token"].to_str().unwrap();
                r.body["auth"]["client_token"] = token.into();
                answer(&r)
            }
            "revoke-self" => http::Response::builder()
                .status(204)
                .body(SecretValue::from_bytes(Vec::new()))
                .unwrap(),
            _ => answer(&recorded("permission_denied")),
        }
    }
}

#[async_trait]
impl<const LIMIT: u32> Transport for Vault<LIMIT> {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<SecretValue>> {
        let (operation, cost) = Self::operation(request.uri().path());
        let allowed = self.quota.as_ref().is_none_or(|q| q.lock().unwrap().take());
        if !self.ledger.count(operation, allowed) {
            tokio::time::sleep(LATENCY).await;
            return Ok(answer(&recorded("rate_limited")));
        }
        // The server takes the request in arrival order; its work is done (and its time spent)
        // whether or not the client still waits.
        let done = {
            let mut free_at = self.free_at.lock().unwrap();
            let start = (*free_at).max(tokio::time::Instant::now());
            *free_at = start + std::time::Duration::from_secs_f64(cost);
            *free_at
        };
        tokio::time::sleep_until(done + LATENCY).await;
        Ok(self.respond(&request))
    }
}

impl<const LIMIT: u32> Backend for Vault<LIMIT> {
    const LABEL: &'static str = if LIMIT == 0 { "vault" } else { "vault_quota" };
    const SOURCE: &'static str = "vault";
    const QUOTAS: &'static str = if LIMIT == 0 {
        "OpenBao's measured capacity, 5,094 KV reads and 2,122 AppRole logins per second, \
         served in arrival order, none refused"
    } else {
        "the same behind a rate-limit quota of 2,000 requests per second, refused as 429 \
         Retry-After: 0"
    };

    fn new() -> Self {
        let limit = f64::from(LIMIT);
        Vault {
            free_at: Arc::new(Mutex::new(tokio::time::Instant::now())),
            quota: (LIMIT > 0).then(|| Arc::new(Mutex::new(Bucket::new(limit, limit)))),
            ledger: Ledger::new((0..SECRETS).map(name)),
            logins: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn reference(i: usize) -> SecretRef {
        SecretRef::parse(&format!("vault://secret/app/fleet/{}#value", name(i))).unwrap()
    }

    async fn source(&self, clock: SimClock) -> Arc<dyn SecretSource> {
        let source = VaultBuilder::new()
            .with_address(ADDRESS)
            .with_auth(Auth::approle("fleet", "fleet-secret-id"))
            .with_clock(clock)
            .with_transport(self.clone())
            .build()
            .unwrap();
        Arc::new(source)
    }

    fn share(pods: usize) -> RequestBudget {
        // A pod's start-up is a login, a mount lookup and its reads: the server's time for the
        // whole fleet's (or the quota, if lower), split evenly, as a rate of requests.
        let requests = (SECRETS + 2) as f64;
        let mut rate = requests / (LOGIN_COST + (SECRETS + 1) as f64 * READ_COST);
        if LIMIT > 0 {
            rate = rate.min(f64::from(LIMIT));
        }
        even_share(rate, rate, pods)
    }

    /// The server's time for every pod's login, mount lookup and 20 reads (or the quota's for
    /// those requests, starting full, if longer), plus one request's latency.
    fn floor(pods: usize) -> f64 {
        let served = pods as f64 * (LOGIN_COST + (SECRETS + 1) as f64 * READ_COST);
        let limit = f64::from(LIMIT);
        let allowed = if LIMIT == 0 {
            0.0
        } else {
            ((pods * (SECRETS + 2)) as f64 - limit).max(0.0) / limit
        };
        served.max(allowed) + LATENCY.as_secs_f64()
    }
}
