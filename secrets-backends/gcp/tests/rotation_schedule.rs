//! `GcpBuilder::with_rotation_schedule`: GetSecret's `rotation.nextRotationTime` and
//! `expireTime` against a loopback fake. Reads are answered as in tests/fake.rs
//! (access_secret_version.documented.json → response.body); GetSecret
//! (`GET /v1/projects/{p}/secrets/{s}`, secretmanager.v1.json →
//! resources.projects.resources.secrets.methods.get) with a body shaped after
//! secretmanager.v1.json → schemas.Secret / schemas.Rotation (checked against them below), or
//! with google_rpc_status_errors.assembled.json → assembled_http_bodies.403_permission_denied
//! naming the permission GetSecret needs (or → 429_resource_exhausted). Version aliases
//! (schemas.Secret.versionAliases) are resolved by the fake's AccessSecretVersion and listed in
//! its GetSecret answer.

// Real time only to give the fake's HTTP exchanges time to happen (`eventually`, `quiet`); every
// schedule is driven by a ManualClock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use keyrack_core::testkit::LogCapture;
use keyrack_core::{Clock, ManualClock, SecretSource, Secrets, Version};
use keyrack_fake_server::{FakeServer, Request, Response};
use keyrack_gcp::{GcpBuilder, GcpSource};
use serde_json::{Value, json};

const DISCOVERY: &str = include_str!("fixtures/secretmanager.v1.json");
const S: fn(u64) -> Duration = Duration::from_secs;

/// What the fake answers to GetSecret of one secret.
#[derive(Clone)]
enum Meta {
    Scheduled {
        next_rotation: SystemTime,
        expire: SystemTime,
    },
    /// An `expireTime` and no rotation.
    Expiring(SystemTime),
    Denied,
    /// Over the metadata quota.
    Throttled,
}

/// Values (the shared `Store`), version aliases (of every secret) and, by secret name,
/// GetSecret answers.
#[derive(Clone, Default)]
struct Fake {
    store: Store,
    aliases: Arc<Mutex<HashMap<String, usize>>>,
    meta: Arc<Mutex<HashMap<String, Meta>>>,
}

impl Fake {
    fn set_meta(&self, secret: &str, meta: Meta) {
        self.meta.lock().unwrap().insert(secret.to_owned(), meta);
    }

    fn set_alias(&self, alias: &str, version: usize) {
        self.aliases
            .lock()
            .unwrap()
            .insert(alias.to_owned(), version);
    }

    fn answer(&self, req: &Request) -> Response {
        let aliases = self.aliases.lock().unwrap().clone();
        if req.path.ends_with(":access") {
            let mut req = req.clone();
            for (alias, version) in &aliases {
                req.path = req.path.replace(
                    &format!("/versions/{alias}:"),
                    &format!("/versions/{version}:"),
                );
            }
            return self.store.answer(&req);
        }
        let name = req.path.trim_start_matches("/v1/");
        let meta = self.meta.lock().unwrap().get(name).cloned();
        let body = match meta {
            Some(Meta::Scheduled {
                next_rotation,
                expire,
            }) => secret_body(name, next_rotation, expire),
            Some(Meta::Expiring(expire)) => expiring_body(name, expire),
            Some(Meta::Denied) => return Response::json(403, &denied_body(name)),
            Some(Meta::Throttled) => return Response::json(429, &throttled_body()),
            None => return not_found(name),
        };
        Response::json(200, &with_aliases(body, &aliases))
    }

    async fn start(&self) -> FakeServer {
        let fake = self.clone();
        FakeServer::http(move |req| {
            let answer = fake.answer(&req);
            async move { answer }
        })
        .await
    }
}

/// schemas.Secret (with schemas.Rotation, schemas.Replication and schemas.Topic) as GetSecret
/// returns it: output fields only (`ttl` and `rotation.rotationPeriod` are input only).
fn secret_body(name: &str, next_rotation: SystemTime, expire: SystemTime) -> Value {
    json!({
        "name": name,
        "replication": { "automatic": {} },
        "createTime": rfc3339(SystemTime::UNIX_EPOCH + S(1_799_000_000)),
        "etag": "\"1627a7bf4d1c6b\"",
        "topics": [{ "name": "projects/p1/topics/rotations" }],
        "rotation": { "nextRotationTime": rfc3339(next_rotation) },
        "expireTime": rfc3339(expire),
    })
}

/// `secret_body` without `rotation`: a secret that expires and is not rotated.
fn expiring_body(name: &str, expire: SystemTime) -> Value {
    let mut body = secret_body(name, expire, expire);
    body.as_object_mut().unwrap().remove("rotation");
    body
}

/// `body` with schemas.Secret.versionAliases (alias → version number, an int64 as a string),
/// when there are any.
fn with_aliases(mut body: Value, aliases: &HashMap<String, usize>) -> Value {
    if !aliases.is_empty() {
        let map: serde_json::Map<_, _> = aliases
            .iter()
            .map(|(a, v)| (a.clone(), json!(v.to_string())))
            .collect();
        body["versionAliases"] = Value::Object(map);
    }
    body
}

/// assembled_http_bodies.429_resource_exhausted as it is (its quota names are the access
/// quota's; only the status matters to the schedule).
fn throttled_body() -> Value {
    fixture(STATUS_ERRORS)["assembled_http_bodies"]["429_resource_exhausted"].clone()
}

/// assembled_http_bodies.403_permission_denied, with the permission and resource of GetSecret.
fn denied_body(name: &str) -> Value {
    let mut body = fixture(STATUS_ERRORS)["assembled_http_bodies"]["403_permission_denied"].clone();
    body["error"]["message"] = json!(format!(
        "Permission 'secretmanager.secrets.get' denied for resource '{name}' (or it may not exist)."
    ));
    body["error"]["details"][0]["metadata"] =
        json!({ "permission": "secretmanager.secrets.get", "resource": name });
    body
}

/// RFC 3339 in UTC with whole seconds (`google-datetime` of the discovery document).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn source(server: &FakeServer, clock: &ManualClock, on: bool) -> GcpSource {
    GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .with_project("p1")
        .with_clock(clock.clone())
        .with_rotation_schedule(on)
        .build()
        .await
        .unwrap()
}

/// A client on the manual clock, hourly routine checks, the rotation schedule on.
async fn scheduled_client(server: &FakeServer, clock: &ManualClock) -> Secrets {
    Secrets::builder()
        .clock(clock.clone())
        .source("gcp-sm", source(server, clock, true).await)
        .refresh_interval(S(3600))
        .build()
        .unwrap()
}

fn get_secrets(server: &FakeServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| !r.path.ends_with(":access"))
        .count()
}

fn accesses(server: &FakeServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(":access"))
        .count()
}

/// Wait (real time) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

/// Give requests that should not happen (real) time to show up.
async fn quiet() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[test]
fn the_fake_secret_is_shaped_after_the_discovery_document() {
    let doc = fixture(DISCOVERY);
    let schemas = &doc["schemas"];
    let now = SystemTime::UNIX_EPOCH + S(1_800_000_000);
    let aliases = HashMap::from([("prod".to_owned(), 1)]);
    let body = with_aliases(secret_body("projects/p1/secrets/db", now, now), &aliases);
    let check = |value: &Value, schema: &str| {
        for (key, _) in value.as_object().unwrap() {
            let property = &schemas[schema]["properties"][key];
            assert!(property.is_object(), "{schema}.{key} is not in the schema");
            assert_ne!(
                property["description"].as_str().unwrap_or("").get(..10),
                Some("Input only"),
                "{schema}.{key} is input only"
            );
        }
    };
    check(&body, "Secret");
    check(&body["rotation"], "Rotation");
    check(&body["replication"], "Replication");
    check(&body["topics"][0], "Topic");
    check(&expiring_body("projects/p1/secrets/db", now), "Secret");
    assert_eq!(
        schemas["Secret"]["properties"]["versionAliases"]["additionalProperties"]["format"],
        "int64"
    );
    assert_eq!(body["versionAliases"]["prod"], "1");
    for (schema, key) in [
        ("Secret", "expireTime"),
        ("Secret", "createTime"),
        ("Rotation", "nextRotationTime"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][key]["format"], "google-datetime",
            "{schema}.{key}"
        );
    }
    assert_eq!(rfc3339(now), "2027-01-15T08:00:00Z");
    // GetSecret: GET v1/{+name}, global and regional.
    let projects = &doc["resources"]["projects"]["resources"];
    for get in [
        &projects["secrets"]["methods"]["get"],
        &projects["locations"]["resources"]["secrets"]["methods"]["get"],
    ] {
        assert_eq!(get["httpMethod"], "GET");
        assert_eq!(get["path"], "v1/{+name}");
        assert_eq!(get["response"]["$ref"], "Secret");
    }
}

// Off by default: reads, through the source and the engine, make no GetSecret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_reads_make_no_get_secret() {
    let fake = Fake::default();
    let server = fake.start().await;
    fake.store.add_version("projects/p1/secrets/db", b"one");
    let now = SystemTime::UNIX_EPOCH + S(1_800_000_000);
    fake.set_meta(
        "projects/p1/secrets/db",
        Meta::Scheduled {
            next_rotation: now,
            expire: now,
        },
    );
    let src = GcpBuilder::new()
        .with_endpoint(server.url())
        .with_anonymous_credentials()
        .with_project("p1")
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.metadata().next_rotation, None);
        assert_eq!(s.metadata().expires_at, None);
    }
    let secrets = Secrets::builder()
        .source("gcp-sm", src)
        .refresh_interval(S(3600))
        .build()
        .unwrap();
    let handle = secrets.handle("gcp-sm://db").await.unwrap();
    handle.refresh_now().await.unwrap();
    secrets.shutdown().await;
    assert_eq!(accesses(&server), 5);
    assert_eq!(get_secrets(&server), 0, "{:?}", server.requests());
}

// Current-thread runtime, as ManualClock asks: the fake's tasks run on it too.
#[tokio::test]
async fn the_schedule_is_read_once_per_version_and_after_the_planned_rotation() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    let next_rotation = clock.wall() + S(600);
    let expire = clock.wall() + S(30 * 86400);
    fake.store.add_version(name, b"one");
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire,
        },
    );
    let src = source(&server, &clock, true).await;

    let s = src.fetch(&gcp_ref("db")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"one");
    assert_eq!(s.metadata().next_rotation, Some(next_rotation));
    assert_eq!(s.metadata().expires_at, Some(expire));
    assert_eq!(s.hard_expiry(), Some(expire));
    let gets: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with(":access"))
        .collect();
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].method, "GET");
    assert_eq!(gets[0].path, "/v1/projects/p1/secrets/db");

    // The same version, again and again (the full name and the short form are one secret).
    for r in ["db", "projects/p1/secrets/db", "db?version=latest"] {
        for _ in 0..3 {
            let s = src.fetch(&gcp_ref(r)).await.unwrap();
            assert_eq!(s.metadata().next_rotation, Some(next_rotation), "{r}");
            assert_eq!(s.metadata().expires_at, Some(expire), "{r}");
        }
    }
    assert_eq!(get_secrets(&server), 1);

    // Pinned versions skip the schedule.
    for r in ["db/versions/1", "db?version=1"] {
        let s = src.fetch(&gcp_ref(r)).await.unwrap();
        assert_eq!(s.metadata().next_rotation, None, "{r}");
        assert_eq!(s.metadata().expires_at, None, "{r}");
    }
    assert_eq!(get_secrets(&server), 1);

    // A rotation: a new version, and a new schedule (the period moved it on), read once.
    fake.store.add_version(name, b"two");
    let moved = next_rotation + S(3600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation: moved,
            expire,
        },
    );
    for _ in 0..3 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.version(), Some(&Version::new("2")));
        assert_eq!(s.metadata().next_rotation, Some(moved));
    }
    assert_eq!(get_secrets(&server), 2);

    // Once the cached nextRotationTime has passed: read once more.
    let later = moved + S(3600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation: later,
            expire,
        },
    );
    clock.advance(S(600 + 3600 - 1)).await;
    let s = src.fetch(&gcp_ref("db")).await.unwrap();
    assert_eq!(s.metadata().next_rotation, Some(moved));
    assert_eq!(get_secrets(&server), 2);
    clock.advance(S(2)).await;
    for _ in 0..3 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.metadata().next_rotation, Some(later));
    }
    assert_eq!(get_secrets(&server), 3);
    assert_eq!(accesses(&server), 1 + 9 + 2 + 3 + 1 + 3);
}

// Regional secrets: GetSecret goes to the location's endpoint, under the regional name.
#[tokio::test]
async fn a_regional_secret_is_asked_at_its_endpoint() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let global = Fake::default().start().await;
    let eu = fake.start().await;
    let name = "projects/p1/locations/europe-west1/secrets/db";
    fake.store.add_version(name, b"regional");
    let next_rotation = clock.wall() + S(600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire: clock.wall() + S(86400),
        },
    );
    let src = GcpBuilder::new()
        .with_endpoint(global.url())
        .with_regional_endpoint("europe-west1", eu.url())
        .with_anonymous_credentials()
        .with_clock(clock.clone())
        .with_rotation_schedule(true)
        .build()
        .await
        .unwrap();
    for _ in 0..2 {
        let s = src.fetch(&gcp_ref(name)).await.unwrap();
        assert_eq!(s.metadata().next_rotation, Some(next_rotation));
    }
    assert!(global.requests().is_empty());
    let gets: Vec<_> = eu
        .requests()
        .into_iter()
        .filter(|r| !r.path.ends_with(":access"))
        .map(|r| r.path)
        .collect();
    assert_eq!(gets, [format!("/v1/{name}")]);
}

// Concurrent reads of one secret: one GetSecret, and every result carries the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_make_one_get_secret() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    let next_rotation = clock.wall() + S(600);
    fake.store.add_version(name, b"one");
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire: clock.wall() + S(86400),
        },
    );
    let src = source(&server, &clock, true).await;
    let reads = (0..16).map(|_| {
        let src = src.clone();
        tokio::spawn(async move { src.fetch(&gcp_ref("db")).await })
    });
    for read in futures_util::future::join_all(reads).await {
        let s = read.unwrap().unwrap();
        assert_eq!(s.metadata().next_rotation, Some(next_rotation));
    }
    assert_eq!(accesses(&server), 16);
    assert_eq!(get_secrets(&server), 1);
}

// A refused GetSecret (403 PERMISSION_DENIED): reads go on, one warning naming the permission,
// and no GetSecret for that secret for an hour, whatever is read meanwhile.
#[tokio::test]
async fn a_refused_get_secret_does_not_fail_reads_and_is_not_retried_for_an_hour() {
    let logs = LogCapture::start();
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    let value = "S3CRET-rotation-canary";
    fake.store.add_version(name, value.as_bytes());
    fake.set_meta(name, Meta::Denied);
    let src = source(&server, &clock, true).await;
    for _ in 0..3 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.expose_str().unwrap(), value);
        assert_eq!(s.metadata().next_rotation, None);
    }
    // A rotation within the hour does not ask again either.
    fake.store.add_version(name, value.as_bytes());
    clock.advance(S(3600 - 1)).await;
    let s = src.fetch(&gcp_ref("db")).await.unwrap();
    assert_eq!(s.version(), Some(&Version::new("2")));
    assert_eq!(get_secrets(&server), 1);
    let text = logs.text();
    let warnings: Vec<_> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("secretmanager.secrets.get")
            && warnings[0].contains("roles/secretmanager.viewer")
            && warnings[0].contains(name),
        "{}",
        warnings[0]
    );
    // After the hour: asked again (still refused: no second warning).
    clock.advance(S(1)).await;
    src.fetch(&gcp_ref("db")).await.unwrap();
    src.fetch(&gcp_ref("db")).await.unwrap();
    assert_eq!(get_secrets(&server), 2);
    let text = logs.text();
    assert_eq!(text.matches(" WARN ").count(), 1, "{text}");
    assert!(!text.contains(value), "a value in the logs");
    // Granted later: the schedule is read at the next GetSecret.
    let next_rotation = clock.wall() + S(600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire: clock.wall() + S(86400),
        },
    );
    clock.advance(S(3600)).await;
    let s = src.fetch(&gcp_ref("db")).await.unwrap();
    assert_eq!(s.metadata().next_rotation, Some(next_rotation));
    assert_eq!(get_secrets(&server), 3);
}

// Other GetSecret failures (here a NOT_FOUND, as after the secret was deleted between the two
// calls; google_rpc_status_errors.assembled.json → 404_not_found) are retried at the next read.
#[tokio::test]
async fn other_get_secret_failures_are_retried_at_the_next_read() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    fake.store.add_version("projects/p1/secrets/db", b"one");
    let src = source(&server, &clock, true).await;
    for _ in 0..3 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.expose_bytes(), b"one");
        assert_eq!(s.metadata().next_rotation, None);
    }
    assert_eq!(get_secrets(&server), 3);
}

// Through the engine: with a 1 h refresh interval, a nextRotationTime 10 minutes ahead brings
// the next check to just after it (within the engine's spread: 20 % of the interval, at most
// 60 s), then routine checks resume.
#[tokio::test]
async fn the_engine_checks_right_after_the_next_rotation_time() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    fake.store.add_version(name, b"one");
    let next_rotation = clock.wall() + S(600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire: clock.wall() + S(365 * 86400),
        },
    );
    let secrets = scheduled_client(&server, &clock).await;
    let handle = secrets.handle("gcp-sm://db").await.unwrap();
    assert_eq!(
        handle.current().metadata().next_rotation,
        Some(next_rotation)
    );
    assert_eq!((accesses(&server), get_secrets(&server)), (1, 1));

    // Before nextRotationTime: no check.
    clock.advance(S(600 - 5)).await;
    quiet().await;
    assert_eq!(accesses(&server), 1);
    // Just after it (within the spread): a check, which reads the passed schedule again.
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation: next_rotation + S(3600),
            expire: clock.wall() + S(365 * 86400),
        },
    );
    clock.advance(S(5 + 61)).await;
    eventually("a check after nextRotationTime", || accesses(&server) == 2).await;
    eventually("GetSecret after nextRotationTime", || {
        get_secrets(&server) == 2
    })
    .await;
    // Then nothing for a while: the next check is the routine one, about an hour later.
    clock.advance(S(30 * 60)).await;
    quiet().await;
    assert_eq!((accesses(&server), get_secrets(&server)), (2, 2));
    secrets.shutdown().await;
}

// An expireTime moved (UpdateSecret) long before it passes: the engine checks a value with an
// expiry ⅔ of the way there, and that check's read asks GetSecret again (the cached expiry is
// due at that point too), so the new time is seen and the value is not reported expired at the
// old one. Fixture: schemas.Secret with `expireTime` 3000 s ahead and no rotation, then a day
// ahead.
#[tokio::test]
async fn an_expiry_moved_long_before_it_passes_is_seen_at_the_engines_two_thirds_check() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    fake.store.add_version(name, b"one");
    let expire = clock.wall() + S(3000);
    fake.set_meta(name, Meta::Expiring(expire));
    let secrets = scheduled_client(&server, &clock).await;
    let handle = secrets.handle("gcp-sm://db").await.unwrap();
    assert_eq!(handle.current().metadata().expires_at, Some(expire));
    // The operator extends the secret's life by a day, long before it would have expired.
    let moved = clock.wall() + S(86400);
    fake.set_meta(name, Meta::Expiring(moved));
    // Past the engine's check at ⅔ of the way (2000 s): its read asks GetSecret again.
    clock.advance(S(2100)).await;
    eventually(
        "GetSecret at the check ⅔ of the way to the expiry",
        || get_secrets(&server) == 2,
    )
    .await;
    eventually("the moved expiry taken", || {
        handle.current().metadata().expires_at == Some(moved)
    })
    .await;
    // The old expiry passes: Secret Manager still serves the secret, and so does the handle.
    clock.advance(S(1000)).await;
    quiet().await;
    let r = handle.try_current();
    assert!(
        r.is_ok(),
        "reported {:?} though the secret's expireTime was moved a day on before it passed; \
         requests: {:?}",
        r.err().map(|e| e.kind().clone()),
        server
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    secrets.shutdown().await;
}

// Reads of `latest` (version 2) and of the alias `prod` (version 1, left unpinned as aliases
// are) of one secret share its schedule, which belongs to the secret: one GetSecret for both,
// not one per read as when each evicted the other. Only a version newer than any seen (a
// rotation) asks again. Fixture: schemas.Secret with a rotation and expiry and
// `versionAliases: {"prod": "1"}`.
#[tokio::test]
async fn latest_and_an_older_alias_share_one_schedule() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    fake.store.add_version(name, b"one");
    fake.store.add_version(name, b"two");
    fake.set_alias("prod", 1);
    let next_rotation = clock.wall() + S(86400);
    let expire = clock.wall() + S(30 * 86400);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire,
        },
    );
    let src = source(&server, &clock, true).await;
    for _ in 0..5 {
        for (r, version, value) in [
            ("db", "2", &b"two"[..]),
            ("db?version=prod", "1", &b"one"[..]),
        ] {
            let s = src.fetch(&gcp_ref(r)).await.unwrap();
            assert_eq!(s.expose_bytes(), value, "{r}");
            assert_eq!(s.version(), Some(&Version::new(version)), "{r}");
            assert_eq!(s.metadata().next_rotation, Some(next_rotation), "{r}");
            assert_eq!(s.metadata().expires_at, Some(expire), "{r}");
        }
    }
    assert_eq!(get_secrets(&server), 1);
    // A rotation (version 3): asked once more, whichever is read.
    fake.store.add_version(name, b"three");
    for _ in 0..3 {
        src.fetch(&gcp_ref("db")).await.unwrap();
        src.fetch(&gcp_ref("db?version=prod")).await.unwrap();
    }
    assert_eq!(get_secrets(&server), 2);
    assert_eq!(accesses(&server), 16);
}

// A GetSecret that fails once the schedule is due (here over the metadata quota: 429
// RESOURCE_EXHAUSTED, google_rpc_status_errors.assembled.json) leaves the read with the
// schedule read before, not none; the next read asks again.
#[tokio::test]
async fn a_failed_get_secret_keeps_the_schedule_read_before() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    fake.store.add_version(name, b"one");
    let next_rotation = clock.wall() + S(86400);
    let expire = clock.wall() + S(30 * 86400);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire,
        },
    );
    let src = source(&server, &clock, true).await;
    src.fetch(&gcp_ref("db")).await.unwrap();
    // A rotation makes the schedule due; GetSecret is refused for quota, twice.
    fake.store.add_version(name, b"two");
    fake.set_meta(name, Meta::Throttled);
    for _ in 0..2 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.expose_bytes(), b"two");
        assert_eq!(s.metadata().next_rotation, Some(next_rotation));
        assert_eq!(s.metadata().expires_at, Some(expire));
    }
    assert_eq!(get_secrets(&server), 3);
    // Answered again: the new schedule, then the cache.
    let moved = next_rotation + S(3600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation: moved,
            expire,
        },
    );
    for _ in 0..2 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.metadata().next_rotation, Some(moved));
    }
    assert_eq!(get_secrets(&server), 4);
}

// Through the engine: the check ⅔ of the way to the expiry finds GetSecret over quota. The
// handle keeps its expiry (a result without one would have been taken as the expiry removed),
// and the engine's next check, ⅔ through what is left, asks again and sees the expiry moved.
#[tokio::test]
async fn a_failed_get_secret_leaves_the_engine_its_expiry_and_the_next_check_asks_again() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    fake.store.add_version(name, b"one");
    let expire = clock.wall() + S(3000);
    fake.set_meta(name, Meta::Expiring(expire));
    let secrets = scheduled_client(&server, &clock).await;
    let handle = secrets.handle("gcp-sm://db").await.unwrap();
    fake.set_meta(name, Meta::Throttled);
    // The check at 2000 s: GetSecret fails; the handle keeps the expiry it had.
    clock.advance(S(2100)).await;
    eventually("GetSecret at the first check", || get_secrets(&server) == 2).await;
    quiet().await;
    assert_eq!(handle.current().metadata().expires_at, Some(expire));
    // The next check (⅔ of the 900 s left, at 2700 s) asks again: the expiry was moved.
    let moved = clock.wall() + S(86400);
    fake.set_meta(name, Meta::Expiring(moved));
    clock.advance(S(700)).await;
    eventually("GetSecret at the next check", || get_secrets(&server) == 3).await;
    eventually("the moved expiry taken", || {
        handle.current().metadata().expires_at == Some(moved)
    })
    .await;
    clock.advance(S(1000)).await;
    quiet().await;
    assert!(handle.try_current().is_ok());
    secrets.shutdown().await;
}

// A nextRotationTime already past when read (the rotation is late, or Google has not moved it
// on yet): read again ten minutes later, and every ten minutes while it stays past, never per
// read. Fixture: schemas.Secret with `rotation.nextRotationTime` an hour ago.
#[tokio::test]
async fn a_rotation_time_already_past_is_read_again_every_ten_minutes_not_per_read() {
    let clock = ManualClock::new();
    let fake = Fake::default();
    let server = fake.start().await;
    let name = "projects/p1/secrets/db";
    fake.store.add_version(name, b"one");
    let late = clock.wall() - S(3600);
    let expire = clock.wall() + S(30 * 86400);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation: late,
            expire,
        },
    );
    let src = source(&server, &clock, true).await;
    for round in 1..=2 {
        for _ in 0..5 {
            let s = src.fetch(&gcp_ref("db")).await.unwrap();
            assert_eq!(s.metadata().next_rotation, Some(late));
        }
        assert_eq!(get_secrets(&server), round);
        clock.advance(S(599)).await;
        src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(get_secrets(&server), round);
        clock.advance(S(1)).await;
    }
    // Moved on at last: read at the next ten-minute mark, then not before the new time.
    let next_rotation = clock.wall() + S(3600);
    fake.set_meta(
        name,
        Meta::Scheduled {
            next_rotation,
            expire,
        },
    );
    for _ in 0..3 {
        let s = src.fetch(&gcp_ref("db")).await.unwrap();
        assert_eq!(s.metadata().next_rotation, Some(next_rotation));
    }
    assert_eq!(get_secrets(&server), 3);
    clock.advance(S(3599)).await;
    src.fetch(&gcp_ref("db")).await.unwrap();
    assert_eq!(get_secrets(&server), 3);
}
