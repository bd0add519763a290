//! Faults OpenBao cannot be made to show on demand, against the loopback fake in `common::fake`:
//! an outage of the token keeper's Vault, a renewal answered after a newer login, Retry-After in
//! both forms, redirects, repeated refusals. Time is a `ManualClock`; nothing asserts a duration
//! of real time (the fake answers on loopback, and the tests wait for that I/O to finish).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fake::{FakeVault, envelope, idle, until};
use common::r;
use keyrack_core::{Clock, ErrorKind, ManualClock, SecretSource};
use keyrack_fake_server::{FakeServer, Response};
use keyrack_vault::VaultBuilder;
use serde_json::json;

const S: fn(u64) -> Duration = Duration::from_secs;

/// #2: once the token's end has passed and Vault keeps failing, the keeper retried in a hot
/// loop (its next try was `min(now + delay, end)`, in the past). Budget while Vault is down: at
/// most 8 renewals and logins in the first simulated minute, between 1 and 3 in each later one
/// (it keeps trying, so it recovers when Vault does).
#[tokio::test]
async fn the_keeper_backs_off_while_vault_is_down() {
    let vault = FakeVault::start(30).await;
    let clock = ManualClock::new();
    let source = vault.source(clock.clone());
    source.fetch(&r("vault://secret/app")).await.unwrap();
    assert!(idle(&clock, 1).await, "the keeper waits for the renewal");
    vault.set_down(true);

    let mut per_minute = Vec::new();
    'minutes: for _ in 0..10 {
        let before = vault.keeper_calls();
        for _ in 0..60 {
            clock.advance(S(1)).await;
            if !idle(&clock, 1).await {
                per_minute.push(vault.keeper_calls() - before);
                break 'minutes;
            }
        }
        per_minute.push(vault.keeper_calls() - before);
    }
    eprintln!("renewals and logins per simulated minute while Vault is down: {per_minute:?}");
    assert_eq!(
        per_minute.len(),
        10,
        "the keeper stopped waiting between tries: calls per minute {per_minute:?}"
    );
    assert!(
        (1..=8).contains(&per_minute[0]),
        "first minute: {per_minute:?}"
    );
    assert!(
        per_minute[1..].iter().all(|n| (1..=3).contains(n)),
        "later minutes: {per_minute:?}"
    );

    // Vault is back: the keeper gets a token again within the next wait (at most a minute).
    vault.set_down(false);
    let logins = vault.count("/v1/auth/approle/login");
    for _ in 0..61 {
        clock.advance(S(1)).await;
        assert!(idle(&clock, 1).await);
    }
    assert!(vault.count("/v1/auth/approle/login") > logins);
    source.fetch(&r("vault://secret/app")).await.unwrap();
}

/// #10: a renewal answered after a newer login (generation N+1) stored its token (generation N)
/// over the newer one.
#[tokio::test]
async fn a_late_renewal_never_replaces_a_newer_token() {
    let vault = FakeVault::start(30).await;
    let clock = ManualClock::new();
    let source = vault.source(clock.clone());
    source.fetch(&r("vault://secret/app")).await.unwrap();
    assert!(idle(&clock, 1).await);

    // The renewal of tok-0 (due at about ⅔ of 30 s) is accepted but its answer is held back.
    let release = vault.hold("/v1/auth/token/renew-self");
    clock.advance(S(25)).await;
    assert!(until(|| vault.count("/v1/auth/token/renew-self") == 1).await);
    // Meanwhile tok-0 is revoked; a read finds out and logs in again (tok-1).
    vault.kill("tok-0");
    source.fetch(&r("vault://secret/second")).await.unwrap();
    assert_eq!(
        vault.tokens_sent_to("/v1/secret/data/second"),
        ["tok-0", "tok-1"]
    );
    // Now the renewal of tok-0 lands.
    *vault.behaviour.hold.lock().unwrap() = None;
    release.notify_one();
    assert!(idle(&clock, 1).await);

    source.fetch(&r("vault://secret/third")).await.unwrap();
    assert_eq!(
        vault.tokens_sent_to("/v1/secret/data/third"),
        ["tok-1"],
        "the renewal of the older token replaced the newer one"
    );
}

/// #10: after `shutdown` the keeper is gone for good: it makes no call, a login under way when
/// the source shut down starts none, and neither does a direct read afterwards (the source stays
/// usable for direct calls; the client makes none after its shutdown).
#[tokio::test]
async fn no_keeper_runs_after_shutdown() {
    let vault = FakeVault::start(30).await;
    let clock = ManualClock::new();
    // Without revocation, so that a direct read after shutdown may log in again (with it, the
    // read is refused: tests/openbao_cleanup.rs).
    let no_revoke = || {
        vault
            .builder(clock.clone())
            .revoke_token_on_shutdown(false)
            .build()
            .unwrap()
    };
    let source = no_revoke();
    source.fetch(&r("vault://secret/app")).await.unwrap();
    assert!(idle(&clock, 1).await);

    // A login under way while the source shuts down starts no keeper.
    let other = no_revoke();
    let release = vault.hold("/v1/auth/approle/login");
    let reading = tokio::spawn({
        let other = other.clone();
        async move { other.fetch(&r("vault://secret/app")).await }
    });
    assert!(until(|| vault.count("/v1/auth/approle/login") == 2).await);
    other.shutdown().await;
    *vault.behaviour.hold.lock().unwrap() = None;
    release.notify_one();
    reading.await.unwrap().unwrap();

    source.shutdown().await;
    let keeper_calls = vault.keeper_calls();
    for _ in 0..48 {
        clock.advance(S(1800)).await;
        assert!(idle(&clock, 0).await);
    }
    // A direct read after shutdown, with a token that must be replaced: still no keeper.
    vault.kill("tok-0");
    source.fetch(&r("vault://secret/after")).await.unwrap();
    let keeper_calls = keeper_calls + 1; // that read's own login
    for _ in 0..48 {
        clock.advance(S(1800)).await;
        assert!(idle(&clock, 0).await);
    }
    assert_eq!(
        vault.keeper_calls(),
        keeper_calls,
        "the keeper ran after shutdown"
    );
    assert_eq!(clock.sleepers(), 0, "a keeper still waits on the clock");
}

/// #8: Retry-After is kept on any status (a 503 too), on logins as on reads, and in both of its
/// forms (seconds and an HTTP date, counted from the source's clock).
#[tokio::test]
async fn retry_after_is_kept_on_any_status_in_both_forms() {
    let vault = FakeVault::start(3600).await;
    let clock = ManualClock::new();
    let source = vault.source(clock.clone());
    assert_eq!(source.capabilities().retry_floor, S(1));

    vault.set_down(true);
    *vault.behaviour.retry_after.lock().unwrap() = Some("7".into());
    let e = source.fetch(&r("vault://secret/app")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert_eq!(e.retry_after(), Some(S(7)), "a refused login: {e:?}");

    vault.set_down(false);
    source.fetch(&r("vault://secret/app")).await.unwrap();
    vault.set_down(true);
    let at = clock.wall() + S(30);
    *vault.behaviour.retry_after.lock().unwrap() = Some(httpdate::fmt_http_date(at));
    let e = source.fetch(&r("vault://secret/other")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Unavailable, "{e}");
    assert_eq!(e.retry_after(), Some(S(30)), "a refused read: {e:?}");
}

/// #9: a dynamic secret issued under a token that was replaced while the request was under way
/// would die with that token; it is issued again under the new one.
#[tokio::test]
async fn a_lease_issued_under_a_replaced_token_is_issued_again() {
    let vault = FakeVault::start(3600).await;
    let clock = ManualClock::new();
    let source = vault.source(clock.clone());
    source.fetch(&r("vault://secret/app")).await.unwrap();

    let release = vault.hold("/v1/database/creds/");
    let reading = tokio::spawn({
        let source = source.clone();
        async move { source.fetch(&r("vault://database/creds/app")).await }
    });
    assert!(until(|| vault.count("/v1/database/creds/") == 1).await);
    vault.kill("tok-0");
    source.fetch(&r("vault://secret/other")).await.unwrap();
    *vault.behaviour.hold.lock().unwrap() = None;
    release.notify_one();
    let secret = reading.await.unwrap().unwrap();
    assert_eq!(
        vault.tokens_sent_to("/v1/database/creds/"),
        ["tok-0", "tok-1"]
    );
    assert_eq!(
        secret.lease().unwrap().id,
        "database/creds/app/L1",
        "the lease of the replaced token was served"
    );
}

/// #15: a redirect to another origin would carry `X-Vault-Token` there; it is not followed. One
/// to the same origin is.
#[tokio::test]
async fn a_redirect_to_another_origin_gets_no_token() {
    let elsewhere = FakeVault::start(3600).await;
    let target = elsewhere.url();
    let vault = FakeServer::http(move |req| {
        let target = target.clone();
        async move {
            match req.path.as_str() {
                "/v1/auth/token/lookup-self" => Response::json(
                    200,
                    &envelope(json!({
                        "id": "tok-redirected", "accessor": "acc", "creation_time": 0,
                        "creation_ttl": 0, "display_name": "token", "entity_id": "",
                        "expire_time": null, "explicit_max_ttl": 0, "issue_time": "",
                        "meta": null, "num_uses": 0, "orphan": true, "path": "auth/token/create",
                        "policies": ["root"], "renewable": false, "ttl": 0, "type": "service"
                    })),
                ),
                p if p.starts_with("/v1/sys/internal/ui/mounts/") => Response::json(
                    200,
                    &envelope(
                        json!({ "path": "secret/", "type": "kv", "options": { "version": "2" } }),
                    ),
                ),
                "/v1/secret/data/same" => {
                    Response::status(307).header("location", "/v1/secret/data/moved")
                }
                "/v1/secret/data/moved" => Response::json(
                    200,
                    &envelope(json!({ "data": { "v": "moved" }, "metadata": { "version": 1 } })),
                ),
                p => Response::status(307).header("location", format!("{target}{p}")),
            }
        }
    })
    .await;
    let source = VaultBuilder::new()
        .with_address(vault.url())
        .with_token("tok-redirected")
        .with_clock(ManualClock::new())
        .build()
        .unwrap();
    let moved = source.fetch(&r("vault://secret/same")).await.unwrap();
    assert_eq!(moved.field("v").unwrap().expose_str().unwrap(), "moved");

    let e = source.fetch(&r("vault://secret/app")).await.unwrap_err();
    assert!(
        elsewhere.tokens_sent_to("/").is_empty(),
        "the token was sent to another origin"
    );
    assert!(!e.to_string().contains(&elsewhere.url()), "{e}");
}

/// #15: a token that is alive but refused on some paths cost a `lookup-self` per refusal; it is
/// looked up at most once per token generation and short interval.
#[tokio::test]
async fn a_live_token_is_looked_up_once_for_many_refusals() {
    let vault = FakeVault::start(3600).await;
    let clock = ManualClock::new();
    let source = vault.source(clock.clone());
    source.fetch(&r("vault://secret/app")).await.unwrap();
    for i in 0..20 {
        let e = source
            .fetch(&r(&format!("vault://secret/denied/x{i}")))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::PermissionDenied, "{e}");
    }
    assert_eq!(vault.count("/v1/auth/token/lookup-self"), 1);
    clock.advance(S(60)).await;
    source
        .fetch(&r("vault://secret/denied/later"))
        .await
        .unwrap_err();
    assert_eq!(vault.count("/v1/auth/token/lookup-self"), 2);
}

/// #15: the versions of issued certificates were kept for every distinct reference ever issued.
#[tokio::test]
async fn issued_versions_are_bounded() {
    let vault = FakeVault::start(3600).await;
    let source = vault.source(ManualClock::new());
    let issue = |i: usize| {
        r(&format!(
            "vault://pki/issue/app?common_name=h{i}.example.test"
        ))
    };
    for i in 0..1100 {
        source.fetch(&issue(i)).await.unwrap();
    }
    assert_eq!(
        source.version(&issue(1099)).await.unwrap(),
        Some("sn-1099".into())
    );
    assert_eq!(
        source.version(&issue(0)).await.unwrap(),
        None,
        "every issued reference is remembered"
    );
}

/// #12: parameters a read does not know are refused instead of reading something else (a KV
/// read ignoring `?Version=`) or writing (`?stgae=` made a read of a dynamic secret a POST).
#[tokio::test]
async fn unknown_parameters_are_refused() {
    let vault = FakeVault::start(3600).await;
    let source = vault.source(ManualClock::new());
    source.fetch(&r("vault://secret/app")).await.unwrap();
    let before = vault.server.requests().len();
    for (uri, hint) in [
        ("vault://secret/app?Version=2", "version"),
        ("vault://secret/app?versionId=2", "version"),
        ("vault://database/creds/app?stgae=current", "stage"),
        ("vault://database/creds/app?Stage=current", "stage"),
    ] {
        let e = source.fetch(&r(uri)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{uri}: {e}");
        assert!(e.to_string().contains(hint), "{uri}: {e}");
        let e = source.version(&r(uri)).await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{uri}: {e}");
    }
    assert_eq!(
        vault.server.requests()[before..]
            .iter()
            .filter(|q| !q.path.starts_with("/v1/sys/internal/ui/mounts/"))
            .count(),
        0,
        "a refused reference reached Vault"
    );
    // An issuing endpoint takes its own parameters.
    source
        .fetch(&r(
            "vault://pki/issue/app?common_name=a.example.test&ttl=1h",
        ))
        .await
        .unwrap();
}

/// #15: over plain http the token travels in clear: only to a loopback address.
#[test]
fn plain_http_only_to_loopback() {
    let build = |address: &str| {
        VaultBuilder::new()
            .with_address(address)
            .with_token("x")
            .build()
    };
    for ok in [
        "http://127.0.0.1:8200",
        "http://127.8.0.1:8200",
        "http://localhost:8200",
        "http://[::1]:8200",
        "https://vault.example.com:8200",
    ] {
        build(ok).unwrap();
    }
    for refused in [
        "http://vault.example.com:8200",
        "http://10.0.0.5:8200",
        "http://localhost.example.com:8200",
        "http://127.0.0.1.example.com:8200",
    ] {
        let e = build(refused).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config, "{refused}");
        assert!(e.to_string().contains("allow_plain_http"), "{e}");
    }
}
