//! A small service on Vault-issued PostgreSQL credentials.
//!
//! It reads an API key from KV v2 at startup, keeps a pool of PostgreSQL connections opened with
//! `database/creds/app` credentials (leased: the client renews them and issues new ones before the
//! max TTL), rebuilds the pool when `Rotated` arrives, and prints how many queries succeeded and
//! failed each second.
//!
//! Against the test ground (OpenBao dev server + PostgreSQL on loopback):
//!
//! ```text
//! dir=$(scripts/testground/vault-up) && set -a && . "$dir/env" && set +a
//! cargo run --example vault_dynamic_postgres -- 60      # run for 60 s (default 30)
//! TESTGROUND_DIR=$dir scripts/testground/vault-down
//! ```
//!
//! It logs in with AppRole when `VAULT_APPROLE_ROLE_ID`/`VAULT_APPROLE_SECRET_ID` are set, else
//! with `VAULT_TOKEN`; it reaches PostgreSQL at `PGHOST`/`PGPORT`/`PGDATABASE`. The database role
//! of the test ground issues 10 s leases with a 30 s max TTL, so a rotation shows every ~27 s.
#![allow(clippy::print_stdout)] // a program whose output is the point
#![allow(clippy::disallowed_methods)] // a program on real time

use std::time::{Duration, Instant};

use keyrack::vault::{Auth, VaultBuilder};
use keyrack::{RotationEvent, Secret, Secrets};
use tokio_postgres::{Client, NoTls};

#[derive(serde::Deserialize)]
struct DbCreds {
    username: String,
    password: String,
}

const POOL_SIZE: usize = 4;

async fn pool(creds: &Secret) -> Result<Vec<Client>, Box<dyn std::error::Error>> {
    let creds: DbCreds = creds.json()?;
    let config = format!(
        "host={} port={} dbname={} user={} password={}",
        std::env::var("PGHOST")?,
        std::env::var("PGPORT")?,
        std::env::var("PGDATABASE")?,
        creds.username,
        creds.password
    );
    let mut clients = Vec::with_capacity(POOL_SIZE);
    for _ in 0..POOL_SIZE {
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
        tokio::spawn(connection);
        clients.push(client);
    }
    Ok(clients)
}

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

    let db = secrets.handle("vault://database/creds/app").await?;
    let mut events = db.subscribe();
    let mut clients = pool(&db.current()).await?;
    println!("pool: {POOL_SIZE} connections as the issued user");

    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut ok, mut failed, mut second) = (0u32, 0u32, Instant::now());
    while Instant::now() < end {
        tokio::select! {
            Some(event) = events.recv() => {
                if let RotationEvent::Rotated { old, new, .. } = &event {
                    // New credentials: open a new pool while the old lease is still valid.
                    match pool(&db.current()).await {
                        Ok(fresh) => clients = fresh,
                        Err(e) => println!("pool rebuild failed: {e}"),
                    }
                    println!("rotated {old:?} -> {new:?}: pool rebuilt");
                } else {
                    println!("event: {event}");
                }
            }
            _ = tick.tick() => {
                for client in &clients {
                    match client.query_one("select count(*) from items", &[]).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
            }
        }
        if second.elapsed() >= Duration::from_secs(1) {
            println!("queries: {ok} ok, {failed} failed");
            (ok, failed, second) = (0, 0, Instant::now());
        }
    }
    secrets.shutdown().await;
    Ok(())
}
