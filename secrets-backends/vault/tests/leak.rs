//! No token, secret id or value reaches logs (at TRACE, reqwest's and hyper's included),
//! `Debug`, `Display` or errors, through the errors this source makes: refused logins and
//! reads, outages with `Retry-After`, unknown parameters, a re-login, the keeper's renewals.
//! One test in this binary: it captures the logs of its thread.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::fake::{FakeVault, ROLE_ID, idle};
use common::r;
use keyrack_core::testkit::LogCapture;
use keyrack_core::{ManualClock, SecretSource, SecretValue, Secrets};
use keyrack_vault::{Auth, VaultBuilder};

const TOKEN: &str = "s.LeakTokenCanary7Q";
const SECRET_ID: &str = "leak-secret-id-canary-4M";
const VALUE: &str = "leak-value-canary-9Z";

// Current-thread runtime: every task (the keeper, the connections) logs on this thread.
#[tokio::test]
async fn no_token_or_value_reaches_logs_debug_display_or_errors() {
    let capture = LogCapture::start();
    let vault = FakeVault::start(30).await;
    *vault.behaviour.fixed_token.lock().unwrap() = Some(TOKEN.into());
    *vault.behaviour.secret_id.lock().unwrap() = SECRET_ID.into();
    *vault.behaviour.value.lock().unwrap() = VALUE.into();
    let clock = ManualClock::new();
    let auth = Auth::approle(ROLE_ID, SecretValue::copy_from_slice(SECRET_ID.as_bytes()));
    let builder = VaultBuilder::new()
        .with_address(vault.url())
        .with_auth(auth.clone())
        .with_clock(clock.clone());
    let mut seen = format!("{builder:?}\n{auth:?}\n");
    let source = builder.build().unwrap();
    seen.push_str(&format!("{source:?}\n"));

    let mut note = |d: &dyn std::fmt::Debug, s: &dyn std::fmt::Display| {
        seen.push_str(&format!("{d:?}\n{s}\n"));
    };
    let secret = source.fetch(&r("vault://secret/app")).await.unwrap();
    note(&secret, secret.value());
    for uri in [
        "vault://secret/denied/x",
        "vault://secret/app?Version=2",
        "vault://database/creds/app?stgae=x",
    ] {
        let e = source.fetch(&r(uri)).await.unwrap_err();
        note(&e, &e);
    }
    // The keeper renews (logs at debug), then Vault goes down with a Retry-After.
    clock.advance(Duration::from_secs(25)).await;
    assert!(idle(&clock, 1).await);
    vault.set_down(true);
    *vault.behaviour.retry_after.lock().unwrap() = Some("3".into());
    let e = source.fetch(&r("vault://secret/other")).await.unwrap_err();
    note(&e, &e);
    clock.advance(Duration::from_secs(120)).await;
    assert!(idle(&clock, 1).await);
    vault.set_down(false);
    // The token is revoked: a read logs in again.
    vault.kill(TOKEN);
    *vault.behaviour.fixed_token.lock().unwrap() = Some(format!("{TOKEN}-2"));
    let e = source.fetch(&r("vault://secret/third")).await;
    note(&e, &"after re-login");

    // A refused login.
    let wrong = VaultBuilder::new()
        .with_address(vault.url())
        .with_auth(Auth::approle(ROLE_ID, format!("{SECRET_ID}-wrong")))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    let e = wrong.fetch(&r("vault://secret/app")).await.unwrap_err();
    note(&e, &e);

    // Through the client: fields that are not there, a value that is not a number.
    let secrets = Secrets::builder()
        .source("vault", source.clone())
        .build()
        .unwrap();
    for uri in ["vault://secret/app#absent", "vault://secret/app#v"] {
        match secrets.get_secret(uri).await {
            Ok(s) => {
                let e = s.json::<u32>().unwrap_err();
                note(&e, &e);
            }
            Err(e) => note(&e, &e),
        }
    }
    secrets.shutdown().await;
    source.shutdown().await;

    let logs = capture.text();
    assert!(logs.len() > 1000, "the capture saw almost nothing: {logs}");
    for canary in [TOKEN, SECRET_ID, VALUE] {
        for text in [&seen, &logs] {
            if let Some(at) = text.find(canary) {
                let from = at.saturating_sub(300);
                panic!(
                    "leaked: ...{}...",
                    &text[from..(at + canary.len()).min(text.len())]
                );
            }
        }
    }
}
