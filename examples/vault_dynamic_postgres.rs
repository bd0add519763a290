//! A small service on Vault-issued PostgreSQL credentials.
//!
//! It reads an API key from KV v2 at startup, then queries PostgreSQL through a
//! [`RotatingPgPool`] on `database/creds/app` credentials: the client renews their lease and has
//! new ones issued before the max TTL, and the pool logs in with the new ones, makes them its
//! connect options and retires the connections on the old ones before the old lease ends. It
//! prints what the pool did at each rotation and how many queries succeeded and failed each
//! second, and exits with an error if any failed.
//!
//! Against the test ground (OpenBao dev server + PostgreSQL on loopback):
//!
//! ```text
//! dir=$(scripts/testground/vault-up) && set -a && . "$dir/env" && set +a
//! cargo run -p keyrack-examples --example vault_dynamic_postgres -- 60   # run for 60 s (default 30)
//! TESTGROUND_DIR=$dir scripts/testground/vault-down
//! ```
//!
//! It logs in with AppRole when `VAULT_APPROLE_ROLE_ID`/`VAULT_APPROLE_SECRET_ID` are set, else
//! with `VAULT_TOKEN`; it reaches PostgreSQL at `PGHOST`/`PGPORT`/`PGDATABASE`. The database role
//! of the test ground issues 10 s leases with a 30 s max TTL, so a rotation shows every ~20-30 s.
//!
//! The password never passes through a `String` of this program: the pool reads it from the
//! handle's zeroized buffer into sqlx's connect options (which keep their own copy; see
//! `keyrack_sqlx`'s docs on what is zeroized).
#![allow(clippy::print_stdout)] // a program whose output is the point
#![allow(clippy::disallowed_methods)] // a program on real time

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keyrack::Secrets;
use keyrack::sqlx::RotatingPgPool;
use keyrack::sqlx::sqlx::{
    self,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use keyrack::vault::{Auth, VaultBuilder};

const WORKERS: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(30), |s| s.parse())?;
    let auth = match (
        std::env::var("VAULT_APPROLE_ROLE_ID"),
        std::env::var("VAULT_APPROLE_SECRET_ID"),
    ) {
        (Ok(role), Ok(secret)) => Auth::approle(role, secret),
        _ => Auth::token(std::env::var("VAULT_TOKEN")?),
    };
    let vault = VaultBuilder::from_env().with_auth(auth).build()?;
    let secrets = Secrets::builder().source("vault", vault).build()?;

    let api_key = secrets
        .get_secret("vault://secret/app/config#api_key")
        .await?;
    println!("startup: api key loaded ({} bytes)", api_key.value().len());

    // Where the database is; who logs in comes from the handle.
    let base = PgConnectOptions::new()
        .host(&std::env::var("PGHOST")?)
        .port(std::env::var("PGPORT")?.parse()?)
        .database(&std::env::var("PGDATABASE")?);
    let db = secrets.handle("vault://database/creds/app").await?;
    let pool = RotatingPgPool::builder(db, base)
        .pool_options(PgPoolOptions::new().max_connections(WORKERS as u32))
        .build()
        .await?;
    let mut pool_events = pool.subscribe();
    // The user name is not a secret (PostgreSQL shows it in pg_stat_activity).
    let user: String = sqlx::query_scalar("select current_user::text")
        .fetch_one(pool.pool())
        .await?;
    println!("pool: up to {WORKERS} connections, logged in as {user}");

    // WORKERS tasks, each querying every 200 ms (20 queries/s in all).
    let pool = Arc::new(pool);
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (pool, ok, failed) = (pool.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while Instant::now() < end {
                tick.tick().await;
                let result = async {
                    let mut conn = pool.acquire().await?;
                    let n: i64 = sqlx::query_scalar("select count(*) from items")
                        .fetch_one(&mut *conn)
                        .await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
                }
                .await;
                match result {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        println!("query failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    let (mut total_ok, mut total_failed) = (0, 0);
    while Instant::now() < end {
        tokio::select! {
            event = pool_events.recv() => match event {
                // `PoolEvent`'s Display names versions and counts, never a user or password.
                Ok(event) => println!("pool event: {event}"),
                Err(e) => println!("pool events: {e}"),
            },
            _ = second.tick() => {
                let (o, f) = (ok.swap(0, Ordering::Relaxed), failed.swap(0, Ordering::Relaxed));
                (total_ok, total_failed) = (total_ok + o, total_failed + f);
                println!("queries: {o} ok, {f} failed");
            }
        }
    }
    for worker in workers {
        worker.await?;
    }
    let (o, f) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let (total_ok, total_failed) = (total_ok + o, total_failed + f);
    println!("done: {total_ok} queries ok, {total_failed} failed in {seconds} s");
    if let Some(pool) = Arc::into_inner(pool) {
        pool.close().await;
    }
    // After an AppRole login, revokes the token the source logged in for and with it the
    // credentials' lease (a static VAULT_TOKEN is left alone: the lease then runs out).
    secrets.shutdown().await;
    if total_failed > 0 {
        return Err(format!("{total_failed} queries failed").into());
    }
    Ok(())
}
