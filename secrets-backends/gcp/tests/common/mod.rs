//! A loopback fake of Secret Manager's AccessSecretVersion (REST/JSON), shaped after the
//! fixtures in `tests/fixtures/` (copied from the project's `fixtures/gcp/`):
//! - a success is `access_secret_version.documented.json` → `response.body`: `name` of the
//!   version read and `payload.data` (base64) with `payload.dataCrc32c` (int64 as a decimal
//!   string);
//! - a missing secret or version is `google_rpc_status_errors.assembled.json` →
//!   `assembled_http_bodies.404_not_found`, with the message naming the secret asked for.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of this

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyrack_core::testkit::Seeder;
use keyrack_core::{Result, SecretRef, SecretSource, async_trait};
use keyrack_fake_server::{FakeServer, Request, Response};
use keyrack_gcp::{GcpBuilder, GcpSource};
use serde_json::{Value, json};

pub const DOCUMENTED: &str = include_str!("../fixtures/access_secret_version.documented.json");
pub const STATUS_ERRORS: &str = include_str!("../fixtures/google_rpc_status_errors.assembled.json");
pub const STS: &str = include_str!("../fixtures/sts_token_exchange.assembled.json");
pub const IAM_CREDENTIALS: &str = include_str!("../fixtures/iamcredentials.v1.json");

pub fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Secrets by resource name (`projects/p/secrets/s`, `projects/p/locations/l/secrets/s`),
/// each a list of version payloads (version n is entry n-1).
#[derive(Clone, Default)]
pub struct Store(Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>);

impl Store {
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

/// A fake Secret Manager over `store`.
pub async fn fake(store: &Store) -> FakeServer {
    let store = store.clone();
    FakeServer::http(move |req| {
        let store = store.clone();
        async move { store.answer(&req) }
    })
    .await
}

pub async fn source(server: &FakeServer) -> GcpSource {
    GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .with_project("p1")
        .build()
        .await
        .unwrap()
}

pub fn gcp_ref(path: &str) -> SecretRef {
    SecretRef::parse(&format!("gcp-sm://{path}")).unwrap()
}

/// The conformance suite's view of the fake: `put` adds a version to the fake's state.
pub struct FakeSeeder {
    pub store: Store,
    pub source: Arc<dyn SecretSource>,
}

#[async_trait]
impl Seeder for FakeSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.source.clone()
    }

    fn reference(&self, name: &str) -> SecretRef {
        gcp_ref(&format!("projects/p1/secrets/{name}"))
    }

    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        self.store
            .add_version(&format!("projects/p1/secrets/{name}"), value);
        Ok(())
    }
}
