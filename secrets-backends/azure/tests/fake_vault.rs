//! The Key Vault source against the loopback fake (tests/common), whose answers come from the
//! recordings in tests/fixtures.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use keyrack_azure::AzureBuilder;
use keyrack_core::testkit::assert_conformance;
use keyrack_core::{Clock, ErrorKind, ManualClock, SecretSource, Secrets, Version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let fake = Fake::start().await;
    let source = Arc::new(fake.source());
    let seeder = FakeSeeder { fake, source };
    assert_conformance(&seeder).await;
}

/// The exchange of rust/list_secrets_by_pages_verify_telemetry.excerpt.json entries 2–3 (a GET
/// without a token → 401 challenge; the same GET with a token → 200), with the token request
/// between them going to the fake Entra ID (entra/instance_discovery_disabled.json entry 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_then_token_then_retry_as_recorded() {
    let fake = Fake::start().await;
    let v1 = fake.put("db-password", "hunter2-value");
    let src = fake.source();

    let s = src.fetch(&kv_ref("db-password")).await.unwrap();
    assert_eq!(s.expose_bytes(), b"hunter2-value");
    assert_eq!(s.version(), Some(&Version::new(&v1)));
    assert!(s.metadata().created_at.is_some());
    assert!(s.metadata().expires_at.is_none());

    let sent = fake.vault_requests();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    // 1: no Authorization, as recorded; answered with the recorded challenge.
    assert_eq!(sent[0].method, "GET");
    assert_eq!(sent[0].path, "/secrets/db-password/");
    assert!(sent[0].header("authorization").is_none());
    // 2: the same request with the token Entra ID issued.
    assert_eq!(sent[1].path, "/secrets/db-password/");
    assert_eq!(
        sent[1].header("authorization"),
        Some("Bearer fake-access-token-1")
    );
    assert_eq!(
        sent[0].query_param("api-version"),
        sent[1].query_param("api-version")
    );
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1);
    let form = tokens[0].form();
    let scope = form
        .iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str());
    // The scope named by the recorded challenge (resource="https://vault.azure.net").
    assert_eq!(scope, Some("https://vault.azure.net/.default"));

    // Later reads: the scope is known and the token cached: one request, no challenge, no login.
    fake.vault.clear_requests();
    src.fetch(&kv_ref("db-password")).await.unwrap();
    let sent = fake.vault_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].header("authorization"),
        Some("Bearer fake-access-token-1")
    );
    assert_eq!(fake.token_requests().len(), 1);
}

/// A pinned version is read at `/secrets/{name}/{version}` (answered with the body of
/// rust/secret_roundtrip.json entry 1); `exp` becomes the value's expiry (answered with the body
/// of python_crud_operations_7.3.json entry 4, the latest version with `exp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_expiry() {
    let fake = Fake::start().await;
    let v1 = fake.put("api-key", "first");
    let v2 = fake.put("api-key", "second");
    fake.with_state(|s| s.latest_mut("api-key").exp = Some(2_527_401_600));
    let src = fake.source();

    let latest = src.fetch(&kv_ref("api-key")).await.unwrap();
    assert_eq!(latest.expose_bytes(), b"second");
    assert_eq!(latest.version(), Some(&Version::new(&v2)));
    assert_eq!(
        latest.metadata().expires_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_527_401_600))
    );
    let pinned = kv_ref("api-key").with_version(&v1).unwrap();
    let old = src.fetch(&pinned).await.unwrap();
    assert_eq!(old.expose_bytes(), b"first");
    assert_eq!(old.version(), Some(&Version::new(&v1)));
    let last = fake.vault_requests().pop().unwrap();
    assert_eq!(last.path, format!("/secrets/api-key/{v1}"));

    // A version that does not exist is NotFound; one that is not a version id never leaves.
    let gone = kv_ref("api-key")
        .with_version("0123456789abcdef0123456789abcdef")
        .unwrap();
    assert_eq!(
        src.fetch(&gone).await.unwrap_err().kind(),
        &ErrorKind::NotFound
    );
    let before = fake.vault_requests().len();
    let bad = kv_ref("api-key").with_version("..").unwrap();
    assert_eq!(
        src.fetch(&bad).await.unwrap_err().kind(),
        &ErrorKind::InvalidRef
    );
    assert_eq!(fake.vault_requests().len(), before);
}

/// 404 with code SecretNotFound (python_crud_operations_7.3.json entry 8) and a disabled secret
/// (403 SecretDisabled: no recording; shaped after the Key Vault REST reference).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_disabled_are_typed_errors() {
    let fake = Fake::start().await;
    fake.put("disabled-one", "do-not-show-this-value");
    fake.with_state(|s| s.latest_mut("disabled-one").enabled = false);
    let src = fake.source();

    let e = src.fetch(&kv_ref("never-written")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotFound);
    assert!(e.to_string().contains("SecretNotFound"), "{e}");

    let e = src.fetch(&kv_ref("disabled-one")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Disabled);
    assert!(!e.is_retryable());
    let text = format!("{e} {e:?}");
    assert!(text.contains("SecretDisabled"), "{text}");
    assert!(!text.contains("do-not-show-this-value"), "{text}");

    // Through the client: the same kinds reach the caller.
    let secrets = Secrets::builder().source("azure-kv", src).build().unwrap();
    let e = secrets
        .get_secret(kv_ref("disabled-one"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Disabled);
    secrets.shutdown().await;
}

/// 429 with Retry-After (no recording: shaped after the Key Vault throttling guidance) is
/// `Throttled` with the hint; the SDK does not retry on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_keeps_retry_after() {
    let fake = Fake::start().await;
    fake.put("busy", "v");
    let src = fake.source();
    // Past the challenge first, so the 429 answers an authorized request.
    src.fetch(&kv_ref("busy")).await.unwrap();
    fake.with_state(|s| s.throttle = Some((1, 3)));
    fake.vault.clear_requests();
    let e = src.fetch(&kv_ref("busy")).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.retry_after()),
        (&ErrorKind::Throttled, Some(Duration::from_secs(3)))
    );
    assert!(e.is_retryable());
    assert_eq!(fake.vault_requests().len(), 1, "the SDK retried by itself");
    assert_eq!(
        src.fetch(&kv_ref("busy")).await.unwrap().expose_bytes(),
        b"v"
    );
}

/// References: vault/secret, a default vault, several vaults, and bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_default_vault_and_several_vaults() {
    let fake = Fake::start().await;
    let other = Fake::start().await;
    fake.put("shared-name", "from-first");
    other.put("shared-name", "from-second");
    let token = Arc::new(RotatingToken::new("projected-sa-token-1"));
    // The second vault's fake issues its own tokens: give it the same token endpoint's state.
    other.with_state(|s| s.issued = vec!["fake-access-token-1".into()]);
    let src = fake
        .builder(token)
        .with_ca_pem(other.vault.ca_pem().unwrap())
        .with_vault_url("secondvault", other.vault.url())
        .with_default_vault(VAULT)
        .build()
        .unwrap();
    let one = keyrack_core::SecretRef::parse("azure-kv://shared-name").unwrap();
    assert_eq!(src.fetch(&one).await.unwrap().expose_bytes(), b"from-first");
    let two = keyrack_core::SecretRef::parse("azure-kv://secondvault/shared-name").unwrap();
    assert_eq!(
        src.fetch(&two).await.unwrap().expose_bytes(),
        b"from-second"
    );

    for (bad, kind) in [
        ("azure-kv://a/b/c", ErrorKind::InvalidRef),
        ("azure-kv://fakevault/bad_name", ErrorKind::InvalidRef),
        ("azure-kv://x/name", ErrorKind::InvalidRef),
        (
            "azure-kv://fakevault/name?stage=current",
            ErrorKind::Unsupported,
        ),
        ("azure-kv://fakevault/name?foo=1", ErrorKind::InvalidRef),
    ] {
        let r = keyrack_core::SecretRef::parse(bad).unwrap();
        assert_eq!(src.fetch(&r).await.unwrap_err().kind(), &kind, "{bad}");
    }
    let no_default = fake.source();
    assert_eq!(
        no_default.fetch(&one).await.unwrap_err().kind(),
        &ErrorKind::InvalidRef
    );
    let caps = src.capabilities();
    assert!(caps.versions && !caps.version_probe && !caps.batch && !caps.stages);
}

/// With the SDK's challenge check on (the default), a vault URL whose host does not end with
/// the challenge's resource host is refused before any token is requested; with it off, a
/// challenge naming another resource gets no token either (our scope guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_resource_is_checked() {
    let fake = Fake::start().await;
    fake.put("x-secret", "v");
    let token = Arc::new(RotatingToken::new("projected-sa-token-1"));
    let checked = fake
        .builder(token.clone())
        .with_challenge_resource_verification(true)
        .build()
        .unwrap();
    let e = checked.fetch(&kv_ref("x-secret")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config, "{e}");
    assert!(
        e.to_string()
            .contains("with_challenge_resource_verification(false)"),
        "{e}"
    );
    assert!(fake.token_requests().is_empty());

    fake.with_state(|s| s.challenge_resource = Some("https://management.azure.com".into()));
    let e = fake
        .builder(token)
        .build()
        .unwrap()
        .fetch(&kv_ref("x-secret"))
        .await
        .unwrap_err();
    // A configuration matter (the vault URL or the audience), not a refused login.
    assert_eq!(e.kind(), &ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("management.azure.com"), "{e}");
    assert!(fake.token_requests().is_empty());
}

/// The chain's error lists what each credential is missing.
#[test]
fn credential_chain_says_what_is_missing() {
    let e = AzureBuilder::from_vars(|name| {
        (name == "AZURE_TENANT_ID").then(|| "72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned())
    })
    .with_managed_identity(false)
    .with_vault_url(VAULT, "https://localhost:1")
    .build()
    .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Config);
    let text = e.to_string();
    assert!(
        text.contains(
            "workload identity: AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID not set; client \
             secret: AZURE_CLIENT_SECRET, AZURE_CLIENT_ID not set; managed identity: turned off"
        ),
        "{text}"
    );
}

/// `exp` brings the client's check forward: with a day-long refresh interval, a secret that
/// expires in an hour is re-read ⅔ of the way there (40 min), and the new version arrives as
/// `Rotated` without anyone calling `refresh_now`. On a manual clock (the engine's time; the
/// fake's `exp` is set against its wall time), so the schedule does not depend on how loaded
/// the machine is. `exp` on the wire as in python_crud_operations_7.3.json entry 4 (whole
/// seconds), whose body the fake answers with.
// Current-thread runtime, as ManualClock asks: the fakes' tasks run on it too.
#[tokio::test]
async fn expiry_schedules_a_check_before_it() {
    let clock = ManualClock::new();
    let fake = Fake::start().await;
    let now = clock
        .wall()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    fake.put("short-lived", "before");
    fake.with_state(|s| s.latest_mut("short-lived").exp = Some(now as i64 + 3600));
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("azure-kv", fake.source())
        .refresh_interval(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let handle = secrets.handle(kv_ref("short-lived")).await.unwrap();
    assert_eq!(
        handle.current().metadata().expires_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(now + 3600))
    );
    let mut events = handle.subscribe();
    let v2 = fake.put("short-lived", "after");
    let reads = fake.vault_requests().len();

    // Short of ⅔: no check yet (given real time to show up, were there one).
    clock.advance(Duration::from_secs(39 * 60)).await;
    let early = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(early.is_err(), "an event before ⅔: {early:?}");
    assert_eq!(fake.vault_requests().len(), reads, "checked before ⅔");
    // Past it: a read, and the new version.
    clock.advance(Duration::from_secs(2 * 60)).await;
    let rotated = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Some(keyrack_core::RotationEvent::Rotated { new, .. }) => return new,
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .expect("no check before the expiry");
    assert_eq!(rotated, Some(Version::new(&v2)));
    assert_eq!(handle.current().expose_bytes(), b"after");
    secrets.shutdown().await;
}

/// Issue #12: references are checked against Key Vault's limits before any request (vault
/// names 3–24 characters, secret names 1–127 of letters, digits and hyphens, version ids of
/// letters and digits), and the only query key is `version` (a selector; a near miss is
/// named). The errors say which part and which limit and never quote the part refused: a
/// reference that does not check out may be a value pasted in the wrong place.
/// No answer: nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_checked_against_key_vault_limits_without_quoting_them() {
    let fake = Fake::start().await;
    let src = fake.source();
    let long = format!("s3cr3t-{}", "n".repeat(121));
    for (bad, says) in [
        (format!("azure-kv://{VAULT}/{long}"), "127"),
        (format!("azure-kv://{VAULT}/s3cr3t_name"), "secret name"),
        (
            "azure-kv://s3cr3t-vault-name-that-is-long/db".to_owned(),
            "24",
        ),
        (format!("azure-kv://{VAULT}/db?version=s3cr3t-1"), "version"),
    ] {
        let r = keyrack_core::SecretRef::parse(&bad).unwrap();
        let e = src.fetch(&r).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}");
        let shown = e.message().to_ascii_lowercase();
        assert!(shown.contains(says), "{bad}: {shown}");
        assert!(
            !shown.contains("s3cr3t"),
            "the reference was quoted: {shown}"
        );
    }
    let r = keyrack_core::SecretRef::parse(&format!("azure-kv://{VAULT}/db?Version=1")).unwrap();
    let e = src.fetch(&r).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::InvalidRef);
    assert!(e.to_string().contains("did you mean `version`?"), "{e}");
    assert!(
        fake.vault_requests().is_empty(),
        "refused before any request"
    );
}
