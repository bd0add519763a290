//! [`ProjectedToken`]: the kubelet-rotated service-account token file, as an
//! [`IdentityToken`].
//!
//! The kubelet writes a projected token into a new timestamped directory and then swaps the
//! `..data` symlink to it, so `token` (a symlink through `..data`) changes atomically. It does so
//! when 80 % of the token's lifetime has passed (or after 24 h). A token cached forever therefore
//! dies with its `exp`; one read at every login costs a file read per login. This type reads the
//! file again when
//!
//! * the directory changed (a watch on the directory sees the `..data` swap),
//! * 80 % of the cached token's lifetime (`iat` → `exp`) has passed (and then at most every 5 s
//!   until the kubelet has swapped it),
//! * a minute has passed since the last read (in case the directory watch is unavailable or missed
//!   an event; the same period kube-rs uses for its token file), or
//! * [`invalidate`](keyrack_core::IdentityToken::invalidate) was called after a backend refused the
//!   token,
//!
//! and keeps the last good token if a re-read fails (a half-written file, a transient error) while
//! that token has not expired; an expired token is never served. The token itself never reaches `Debug`, errors or logs; the claims
//! (namespace, service account, expiry) do, because they say which identity is in use.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use keyrack_core::{Clock, Error, ErrorKind, IdentityToken, Result, SecretValue, SystemClock};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use zeroize::Zeroizing;

use crate::claims::TokenClaims;

/// Where the kubelet mounts the default service-account token (with `ca.crt` and `namespace`).
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The fraction of a token's lifetime after which it is read again (the kubelet rotates at 80 %).
const REFRESH_FRACTION: f64 = 0.8;
/// Re-read at least this often whatever the claims say.
const MAX_AGE: Duration = Duration::from_secs(60);
/// After a failed re-read with a good token still held, wait this long before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Past 80 % the kubelet swaps the file at its next volume sync (or not at all while it cannot
/// reach the API server): until then, read again at most this often (the directory watch sees the
/// swap itself at once).
const RECHECK_WHEN_DUE: Duration = Duration::from_secs(5);

/// A projected service-account token read from a file, re-read as the kubelet rotates it.
///
/// Cheap to clone; clones share the cached token and the directory watch.
///
/// ```no_run
/// # async fn demo() -> keyrack_core::Result<()> {
/// use keyrack_core::IdentityToken;
/// use keyrack_k8s::ProjectedToken;
///
/// // A projected volume with audience `vault`, as in examples/k8s/deployment.yaml.
/// let token = ProjectedToken::new("/var/run/secrets/tokens/vault");
/// let jwt = token.token().await?; // read now, then again only when it changes or ages
/// # let _ = jwt; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ProjectedToken {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    /// Set by the directory watch and by `invalidate`.
    dirty: Arc<AtomicBool>,
    loaded: Mutex<Option<Loaded>>,
    /// One read at a time; callers arriving during a read take its result.
    reading: tokio::sync::Mutex<()>,
    watch: Mutex<WatchState>,
}

enum WatchState {
    NotStarted,
    Watching(#[allow(dead_code)] RecommendedWatcher),
    Unavailable,
}

#[derive(Clone)]
struct Loaded {
    token: SecretValue,
    claims: TokenClaims,
    read_at: Instant,
    /// Set after a failed re-read: do not try again before this.
    retry_at: Option<Instant>,
    /// Set when a re-read past the refresh point found the same token: not again before this.
    recheck_at: Option<Instant>,
}

impl ProjectedToken {
    /// The token at `path` (not read until first asked for).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ProjectedToken {
            inner: Arc::new(Inner {
                path: path.into(),
                clock: Arc::new(SystemClock),
                dirty: Arc::new(AtomicBool::new(false)),
                loaded: Mutex::new(None),
                reading: tokio::sync::Mutex::new(()),
                watch: Mutex::new(WatchState::NotStarted),
            }),
        }
    }

    /// The pod's default service-account token ([`SERVICE_ACCOUNT_TOKEN`]).
    pub fn service_account() -> Self {
        Self::new(SERVICE_ACCOUNT_TOKEN)
    }

    /// The token at the path held by environment variable `var` — `AWS_WEB_IDENTITY_TOKEN_FILE`
    /// (EKS IRSA) or `AZURE_FEDERATED_TOKEN_FILE` (Azure workload identity), say.
    pub fn from_env_var(var: &str) -> Result<Self> {
        match std::env::var_os(var) {
            Some(path) if !path.is_empty() => Ok(Self::new(PathBuf::from(path))),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!("{var} is not set: it names the projected token file to read"),
            )),
        }
    }

    /// Use another clock (tests drive expiry with a manual one). Starts from an empty cache: call
    /// it before the token is first read or cloned.
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let mut fresh = Self::new(self.inner.path.clone());
        if let Some(inner) = Arc::get_mut(&mut fresh.inner) {
            inner.clock = Arc::new(clock);
        }
        fresh
    }

    /// The file this token is read from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The claims of the token last read, if one was.
    pub fn claims(&self) -> Option<TokenClaims> {
        self.lock_loaded().as_ref().map(|l| l.claims.clone())
    }

    /// Reads the file now (whatever is cached) and returns the claims of what it holds; an
    /// unreadable file is an error here (the cached token is kept for [`token`](IdentityToken::token)).
    pub async fn reload(&self) -> Result<TokenClaims> {
        let _reading = self.inner.reading.lock().await;
        self.ensure_watch();
        let loaded = self.read().await?;
        let claims = loaded.claims.clone();
        *self.lock_loaded() = Some(loaded);
        Ok(claims)
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, Option<Loaded>> {
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached token when it needs no re-read.
    fn fresh(&self) -> Option<SecretValue> {
        if self.inner.dirty.load(Ordering::SeqCst) {
            return None;
        }
        let loaded = self.lock_loaded();
        let loaded = loaded.as_ref()?;
        let now = self.inner.clock.now();
        let wall = self.inner.clock.wall();
        if expired(&loaded.claims, wall) {
            return None;
        }
        // A re-read failed (the last good token is served until the next attempt), or one past
        // the refresh point found the kubelet had not swapped yet.
        if let Some(not_before) = loaded.retry_at.or(loaded.recheck_at) {
            return (now < not_before).then(|| loaded.token.clone());
        }
        if now.saturating_duration_since(loaded.read_at) >= MAX_AGE {
            return None;
        }
        match loaded.claims.refresh_at(REFRESH_FRACTION) {
            Some(at) if wall >= at => None,
            _ => Some(loaded.token.clone()),
        }
    }

    async fn current(&self) -> Result<SecretValue> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _reading = self.inner.reading.lock().await;
        // Another caller may have read it while this one waited.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        self.ensure_watch();
        self.inner.dirty.store(false, Ordering::SeqCst);
        match self.read().await {
            Ok(mut loaded) => {
                let token = loaded.token.clone();
                let mut slot = self.lock_loaded();
                let changed = slot
                    .as_ref()
                    .is_none_or(|old| !old.token.same_bytes(&token));
                let due = loaded
                    .claims
                    .refresh_at(REFRESH_FRACTION)
                    .is_some_and(|at| self.inner.clock.wall() >= at);
                if due && !changed {
                    loaded.recheck_at = Some(self.inner.clock.now() + RECHECK_WHEN_DUE);
                }
                if changed {
                    tracing::debug!(
                        path = %self.inner.path.display(),
                        claims = ?loaded.claims,
                        "read the projected service-account token"
                    );
                }
                *slot = Some(loaded);
                Ok(token)
            }
            Err(e) => {
                let mut slot = self.lock_loaded();
                let wall = self.inner.clock.wall();
                match slot.as_mut() {
                    Some(last) if !expired(&last.claims, wall) => {
                        tracing::warn!(
                            path = %self.inner.path.display(),
                            error = %e,
                            "re-reading the projected token failed; using the last good one"
                        );
                        last.retry_at = Some(self.inner.clock.now() + RETRY_AFTER_FAILURE);
                        Ok(last.token.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn read(&self) -> Result<Loaded> {
        let path = &self.inner.path;
        let bytes = tokio::fs::read(path)
            .await
            .map(Zeroizing::new)
            .map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::NotFound {
                    ErrorKind::Config
                } else {
                    ErrorKind::Unavailable
                };
                Error::new(
                    kind,
                    format!(
                        "cannot read the projected token at {}: {e} (is the service-account token \
                     volume mounted at that path?)",
                        path.display()
                    ),
                )
            })?;
        // The kubelet writes the token without a newline; hand-made files often end with one.
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| {
                Error::invalid_value(format!("the token at {} is not UTF-8 text", path.display()))
            })?
            .trim();
        if text.is_empty() {
            return Err(Error::invalid_value(format!(
                "the token file {} is empty",
                path.display()
            )));
        }
        let claims = TokenClaims::decode(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidValue,
                format!("{} ({})", e.message(), path.display()),
            )
        })?;
        if expired(&claims, self.inner.clock.wall()) {
            return Err(Error::new(
                ErrorKind::Expired,
                format!(
                    "the token at {} expired ({claims:?}); the kubelet should have replaced it",
                    path.display()
                ),
            ));
        }
        Ok(Loaded {
            token: SecretValue::copy_from_slice(text.as_bytes()),
            claims,
            read_at: self.inner.clock.now(),
            retry_at: None,
            recheck_at: None,
        })
    }

    /// Watches the token's directory for the kubelet's `..data` swap. Started on first use, so a
    /// token made outside a runtime or before its volume exists still works (by time alone).
    fn ensure_watch(&self) {
        let mut watch = self.inner.watch.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*watch, WatchState::NotStarted) {
            return;
        }
        let dir = volume_dir(&self.inner.path);
        let dirty = self.inner.dirty.clone();
        let started = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Any change in the directory: the swap touches `..data`, `..data_tmp` and the new
            // timestamped directory, never `token` itself, so filtering by name would miss it.
            // Opens and reads are not changes (inotify reports this reader's own opens of a
            // plain file); an error may mean lost events, so it counts as a change.
            let change = match event {
                Ok(event) => !matches!(event.kind, notify::EventKind::Access(_)),
                Err(_) => true,
            };
            if change {
                dirty.store(true, Ordering::SeqCst);
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        *watch = match started {
            Ok(w) => WatchState::Watching(w),
            Err(e) => {
                tracing::debug!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch the token directory; re-reading by age only"
                );
                WatchState::Unavailable
            }
        };
    }
}

/// The directory to watch: the one holding the kubelet's `..data` link, walking up from the
/// token's directory (a token at a sub-path, `serviceAccountToken.path: vault/token`, is read
/// through `<mount>/vault -> ..data/vault`, and a watch on that would follow the link into a
/// timestamped directory the kubelet deletes at the first swap). A plain directory otherwise.
fn volume_dir(token: &Path) -> PathBuf {
    let parent = match token.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parent
        .ancestors()
        .take(4)
        .find(|dir| std::fs::symlink_metadata(dir.join("..data")).is_ok())
        .map_or(parent.clone(), Path::to_path_buf)
}

fn expired(claims: &TokenClaims, wall: SystemTime) -> bool {
    claims.expires_at.is_some_and(|exp| wall >= exp)
}

#[async_trait]
impl IdentityToken for ProjectedToken {
    async fn token(&self) -> Result<SecretValue> {
        self.current().await
    }

    fn invalidate(&self) {
        self.inner.dirty.store(true, Ordering::SeqCst);
    }
}

impl fmt::Debug for ProjectedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectedToken")
            .field("path", &self.inner.path)
            .field("claims", &self.claims())
            .finish_non_exhaustive()
    }
}
