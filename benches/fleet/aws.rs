//! AWS Secrets Manager: the `keyrack-aws` source, whose SDK sends to an in-process fake instead
//! of a socket. Quotas from "AWS Secrets Manager quotas" (Secrets Manager User Guide):
//! GetSecretValue and DescribeSecret together 10,000 requests per second, BatchGetSecretValue
//! 100 per second, per account and Region; refused past them as the service does (HTTP 400,
//! `ThrottlingException`, no `Retry-After`). AWS does not document a burst: the fake's buckets
//! hold a second's worth, an assumption.

use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use keyrack_aws::AwsBuilder;
use keyrack_core::{RequestBudget, SecretRef, SecretSource};

use crate::{Backend, Bucket, LATENCY, Ledger, SECRETS, SimClock};

/// GetSecretValue + DescribeSecret, per second (account and Region).
const READ_QUOTA: f64 = 10_000.0;
/// BatchGetSecretValue, per second.
const BATCH_QUOTA: f64 = 100.0;

#[derive(Debug)]
struct Buckets {
    reads: Bucket,
    batches: Bucket,
}

/// The fake Secrets Manager every pod's SDK sends to.
#[derive(Debug, Clone)]
pub(crate) struct Aws {
    buckets: Arc<Mutex<Buckets>>,
    ledger: Ledger,
}

fn name(i: usize) -> String {
    format!("fleet/secret-{i:02}")
}

fn version_id(version: u64) -> String {
    format!("{version:08}-0000-4000-8000-000000000000")
}

impl Aws {
    /// The answer to one request, decided when it arrives.
    fn answer(&self, operation: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let allowed = {
            let mut buckets = self.buckets.lock().unwrap();
            match operation {
                "BatchGetSecretValue" => buckets.batches.take(),
                _ => buckets.reads.take(),
            }
        };
        if !self.ledger.count(operation, allowed) {
            return (
                400,
                serde_json::json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
            );
        }
        let one = |id: &str| -> Option<serde_json::Value> {
            let version = self.ledger.version_of_name(id)?;
            Some(serde_json::json!({
                "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}-AbCdEf"),
                "Name": id,
                "VersionId": version_id(version),
                "SecretString": format!("value {version} of {id}"),
                "VersionStages": ["AWSCURRENT"],
                "CreatedDate": 1_800_000_000.0,
            }))
        };
        let not_found = || {
            (
                400,
                serde_json::json!({"__type": "ResourceNotFoundException",
                    "message": "Secrets Manager can't find the specified secret."}),
            )
        };
        let id = body["SecretId"].as_str().unwrap_or_default();
        match operation {
            "GetSecretValue" => match one(id) {
                Some(v) => (200, v),
                None => not_found(),
            },
            "DescribeSecret" => match self.ledger.version_of_name(id) {
                Some(version) => (
                    200,
                    serde_json::json!({
                        "ARN": format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}-AbCdEf"),
                        "Name": id,
                        "VersionIdsToStages": { version_id(version): ["AWSCURRENT"] },
                    }),
                ),
                None => not_found(),
            },
            "BatchGetSecretValue" => {
                let ids: Vec<&str> = body["SecretIdList"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                let values: Vec<_> = ids.iter().filter_map(|id| one(id)).collect();
                (
                    200,
                    serde_json::json!({"SecretValues": values, "Errors": []}),
                )
            }
            other => (
                400,
                serde_json::json!({"__type": "InvalidRequestException",
                    "message": format!("the fleet fake does not answer {other}")}),
            ),
        }
    }
}

impl HttpClient for Aws {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for Aws {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.strip_prefix("secretsmanager."))
            .unwrap_or("?")
            .to_owned();
        let body: serde_json::Value = request
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let (status, answer) = self.answer(&operation, &body);
        HttpConnectorFuture::new(async move {
            tokio::time::sleep(LATENCY).await;
            let mut response = HttpResponse::new(
                StatusCode::try_from(status).unwrap(),
                SdkBody::from(answer.to_string()),
            );
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.1");
            Ok(response)
        })
    }
}

impl Backend for Aws {
    const LABEL: &'static str = "aws";
    const SOURCE: &'static str = "aws-sm";
    const QUOTAS: &'static str =
        "GetSecretValue + DescribeSecret 10,000/s, BatchGetSecretValue 100/s";

    fn new() -> Self {
        Aws {
            buckets: Arc::new(Mutex::new(Buckets {
                reads: Bucket::new(READ_QUOTA, READ_QUOTA),
                batches: Bucket::new(BATCH_QUOTA, BATCH_QUOTA),
            })),
            ledger: Ledger::new((0..SECRETS).map(name)),
        }
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn reference(i: usize) -> SecretRef {
        SecretRef::parse(&format!("aws-sm://{}", name(i))).unwrap()
    }

    async fn source(&self, clock: SimClock) -> Arc<dyn SecretSource> {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
            .http_client(self.clone())
            .build();
        let source = AwsBuilder::new()
            .with_sdk_config(sdk)
            .with_clock(clock)
            .build()
            .await
            .unwrap();
        Arc::new(source)
    }

    fn share(pods: usize) -> RequestBudget {
        RequestBudget::per_second(((READ_QUOTA as usize) / pods).max(1) as u32).spread()
    }

    /// One GetSecretValue per secret or one BatchGetSecretValue per pod, whichever drains
    /// sooner, each bucket starting full, plus one request's latency.
    fn floor(pods: usize) -> f64 {
        let drain = |calls: f64, rate: f64| ((calls - rate) / rate).max(0.0);
        let singles = drain((pods * SECRETS) as f64, READ_QUOTA);
        let batches = drain(pods as f64, BATCH_QUOTA);
        singles.min(batches) + LATENCY.as_secs_f64()
    }
}
