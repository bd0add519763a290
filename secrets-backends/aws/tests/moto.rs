//! The AWS Secrets Manager source against moto (scripts/testground/moto-up).

#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // real-time tests against moto

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keyrack_core::testkit::assert_conformance;
use keyrack_core::{
    Backoff, ErrorKind, RotationEvent, RotationEvents, SecretRef, SecretSource, Secrets, Version,
};

fn client(source: keyrack_aws::AwsSource) -> Secrets {
    Secrets::builder()
        .source("aws-sm", source)
        .refresh_interval(Duration::from_secs(1))
        .refresh_jitter(0.0)
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        })
        .build()
        .unwrap()
}

async fn next_rotated(events: &mut RotationEvents) -> (Option<Version>, Option<Version>) {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.recv().await {
                Some(RotationEvent::Rotated { old, new, .. }) => return (old, new),
                Some(_) => continue,
                None => panic!("event stream closed"),
            }
        }
    })
    .await
    .expect("no Rotated event within 15 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let seeder = AwsSeeder {
        source: Arc::new(source().await),
    };
    assert_conformance(&seeder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_string_binary_version_and_created_date() {
    let src = source().await;
    let name = uniq("read");
    let v1 = put(&src, &name, b"text value").await.unwrap();
    let s = src.fetch(&aws_ref(&name)).await.unwrap();
    assert_eq!(s.expose_bytes(), b"text value");
    assert_eq!(s.version().map(Version::as_str), Some(v1.as_str()));
    assert!(s.metadata().created_at.is_some());

    let bin = uniq("binary");
    put(&src, &bin, &[0, 159, 146, 150, 255]).await.unwrap();
    let s = src.fetch(&aws_ref(&bin)).await.unwrap();
    assert_eq!(s.expose_bytes(), &[0, 159, 146, 150, 255]);

    // version probe agrees with fetch; ?version= pins, and a gone version is NotFound
    assert_eq!(
        src.version(&aws_ref(&name)).await.unwrap(),
        Some(Version::new(&v1))
    );
    let pinned = aws_ref(&name).with_version(&v1).unwrap();
    assert_eq!(src.version(&pinned).await.unwrap(), Some(Version::new(&v1)));
    let gone = aws_ref(&name).with_version("no-such-version-id").unwrap();
    assert_eq!(
        src.fetch(&gone).await.unwrap_err().kind(),
        &ErrorKind::NotFound
    );
    assert_eq!(
        src.version(&gone).await.unwrap_err().kind(),
        &ErrorKind::NotFound
    );
    let caps = src.capabilities();
    assert!(caps.version_probe && caps.batch && caps.versions && caps.stages && caps.binary);
    assert!(!caps.renew && !caps.revoke && !caps.watch);
    assert!(src.watch(&aws_ref(&name)).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_rotation_date_is_reported() {
    let src = source().await;
    let name = uniq("schedule");
    put(&src, &name, b"v").await.unwrap();
    // moto accepts rotation rules without a Lambda; the secret then has a NextRotationDate.
    // (RotateSecret itself would leave it unreadable in moto, so the rules are set and the
    // immediate rotation skipped.)
    let rotated = src
        .client()
        .rotate_secret()
        .secret_id(&name)
        .rotate_immediately(false)
        .rotation_rules(
            keyrack_aws::aws_sdk_secretsmanager::types::RotationRulesType::builder()
                .automatically_after_days(7)
                .build(),
        )
        .send()
        .await;
    let described = src
        .client()
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap();
    let s = src.fetch(&aws_ref(&name)).await.unwrap();
    match described.next_rotation_date() {
        Some(_) => assert!(s.metadata().next_rotation.is_some(), "{rotated:?}"),
        None => {
            eprintln!("moto gave no NextRotationDate ({rotated:?}); nothing to compare");
            assert!(s.metadata().next_rotation.is_none());
        }
    }
    assert_eq!(s.expose_bytes(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rotation_emits_rotated_and_previous_is_readable() {
    let src = source().await;
    let admin = src.clone();
    let name = uniq("rotation");
    let v1 = put(&admin, &name, b"password-1").await.unwrap();
    let secrets = client(src);
    let r = aws_ref(&name);
    let handle = secrets.handle(&r).await.unwrap();
    let mut events = handle.subscribe();
    assert_eq!(handle.current().expose_bytes(), b"password-1");

    // Rotation step 1: a pending version. The handle keeps serving AWSCURRENT.
    let v2 = version_token();
    admin
        .client()
        .put_secret_value()
        .secret_id(&name)
        .client_request_token(&v2)
        .secret_string("password-2")
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    handle.refresh_now().await.unwrap();
    assert_eq!(handle.current().expose_bytes(), b"password-1");
    let pending = secrets
        .get_secret(r.clone().with_stage("AWSPENDING").unwrap())
        .await
        .unwrap();
    assert_eq!(pending.expose_bytes(), b"password-2");

    // Step 2: AWSCURRENT moves to the new version (what the rotation Lambda's finishSecret does).
    admin
        .client()
        .update_secret_version_stage()
        .secret_id(&name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(&v2)
        .remove_from_version_id(&v1)
        .send()
        .await
        .unwrap();
    let (old, new) = next_rotated(&mut events).await;
    assert_eq!(old, Some(Version::new(&v1)));
    assert_eq!(new, Some(Version::new(&v2)));
    assert_eq!(handle.current().expose_bytes(), b"password-2");

    let previous = secrets
        .get_secret(r.with_stage("AWSPREVIOUS").unwrap())
        .await
        .unwrap();
    assert_eq!(previous.expose_bytes(), b"password-1");
    assert_eq!(previous.version(), Some(&Version::new(&v1)));
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_prefetches_100_secrets_in_at_most_5_calls() {
    let admin = source().await;
    let prefix = uniq("warm");
    let names: Vec<String> = (0..100).map(|i| format!("{prefix}-{i:03}")).collect();
    let seeding: Vec<_> = names
        .iter()
        .map(|n| {
            let admin = &admin;
            async move { put(admin, n, format!("value of {n}").as_bytes()).await }
        })
        .collect();
    use futures_util::StreamExt;
    let seeded: Vec<_> = futures_util::stream::iter(seeding)
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(seeded.iter().all(Result::is_ok));

    let log = RequestLog::default();
    let src = builder()
        .with_interceptor(log.clone())
        .build()
        .await
        .unwrap();
    let secrets = client(src.clone());
    let refs: Vec<SecretRef> = names.iter().map(|n| aws_ref(n)).collect();
    let t0 = Instant::now();
    let results = secrets.prefetch(&refs).await;
    let batched = t0.elapsed();
    let calls = log.operations();
    assert!(
        calls.len() <= 5,
        "prefetch made {} calls: {calls:?}",
        calls.len()
    );
    assert_eq!(log.count("BatchGetSecretValue"), 5, "{calls:?}");
    for (n, r) in names.iter().zip(&results) {
        let s = r.as_ref().unwrap();
        assert_eq!(s.expose_bytes(), format!("value of {n}").as_bytes());
        assert!(s.version().is_some());
    }
    // Served from the cache now: no further calls.
    secrets.get_secret(&refs[42]).await.unwrap();
    assert_eq!(log.operations().len(), calls.len());

    // The same reads one GetSecretValue at a time (no DescribeSecret, to compare like with like).
    let plain = builder()
        .with_rotation_schedule(false)
        .build()
        .await
        .unwrap();
    let t1 = Instant::now();
    for r in &refs {
        plain.fetch(r).await.unwrap();
    }
    let sequential = t1.elapsed();
    eprintln!(
        "warm start: batched {batched:?}, sequential fetches {sequential:?} ({:.1}x)",
        sequential.as_secs_f64() / batched.as_secs_f64()
    );
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_many_keeps_per_secret_errors_and_order() {
    let src = source().await;
    let a = uniq("many-a");
    let b = uniq("many-b");
    let v_a = put(&src, &a, b"a1").await.unwrap();
    put(&src, &a, b"a2").await.unwrap();
    put(&src, &b, b"b").await.unwrap();
    let refs = vec![
        aws_ref(&b),
        aws_ref(&uniq("many-missing")),
        aws_ref(&a).with_version(&v_a).unwrap(),
        aws_ref(&a),
        aws_ref(&b),
    ];
    let out = src.fetch_many(&refs).await;
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].as_ref().unwrap().expose_bytes(), b"b");
    assert_eq!(out[1].as_ref().unwrap_err().kind(), &ErrorKind::NotFound);
    assert_eq!(out[2].as_ref().unwrap().expose_bytes(), b"a1");
    assert_eq!(out[3].as_ref().unwrap().expose_bytes(), b"a2");
    assert_eq!(out[4].as_ref().unwrap().expose_bytes(), b"b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_refreshes_back_off_and_recover() {
    let throttler = Throttler::default();
    let src = builder()
        .with_interceptor(throttler.clone())
        .build()
        .await
        .unwrap();
    let admin = source().await;
    let name = uniq("throttle");
    let v1 = put(&admin, &name, b"before").await.unwrap();
    let secrets = client(src);
    let handle = secrets.handle(aws_ref(&name)).await.unwrap();
    let mut events = handle.subscribe();

    throttler.arm("", 6); // the next 6 requests of any operation
    let v2 = put(&admin, &name, b"after").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut failures = 0;
    let mut rotated = None;
    while rotated.is_none() {
        assert!(Instant::now() < deadline, "no recovery within 20 s");
        // current() never fails meanwhile
        let value = handle.try_current().unwrap();
        assert!(value.expose_bytes() == b"before" || value.expose_bytes() == b"after");
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(20), events.recv()).await
        {
            match event {
                RotationEvent::RefreshFailed { error, .. } => {
                    assert!(matches!(error.kind(), ErrorKind::Throttled), "{error}");
                    failures += 1;
                }
                RotationEvent::Rotated { old, new, .. } => rotated = Some((old, new)),
                _ => {}
            }
        }
    }
    assert!(failures >= 1, "no throttled refresh was reported");
    assert_eq!(throttler.throttled(), 6);
    assert_eq!(
        rotated,
        Some((Some(Version::new(&v1)), Some(Version::new(&v2))))
    );
    assert_eq!(handle.current().expose_bytes(), b"after");
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_batch_falls_back_to_single_reads() {
    let throttler = Throttler::default();
    let log = RequestLog::default();
    let src = builder()
        .with_interceptor(throttler.clone())
        .with_interceptor(log.clone())
        .with_batch_fallback(8)
        .build()
        .await
        .unwrap();
    let names: Vec<String> = (0..25).map(|i| uniq(&format!("fallback{i}"))).collect();
    for n in &names {
        put(&src, n, n.as_bytes()).await.unwrap();
    }
    log.clear();
    let refs: Vec<SecretRef> = names.iter().map(|n| aws_ref(n)).collect();
    // Both batches throttled: every secret is read one by one.
    throttler.arm("BatchGetSecretValue", 2);
    let out = src.fetch_many(&refs).await;
    assert_eq!(throttler.throttled(), 2);
    for (n, r) in names.iter().zip(&out) {
        assert_eq!(r.as_ref().unwrap().expose_bytes(), n.as_bytes());
    }
    assert_eq!(log.count("GetSecretValue"), 25);

    throttler.arm("GetSecretValue", 5);
    throttler
        .throttled
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let out = src.fetch_many(&refs[..3]).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");

    // Throttled forever: the bounded attempts end with a Throttled error, not a hang.
    throttler.arm("", usize::MAX);
    let out = src.fetch_many(&refs[..2]).await;
    for r in out {
        assert!(matches!(r.unwrap_err().kind(), ErrorKind::Throttled));
    }
    throttler.arm("", 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_for_deletion_is_deleted() {
    let src = source().await;
    let name = uniq("deleted");
    put(&src, &name, b"x").await.unwrap();
    src.client()
        .delete_secret()
        .secret_id(&name)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let e = src.fetch(&aws_ref(&name)).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Deleted, "{e}");
    assert!(e.to_string().contains("RestoreSecret"), "{e}");
    let e = src.version(&aws_ref(&name)).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Deleted, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_unavailable() {
    let src = builder()
        .with_endpoint_url("http://127.0.0.1:9")
        .build()
        .await
        .unwrap();
    let e = src.fetch(&aws_ref("anything")).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

/// Every value, error and event this source produces is free of the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_appear_in_debug_display_or_errors() {
    let canary = format!("canary-{:016x}", rand_u64());
    let src = source().await;
    let name = uniq("leak");
    let json = uniq("leak-json");
    let v1 = put(&src, &name, canary.as_bytes()).await.unwrap();
    put(
        &src,
        &json,
        format!(r#"{{"password":"{canary}"}}"#).as_bytes(),
    )
    .await
    .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut record = |d: String, s: String| {
        seen.push(d);
        seen.push(s);
    };

    let s = src.fetch(&aws_ref(&name)).await.unwrap();
    record(format!("{s:?}"), format!("{:?}", s.metadata()));
    record(format!("{:?}", s.value()), format!("{}", s.value()));
    record(format!("{src:?}"), format!("{:?}", src.capabilities()));
    for r in src.fetch_many(&[aws_ref(&name), aws_ref(&json)]).await {
        record(format!("{r:?}"), String::new());
    }
    let errors = vec![
        src.fetch(&aws_ref(&uniq("missing"))).await.unwrap_err(),
        src.fetch(&aws_ref(&name).with_version("nope").unwrap())
            .await
            .unwrap_err(),
        src.version(&aws_ref(&name).with_stage("NOSUCHSTAGE").unwrap())
            .await
            .unwrap_err(),
        s.json::<u32>().unwrap_err(),
        s.field("password").unwrap_err(),
    ];
    // A value passed where a name belongs, too long to be one: refused without quoting it.
    let pasted = [
        format!("{canary}-{}", "x".repeat(300)),
        format!(
            "arn:aws:secretsmanager:us-east-1:1:secret:{canary}-{}",
            "x".repeat(2100)
        ),
    ];
    let mut errors = errors;
    for id in &pasted {
        let r = SecretRef::new("aws-sm", id).unwrap();
        errors.push(src.fetch(&r).await.unwrap_err());
        errors.push(src.version(&r).await.unwrap_err());
    }
    let secrets = client(src.clone());
    let mut all_errors = errors;
    all_errors.push(
        secrets
            .get_secret(aws_ref(&json).with_field("absent").unwrap())
            .await
            .unwrap_err(),
    );
    all_errors.push(
        secrets
            .get_secret(aws_ref(&name).with_field("password").unwrap())
            .await
            .unwrap_err(),
    );
    // an error built from a response that failed to parse: moto answering a path that is not
    // Secrets Manager's JSON
    let broken = builder()
        .with_endpoint_url(format!("{}/moto-api", env("AWS_ENDPOINT_URL")))
        .build()
        .await
        .unwrap();
    if let Err(e) = broken.fetch(&aws_ref(&name)).await {
        all_errors.push(e);
    }
    for e in &all_errors {
        record(format!("{e:?}"), format!("{e}"));
    }

    // events of a rotation
    let handle = secrets.handle(aws_ref(&name)).await.unwrap();
    let mut events = handle.subscribe();
    put(&src, &name, format!("{canary}-2").as_bytes())
        .await
        .unwrap();
    handle.refresh_now().await.unwrap();
    let (old, _) = next_rotated(&mut events).await;
    assert_eq!(old, Some(Version::new(&v1)));
    record(format!("{:?}", handle.current()), String::new());
    secrets.shutdown().await;

    for text in &seen {
        assert!(!text.contains(&canary), "secret value leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_env_reads_region_endpoint_and_keys_from_the_environment() {
    // moto-up's env file sets AWS_REGION, AWS_ENDPOINT_URL and the access keys.
    let src = keyrack_aws::AwsBuilder::from_env().build().await.unwrap();
    let name = uniq("from-env");
    put(&src, &name, b"from env").await.unwrap();
    let s = src.fetch(&aws_ref(&name)).await.unwrap();
    assert_eq!(s.expose_bytes(), b"from env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arn_references_work_alone_and_in_batches() {
    let src = source().await;
    let name = uniq("by-arn");
    put(&src, &name, br#"{"password":"p"}"#).await.unwrap();
    let arn = src
        .client()
        .describe_secret()
        .secret_id(&name)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let secrets = client(src.clone());
    let by_uri = secrets
        .get_secret(format!("aws-sm://{arn}#password").as_str())
        .await
        .unwrap();
    assert_eq!(by_uri.expose_bytes(), b"p");
    let r = SecretRef::new("aws-sm", &arn).unwrap();
    let out = src.fetch_many(&[r.clone(), aws_ref(&name)]).await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(
        src.version(&r).await.unwrap(),
        out[0].as_ref().unwrap().version().cloned()
    );
    secrets.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_sdk_config_is_used() {
    use keyrack_aws::aws_config::{BehaviorVersion, SdkConfig};
    use keyrack_aws::aws_sdk_secretsmanager::config::{
        Credentials, Region, SharedCredentialsProvider,
    };
    // No HTTP client in it: the crate's rustls client is filled in.
    let config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(env("AWS_REGION")))
        .endpoint_url(env("AWS_ENDPOINT_URL"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "test",
        )))
        .build();
    let src = keyrack_aws::AwsBuilder::new()
        .with_sdk_config(config)
        .build()
        .await
        .unwrap();
    let name = uniq("sdk-config");
    put(&src, &name, b"via SdkConfig").await.unwrap();
    assert_eq!(
        src.fetch(&aws_ref(&name)).await.unwrap().expose_bytes(),
        b"via SdkConfig"
    );
}
