//! A [`Transport`] of one's own: every request goes through it, each is still bounded by the
//! source's timeout on the source's clock (a transport that hangs), a transport's failure and
//! the answers an unfriendly path sends (a refused permission, a proxy's HTML page, OpenBao's
//! rate limit) keep their kinds and quote nothing secret, and the builder refuses TLS settings
//! the transport would ignore. Answers are OpenBao 2.7.2's, recorded
//! (`keyrack_fake_server::vault`, `testing/fake-server/fixtures/vault/openbao-2.7.2.json`).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake::{idle, until};
use keyrack_core::{
    Clock, Error, ErrorKind, ManualClock, RequestBudget, Result, SecretRef, SecretSource,
    SecretValue, Secrets, async_trait,
};
use keyrack_fake_server::vault::{Recorded, recorded};
use keyrack_vault::{Auth, Transport, VaultBuilder};

const SECRET_ID: &str = "approle-secret-id-7f3a";
const VALUE: &str = "the-value-91c2";

/// What the transport does with each request.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answer as OpenBao did: login, mount, read.
    Serve,
    /// Accept the request and never answer.
    Hang,
    /// Fail as a broken connection does.
    Unreachable,
    /// Answer reads with this recorded answer (logins and mounts as `Serve`).
    ReadsAnswer(&'static str),
    /// Answer reads with a proxy's HTML error page of this status.
    ReadsHtml(u16),
    /// Answer logins with this recorded answer (the rest as `Serve`).
    LoginAnswer(&'static str),
    /// Answer mount lookups under this first path segment with a proxy's HTML 503 page.
    LookupDownUnder(&'static str),
}

/// One request as the transport saw it.
#[derive(Debug)]
struct Seen {
    path: String,
    /// `X-Vault-Token`, and whether it was marked sensitive.
    token: Option<(String, bool)>,
    body: Vec<u8>,
    /// When it was sent, on the source's clock.
    at: Instant,
}

#[derive(Debug, Clone)]
struct Scripted {
    mode: Mode,
    seen: Arc<Mutex<Vec<Seen>>>,
    clock: ManualClock,
}

fn login_token() -> String {
    recorded("approle_login").body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn answer(r: &Recorded) -> http::Response<SecretValue> {
    let mut a = http::Response::builder().status(r.status);
    for (k, v) in &r.headers {
        a = a.header(k, v);
    }
    a.body(SecretValue::from_string(r.body.to_string()))
        .unwrap()
}

/// A proxy's HTML error page of `status`.
fn html_page(status: u16) -> http::Response<SecretValue> {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/html")
        .body(SecretValue::from(
            "<html><body><h1>503 Service Unavailable</h1>No server is available to handle this \
             request.</body></html>",
        ))
        .unwrap()
}

#[async_trait]
impl Transport for Scripted {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<SecretValue>> {
        let path = request.uri().path().to_owned();
        // Not answered within the call that sent it, as no network answers: requests started
        // together are under way together.
        tokio::task::yield_now().await;
        self.seen.lock().unwrap().push(Seen {
            path: path.clone(),
            token: request
                .headers()
                .get("x-vault-token")
                .map(|v| (v.to_str().unwrap().to_owned(), v.is_sensitive())),
            body: request.body().to_vec(),
            at: self.clock.now(),
        });
        let is_read = path.starts_with("/v1/secret/");
        let is_login = path == "/v1/auth/approle/login";
        match self.mode {
            Mode::Hang => std::future::pending().await,
            Mode::Unreachable => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "connection reset by peer",
                ));
            }
            Mode::ReadsAnswer(name) if is_read => return Ok(answer(&recorded(name))),
            Mode::LoginAnswer(name) if is_login => return Ok(answer(&recorded(name))),
            Mode::LookupDownUnder(segment)
                if path.starts_with(&format!("/v1/sys/internal/ui/mounts/{segment}/")) =>
            {
                return Ok(html_page(503));
            }
            Mode::ReadsHtml(status) if is_read => return Ok(html_page(status)),
            _ => {}
        }
        let mut r = if is_login {
            recorded("approle_login")
        } else if path.starts_with("/v1/sys/internal/ui/mounts/") {
            recorded("ui_mounts_kv2")
        } else if path.starts_with("/v1/secret/data/") {
            recorded("kv2_read")
        } else {
            return Ok(answer(&recorded("permission_denied")));
        };
        if r.body["data"]["data"]["value"].is_string() {
            r.body["data"]["data"]["value"] = VALUE.into();
        }
        Ok(answer(&r))
    }
}

fn source(mode: Mode, clock: &ManualClock) -> (keyrack_vault::VaultSource, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source = VaultBuilder::new()
        .with_address("https://vault.example.com:8200")
        .with_auth(Auth::approle("role", SECRET_ID))
        .with_timeout(Duration::from_secs(10))
        .with_clock(clock.clone())
        .with_transport(Scripted {
            mode,
            seen: seen.clone(),
            clock: clock.clone(),
        })
        .build()
        .unwrap();
    (source, seen)
}

fn secret() -> SecretRef {
    SecretRef::parse("vault://secret/app/fleet/secret-00#value").unwrap()
}

/// An error's text, its causes included, holds neither the token nor the secret id.
fn quotes_nothing_secret(e: &Error) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(SECRET_ID), "{text}");
    assert!(!text.contains(&login_token()), "{text}");
    assert!(!text.contains(VALUE), "{text}");
}

#[tokio::test]
async fn every_request_goes_through_the_transport_with_the_token_marked_sensitive() {
    let clock = ManualClock::new();
    let (source, seen) = source(Mode::Serve, &clock);
    let got = source.fetch(&secret()).await.unwrap();
    assert_eq!(
        got.value().field("value").unwrap().expose_str().unwrap(),
        VALUE
    );
    let seen = seen.lock().unwrap();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/auth/approle/login",
            "/v1/sys/internal/ui/mounts/secret/app/fleet/secret-00",
            "/v1/secret/data/app/fleet/secret-00",
        ]
    );
    assert!(seen[0].token.is_none(), "a login carries no token");
    let login: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(login["secret_id"], SECRET_ID);
    for s in &seen[1..] {
        assert_eq!(s.token, Some((login_token(), true)), "{}", s.path);
    }
    assert!(!format!("{source:?}").contains(&login_token()));
}

/// A transport that accepts and never answers: the request fails `Timeout` when the source's
/// timeout has passed on its clock, not before.
#[tokio::test]
async fn a_transport_that_hangs_is_cut_off_at_the_timeout() {
    let clock = ManualClock::new();
    let (source, seen) = source(Mode::Hang, &clock);
    let read = tokio::spawn(async move { source.fetch(&secret()).await });
    assert!(idle(&clock, 1).await, "the request waits on the clock");
    clock.advance(Duration::from_secs(9)).await;
    assert!(!read.is_finished(), "cut off before the timeout");
    clock.advance(Duration::from_secs(1)).await;
    let e = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the read ends at the timeout")
        .unwrap()
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.to_string().contains("10s"), "{e}");
    quotes_nothing_secret(&e);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_transport_failure_is_unavailable() {
    let clock = ManualClock::new();
    let (source, _) = source(Mode::Unreachable, &clock);
    let e = source.fetch(&secret()).await.unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    quotes_nothing_secret(&e);
}

/// The unfriendly answers, each through the transport: a policy that does not grant the path
/// (recorded 403), a proxy's HTML 503 and 502, and OpenBao's rate-limit quota (recorded 429 with
/// `Retry-After: 0`).
#[tokio::test]
async fn refusals_keep_their_kinds() {
    let cases: [(Mode, ErrorKind); 4] = [
        (
            Mode::ReadsAnswer("permission_denied"),
            ErrorKind::PermissionDenied,
        ),
        (Mode::ReadsHtml(503), ErrorKind::Unavailable),
        (Mode::ReadsHtml(502), ErrorKind::Unavailable),
        (Mode::ReadsAnswer("rate_limited"), ErrorKind::Throttled),
    ];
    for (mode, kind) in cases {
        let clock = ManualClock::new();
        let (source, _) = source(mode, &clock);
        let e = source.fetch(&secret()).await.unwrap_err();
        assert_eq!(*e.kind(), kind, "{mode:?}: {e}");
        assert!(!e.to_string().contains("<html"), "{mode:?}: {e}");
        quotes_nothing_secret(&e);
        if let Mode::ReadsAnswer("rate_limited") = mode {
            assert_eq!(e.retry_after(), Some(Duration::ZERO), "{e}");
        }
    }
}

#[test]
fn tls_settings_beside_a_transport_are_refused() {
    let transport = || Scripted {
        mode: Mode::Serve,
        seen: Arc::default(),
        clock: ManualClock::new(),
    };
    let base = || {
        VaultBuilder::new()
            .with_address("https://vault.example.com:8200")
            .with_token("t")
    };
    let refused = [
        base().with_ca_file("/etc/vault/ca-of-the-operator.pem"),
        base().with_client_cert("/etc/vault/client.pem", "/etc/vault/client-key.pem"),
        base()
            .danger_skip_verify(true)
            .allow_skip_verify_for_remote(true),
        base().with_crypto_provider(Arc::new(
            keyrack_core::tls::rustls::crypto::ring::default_provider(),
        )),
    ];
    for builder in refused {
        let e = builder.with_transport(transport()).build().unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("transport of your own"), "{e}");
        assert!(!e.to_string().contains("/etc/vault"), "{e}");
    }
    // The address is still checked: plain http to a remote host carries the token in clear.
    let e = VaultBuilder::new()
        .with_address("http://vault.example.com:8200")
        .with_token("t")
        .with_transport(transport())
        .build()
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Config, "{e}");
    base().with_transport(transport()).build().unwrap();
}

/// A clock that jumps forward past the timeout while a request hangs ends it at once.
#[tokio::test]
async fn a_clock_jump_past_the_timeout_ends_a_hung_request() {
    let clock = ManualClock::new();
    let (source, _) = source(Mode::Hang, &clock);
    let read = tokio::spawn(async move { source.fetch(&secret()).await });
    assert!(idle(&clock, 1).await);
    clock.advance(Duration::from_secs(3600)).await;
    let e = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the read ends")
        .unwrap()
        .unwrap_err();
    assert_eq!(*e.kind(), ErrorKind::Timeout, "{e}");
}

/// `n` secrets under one mount (the fleet's: `secret/app/fleet/secret-00`, …).
fn secrets(n: usize) -> Vec<SecretRef> {
    (0..n)
        .map(|i| {
            SecretRef::parse(&format!("vault://secret/app/fleet/secret-{i:02}#value")).unwrap()
        })
        .collect()
}

/// A prefetch of `refs` by a client on a manual clock whose source answers as `mode` under
/// `budget`, the clock advanced a second at a time until it ends: each read's outcome, and
/// each request's path with when it was sent (whole seconds after the prefetch began).
async fn prefetch(
    mode: Mode,
    budget: RequestBudget,
    refs: &[SecretRef],
) -> (Vec<Result<keyrack_core::Secret>>, Vec<(String, u64)>) {
    let clock = ManualClock::new();
    let began = clock.now();
    let (source, seen) = source(mode, &clock);
    let secrets = Secrets::builder()
        .clock(clock.clone())
        .source("vault", source)
        .request_budget("vault", budget)
        .build()
        .unwrap();
    // The client lives on until the requests are collected: its shutdown revokes its token.
    let reads = tokio::spawn({
        let (secrets, refs) = (secrets.clone(), refs.to_vec());
        async move { secrets.prefetch(&refs).await }
    });
    let mut waited = 0;
    while !reads.is_finished() && waited < 120 {
        // Until the prefetch waits on the clock (or has ended).
        until(|| reads.is_finished() || clock.sleepers() > 0).await;
        clock.advance(Duration::from_secs(1)).await;
        waited += 1;
    }
    let results = reads.await.unwrap();
    let seen = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.path.clone(), (s.at - began).as_secs()))
        .collect();
    drop(secrets);
    (results, seen)
}

/// A prefetch logs in and looks its mount up before its reads take their places in the budget,
/// so its requests go at the budget's rate. Before, the first reads took the first places, which
/// came and went while those reads waited for the login and the lookup (whose places came after
/// theirs); all went together once the lookup was answered: six requests in the same instant
/// from a budget of one a second. A fleet whose shares add up to a quota then sent bursts past
/// it (`benches/fleet`, `vault_quota`: 8 % of the share policy's requests refused).
#[tokio::test]
async fn a_prefetch_logs_in_and_finds_its_mount_before_its_reads_take_places() {
    let budget = RequestBudget::per_second(1).with_burst(1).fixed();
    let (results, seen) = prefetch(Mode::Serve, budget, &secrets(5)).await;
    for result in results {
        result.unwrap();
    }
    let mount = "/v1/sys/internal/ui/mounts/secret/app/fleet/secret-00";
    let read = |i: usize| format!("/v1/secret/data/app/fleet/secret-{i:02}");
    // The login has the place the client took for the call; every request after it goes at
    // the budget's rate. (A first version that looked the mount up first but left the call's
    // place to the first read sent that read together with the lookup: at 10,000 pods sharing
    // a quota, 8,548 requests were refused, 3.7 %.)
    let expected = [
        ("/v1/auth/approle/login".to_owned(), 0),
        (mount.to_owned(), 1),
        (read(0), 2),
        (read(1), 3),
        (read(2), 4),
        (read(3), 5),
        (read(4), 6),
    ];
    assert_eq!(seen, expected);
}

/// A login that Vault refuses fails every read of the prefetch, which sends it once. Before,
/// each read logged in again on its own: twenty refused logins for twenty secrets.
#[tokio::test]
async fn a_refused_login_is_sent_once_for_a_whole_prefetch() {
    let budget = RequestBudget::per_second(1_000);
    let (results, seen) = prefetch(Mode::LoginAnswer("login_refused"), budget, &secrets(20)).await;
    for result in results {
        let e = result.unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Unauthenticated, "{e}");
        quotes_nothing_secret(&e);
    }
    let paths: Vec<&str> = seen.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["/v1/auth/approle/login"]);
}

/// A login that never answers costs the prefetch one request and one timeout.
#[tokio::test]
async fn a_hung_login_costs_a_prefetch_one_request_and_one_timeout() {
    let budget = RequestBudget::per_second(1_000);
    let (results, seen) = prefetch(Mode::Hang, budget, &secrets(20)).await;
    for result in results {
        assert_eq!(*result.unwrap_err().kind(), ErrorKind::Timeout);
    }
    assert_eq!(seen, [("/v1/auth/approle/login".to_owned(), 0)]);
}

/// Reads started together while the login fails share its failure: one login for twenty reads
/// under twenty mounts (reads under one mount share its lookup, and the lookup's failure with
/// it). Before, each read waited for the login before it to fail and logged in again: twenty
/// refused logins (a fleet restarting with a revoked secret id multiplied that by its pods).
#[tokio::test]
async fn reads_started_together_share_a_refused_login() {
    let clock = ManualClock::new();
    let (source, seen) = source(Mode::LoginAnswer("login_refused"), &clock);
    let refs: Vec<SecretRef> = (0..20)
        .map(|i| SecretRef::parse(&format!("vault://mount-{i:02}/app/config")).unwrap())
        .collect();
    let results = futures_util::future::join_all(refs.iter().map(|r| source.fetch(r))).await;
    for result in results {
        let e = result.unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Unauthenticated, "{e}");
        quotes_nothing_secret(&e);
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "one login");
    // A read after them logs in again (the engine's backoff spaces such reads).
    source.fetch(&refs[0]).await.unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// A mount whose lookup finds Vault unavailable (a proxy's 503 page) fails the reads under it,
/// unsent, and only those: the reads under a mount that answered go on.
#[tokio::test]
async fn a_mount_lookup_that_finds_vault_down_fails_only_the_reads_under_it() {
    let mut refs = secrets(3);
    refs.extend(
        (0..3).map(|i| SecretRef::parse(&format!("vault://kv-down/app/s{i}#value")).unwrap()),
    );
    let budget = RequestBudget::per_second(1_000);
    let (results, seen) = prefetch(Mode::LookupDownUnder("kv-down"), budget, &refs).await;
    for result in &results[..3] {
        result.as_ref().unwrap();
    }
    for result in &results[3..] {
        let e = result.as_ref().unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(
            e.to_string().contains("lookup of this path's mount failed"),
            "{e}"
        );
    }
    let reads = seen
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/secret/data/"));
    assert_eq!(reads.count(), 3);
    let lookups = seen.iter().filter(|(p, _)| p.contains("/ui/mounts/"));
    assert_eq!(lookups.count(), 2, "{seen:?}");
    assert!(!seen.iter().any(|(p, _)| p.starts_with("/v1/kv-down/")));
}
