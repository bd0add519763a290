//! The backend-request counters a client emits against moto equal the requests moto's request
//! recorder saw (`/moto-api/recorder/...`). The recorder is global to a server and other tests
//! reset it, so this test starts a moto of its own through scripts/testground/moto-up (in a
//! directory of its own, stopped by moto-down when the test ends, also on failure). Counted by
//! a recorder local to the test's thread: no global recorder.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keyrack_aws::AwsBuilder;
use keyrack_core::telemetry::{BACKEND_REQUESTS, REFRESHES};
use keyrack_core::{ErrorKind, Secrets};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Counters by name and sorted labels; gauges and histograms are dropped.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

impl Counters {
    /// The sum of counter `name` over every series whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| {
                let (n, rest) = id.split_once('{').unwrap();
                let own: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                n == name && labels.iter().all(|l| own.contains(l))
            })
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }

    fn ids(&self) -> Vec<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        Counter::from_arc(self.0.lock().unwrap().entry(id).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// A moto of this test's own; stopped when dropped.
struct OwnMoto {
    dir: tempfile::TempDir,
    endpoint: String,
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../scripts/testground/{name}"))
}

impl OwnMoto {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let up = Command::new(script("moto-up"))
            .env("MOTO_TESTGROUND_DIR", dir.path())
            .output()
            .unwrap();
        assert!(
            up.status.success(),
            "moto-up failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let endpoint = env
            .lines()
            .find_map(|l| l.strip_prefix("export AWS_ENDPOINT_URL="))
            .unwrap()
            .to_owned();
        OwnMoto { dir, endpoint }
    }

    async fn recorder(&self, action: &str) -> String {
        let url = format!("{}/moto-api/recorder/{action}", self.endpoint);
        let client = keyrack_fake_server::test_client();
        let response = if action == "download-recording" {
            client.get(url).send().await.unwrap()
        } else {
            client.post(url).send().await.unwrap()
        };
        response.text().await.unwrap()
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        let _ = Command::new(script("moto-down"))
            .env("MOTO_TESTGROUND_DIR", self.dir.path())
            .output();
    }
}

/// Requests moto recorded, by Secrets Manager action (`X-Amz-Target`), for secrets whose name
/// starts with `prefix`.
fn recorded(recording: &str, prefix: &str) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    for line in recording.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let body = v["body"].as_str().unwrap_or_default();
        let body = if v["body_encoded"].as_bool() == Some(true) {
            String::from_utf8(aws_smithy_types::base64::decode(body).unwrap()).unwrap()
        } else {
            body.to_owned()
        };
        if !body.contains(prefix) {
            continue;
        }
        let target = v["headers"]["X-Amz-Target"]
            .as_str()
            .or_else(|| v["headers"]["x-amz-target"].as_str())
            .unwrap_or("?")
            .trim_start_matches("secretsmanager.")
            .to_owned();
        *seen.entry(target).or_default() += 1;
    }
    seen
}

#[test]
fn backend_request_counters_equal_what_moto_recorded() {
    let moto = OwnMoto::start();
    let recorder = Counters::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = common::uniq("metrics");
    let builder = || {
        AwsBuilder::new()
            .with_region("us-east-1")
            .with_endpoint_url(&moto.endpoint)
            .with_static_credentials("testing", "testing", None)
    };
    let admin = rt.block_on(builder().build()).unwrap();
    for (name, value) in [("one", "moto-value-one"), ("two", "moto-value-two")] {
        rt.block_on(common::put(
            &admin,
            &format!("{prefix}-{name}"),
            value.as_bytes(),
        ))
        .unwrap();
    }
    rt.block_on(moto.recorder("start-recording"));

    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let secrets = Secrets::builder()
                .source("aws-sm", builder().build().await.unwrap())
                .build()
                .unwrap();
            for name in ["one", "two"] {
                for _ in 0..2 {
                    secrets
                        .get_secret(&format!("aws-sm://{prefix}-{name}"))
                        .await
                        .unwrap();
                }
            }
            let missing = secrets
                .get_secret(&format!("aws-sm://{prefix}-missing"))
                .await
                .unwrap_err();
            assert_eq!(missing.kind(), &ErrorKind::NotFound);
            // A rotation, seen through a forced refresh: a version probe, then a read.
            let handle = secrets
                .handle(&format!("aws-sm://{prefix}-one"))
                .await
                .unwrap();
            common::put(&admin, &format!("{prefix}-one"), b"moto-value-three")
                .await
                .unwrap();
            handle.refresh_now().await.unwrap();
            assert_eq!(handle.current().expose_bytes(), b"moto-value-three");
            drop(handle);
            secrets.shutdown().await;
        });
    });
    let recording = rt.block_on(moto.recorder("download-recording"));
    rt.block_on(moto.recorder("stop-recording"));

    let seen = recorded(&recording, &prefix);
    let ids = recorder.ids();
    let summary = format!("moto: {seen:?}\nmetrics: {ids:?}");
    let n = |action: &str| seen.get(action).copied().unwrap_or(0);
    // The test's own new version (CreateSecret refused as existing, then PutSecretValue), then
    // what the client sent.
    assert_eq!(
        (n("CreateSecret"), n("PutSecretValue")),
        (1, 1),
        "{summary}"
    );
    assert!(n("GetSecretValue") >= 4, "{summary}");
    assert_eq!(
        recorder.sum(BACKEND_REQUESTS, &["source=aws-sm", "operation=fetch"])
            + recorder.sum(BACKEND_REQUESTS, &["source=aws-sm", "operation=fetch_many"]),
        n("GetSecretValue") + n("BatchGetSecretValue"),
        "{summary}"
    );
    assert_eq!(
        recorder.sum(BACKEND_REQUESTS, &["operation=fetch", "outcome=not_found"]),
        1,
        "{summary}"
    );
    // A read also describes the secret (its rotation schedule), unless the version probe just
    // before it did: the three first reads (the missing one too) did, the refresh's read not.
    let probes = recorder.sum(BACKEND_REQUESTS, &["source=aws-sm", "operation=version"]);
    let fetches = recorder.sum(BACKEND_REQUESTS, &["source=aws-sm", "operation=fetch"]);
    assert_eq!(probes, 1, "{summary}");
    assert_eq!(n("DescribeSecret"), probes + fetches - 1, "{summary}");
    assert_eq!(
        recorder.sum(REFRESHES, &["source=aws-sm", "outcome=ok"]),
        1,
        "{summary}"
    );
    for id in ids {
        assert!(!id.contains(&prefix) && !id.contains("moto-value"), "{id}");
    }
}
