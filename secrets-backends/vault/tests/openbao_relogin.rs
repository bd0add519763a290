//! A token revoked behind the source's back: the next request gets 403, the source finds its
//! token dead (`lookup-self` refused), logs in again and retries; leases of the dead token are
//! re-issued. The test logs in through an AppRole mount of its own and revokes every token that
//! mount issued: tests run at once, each in a process of its own, and a revocation of every
//! token of the test ground's AppRole mount (as this test did) failed whichever test was using
//! one at the time (`openbao_metrics`, when more tests ran at once).

#![allow(clippy::unwrap_used)]
// A real server in real time.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use keyrack_core::RotationEvent;
use keyrack_vault::Auth;
use reqwest::Method;

/// An AppRole mount of its own with a role like the test ground's `app` (policy `app-read`):
/// the mount's path and a login there.
async fn own_approle() -> (String, Auth) {
    let mount = uniq("approle-relogin");
    root_api(
        Method::POST,
        &format!("sys/auth/{mount}"),
        Some(serde_json::json!({ "type": "approle" })),
    )
    .await;
    root_api(
        Method::POST,
        &format!("auth/{mount}/role/app"),
        Some(serde_json::json!({
            "token_policies": ["app-read"], "token_ttl": "1h", "token_max_ttl": "4h"
        })),
    )
    .await;
    let (role_id, secret_id) = approle_ids(&mount, "app").await;
    let auth = Auth::AppRole {
        mount: mount.clone(),
        role_id,
        secret_id: secret_id.into(),
    };
    (mount, auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_replaced_by_a_new_login() {
    let (mount, auth) = own_approle().await;
    let secrets = client(source(auth));
    let db = secrets.handle("vault://database/creds/app").await.unwrap();
    let first = creds(&db.current());
    let mut events = db.subscribe();

    // Revoke every token this test's AppRole mount issued (and, with them, their leases).
    root_api(
        Method::PUT,
        &format!("sys/leases/revoke-prefix/auth/{mount}/login"),
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
    root_api(Method::DELETE, &format!("sys/auth/{mount}"), None).await;
}
