//! A token revoked behind the source's back: the next request gets 403, the source finds its
//! token dead (`lookup-self` refused), logs in again and retries; leases of the dead token are
//! re-issued. In a test binary of its own, because it revokes every AppRole token on the server.

#![allow(clippy::unwrap_used)]
// A real server in real time.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use keyrack_core::RotationEvent;
use keyrack_vault::Auth;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_replaced_by_a_new_login() {
    let secrets = client(source(Auth::approle(
        env("VAULT_APPROLE_ROLE_ID"),
        env("VAULT_APPROLE_SECRET_ID"),
    )));
    let db = secrets.handle("vault://database/creds/app").await.unwrap();
    let first = creds(&db.current());
    let mut events = db.subscribe();

    // Revoke every token issued by AppRole logins (and, with them, their leases).
    root_api(
        Method::PUT,
        "sys/leases/revoke-prefix/auth/approle/login",
        None,
    )
    .await;
    // Vault finishes revoking the tokens' child leases in the background; let it, so that the
    // new login is not caught by the same prefix revocation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pg_login(&first).await.is_err(),
        "the dead token's credential was revoked"
    );

    // A read that misses the cache: 403 with the dead token, then a new login and a retry.
    let key = secrets
        .get_secret("vault://secret/app/config#api_key")
        .await
        .unwrap();
    assert_eq!(key.expose_str().unwrap(), "k-1");

    // The new login is reported on the change feed: the credential is re-issued.
    next_matching(&mut events, Duration::from_secs(10), |e| {
        matches!(e, RotationEvent::Rotated { .. })
    })
    .await
    .expect("Rotated after the new login");
    let second = creds(&db.current());
    assert_ne!(second.username, first.username);
    pg_login(&second).await.unwrap();
    secrets.shutdown().await;
}
