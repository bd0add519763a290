//! A loopback fake of the few Vault endpoints the source calls, for faults OpenBao cannot be made
//! to show on demand: an outage that answers 503 (with or without `Retry-After`), an answer held
//! back while something else happens, a redirect. Answers are shaped after OpenBao 2.7.2's (see
//! the test ground's README): `auth` for logins and renew-self, `data` for reads, `errors` for
//! failures.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyrack_core::{Clock, ManualClock};
use keyrack_fake_server::{FakeServer, Request, Response};
use keyrack_vault::{Auth, VaultBuilder, VaultSource};
use serde_json::json;
use tokio::sync::Notify;

pub const ROLE_ID: &str = "fake-role-id";
pub const SECRET_ID: &str = "fake-secret-id";

/// What the fake answers, changed by the test as it goes.
#[derive(Default)]
pub struct Behaviour {
    /// Every request answers 503 ("Vault is sealed"), with this `Retry-After` if set.
    pub down: AtomicBool,
    pub retry_after: Mutex<Option<String>>,
    /// Requests whose path starts with this wait for the notify before they are answered.
    pub hold: Mutex<Option<(String, Arc<Notify>)>>,
    /// Revoked tokens: refused with 403 everywhere.
    pub dead: Mutex<HashSet<String>>,
    /// TTL of the tokens issued, in seconds.
    pub token_ttl: AtomicU64,
    /// Tokens issued so far (`tok-<n>`), and leases / serials.
    pub issued: AtomicU64,
    pub leases: AtomicU64,
    /// The value of `secret/data/*` reads (its `v` key).
    pub value: Mutex<String>,
    /// The token AppRole logins hand out when set (instead of `tok-<n>`).
    pub fixed_token: Mutex<Option<String>>,
    /// The AppRole secret id logins must present.
    pub secret_id: Mutex<String>,
    /// Every answer closes its connection (`Connection: close`).
    pub close_connections: AtomicBool,
}

pub struct FakeVault {
    pub server: FakeServer,
    pub behaviour: Arc<Behaviour>,
}

fn vault_error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({ "errors": [message] }))
}

impl FakeVault {
    pub async fn start(token_ttl: u64) -> Self {
        let behaviour = Arc::new(Behaviour::default());
        behaviour.token_ttl.store(token_ttl, Ordering::SeqCst);
        *behaviour.value.lock().unwrap() = "v-1".into();
        *behaviour.secret_id.lock().unwrap() = SECRET_ID.into();
        let b = behaviour.clone();
        let server = FakeServer::http(move |req| {
            let b = b.clone();
            async move {
                let response = answer(&b, req).await;
                if b.close_connections.load(Ordering::SeqCst) {
                    response.header("connection", "close")
                } else {
                    response
                }
            }
        })
        .await;
        FakeVault { server, behaviour }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// An AppRole source on this fake, scheduling on `clock`.
    pub fn source(&self, clock: ManualClock) -> VaultSource {
        self.builder(clock).build().unwrap()
    }

    pub fn builder(&self, clock: impl Clock) -> VaultBuilder {
        VaultBuilder::new()
            .with_address(self.url())
            .with_auth(Auth::approle(ROLE_ID, SECRET_ID))
            .with_clock(clock)
    }

    pub fn set_down(&self, down: bool) {
        self.behaviour.down.store(down, Ordering::SeqCst);
    }

    /// Hold requests to paths starting with `prefix` until the returned notify is notified.
    pub fn hold(&self, prefix: &str) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        *self.behaviour.hold.lock().unwrap() = Some((prefix.to_owned(), notify.clone()));
        notify
    }

    pub fn kill(&self, token: &str) {
        self.behaviour.dead.lock().unwrap().insert(token.to_owned());
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.server.requests_to(prefix).len()
    }

    /// Calls that keep the source's token alive: renewals and logins.
    pub fn keeper_calls(&self) -> usize {
        self.count("/v1/auth/token/renew-self") + self.count("/v1/auth/approle/login")
    }

    /// The tokens sent with requests to paths starting with `prefix`, in order.
    pub fn tokens_sent_to(&self, prefix: &str) -> Vec<String> {
        self.server
            .requests_to(prefix)
            .iter()
            .filter_map(|r| r.header("x-vault-token").map(str::to_owned))
            .collect()
    }
}

/// A read's answer around `data`, every envelope field as OpenBao 2.7.2 sends it.
pub fn envelope(data: serde_json::Value) -> serde_json::Value {
    json!({
        "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": null, "auth": null
    })
}

/// A login's (or renew-self's) answer, every field as OpenBao 2.7.2 sends it.
fn auth(token: &str, ttl: u64) -> serde_json::Value {
    json!({
        "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": null, "wrap_info": null, "warnings": null,
        "auth": {
            "client_token": token, "accessor": "acc", "policies": ["default", "app-read"],
            "token_policies": ["default", "app-read"], "metadata": { "role_name": "app" },
            "lease_duration": ttl, "renewable": true, "entity_id": "e", "token_type": "service",
            "orphan": true, "mfa_requirement": null, "num_uses": 0
        }
    })
}

async fn answer(b: &Behaviour, req: Request) -> Response {
    // Whether the token is alive is decided when the request arrives, as Vault does; a held
    // answer is only delivered late.
    let token = req.header("x-vault-token").unwrap_or_default().to_owned();
    let alive = !token.is_empty() && !b.dead.lock().unwrap().contains(&token);
    let held = b
        .hold
        .lock()
        .unwrap()
        .as_ref()
        .filter(|(prefix, _)| req.path.starts_with(prefix.as_str()))
        .map(|(_, n)| n.clone());
    if let Some(notify) = held {
        notify.notified().await;
    }
    if b.down.load(Ordering::SeqCst) {
        let mut r = vault_error(503, "Vault is sealed");
        if let Some(v) = b.retry_after.lock().unwrap().clone() {
            r = r.header("retry-after", v);
        }
        return r;
    }
    let ttl = b.token_ttl.load(Ordering::SeqCst);
    let path = req
        .path
        .strip_prefix("/v1/")
        .unwrap_or(&req.path)
        .to_owned();
    match (req.method.as_str(), path.as_str()) {
        ("POST" | "PUT", "auth/approle/login") => {
            let body = req.json();
            if body["role_id"] != ROLE_ID || body["secret_id"] != *b.secret_id.lock().unwrap() {
                return vault_error(400, "invalid role or secret ID");
            }
            let n = b.issued.fetch_add(1, Ordering::SeqCst);
            let token = b
                .fixed_token
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| format!("tok-{n}"));
            Response::json(200, &auth(&token, ttl))
        }
        _ if !alive => vault_error(403, "permission denied"),
        ("POST" | "PUT", "auth/token/renew-self") => Response::json(200, &auth(&token, ttl)),
        ("POST" | "PUT", "auth/token/revoke-self") => {
            b.dead.lock().unwrap().insert(token);
            Response::status(204)
        }
        ("GET", "auth/token/lookup-self") => Response::json(
            200,
            &envelope(json!({
                "id": token, "accessor": "acc", "creation_time": 1_800_000_000u64,
                "creation_ttl": ttl, "display_name": "approle", "entity_id": "e",
                "expire_time": null, "explicit_max_ttl": 0, "issue_time": "2027-01-15T08:00:00Z",
                "meta": null, "num_uses": 0, "orphan": true, "path": "auth/approle/login",
                "policies": ["default"], "renewable": true, "ttl": ttl, "type": "service"
            })),
        ),
        ("GET", p) if p.starts_with("sys/internal/ui/mounts/") => {
            let rest = &p["sys/internal/ui/mounts/".len()..];
            let mount = rest.split('/').next().unwrap_or_default();
            let data = match mount {
                "secret" => {
                    json!({ "path": "secret/", "type": "kv", "options": { "version": "2" } })
                }
                other => json!({ "path": format!("{other}/"), "type": other, "options": null }),
            };
            Response::json(200, &envelope(data))
        }
        ("GET", p) if p.starts_with("secret/data/denied/") => vault_error(403, "permission denied"),
        ("GET", p) if p.starts_with("secret/data/") => {
            let value = b.value.lock().unwrap().clone();
            Response::json(
                200,
                &envelope(json!({
                    "data": { "v": value },
                    "metadata": { "version": 1, "created_time": "2027-01-15T08:00:00Z",
                                  "deletion_time": "", "destroyed": false }
                })),
            )
        }
        ("GET", p) if p.starts_with("database/creds/") => {
            let n = b.leases.fetch_add(1, Ordering::SeqCst);
            let mut answer =
                envelope(json!({ "username": format!("u{n}"), "password": format!("p{n}") }));
            answer["lease_id"] = json!(format!("{p}/L{n}"));
            answer["lease_duration"] = json!(3600);
            answer["renewable"] = json!(true);
            Response::json(200, &answer)
        }
        ("POST" | "PUT", p) if p.starts_with("pki/issue/") => {
            let n = b.leases.fetch_add(1, Ordering::SeqCst);
            Response::json(
                200,
                &envelope(json!({
                    "serial_number": format!("sn-{n}"), "expiration": 4_000_000_000u64,
                    "certificate": "-----BEGIN CERTIFICATE-----"
                })),
            )
        }
        _ => vault_error(404, ""),
    }
}

/// Let the source's tasks finish what real I/O they started (they answer on loopback within
/// milliseconds) until `sleepers` tasks wait on the manual clock again. False if that does not
/// happen within 5 s of real time (a task that never sleeps: a hot loop).
#[allow(clippy::disallowed_methods)] // waits for real loopback I/O; asserts no timing
pub async fn idle(clock: &ManualClock, sleepers: usize) -> bool {
    for _ in 0..500 {
        if clock.sleepers() >= sleepers {
            // Once more: a task that just woke may still be on its way to the network.
            tokio::time::sleep(Duration::from_millis(2)).await;
            if clock.sleepers() >= sleepers {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Wait (real time, at most 5 s) until `cond` holds.
#[allow(clippy::disallowed_methods)]
pub async fn until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
