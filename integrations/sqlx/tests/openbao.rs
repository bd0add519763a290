//! A `RotatingPgPool` on OpenBao dynamic database credentials and the test ground's PostgreSQL
//! (`scripts/testground/vault-up`, which `scripts/test` runs). Real time, real leases; Vault
//! faults come from a fault proxy in front of server #1 (`keyrack_fake_server::proxy`), so no
//! test stops a server another test uses. Each test creates its own database role in Vault (an
//! 8-character name, the part of it Vault's username template keeps), so its database users
//! can be counted apart from those of tests running beside it.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use keyrack_core::{Backoff, Clock, Secrets, SystemClock};
use keyrack_fake_server::proxy::{Fault, FaultProxy};
use keyrack_sqlx::{PoolErrorKind, PoolEvent, RotatingPgPool};
use keyrack_vault::{Auth, VaultBuilder};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the OpenBao/PostgreSQL test ground; run them \
             through scripts/test (or start scripts/testground/vault-up and source its env file)"
        )
    })
}

fn now() -> Instant {
    SystemClock.now()
}

async fn sleep(d: Duration) {
    SystemClock.sleep_until(SystemClock.now() + d).await;
}

/// The `bao` CLI on server #1 with the root token.
fn bao(args: &[&str]) -> String {
    let out = Command::new(env("TESTGROUND_BAO"))
        .args(args)
        .env("VAULT_ADDR", env("VAULT_ADDR"))
        .env("VAULT_TOKEN", env("VAULT_ROOT_TOKEN"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The test ground's creation statements (LOGIN, SELECT on the tables).
fn good_statements() -> String {
    std::fs::read_to_string(format!(
        "{}/policies/db-creation.sql",
        env("TESTGROUND_DIR")
    ))
    .unwrap()
}

/// Statements that create a user the database refuses: Vault issues it, PostgreSQL will not let
/// it log in.
fn nologin_statements() -> String {
    good_statements().replace("WITH LOGIN", "WITH NOLOGIN")
}

fn write_role(name: &str, statements: &str, ttl: &str, max: &str) {
    let dir = tempfile_dir();
    let file = format!("{dir}/{name}.sql");
    std::fs::write(&file, statements).unwrap();
    bao(&[
        "write",
        &format!("database/roles/{name}"),
        "db_name=app-db",
        &format!("creation_statements=@{file}"),
        &format!("default_ttl={ttl}"),
        &format!("max_ttl={max}"),
    ]);
    std::fs::remove_file(file).unwrap();
}

fn tempfile_dir() -> String {
    std::env::temp_dir().to_string_lossy().into_owned()
}

/// A fresh Vault database role: 8 characters, unique.
fn new_role(statements: &str, ttl: &str, max: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let name = format!(
        "p{:07x}",
        RandomState::new().hash_one(now()) as u32 & 0x0fff_ffff
    );
    write_role(&name, statements, ttl, max);
    name
}

fn base() -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&env("PGHOST"))
        .port(env("PGPORT").parse().unwrap())
        .database(&env("PGDATABASE"))
}

/// The database superuser, for counting users.
async fn admin() -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(base().username(&env("PGUSER")).password(&env("PGPASSWORD")))
        .await
        .unwrap()
}

/// Database users Vault created for `role` that still exist, and how many of them have a session.
async fn users(admin: &PgPool, role: &str) -> (i64, i64) {
    let pattern = format!("v-%-{role}-%");
    let roles: i64 = sqlx::query_scalar("select count(*) from pg_roles where rolname like $1")
        .bind(&pattern)
        .fetch_one(admin)
        .await
        .unwrap();
    let sessions: i64 = sqlx::query_scalar(
        "select count(distinct usename) from pg_stat_activity where usename like $1",
    )
    .bind(&pattern)
    .fetch_one(admin)
    .await
    .unwrap();
    (roles, sessions)
}

fn client(addr: String) -> Secrets {
    let source = VaultBuilder::new()
        .with_address(addr)
        .with_auth(Auth::token(env("VAULT_ROOT_TOKEN")))
        .with_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    Secrets::builder()
        .source("vault", source)
        .revoke_on_shutdown(true)
        .request_timeout(Duration::from_secs(2))
        .backoff(Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(2),
        })
        .build()
        .unwrap()
}

async fn query(pool: &RotatingPgPool) -> Result<(), keyrack_sqlx::PoolError> {
    let mut conn = pool.acquire().await?;
    let n: i64 = sqlx::query_scalar("select count(*) from items")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| panic!("a query on an acquired connection failed: {e}"))
        .unwrap();
    assert_eq!(n, 2);
    Ok(())
}

async fn next_event(
    events: &mut broadcast::Receiver<PoolEvent>,
    within: Duration,
    want: impl Fn(&PoolEvent) -> bool,
) -> Option<PoolEvent> {
    let end = now() + within;
    while now() < end {
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Ok(e)) if want(&e) => return Some(e),
            _ => {}
        }
    }
    None
}

/// Figures of a run of `workers` tasks querying `per_second` times each.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    /// Each failure: when (wall clock), and the error with its causes.
    failures: std::sync::Mutex<Vec<(SystemTime, String)>>,
}

/// One query through the pool; a failure (of the acquire or of the query on the acquired
/// connection) as its text with every cause.
async fn try_query(pool: &RotatingPgPool) -> Result<(), String> {
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text.push_str(&format!(" <- {c} [{c:?}]"));
            cause = c.source();
        }
        text
    }
    let mut conn = pool.acquire().await.map_err(|e| chain(&e))?;
    let n: i64 = sqlx::query_scalar("select count(*) from items")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("query on an acquired connection: {} [{e:?}]", chain(&e)))?;
    assert_eq!(n, 2);
    Ok(())
}

fn start_load(pool: &Arc<RotatingPgPool>, workers: usize, every: Duration) -> Arc<Load> {
    let load = Arc::new(Load::default());
    for _ in 0..workers {
        let (pool, load) = (pool.clone(), load.clone());
        tokio::spawn(async move {
            let mut next = now();
            while !load.stop.load(Ordering::Relaxed) {
                match try_query(&pool).await {
                    Ok(()) => load.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        println!("query failed: {e}");
                        load.failures.lock().unwrap().push((SystemClock.wall(), e));
                        load.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                next += every;
                SystemClock.sleep_until(next).await;
            }
        });
    }
    load
}

/// Poll until no database user of `role` is left; how long that took (`None` past `limit`).
async fn users_gone(admin: &PgPool, role: &str, limit: Duration) -> Option<Duration> {
    let start = now();
    while now() < start + limit {
        if users(admin, role).await.0 == 0 {
            return Some(start.elapsed());
        }
        sleep(Duration::from_millis(250)).await;
    }
    None
}

/// The soak: leases of 10 s with a 30 s max TTL, so a re-issue every ~20-30 s; 4 tasks at 5
/// queries/s each. `KEYRACK_SQLX_SOAK_SECS` sets the length (default 60; the README's figures are
/// from 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_rotations_fail_no_query_and_keep_two_users_at_most() {
    let secs: u64 = std::env::var("KEYRACK_SQLX_SOAK_SECS")
        .ok()
        .map_or(60, |s| s.parse().expect("KEYRACK_SQLX_SOAK_SECS: seconds"));
    let role = new_role(&good_statements(), "10s", "30s");
    let admin = admin().await;
    let secrets = client(env("VAULT_ADDR"));
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let pool = RotatingPgPool::builder(handle, base())
        .pool_options(PgPoolOptions::new().max_connections(4))
        .build()
        .await
        .unwrap();
    let pool = Arc::new(pool);
    let mut events = pool.subscribe();

    let start = now();
    let load = start_load(&pool, 4, Duration::from_millis(200));
    let (mut max_roles, mut max_sessions, mut samples) = (0, 0, 0u64);
    let (mut applied, mut not_applied, mut expired, mut retired) = (0, 0, 0, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        let (roles, sessions) = users(&admin, &role).await;
        (max_roles, max_sessions) = (max_roles.max(roles), max_sessions.max(sessions));
        samples += 1;
        while let Ok(event) = events.try_recv() {
            match event {
                PoolEvent::Applied { retired_idle, .. } => {
                    applied += 1;
                    retired += retired_idle;
                }
                PoolEvent::ReplacementFailed { .. } => not_applied += 1,
                PoolEvent::Expired { .. } => expired += 1,
                _ => {}
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    sleep(Duration::from_millis(300)).await;
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    let elapsed = start.elapsed().as_secs_f64();
    Arc::into_inner(pool)
        .expect("the load tasks ended")
        .close()
        .await;
    secrets.shutdown().await;
    let gone = users_gone(&admin, &role, Duration::from_secs(35)).await;
    println!(
        "soak {secs} s: {ok} queries ok ({:.1}/s), {failed} failed; {applied} credentials \
         applied ({retired} idle connections retired at once), {not_applied} not applied, \
         {expired} expiries; at most {max_roles} database users existed and {max_sessions} had \
         sessions ({samples} samples); none left {gone:?} after exit",
        ok as f64 / elapsed
    );
    assert_eq!(failed, 0, "failed queries");
    assert!(
        ok as f64 >= 0.9 * 20.0 * secs as f64,
        "{ok} queries in {secs} s, below 90% of 20/s"
    );
    if secs >= 45 {
        assert!(applied >= 1, "no rotation applied in {secs} s");
    }
    assert_eq!(expired, 0);
    assert!(max_roles <= 2, "{max_roles} database users at once");
    assert!(
        max_sessions <= 2,
        "{max_sessions} users with sessions at once"
    );
    assert!(gone.is_some(), "database users left 35 s after exit");
}

/// New credentials the database refuses: an event, the old credentials kept until their lease
/// ends (less the margin), then `Expired`; once Vault issues good ones again the pool recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_credentials_keep_the_old_ones_until_their_end_then_fail_typed() {
    let role = new_role(&good_statements(), "10s", "60s");
    let secrets = client(env("VAULT_ADDR"));
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let first_password = handle.current().field("password").unwrap();
    let first_password = first_password.expose_str().unwrap().to_owned();
    let pool = RotatingPgPool::builder(handle.clone(), base())
        .pool_options(PgPoolOptions::new().max_connections(2))
        .retry_interval(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let mut events = pool.subscribe();
    query(&pool).await.unwrap();

    // Vault now issues users without LOGIN; force a re-issue.
    write_role(&role, &nologin_statements(), "10s", "60s");
    let refreshed = now();
    handle.refresh_now().await.unwrap();
    let refused_password = handle.current().field("password").unwrap();
    let refused_password = refused_password.expose_str().unwrap().to_owned();
    assert_ne!(refused_password, first_password);
    let refused = next_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, PoolEvent::ReplacementFailed { .. })
    })
    .await
    .expect("ReplacementFailed for refused credentials");
    let PoolEvent::ReplacementFailed {
        error,
        in_use_until,
        ..
    } = &refused
    else {
        unreachable!()
    };
    assert_eq!(error.kind(), PoolErrorKind::Refused, "{error}");
    assert!(in_use_until.is_some(), "the old lease's end is known");

    // The old credentials serve until the pool expires them; no query fails before.
    let mut served_after_refusal = 0;
    let expired_at = loop {
        assert!(
            refreshed.elapsed() < Duration::from_secs(20),
            "not expired 20 s after the old lease stopped being renewed"
        );
        match query(&pool).await {
            Ok(()) => served_after_refusal += 1,
            Err(e) => {
                assert_eq!(e.kind(), PoolErrorKind::Expired, "{e}");
                assert!(pool.is_expired());
                break now();
            }
        }
        sleep(Duration::from_millis(100)).await;
    };
    assert!(served_after_refusal > 10, "{served_after_refusal}");
    // Typed at once, not after the acquire timeout.
    let t = now();
    let err = pool.acquire().await.unwrap_err();
    assert_eq!(err.kind(), PoolErrorKind::Expired);
    assert!(t.elapsed() < Duration::from_millis(100));
    println!(
        "refused: old credentials served {served_after_refusal} queries for {:?} after the \
         refusal, then Expired",
        expired_at - refreshed
    );

    // Nothing the pool says quotes a password.
    let mut said = format!("{err} {err:?} {refused} {refused:?} {pool:?}");
    while let Ok(e) = events.try_recv() {
        said.push_str(&format!("{e} {e:?}"));
    }
    for password in [&first_password, &refused_password] {
        assert!(
            !said.contains(password.as_str()),
            "a password leaked: {said}"
        );
    }

    // Vault issues good users again: the pool's retries ask for new credentials and recover.
    write_role(&role, &good_statements(), "10s", "60s");
    next_event(&mut events, Duration::from_secs(40), |e| {
        matches!(
            e,
            PoolEvent::Applied {
                recovered: true,
                ..
            }
        )
    })
    .await
    .expect("recovered once Vault issues usable credentials");
    assert!(!pool.is_expired());
    query(&pool).await.unwrap();
    pool.close().await;
    secrets.shutdown().await;
}

/// A role whose users can never log in: the pool is not built, with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_credentials_refused_is_a_typed_error() {
    let role = new_role(&nologin_statements(), "10s", "30s");
    let secrets = client(env("VAULT_ADDR"));
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let password = handle.current().field("password").unwrap();
    let password = password.expose_str().unwrap().to_owned();
    let err = RotatingPgPool::builder(handle, base())
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PoolErrorKind::Refused, "{err}");
    let said = format!("{err} {err:?}");
    assert!(!said.contains(&password), "{said}");
    secrets.shutdown().await;
}

/// Vault hangs for 5 s across a renewal (leases of 30 s, renewed at ~20 s): the lease outlives
/// the hang, so no query fails and the pool never expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vault_hang_shorter_than_the_lease_fails_no_query() {
    let role = new_role(&good_statements(), "30s", "120s");
    let proxy = FaultProxy::start(
        env("VAULT_ADDR")
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await;
    let secrets = client(proxy.url());
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let issued = now();
    let pool = Arc::new(
        RotatingPgPool::builder(handle, base())
            .pool_options(PgPoolOptions::new().max_connections(4))
            .build()
            .await
            .unwrap(),
    );
    let mut events = pool.subscribe();
    let load = start_load(&pool, 4, Duration::from_millis(200));
    sleep(Duration::from_secs(17).saturating_sub(issued.elapsed())).await;
    proxy.set(Fault::Hang);
    sleep(Duration::from_secs(5)).await;
    proxy.set(Fault::Pass);
    sleep(Duration::from_secs(6)).await;
    load.stop.store(true, Ordering::Relaxed);
    sleep(Duration::from_millis(300)).await;
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    println!("hang: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 400, "{ok}");
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, PoolEvent::Expired { .. }), "{e}");
    }
    assert!(!pool.is_expired());
    Arc::into_inner(pool).unwrap().close().await;
    secrets.shutdown().await;
}

/// Vault unreachable past the lease's end (leases of 6 s, the proxy cuts every connection for
/// 15 s): the pool expires on time with a typed error instead of serving credentials it knows
/// have ended, then recovers when Vault is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vault_down_past_the_lease_expires_the_pool_then_it_recovers() {
    let role = new_role(&good_statements(), "6s", "60s");
    let proxy = FaultProxy::start(
        env("VAULT_ADDR")
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await;
    let secrets = client(proxy.url());
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let pool = RotatingPgPool::builder(handle, base())
        .pool_options(PgPoolOptions::new().max_connections(2))
        .build()
        .await
        .unwrap();
    let mut events = pool.subscribe();
    query(&pool).await.unwrap();
    proxy.set(Fault::Cut);
    let cut = now();
    next_event(&mut events, Duration::from_secs(10), |e| {
        matches!(e, PoolEvent::Expired { .. })
    })
    .await
    .expect("Expired within the 6 s lease");
    let err = query(&pool).await.unwrap_err();
    assert_eq!(err.kind(), PoolErrorKind::Expired, "{err}");
    println!("down: expired {:?} after the cut", cut.elapsed());
    sleep(Duration::from_secs(15).saturating_sub(cut.elapsed())).await;
    proxy.set(Fault::Pass);
    let back = now();
    next_event(&mut events, Duration::from_secs(20), |e| {
        matches!(
            e,
            PoolEvent::Applied {
                recovered: true,
                ..
            }
        )
    })
    .await
    .expect("recovered once Vault answers");
    println!("down: recovered {:?} after Vault was back", back.elapsed());
    query(&pool).await.unwrap();
    pool.close().await;
    secrets.shutdown().await;
}

/// Leases of 3 s (max 9 s): renewals every 2 s, a new user every few seconds; 20 queries/s for
/// 20 s. No query may fail. On a failure it prints the timeline (the handle's and the pool's
/// events, each failure with its error) relative to the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn very_short_leases() {
    let role = new_role(&good_statements(), "3s", "9s");
    let secrets = client(env("VAULT_ADDR"));
    let handle = secrets
        .handle(format!("vault://database/creds/{role}"))
        .await
        .unwrap();
    let t0 = SystemClock.wall();
    let mut rotations = handle.subscribe();
    let pool = Arc::new(
        RotatingPgPool::builder(handle, base())
            .pool_options(PgPoolOptions::new().max_connections(4))
            .build()
            .await
            .unwrap(),
    );
    let mut events = pool.subscribe();
    let timeline = Arc::new(std::sync::Mutex::new(Vec::<(SystemTime, String)>::new()));
    let recorder = {
        let timeline = timeline.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = rotations.recv() => match e {
                        Some(e) => timeline.lock().unwrap().push((SystemClock.wall(), format!("handle: {e:?}"))),
                        None => break,
                    },
                    e = events.recv() => match e {
                        Ok(e) => timeline.lock().unwrap().push((SystemClock.wall(), format!("pool: {e:?}"))),
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                }
            }
        })
    };
    let load = start_load(&pool, 4, Duration::from_millis(200));
    sleep(Duration::from_secs(20)).await;
    load.stop.store(true, Ordering::Relaxed);
    sleep(Duration::from_millis(300)).await;
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    recorder.abort();
    let mut lines = timeline.lock().unwrap().clone();
    lines.extend(
        load.failures
            .lock()
            .unwrap()
            .iter()
            .map(|(at, e)| (*at, format!("FAILED: {e}"))),
    );
    lines.sort_by_key(|(at, _)| *at);
    let applied = lines
        .iter()
        .filter(|(_, l)| l.starts_with("pool: Applied"))
        .count();
    let ms = |at: SystemTime| at.duration_since(t0).map_or(0, |d| d.as_millis());
    println!("short leases: {ok} ok, {failed} failed, {applied} credentials applied");
    for (at, line) in &lines {
        println!("{:>6} ms  {line}", ms(*at));
    }
    assert!(applied >= 2, "{applied}");
    assert_eq!(failed, 0);
    Arc::into_inner(pool).unwrap().close().await;
    secrets.shutdown().await;
}
