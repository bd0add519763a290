//! A loopback fake of Secret Manager's AccessSecretVersion (REST/JSON) and of Google's STS token
//! exchange, shaped after the fixtures in `fixtures/gcp/` of this crate (copied from the
//! project's shared `fixtures/gcp/`):
//! - a success is `access_secret_version.documented.json` → `response.body`: `name` of the
//!   version read and `payload.data` (base64) with `payload.dataCrc32c` (int64 as a decimal
//!   string);
//! - a missing secret or version is `google_rpc_status_errors.assembled.json` →
//!   `assembled_http_bodies.404_not_found`, with the message naming the secret asked for;
//! - a request without the access token STS issued is that file's `aip_0193_examples.minimal_404`
//!   envelope made a 401 `UNAUTHENTICATED`;
//! - STS answers `sts_token_exchange.assembled.json` → `sts_success_response_google_auth_tests`.
//!
//! keyrack-gcp's tests and the `gcp` example share this one copy; the glue that builds a source
//! pointed at it lives beside them (it needs keyrack-gcp, which this crate does not depend on).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::{FakeServer, Request, Response};

/// `access_secret_version.documented.json`.
pub const DOCUMENTED: &str = include_str!("../fixtures/gcp/access_secret_version.documented.json");
/// `google_rpc_status_errors.assembled.json`.
pub const STATUS_ERRORS: &str =
    include_str!("../fixtures/gcp/google_rpc_status_errors.assembled.json");
/// `sts_token_exchange.assembled.json`.
pub const STS: &str = include_str!("../fixtures/gcp/sts_token_exchange.assembled.json");
/// `iamcredentials.v1.json` (the IAM Credentials discovery document).
pub const IAM_CREDENTIALS: &str = include_str!("../fixtures/gcp/iamcredentials.v1.json");

/// One of the fixtures above, parsed.
pub fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Secrets by resource name (`projects/p/secrets/s`, `projects/p/locations/l/secrets/s`),
/// each a list of version payloads (version n is entry n-1).
#[derive(Clone, Default)]
pub struct Store(Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>);

impl Store {
    /// Adds a version to `secret` (a resource name); returns its number.
    pub fn add_version(&self, secret: &str, value: &[u8]) -> usize {
        let mut m = self.0.lock().unwrap();
        let versions = m.entry(secret.to_owned()).or_default();
        versions.push(value.to_vec());
        versions.len()
    }

    /// The answer to `GET /v1/{secret}/versions/{v}:access`.
    pub fn answer(&self, req: &Request) -> Response {
        let Some(name) = req
            .path
            .strip_prefix("/v1/")
            .and_then(|p| p.strip_suffix(":access"))
        else {
            return Response::status(404);
        };
        let Some((secret, version)) = name.rsplit_once("/versions/") else {
            return Response::status(404);
        };
        let m = self.0.lock().unwrap();
        let found = m.get(secret).and_then(|versions| {
            let n = match version {
                "latest" => versions.len(),
                v => v.parse::<usize>().ok()?,
            };
            let data = versions.get(n.checked_sub(1)?)?;
            Some((n, data.clone()))
        });
        match found {
            Some((n, data)) => {
                Response::json(200, &access_body(&format!("{secret}/versions/{n}"), &data))
            }
            None => not_found(secret),
        }
    }
}

/// `access_secret_version.documented.json` → `response.body`, for other data.
pub fn access_body(name: &str, data: &[u8]) -> Value {
    let mut body = fixture(DOCUMENTED)["response"]["body"].clone();
    body["name"] = json!(name);
    body["payload"]["data"] = json!(B64.encode(data));
    body["payload"]["dataCrc32c"] = json!(crc32c::crc32c(data).to_string());
    body
}

/// `assembled_http_bodies.404_not_found`, naming `secret`.
pub fn not_found(secret: &str) -> Response {
    let mut body = fixture(STATUS_ERRORS)["assembled_http_bodies"]["404_not_found"].clone();
    body["error"]["message"] = json!(format!("Secret [{secret}] not found or has no versions."));
    Response::json(404, &body)
}

/// A fake Secret Manager over `store` that asks for no credentials.
pub async fn fake(store: &Store) -> FakeServer {
    let store = store.clone();
    FakeServer::http(move |req| {
        let store = store.clone();
        async move { store.answer(&req) }
    })
    .await
}

/// A fake Secret Manager that serves `store` only to `access_token` (as a bearer token), else
/// the AIP-193 envelope (`aip_0193_examples.minimal_404`) made a 401 `UNAUTHENTICATED`.
pub async fn secret_manager(store: &Store, access_token: String) -> FakeServer {
    let store = store.clone();
    FakeServer::http(move |req| {
        let store = store.clone();
        let authorized = req.header("authorization") == Some(&format!("Bearer {access_token}"));
        async move {
            if authorized {
                store.answer(&req)
            } else {
                let mut body = fixture(STATUS_ERRORS)["aip_0193_examples"]["minimal_404"].clone();
                body["error"] = json!({"code": 401, "status": "UNAUTHENTICATED"});
                Response::json(401, &body)
            }
        }
    })
    .await
}

/// Secret Manager behind STS: a workload's subject token is exchanged at `sts`
/// (`POST /v1/token`, answered with `sts_success_response_google_auth_tests`), and
/// `secret_manager` serves `store` to the access token that answer carries only.
pub struct Fake {
    /// The STS token endpoint is `{sts.url()}/v1/token`.
    pub sts: FakeServer,
    /// Secret Manager's REST endpoint.
    pub secret_manager: FakeServer,
    /// What Secret Manager holds.
    pub store: Store,
}

impl Fake {
    /// Starts both servers, holding no secret.
    pub async fn start() -> Self {
        let issued = fixture(STS)["sts_success_response_google_auth_tests"].clone();
        let access_token = issued["access_token"].as_str().unwrap().to_owned();
        let sts = FakeServer::http(move |req| {
            let body = issued.clone();
            async move {
                if req.method == "POST" && req.path == "/v1/token" {
                    Response::json(200, &body)
                } else {
                    Response::status(404)
                }
            }
        })
        .await;
        let store = Store::default();
        let secret_manager = secret_manager(&store, access_token).await;
        Fake {
            sts,
            secret_manager,
            store,
        }
    }

    /// The STS token URL.
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.sts.url())
    }

    /// The workload identity pool provider of the recorded exchange (`sts_request.form.audience`).
    pub fn audience() -> String {
        fixture(STS)["sts_request"]["form"]["audience"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The subject token of the recorded exchange (`sts_request.form.subject_token`, a
    /// placeholder JWT).
    pub fn subject_token() -> String {
        fixture(STS)["sts_request"]["form"]["subject_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}
