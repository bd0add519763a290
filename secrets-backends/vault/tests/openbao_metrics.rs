//! The metrics a client emits against the real OpenBao of the test ground equal the requests the
//! server recorded in its file audit device (`VAULT_AUDIT_LOG`, enabled by
//! scripts/testground/vault-up): a login, KV reads (one refused), a dynamic database credential
//! renewed and re-issued, and revocations at shutdown. The test has its own AppRole role,
//! database role, policy and KV paths, and counts only audit entries of tokens of its own role
//! (`auth.metadata.role_name`), so other tests on the same server do not disturb it. Counted by a
//! recorder local to the test's thread: no global recorder.

#![allow(clippy::unwrap_used)]
// Real servers run in real time.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use keyrack_core::telemetry::{
    BACKEND_REQUESTS, LOGINS, REFRESHES, REISSUES, RENEWALS, REVOCATIONS, TOKEN_RENEWALS,
};
use keyrack_core::{ErrorKind, RotationEvent, Secrets};
use keyrack_vault::Auth;
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

/// Responses the audit device recorded for tokens of AppRole role `role`, by (path, operation).
/// Other tests write to the same log meanwhile: a line still being written (the last, cut short)
/// is not this test's, whose requests all ended before it reads the log.
fn audited(role: &str) -> BTreeMap<(String, String), u64> {
    let log = std::fs::read_to_string(env("VAULT_AUDIT_LOG")).unwrap();
    let mut seen = BTreeMap::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if entry["type"] != "response" || entry["auth"]["metadata"]["role_name"] != role {
            continue;
        }
        let request = &entry["request"];
        let key = (
            request["path"].as_str().unwrap().to_owned(),
            request["operation"].as_str().unwrap().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    seen
}

#[test]
fn counters_equal_the_requests_in_openbaos_audit_log() {
    let recorder = Counters::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The test's own AppRole and database role: a lease of 4 s renewable up to 10 s, so a
    // renewal and a re-issue follow within seconds.
    let (name, role_id, secret_id) = rt.block_on(own_db_role_and_approle("4s", "10s", "1h", "4h"));
    rt.block_on(async {
        let policy = format!(
            r#"path "database/creds/{name}" {{ capabilities = ["read"] }}
path "secret/data/{name}/*" {{ capabilities = ["read"] }}
path "secret/metadata/{name}/*" {{ capabilities = ["read"] }}
path "sys/leases/renew" {{ capabilities = ["update"] }}
path "sys/leases/revoke" {{ capabilities = ["update"] }}
path "auth/token/renew-self" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read", "update"] }}
"#
        );
        root_api(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({ "policy": policy })),
        )
        .await;
        kv2_put(
            &format!("{name}/one"),
            serde_json::json!({"v": "metrics-value-one"}),
        )
        .await;
        kv2_put(
            &format!("{name}/two"),
            serde_json::json!({"v": "metrics-value-two"}),
        )
        .await;
    });

    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let secrets = Secrets::builder()
                .source("vault", source(Auth::approle(role_id, secret_id)))
                .revoke_on_shutdown(true)
                .revoke_replaced_leases_after(Duration::from_secs(1))
                .build()
                .unwrap();
            // KV reads: each twice (the second from the cache), one behind a handle.
            for path in ["one", "two"] {
                for _ in 0..2 {
                    secrets
                        .get_secret(&format!("vault://secret/{name}/{path}"))
                        .await
                        .unwrap();
                }
            }
            let kv = secrets
                .handle(&format!("vault://secret/{name}/one"))
                .await
                .unwrap();
            // Outside the policy: refused.
            let refused = secrets
                .get_secret(&format!("vault://secret/not-{name}/x"))
                .await
                .unwrap_err();
            assert_eq!(refused.kind(), &ErrorKind::PermissionDenied);

            // The database credential: renewed at about ⅔ of 4 s, re-issued before 10 s.
            let db = secrets
                .handle(&format!("vault://database/creds/{name}"))
                .await
                .unwrap();
            let mut events = db.subscribe();
            let (mut renewed, mut rotated) = (0, 0);
            tokio::time::timeout(Duration::from_secs(40), async {
                while rotated < 1 || renewed < 1 {
                    match events.recv().await {
                        Some(RotationEvent::Renewed { .. }) => renewed += 1,
                        Some(RotationEvent::Rotated { .. }) => rotated += 1,
                        Some(RotationEvent::RefreshFailed { error, .. }) => {
                            panic!("refresh failed: {error}")
                        }
                        Some(_) => {}
                        None => panic!("events ended"),
                    }
                }
            })
            .await
            .expect("a renewal and a re-issue within 40 s");
            drop((kv, db));
            secrets.shutdown().await;
        });
    });

    let seen = audited(&name);
    let count = |pred: &dyn Fn(&str, &str) -> bool| -> u64 {
        seen.iter()
            .filter(|((path, op), _)| pred(path, op))
            .map(|(_, n)| n)
            .sum()
    };
    let ids = recorder.ids();
    let creds_path = format!("database/creds/{name}");
    let kv_data = format!("secret/data/{name}/");
    let kv_meta = format!("secret/metadata/{name}/");
    let logins = count(&|p, _| p == "auth/approle/login");
    let db_reads = count(&|p, _| p == creds_path);
    let kv_reads =
        count(&|p, _| p.starts_with(&kv_data) || p == format!("secret/data/not-{name}/x"));
    let probes = count(&|p, _| p.starts_with(&kv_meta));
    let renewals = count(&|p, _| p == "sys/leases/renew");
    let revocations = count(&|p, _| p == "sys/leases/revoke");
    let token_renewals = count(&|p, _| p == "auth/token/renew-self");
    let summary = format!("audit: {seen:?}\nmetrics: {ids:?}");

    assert_eq!(logins, 1, "{summary}");
    assert_eq!(
        recorder.sum(LOGINS, &["source=vault", "method=approle", "outcome=ok"]),
        logins,
        "{summary}"
    );
    assert_eq!(
        recorder.sum(TOKEN_RENEWALS, &[]),
        token_renewals,
        "{summary}"
    );
    // Fetches: the KV reads (two values, one refused) and the credentials issued.
    assert_eq!(kv_reads, 3, "{summary}");
    assert_eq!(
        recorder.sum(BACKEND_REQUESTS, &["source=vault", "operation=fetch"]),
        kv_reads + db_reads,
        "{summary}"
    );
    assert_eq!(
        recorder.sum(
            BACKEND_REQUESTS,
            &["operation=fetch", "outcome=permission_denied"]
        ),
        1,
        "{summary}"
    );
    assert_eq!(
        recorder.sum(BACKEND_REQUESTS, &["operation=version"]),
        probes,
        "{summary}"
    );
    assert!(renewals >= 1 && db_reads >= 2, "{summary}");
    assert_eq!(
        recorder.sum(RENEWALS, &["source=vault"]),
        renewals,
        "{summary}"
    );
    assert_eq!(
        recorder.sum(BACKEND_REQUESTS, &["operation=renew"]),
        renewals,
        "{summary}"
    );
    // Every credential after the first replaced a lease.
    assert_eq!(
        recorder.sum(REISSUES, &["source=vault"]),
        db_reads - 1,
        "{summary}"
    );
    assert_eq!(
        recorder.sum(REISSUES, &["outcome=ok"]),
        db_reads - 1,
        "{summary}"
    );
    // The last lease, revoked at shutdown (a replaced lease is revoked too unless it ends by
    // itself within the 1 s overlap, as one re-issued just before its max TTL does).
    assert!(revocations >= 1, "{summary}");
    assert_eq!(
        recorder.sum(REVOCATIONS, &["source=vault"]),
        revocations,
        "{summary}"
    );
    assert_eq!(
        recorder.sum(BACKEND_REQUESTS, &["operation=revoke"]),
        revocations,
        "{summary}"
    );
    // One refresh per maintenance: at least one per renewal or re-issue asked.
    let refreshes = recorder.sum(REFRESHES, &["source=vault"]);
    assert!(
        refreshes >= renewals.max(db_reads - 1) && refreshes <= renewals + db_reads - 1 + probes,
        "{summary}"
    );
    // Labels: bounded sets, no path, no value.
    for id in ids {
        assert!(!id.contains(&name) && !id.contains("metrics-value"), "{id}");
    }
}
