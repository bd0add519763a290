//! sqlx PostgreSQL pools on rotating credentials: a [`RotatingPgPool`] connects with the
//! username and password a keyrack [`SecretHandle`] holds (Vault / OpenBao dynamic database
//! credentials, or any secret that is a JSON object with `username` and `password`), and follows
//! the handle as the client renews and re-issues them.
//!
//! When the handle's credentials change, the pool first logs in once with the new ones; if the
//! database accepts them they become the pool's connect options
//! ([`Pool::set_connect_options`](sqlx::Pool::set_connect_options), added to sqlx for exactly
//! this, launchbadge/sqlx#445), idle connections on the replaced credentials are closed at once and
//! the ones in use are closed when released, so the replaced user's sessions end long before its
//! lease does. If the database refuses them, a [`PoolEvent::ReplacementFailed`] is sent, the pool
//! keeps connecting with the credentials it has, retries (asking the backend for new credentials
//! when the same ones are refused twice), and when the credentials in use reach the end of their
//! lease (less [`expiry_margin`](RotatingPgPoolBuilder::expiry_margin)) it closes its idle
//! connections and [`acquire`](RotatingPgPool::acquire) fails with
//! [`PoolErrorKind::Expired`] until usable credentials arrive. The same happens when the backend
//! is unreachable past the lease's end.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use keyrack_sqlx::RotatingPgPool;
//! use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
//!
//! # let vault = keyrack_core::sources::MemorySource::new();
//! let secrets = keyrack_core::Secrets::builder().source("vault", vault).build()?;
//! let creds = secrets.handle("vault://database/creds/app").await?;
//! let base = PgConnectOptions::new().host("db.internal").database("app");
//! let pool = RotatingPgPool::builder(creds, base)
//!     .pool_options(PgPoolOptions::new().max_connections(8))
//!     .build()
//!     .await?;
//! let mut conn = pool.acquire().await?;
//! let n: i64 = sqlx::query_scalar("select count(*) from items")
//!     .fetch_one(&mut *conn)
//!     .await?;
//! # let _ = n;
//! pool.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## What is zeroized
//!
//! The secret's bytes, and the password member read out of them, live in keyrack's zeroized
//! buffers. sqlx's [`PgConnectOptions::password`] takes a `&str` and keeps its own `String`
//! copy in the options (the pool's, and the one used to try new credentials): that copy, and
//! whatever the driver derives from it during the SCRAM exchange, is **not** wiped when it is
//! dropped. No type here formats the options (their `Debug` prints the password), and no error
//! or event carries the username or password.
//!
//! ## Hooks
//!
//! The pool uses sqlx's `after_connect`, `before_acquire` and `after_release` hooks; ones set on
//! the [`PgPoolOptions`] passed in are replaced. `after_connect` costs one query
//! (`select current_user`) per new connection: it detects a connection opened with credentials
//! replaced while it was connecting.

mod credentials;
mod driver;
mod error;
mod events;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyrack_core::{Clock, SecretHandle, SystemClock};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

pub use error::{PoolError, PoolErrorKind};
pub use events::PoolEvent;
/// The sqlx crate this one is built on, so an application names the same types.
pub use sqlx;

/// A PostgreSQL pool whose credentials follow a [`SecretHandle`]. See the [crate docs](crate).
///
/// Dropping it (or [`close`](Self::close)) stops following the handle and releases it.
pub struct RotatingPgPool {
    pool: PgPool,
    shared: Arc<driver::Shared>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

/// Builds a [`RotatingPgPool`]; from [`RotatingPgPool::builder`].
pub struct RotatingPgPoolBuilder {
    handle: SecretHandle,
    base: PgConnectOptions,
    pool_options: PgPoolOptions,
    margin: Duration,
    retry: Duration,
    connect_timeout: Duration,
    clock: Arc<dyn Clock>,
    event_capacity: usize,
}

impl RotatingPgPool {
    /// A pool connecting with `base` (host, port, database, TLS, …) and the username and password
    /// of the JSON object `handle` holds; those of `base` are replaced.
    pub fn builder(handle: SecretHandle, base: PgConnectOptions) -> RotatingPgPoolBuilder {
        RotatingPgPoolBuilder {
            handle,
            base,
            pool_options: PgPoolOptions::new(),
            margin: Duration::from_secs(2),
            retry: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            event_capacity: 64,
        }
    }

    /// A connection on the current credentials. Fails with [`PoolErrorKind::Expired`] at once
    /// while the credentials in use are past their end with no replacement; otherwise as sqlx's
    /// [`Pool::acquire`](sqlx::Pool::acquire) (waiting up to the pool's acquire timeout),
    /// with its errors classified.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, PoolError> {
        if self.shared.is_expired() {
            return Err(expired());
        }
        let conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| PoolError::from_sqlx(e, "no connection could be had from the pool"))?;
        // The credentials may have ended while this call waited.
        if self.shared.is_expired() {
            return Err(expired());
        }
        Ok(conn)
    }

    /// The sqlx pool itself, to pass where an `Executor` is expected. It connects with the
    /// current credentials like [`acquire`](Self::acquire), but while they are expired its calls
    /// fail with sqlx's own errors (a timeout, or the database's refusal) rather than
    /// [`PoolErrorKind::Expired`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the credentials in use are past their end with no replacement.
    pub fn is_expired(&self) -> bool {
        self.shared.is_expired()
    }

    /// What the pool does about rotations, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.shared.events.subscribe()
    }

    /// Stop following the handle (releasing it) and close every connection, waiting for the
    /// ones in use to be released.
    pub async fn close(self) {
        self.stop_driver();
        self.pool.close().await;
    }

    fn stop_driver(&self) {
        let sender = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(stop) = sender {
            let _ = stop.send(());
        }
    }
}

fn expired() -> PoolError {
    PoolError::new(
        PoolErrorKind::Expired,
        "the database credentials ended and no usable replacement has arrived",
    )
}

impl Drop for RotatingPgPool {
    fn drop(&mut self) {
        self.stop_driver();
        self.task.abort();
    }
}

impl std::fmt::Debug for RotatingPgPool {
    /// The pool's size and state; never its connect options (whose `Debug` prints the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingPgPool")
            .field("size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .field("expired", &self.shared.is_expired())
            .finish_non_exhaustive()
    }
}

impl RotatingPgPoolBuilder {
    /// The sqlx pool options (size, timeouts, lifetimes). Their connection hooks are replaced.
    pub fn pool_options(mut self, options: PgPoolOptions) -> Self {
        self.pool_options = options;
        self
    }

    /// How long before the credentials in use end the pool stops using them when no
    /// replacement could be applied (default 2 s, at most an eighth of the lease's TTL): time
    /// for queries in flight to finish.
    ///
    /// Once a lease can no longer be renewed (its max TTL), the pool asks the client to
    /// re-issue it a quarter of its TTL (at most 30 s) before this margin, unless the client
    /// has already done so; the replacement is then in place well before the margin.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Pause before trying refused credentials again (default 2 s, doubling to 30 s).
    pub fn retry_interval(mut self, retry: Duration) -> Self {
        self.retry = retry.max(Duration::from_millis(10));
        self
    }

    /// How long the login that tries new credentials may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Buffer of each [`subscribe`](RotatingPgPool::subscribe) receiver (default 64).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// The clock deadlines are computed on (default: the system clock). sqlx measures
    /// connection ages on the real monotonic clock, so this is for tests of the deadlines only.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Log in once with the handle's current credentials, then build the pool (connecting
    /// lazily, or up to `min_connections` at once) and start following the handle. Must be
    /// called inside a Tokio runtime.
    ///
    /// Fails with [`PoolErrorKind::InvalidCredentials`] when the secret is not a JSON object
    /// with `username` and `password`, [`PoolErrorKind::Refused`] when the database refuses
    /// them, [`PoolErrorKind::Unavailable`] when it cannot be reached.
    pub async fn build(self) -> Result<RotatingPgPool, PoolError> {
        let first = {
            let current = self.handle.current();
            credentials::apply(&self.base, &current)?
        };
        driver::validate(&first.options, self.connect_timeout).await?;
        let shared = driver::Shared::new(self.clock, first.user.clone(), self.event_capacity);
        let in_use = driver::InUse::of(&first);
        let options = driver::hooked(self.pool_options, &shared);
        let pool = if options.get_min_connections() > 0 {
            options
                .connect_with(first.options)
                .await
                .map_err(|e| PoolError::from_sqlx(e, "the pool could not open its connections"))?
        } else {
            options.connect_lazy_with(first.options)
        };
        let (stop, stopped) = oneshot::channel();
        let driver = driver::Driver::new(
            shared.clone(),
            pool.clone(),
            self.handle,
            self.base,
            in_use,
            self.margin,
            self.retry,
            self.connect_timeout,
        );
        let task = tokio::spawn(driver.run(stopped));
        Ok(RotatingPgPool {
            pool,
            shared,
            stop: Mutex::new(Some(stop)),
            task,
        })
    }
}

impl std::fmt::Debug for RotatingPgPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingPgPoolBuilder")
            .field("secret", &self.handle.reference())
            .field("expiry_margin", &self.margin)
            .field("retry_interval", &self.retry)
            .finish_non_exhaustive()
    }
}
