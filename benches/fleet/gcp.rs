//! Google Secret Manager: the `keyrack-gcp` source on an SDK client
//! (`GcpBuilder::with_client`) whose stub answers in process instead of over a socket
//! (`SecretManagerService::from_stub`, the SDK's seam for tests: the source's calls, timeouts
//! and error mapping are the real ones; the SDK's HTTP and JSON layers are not run). Quota from
//! "Secret Manager quotas" (cloud.google.com/secret-manager/quotas): 90,000 access requests per
//! minute per project, and the recorded 429 (`google_rpc_status_errors.assembled.json`,
//! `assembled_http_bodies.429_resource_exhausted`) names that limit,
//! `AccessRequestsPerMinutePerProject`. How Google spreads a per-minute quota over the minute
//! is not documented: the fake keeps it as a bucket of 1,500 per second holding one second's
//! worth, the least generous reading (a bucket of the whole minute would let 90,000 through at
//! once). Past it, the stub answers that recorded 429's status (RESOURCE_EXHAUSTED, no
//! `RetryInfo`, no `Retry-After`).
//!
//! Reads are answered with `access_secret_version.documented.json`'s response, name, data and
//! checksum substituted. Credentials are the client's (none: the stub needs no token; the
//! token exchange has quotas of its own, not simulated here).

use std::sync::{Arc, Mutex};

use keyrack_core::{RequestBudget, SecretRef, SecretSource};
use keyrack_fake_server::gcp::{STATUS_ERRORS, access_body, fixture};
use keyrack_gcp::GcpBuilder;
use keyrack_gcp::google_cloud_gax::error::Error as GaxError;
use keyrack_gcp::google_cloud_gax::error::rpc::Status;
use keyrack_gcp::google_cloud_gax::options::RequestOptions;
use keyrack_gcp::google_cloud_gax::response::Response;
use keyrack_gcp::google_cloud_secretmanager_v1 as sm;
use sm::client::SecretManagerService;
use sm::model::{AccessSecretVersionRequest, AccessSecretVersionResponse};

use crate::{Backend, Bucket, LATENCY, Ledger, SECRETS, SimClock, even_share};

/// Access requests per project: 90,000 per minute.
const QUOTA_PER_MINUTE: f64 = 90_000.0;
const RATE: f64 = QUOTA_PER_MINUTE / 60.0;
const PROJECT: &str = "fleet";

/// The fake Secret Manager every pod's client (stub) sends to.
#[derive(Debug, Clone)]
pub(crate) struct Gcp {
    bucket: Arc<Mutex<Bucket>>,
    ledger: Ledger,
    /// The recorded 429's status.
    throttled: Arc<Status>,
}

fn name(i: usize) -> String {
    format!("secret-{i:02}")
}

impl Gcp {
    fn answer(
        &self,
        request: &AccessSecretVersionRequest,
    ) -> sm::Result<AccessSecretVersionResponse> {
        let allowed = self.bucket.lock().unwrap().take();
        if !self.ledger.count("AccessSecretVersion", allowed) {
            return Err(GaxError::service((*self.throttled).clone()));
        }
        // projects/fleet/secrets/<name>/versions/latest
        let secret = request
            .name
            .strip_prefix(&format!("projects/{PROJECT}/secrets/"))
            .and_then(|rest| rest.strip_suffix("/versions/latest"))
            .unwrap_or_default();
        let version = self.ledger.version_of_name(secret).unwrap();
        let body = access_body(
            &format!("projects/{PROJECT}/secrets/{secret}/versions/{version}"),
            format!("value {version} of {secret}").as_bytes(),
        );
        Ok(serde_json::from_value(body).unwrap())
    }
}

impl sm::stub::SecretManagerService for Gcp {
    async fn access_secret_version(
        &self,
        request: AccessSecretVersionRequest,
        _options: RequestOptions,
    ) -> sm::Result<Response<AccessSecretVersionResponse>> {
        let answer = self.answer(&request);
        tokio::time::sleep(LATENCY).await;
        answer.map(Response::from)
    }
}

impl Backend for Gcp {
    const LABEL: &'static str = "gcp";
    const SOURCE: &'static str = "gcp-sm";
    const QUOTAS: &'static str = "access requests 90,000 per minute per project";

    fn new() -> Self {
        let recorded =
            fixture(STATUS_ERRORS)["assembled_http_bodies"]["429_resource_exhausted"].to_string();
        // Parsed as the SDK parses an error body.
        let throttled = Status::try_from(&bytes::Bytes::from(recorded)).unwrap();
        Gcp {
            bucket: Arc::new(Mutex::new(Bucket::new(RATE, RATE))),
            ledger: Ledger::new((0..SECRETS).map(name)),
            throttled: Arc::new(throttled),
        }
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn reference(i: usize) -> SecretRef {
        SecretRef::parse(&format!("gcp-sm://projects/{PROJECT}/secrets/{}", name(i))).unwrap()
    }

    async fn source(&self, clock: SimClock) -> Arc<dyn SecretSource> {
        let source = GcpBuilder::new()
            .with_client(SecretManagerService::from_stub(self.clone()))
            .with_clock(clock)
            .build()
            .await
            .unwrap();
        Arc::new(source)
    }

    fn share(pods: usize) -> RequestBudget {
        // The project's 1,500 per second and the second's worth it allows at once, split
        // evenly.
        even_share(RATE, RATE, pods)
    }

    /// Every pod's 20 reads through the bucket (starting full), plus one request's latency.
    fn floor(pods: usize) -> f64 {
        let requests = (pods * SECRETS) as f64;
        ((requests - RATE) / RATE).max(0.0) + LATENCY.as_secs_f64()
    }
}
