//! Secrets that are not database credentials: a typed error before any connection is tried,
//! quoting no value. No server needed (the memory source).
#![allow(clippy::unwrap_used)]

use keyrack_core::Secrets;
use keyrack_core::sources::MemorySource;
use keyrack_sqlx::{PoolErrorKind, RotatingPgPool};
use sqlx::postgres::PgConnectOptions;

async fn build_on(value: &str) -> keyrack_sqlx::PoolError {
    let memory = MemorySource::new();
    memory.set("db", value);
    let secrets = Secrets::builder().source("mem", memory).build().unwrap();
    let handle = secrets.handle("mem://db").await.unwrap();
    // Port 1 on loopback: were a connection tried, it would fail as `Unavailable`, not as
    // `InvalidCredentials`.
    let base = PgConnectOptions::new().host("127.0.0.1").port(1);
    let err = RotatingPgPool::builder(handle, base)
        .build()
        .await
        .unwrap_err();
    secrets.shutdown().await;
    err
}

#[tokio::test]
async fn not_credentials_is_a_typed_error_quoting_nothing() {
    for (value, secret) in [
        (r#"{"username":"app"}"#, "app"),
        (r#"{"password":"hunter2-top-secret"}"#, "hunter2-top-secret"),
        (r#"{"username":"app","password":42424242}"#, "42424242"),
        ("hunter2-not-json", "hunter2-not-json"),
        (r#"["hunter2-array"]"#, "hunter2-array"),
    ] {
        let err = build_on(value).await;
        let said = format!("{err} {err:?}");
        if value.contains("password\":42424242") {
            // A number is read as its JSON text: it is a password, only the database can refuse it.
            assert_eq!(err.kind(), PoolErrorKind::Unavailable, "{said}");
        } else {
            assert_eq!(
                err.kind(),
                PoolErrorKind::InvalidCredentials,
                "{value}: {said}"
            );
        }
        assert!(!said.contains(secret), "{said}");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let err = build_on(r#"{"username":"app","password":"hunter2-pw"}"#).await;
    assert_eq!(err.kind(), PoolErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("hunter2-pw"));
}
