//! The [`Secrets`] client: named sources behind one cache, single-flight loads, live handles with
//! background refresh and lease renewal, and rotation events.

mod context;
mod driver;
mod entry;
mod events;
mod flight;
mod front;
pub(crate) mod gate;
mod handle;
mod health;
mod maintain;
mod pacing;
pub(crate) mod progress;
mod revoker;
pub mod telemetry;
mod view;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use moka::notification::RemovalCause;

use crate::backoff::Backoff;
use crate::budget::{Bucket, RequestBudget};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::{SecretRef, Selector};
use crate::secret::Secret;
use crate::source::SecretSource;

pub(crate) use context::FOREVER;
use context::{Config, Ctx, MIN_INTERVAL, later};
use entry::{Entry, Trigger};
use flight::Flights;
use front::Front;
use pacing::Pacer;
use view::View;

pub use events::{RotationEvent, RotationEvents};
pub use handle::{Current, SecretHandle};
pub use health::{Health, SecretHealth, SecretState, Verdict};

/// Something that names a secret: a URI string or an already parsed [`SecretRef`].
pub trait ToSecretRef {
    /// The reference, parsed if need be.
    fn to_secret_ref(&self) -> Result<Cow<'_, SecretRef>>;

    /// The reference's text as given, for a cache lookup without parsing (a reference in
    /// canonical form hits directly; any other spelling is parsed first).
    fn as_text(&self) -> &str;
}

impl ToSecretRef for str {
    fn to_secret_ref(&self) -> Result<Cow<'_, SecretRef>> {
        Ok(Cow::Owned(SecretRef::parse(self)?))
    }

    fn as_text(&self) -> &str {
        self
    }
}

impl ToSecretRef for String {
    fn to_secret_ref(&self) -> Result<Cow<'_, SecretRef>> {
        self.as_str().to_secret_ref()
    }

    fn as_text(&self) -> &str {
        self
    }
}

impl ToSecretRef for SecretRef {
    fn to_secret_ref(&self) -> Result<Cow<'_, SecretRef>> {
        Ok(Cow::Borrowed(self))
    }

    fn as_text(&self) -> &str {
        self.as_str()
    }
}

impl<T: ToSecretRef + ?Sized> ToSecretRef for &T {
    fn to_secret_ref(&self) -> Result<Cow<'_, SecretRef>> {
        (**self).to_secret_ref()
    }

    fn as_text(&self) -> &str {
        (**self).as_text()
    }
}

/// The client. Cheap to clone; clones share everything.
///
/// ```
/// # use keyrack_core::{Secrets, sources::MemorySource};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> keyrack_core::Result<()> {
/// let memory = MemorySource::new();
/// memory.set("payments", r#"{"api_key":"k-123"}"#);
/// let secrets = Secrets::builder().source("mem", memory).build()?;
///
/// let key = secrets.get_secret("mem://payments#api_key").await?;
/// assert_eq!(key.expose_str()?, "k-123");
///
/// let handle = secrets.handle("mem://payments").await?;
/// let mut events = handle.subscribe();
/// # let _ = &mut events;
/// println!("version {:?}", handle.current().version());
/// secrets.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Shared>,
}

struct Shared {
    sources: HashMap<String, (Arc<str>, Arc<dyn SecretSource>)>,
    ctx: Arc<Ctx>,
    /// Where hits are served from (canonical text → view).
    front: Arc<Front>,
    /// The bound and the eviction policy (keys only: `front` holds the views); what it evicts
    /// leaves `front` too.
    policy: moka::sync::Cache<SecretRef, ()>,
    flights: Flights<SecretRef, Result<Arc<View>>>,
    /// First loads of entries, keyed by the reference without field.
    loads: Flights<SecretRef, Result<()>>,
    /// Every entry alive (held by a cached view or a handle), so a reference whose view was
    /// evicted finds the entry its handles keep alive instead of fetching (and leasing) again.
    entries: Mutex<HashMap<SecretRef, Weak<Entry>>>,
    negative: moka::sync::Cache<SecretRef, Refusal>,
}

/// A failed first read, remembered so that repeating it does not reach the backend.
#[derive(Clone, Debug)]
struct Refusal {
    error: Error,
    until: Instant,
    /// How many retryable failures in a row this one ends (0 for the first), for the backoff.
    attempt: u32,
}

/// Repeated first reads that fail retryably back off as refreshes do, up to this attempt's
/// step (16 s with the default backoff): a service retrying its start-up in a loop, or a
/// fleet of them, must not hammer a throttling backend, nor wait minutes once it is back.
const FIRST_READ_MAX_ATTEMPT: u32 = 4;
/// A remembered retryable failure older than this (past its end) starts a new series.
const FIRST_READ_SERIES_GAP: Duration = Duration::from_secs(60);

/// The cache is told of one hit in this many (per thread), enough for its frequency sketch to
/// rank secrets without every hit paying for the bookkeeping.
const HIT_SAMPLE: u32 = 32;

thread_local! {
    static HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Secrets {
    /// Start configuring a client.
    pub fn builder() -> SecretsBuilder {
        SecretsBuilder::default()
    }

    /// Read a secret, from the cache when it is there and fresh.
    ///
    /// A cache hit takes no async lock, allocates nothing and copies no secret bytes; a reference
    /// in canonical form (what [`SecretRef`]'s `Display` prints) is not even parsed. A miss
    /// fetches once however many callers wait for it. A `NotFound` is remembered briefly (see
    /// [`SecretsBuilder::negative_cache_ttl`]). A cached value past its check time is served at
    /// once while one check runs in the background (unless a handle keeps it fresh), within the
    /// grace of [`SecretsBuilder::stale_while_revalidate`]; later than that the read waits for
    /// the check. If checks fail the last good value is served until its hard expiry, after which
    /// this returns [`ErrorKind::Expired`]. [`get_secret_fresh`](Self::get_secret_fresh) is the
    /// read that must reach the backend.
    pub async fn get_secret(&self, r: impl ToSecretRef) -> Result<Secret> {
        if let Some(secret) = self.hit(r.as_text()) {
            return Ok(secret);
        }
        telemetry::cache_miss();
        let r = r.to_secret_ref()?;
        let view = self.view(&r).await?;
        self.read(&view, &r).await
    }

    /// `r` as the backend has it now, confirmed within `within` or a
    /// [`Timeout`](ErrorKind::Timeout) error: for the reads that must not be answered from the
    /// cache alone (an operator's check, a value about to be handed to a third party). An
    /// unleased value is checked (the version probe where the source has one, a read if it
    /// moved); a renewable lease is renewed, any other lease re-issued. A value whose answer
    /// arrived during the call counts as confirmed, and concurrent calls for one secret share one
    /// backend call (a forced or confirming one already under way is joined). A failed check is
    /// returned as the error; the cached value is kept for other readers. Calls to one secret
    /// are at least a second apart, so give `within` more than a second plus the backend's
    /// latency when a background check may be under way.
    pub async fn get_secret_fresh(&self, r: impl ToSecretRef, within: Duration) -> Result<Secret> {
        let r = r.to_secret_ref()?.into_owned();
        let clock = self.inner.ctx.clock.clone();
        let asked = clock.now();
        let confirm = async {
            let view = self.view(&r).await?;
            let entry = view.entry.clone();
            if !entry.confirmed_since(asked) {
                entry.maintain(Trigger::Confirm).await?;
                entry.replan();
            }
            if view.is_detached() {
                // The new value no longer has this view's field: read it afresh to say so.
                return Ok(self.view(&r).await?.value());
            }
            Ok(view.value())
        };
        tokio::select! {
            result = confirm => result,
            () = clock.sleep_until(later(asked, within)) => Err(Error::new(
                ErrorKind::Timeout,
                format!("the backend did not confirm the value within {within:?}"),
            )
            .with_ref(&r)),
        }
    }

    /// A fresh cached value, without parsing, allocating or waiting.
    fn hit(&self, text: &str) -> Option<Secret> {
        let sampled = {
            let shard = self.inner.front.read(text);
            let view = shard.get(text)?;
            if view.is_detached() || self.inner.ctx.is_closed() {
                return None;
            }
            if !view.entry.is_fresh(self.inner.ctx.clock.now_coarse()) {
                return None;
            }
            let secret = view.value();
            let sample = HITS.with(|h| {
                let n = h.get().wrapping_add(1);
                h.set(n);
                n % HIT_SAMPLE == 0
            });
            telemetry::cache_hit();
            if !sample {
                return Some(secret);
            }
            (secret, view.key.clone())
        };
        // Outside the shard's lock: moka may run its housekeeping in `get`, and its eviction
        // listener takes that shard's write lock.
        let (secret, key) = sampled;
        let _ = self.inner.policy.get(&key);
        Some(secret)
    }

    /// A live handle on a secret: kept fresh in the background while it exists.
    pub async fn handle(&self, r: impl ToSecretRef) -> Result<SecretHandle> {
        let r = r.to_secret_ref()?;
        loop {
            let view = self.view(&r).await?;
            // The load may have raced a shutdown.
            self.check_open()?;
            if view.entry.attach(&view) {
                return Ok(SecretHandle::attached(view));
            }
            // Detached between lookup and attach (a new value without its field): look again.
            self.inner.front.remove_if_same(r.as_str(), &view);
        }
    }

    /// Load many secrets at once (at startup): one batch call per source where the source has a
    /// batch API, concurrent reads otherwise. Results are in input order.
    pub async fn prefetch<R: ToSecretRef>(&self, refs: &[R]) -> Vec<Result<Secret>> {
        let parsed: Vec<Result<SecretRef>> = refs
            .iter()
            .map(|r| r.to_secret_ref().map(Cow::into_owned))
            .collect();
        // Bases to fetch, grouped by source; cached ones and recent failures are skipped.
        let now = self.inner.ctx.clock.now();
        let mut groups: HashMap<&str, Vec<SecretRef>> = HashMap::new();
        for r in parsed.iter().flatten() {
            if self.inner.front.get(r.as_str()).is_some() || self.refused(r, now).is_some() {
                continue;
            }
            let base = r.without_field();
            // Held already (by a handle, say): fetching again would only waste (or lease) one.
            let held = lock(&self.inner.entries)
                .get(&base)
                .and_then(Weak::upgrade)
                .is_some_and(|e| e.is_loaded());
            if held {
                continue;
            }
            let group = groups.entry(r.source()).or_default();
            if !group.contains(&base) {
                group.push(base);
            }
        }
        let mut failed: HashMap<SecretRef, Error> = HashMap::new();
        let fetches = groups.into_iter().map(|(name, bases)| async move {
            let Ok((source_name, source)) = self.source_for(name) else {
                return Vec::new();
            };
            let sent = self.inner.ctx.clock.now();
            let what = format!("{} secrets", bases.len());
            let results = match self
                .inner
                .ctx
                .call_many(&source_name, &what, source.fetch_many(&bases))
                .await
            {
                Ok(results) => results,
                Err(e) => bases.iter().map(|_| Err(e.clone())).collect(),
            };
            let mut out = Vec::with_capacity(bases.len());
            for (base, result) in bases.into_iter().zip(results) {
                match result {
                    Ok(secret) => {
                        let entry = self.entry_for(&base, &source_name, &source);
                        entry.install_first(secret, sent);
                        // Keep the entry alive in the cache until the views are made below.
                        out.push((base, Ok(entry)));
                    }
                    Err(e) => {
                        let e = e.with_ref(&base).with_source_name(&*source_name);
                        out.push((base, Err(e)));
                    }
                }
            }
            out
        });
        let mut keep = Vec::new();
        for (base, result) in join_all(fetches).await.into_iter().flatten() {
            match result {
                Ok(entry) => {
                    self.inner.negative.invalidate(&base);
                    keep.push(entry);
                }
                Err(e) => {
                    self.remember_failure(&base, &e);
                    failed.insert(base, e);
                }
            }
        }
        let mut out = Vec::with_capacity(parsed.len());
        for r in parsed {
            out.push(match r {
                Err(e) => Err(e),
                Ok(r) => match failed.get(&r.without_field()) {
                    Some(e) => Err(e.clone()),
                    None => self.get_secret(&r).await,
                },
            });
        }
        drop(keep);
        out
    }

    /// Whether a source is registered under `name` (the scheme a reference starts with), so a
    /// caller can tell a reference to an unregistered source from one its source refused
    /// without fetching.
    ///
    /// ```
    /// # use keyrack_core::{Secrets, sources::MemorySource};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> keyrack_core::Result<()> {
    /// let secrets = Secrets::builder().source("mem", MemorySource::new()).build()?;
    /// assert!(secrets.has_source("mem"));
    /// assert!(!secrets.has_source("vault"));
    /// # Ok(()) }
    /// ```
    pub fn has_source(&self, name: &str) -> bool {
        self.inner.sources.contains_key(name)
    }

    /// Every event of every secret this client holds.
    pub fn events(&self) -> RotationEvents {
        RotationEvents::new(self.inner.ctx.events.subscribe())
    }

    /// Stop every background task, revoke leases if configured
    /// ([`SecretsBuilder::revoke_on_shutdown`]), and refuse further reads. Handles keep their
    /// last value but are no longer refreshed.
    pub async fn shutdown(&self) {
        let ctx = &self.inner.ctx;
        if ctx.is_closed() {
            return;
        }
        ctx.close();
        let entries: Vec<Arc<Entry>> = lock(&self.inner.entries)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let revoke = ctx.config.revoke_on_shutdown;
        join_all(entries.iter().map(|e| e.shut_down(revoke))).await;
        ctx.revoker.shutdown().await;
        // Each source once, however many names it is registered under.
        let mut sources: Vec<&Arc<dyn SecretSource>> = Vec::new();
        for (_, source) in self.inner.sources.values() {
            if !sources.iter().any(|s| Arc::ptr_eq(s, source)) {
                sources.push(source);
            }
        }
        join_all(sources.into_iter().map(|s| s.shutdown())).await;
        self.inner.policy.invalidate_all();
        self.inner.front.clear();
    }

    /// Check `r` against the backend now, if the client holds it (cached or behind a handle): a
    /// leased secret is re-issued. Concurrent calls for one secret coalesce into one backend
    /// call. Returns `false` if the secret is not held (its next read fetches it anyway).
    pub async fn refresh(&self, r: impl ToSecretRef) -> Result<bool> {
        self.check_open()?;
        let base = r.to_secret_ref()?.without_field();
        let entry = lock(&self.inner.entries)
            .get(&base)
            .and_then(Weak::upgrade)
            .filter(|e| e.is_loaded());
        let Some(entry) = entry else {
            return Ok(false);
        };
        let result = entry.maintain(Trigger::Forced).await;
        entry.replan();
        result.map(|()| true)
    }

    /// The calls per second source `name`'s request budget allows now: its budget, or less while
    /// it is cut after throttling (`None`: the source is unbudgeted or not registered). Also the
    /// `keyrack_request_budget_per_second` gauge.
    pub fn request_rate(&self, name: &str) -> Option<f64> {
        self.inner.ctx.budget_rate(name)
    }

    /// The floor source `name`'s refresh budget puts under its secrets' refresh intervals now:
    /// zero while they fit, `None` without a refresh budget (see
    /// [`SecretsBuilder::refresh_budget`]).
    pub fn refresh_floor(&self, name: &str) -> Option<Duration> {
        self.inner.ctx.refresh_floor(name)
    }

    /// The state of every secret held (fresh, stale, failing, expired) and an overall verdict
    /// for readiness probes; see [`Health`] for the rules. Makes no backend call.
    pub fn health(&self) -> Health {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.entries)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let secrets: Vec<SecretHealth> = entries.iter().map(|e| e.health()).collect();
        Health {
            verdict: health::verdict(&secrets),
            secrets,
        }
    }

    /// Set the gauges that describe what the client holds, per source: secrets held
    /// (`keyrack_secrets_held`), live handles (`keyrack_handles`), seconds since the backend last
    /// answered for the secret longest without an answer (`keyrack_oldest_success_age_seconds`)
    /// and seconds until the nearest lease end (`keyrack_nearest_lease_end_seconds`). They change
    /// with time, so they are computed when asked: call this where the metrics are exported (a
    /// `/metrics` handler, before rendering). Makes no backend call; costs a lock and a look per
    /// secret held, like [`health`](Self::health).
    pub fn record_gauges(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.entries)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let now = self.inner.ctx.clock.now();
        // Per source: held, handles, oldest success, nearest lease end.
        let mut by_source: HashMap<Arc<str>, (usize, usize, Duration, Option<Duration>)> = self
            .inner
            .sources
            .values()
            .map(|(name, _)| (name.clone(), (0, 0, Duration::ZERO, None)))
            .collect();
        for entry in &entries {
            let facts = entry.gauge_facts(now);
            let row =
                by_source
                    .entry(entry.source_name.clone())
                    .or_insert((0, 0, Duration::ZERO, None));
            row.0 += 1;
            row.1 += facts.handles;
            row.2 = row.2.max(facts.since_success.unwrap_or(Duration::ZERO));
            if let Some(end) = facts.to_lease_end {
                row.3 = Some(row.3.map_or(end, |e: Duration| e.min(end)));
            }
        }
        for (source, (held, handles, oldest, lease_end)) in by_source {
            telemetry::source_gauges(&source, held, handles, oldest, lease_end);
        }
    }

    /// Number of secrets held (cached or behind a live handle).
    pub fn held(&self) -> usize {
        let mut entries = lock(&self.inner.entries);
        entries.retain(|_, e| e.strong_count() > 0);
        entries.len()
    }

    /// Run the cache's pending housekeeping (eviction) now; useful in tests.
    pub async fn run_pending_tasks(&self) {
        self.inner.policy.run_pending_tasks();
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.ctx.is_closed() {
            return Err(Error::new(ErrorKind::Shutdown, "the client was shut down"));
        }
        Ok(())
    }

    async fn view(&self, r: &SecretRef) -> Result<Arc<View>> {
        self.check_open()?;
        if let Some(v) = self.inner.front.get(r.as_str()) {
            if !v.is_detached() {
                return Ok(v);
            }
            self.inner.front.remove_if_same(r.as_str(), &v);
        }
        let now = self.inner.ctx.clock.now();
        if let Some(e) = self.refused(r, now) {
            return Err(e);
        }
        // Weak: a flight whose waiters all gave up must not keep the client alive.
        let weak = Arc::downgrade(&self.inner);
        let key = r.clone();
        let load = async move {
            let this = Secrets {
                inner: weak
                    .upgrade()
                    .ok_or_else(|| Error::new(ErrorKind::Shutdown, "the client was dropped"))?,
            };
            let view = this.load_view(&key).await?;
            this.inner.front.insert(&key, view.clone());
            this.inner.policy.insert(key, ());
            Ok(view)
        };
        let result = self.inner.flights.join(r.clone(), load).await;
        match &result {
            Err(e) => self.remember_failure(r, e),
            Ok(_) => self.inner.negative.invalidate(r),
        }
        result
    }

    /// The error `r` failed with moments ago, if it is still remembered.
    fn refused(&self, r: &SecretRef, now: Instant) -> Option<Error> {
        match self.inner.negative.get(r) {
            Some(refusal) if now < refusal.until => Some(refusal.error),
            _ => None,
        }
    }

    /// Remember a failed first read so that repeating it does not reach the backend: a missing
    /// secret, a refused permission, a wrong `#field` for [`negative_cache_ttl`]; an outage or
    /// throttling for the engine's backoff (1, 2, 4, 8, 16 s for throttling, Key Vault's
    /// guidance; a random time up to those steps, at least a second, otherwise), and never less
    /// than the backend's `Retry-After`. The budget's own refusals are not
    /// remembered: nothing was sent, and the budget itself refuses the next call at once.
    ///
    /// [`negative_cache_ttl`]: SecretsBuilder::negative_cache_ttl
    fn remember_failure(&self, r: &SecretRef, e: &Error) {
        let ctx = &self.inner.ctx;
        let now = ctx.clock.now();
        let previous = self
            .inner
            .negative
            .get(r)
            .filter(|p| p.error.is_retryable() && now < later(p.until, FIRST_READ_SERIES_GAP));
        let (ttl, attempt) = match e.kind() {
            ErrorKind::Shutdown => return,
            // Nothing reached the backend, and the budget answers the next call at once: its
            // hint, counted from the refusal, would be stale here (a prefetch's refused reads
            // are remembered when the whole prefetch ends).
            _ if e.is_budget_refusal() => return,
            _ if e.is_retryable() => {
                let attempt = previous
                    .map_or(0, |p| p.attempt.saturating_add(1))
                    .min(FIRST_READ_MAX_ATTEMPT);
                let floor = Duration::from_secs(1);
                (
                    ctx.config.backoff.delay(attempt, e, floor, ctx.unit()),
                    attempt,
                )
            }
            _ => (ctx.config.negative_ttl, 0),
        };
        let refusal = Refusal {
            error: e.clone(),
            until: later(now, ttl),
            attempt,
        };
        self.inner.negative.insert(r.clone(), refusal);
    }

    async fn load_view(&self, r: &SecretRef) -> Result<Arc<View>> {
        let (name, source) = self.source_for(r.source())?;
        let caps = source.capabilities();
        let unsupported = match r.selector() {
            Some(Selector::Version(_)) if !caps.versions => Some("versions (`?version=`)"),
            Some(Selector::Stage(_)) if !caps.stages => Some("stages (`?stage=`)"),
            _ => None,
        };
        if let Some(what) = unsupported {
            return Err(Error::new(
                ErrorKind::InvalidRef,
                format!("source `{name}` has no {what}"),
            )
            .with_ref(r));
        }
        let base = r.without_field();
        let entry = self.entry_for(&base, &name, &source);
        if !entry.is_loaded() {
            // One fetch per secret, whichever of its fields asked first.
            let loading = entry.clone();
            let load = async move { loading.load().await };
            self.inner.loads.join(base, load).await?;
        }
        entry.view(r)
    }

    async fn read(&self, view: &View, r: &SecretRef) -> Result<Secret> {
        let entry = &view.entry;
        let clock = &entry.ctx.clock;
        let now = clock.now();
        if let Some(s) = entry.snapshot().filter(|s| !s.is_expired(now)) {
            if now < s.next_check {
                return Ok(view.value());
            }
            // Due, but within the grace: served at once, checked in the background. A handle's
            // driver checks it on its own.
            let grace = entry.ctx.config.stale_grace_for(&entry.key);
            if now < later(s.next_check, grace) {
                if !entry.has_driver() {
                    entry.revalidate();
                }
                return Ok(view.value());
            }
        }
        let mut failure = None;
        if !entry.has_driver() {
            failure = entry.maintain(Trigger::Due).await.err();
        }
        if view.is_detached() {
            // The new value no longer has this view's field: read it afresh to say so.
            let fresh = Box::pin(self.view(r)).await?;
            return Ok(fresh.value());
        }
        if entry.snapshot().is_some_and(|s| s.is_expired(clock.now())) {
            let e = Error::new(
                ErrorKind::Expired,
                "the cached value is past its hard expiry and could not be replaced",
            )
            .with_ref(r)
            .with_source_name(&*entry.source_name);
            return Err(match failure {
                Some(f) => e.with_cause(f),
                None => e,
            });
        }
        Ok(view.value())
    }

    fn source_for(&self, name: &str) -> Result<(Arc<str>, Arc<dyn SecretSource>)> {
        self.inner.sources.get(name).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = self.inner.sources.keys().map(String::as_str).collect();
            known.sort_unstable();
            Error::new(
                ErrorKind::InvalidRef,
                format!(
                    "no source is registered as `{name}` (registered: {})",
                    known.join(", ")
                ),
            )
        })
    }

    fn entry_for(
        &self,
        base: &SecretRef,
        name: &Arc<str>,
        source: &Arc<dyn SecretSource>,
    ) -> Arc<Entry> {
        let mut entries = lock(&self.inner.entries);
        if let Some(e) = entries.get(base).and_then(Weak::upgrade) {
            return e;
        }
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, e| e.strong_count() > 0);
        }
        let entry = Arc::new(Entry::new(
            base.clone(),
            name.clone(),
            source.clone(),
            self.inner.ctx.clone(),
        ));
        entries.insert(base.clone(), Arc::downgrade(&entry));
        entry
    }
}

/// A source's request budget and refresh budget, as they are used.
type SourceBudgets = (Option<Arc<Bucket>>, Option<Arc<Pacer>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.inner.sources.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Secrets")
            .field("sources", &names)
            .field("cached", &self.inner.front.len())
            .finish()
    }
}

/// Configures a [`Secrets`] client.
pub struct SecretsBuilder {
    sources: Vec<(String, Arc<dyn SecretSource>)>,
    clock: Arc<dyn Clock>,
    config: Config,
    seed: Option<u64>,
    problems: Vec<String>,
}

impl Default for SecretsBuilder {
    fn default() -> Self {
        SecretsBuilder {
            sources: Vec::new(),
            clock: Arc::new(SystemClock),
            config: Config::default(),
            seed: None,
            problems: Vec::new(),
        }
    }
}

impl fmt::Debug for SecretsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsBuilder")
            .field(
                "sources",
                &self.sources.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

impl SecretsBuilder {
    /// Register `source` under `name`: references `name://…` read from it. Two clusters of one
    /// backend are two names (`vault-eu`, `vault-us`).
    pub fn source(self, name: impl Into<String>, source: impl SecretSource) -> Self {
        self.shared_source(name, Arc::new(source))
    }

    /// Register an already shared source under `name`.
    pub fn shared_source(mut self, name: impl Into<String>, source: Arc<dyn SecretSource>) -> Self {
        self.sources.push((name.into(), source));
        self
    }

    /// The clock (default: the system clock). Tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How often an unleased secret is re-checked (default 5 minutes).
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.config.refresh_interval = every;
        self
    }

    /// A different interval for one secret (its reference, without `#field`).
    pub fn refresh_interval_for(mut self, r: &str, every: Duration) -> Self {
        match SecretRef::parse(r) {
            Ok(r) => {
                self.config
                    .refresh_overrides
                    .insert(r.without_field(), every);
            }
            Err(e) => self.problems.push(e.to_string()),
        }
        self
    }

    /// Fraction of the interval by which each check is randomly brought forward, so a fleet
    /// started together spreads its checks (default 0.2).
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// Label the backend request metrics (`keyrack_backend_requests_total`,
    /// `keyrack_backend_request_duration_seconds`) with `secret`: the reference (its path and
    /// `#field`, never a value; `N secrets` for a batch). Off by default: it makes a series per
    /// secret, which a metrics backend pays for. Other metrics stay labelled by source only.
    pub fn metrics_secret_label(mut self, on: bool) -> Self {
        self.config.secret_label = on;
        self
    }

    /// How long a `NotFound` is remembered (default 5 s), so a typo does not hammer the backend.
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.negative_ttl = ttl;
        self
    }

    /// Stop serving a value that could not be re-checked for this long (default: serve the last
    /// good value of an unleased secret indefinitely).
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.config.max_staleness = Some(max);
        self
    }

    /// How long past its check time a cached value is still served at once by
    /// [`get_secret`](Secrets::get_secret) while one check runs in the background
    /// (stale-while-revalidate; default: the secret's refresh interval, so while checks succeed a
    /// value is at most two intervals old when a read returns it; while they fail, the grace
    /// counts from each retry's time and the last good value is served until its hard expiry,
    /// as before). A read later than that waits for the check (at most the request timeout), as
    /// a read of a value past its lease or expiry always does. `Duration::ZERO`: every read of a
    /// due value waits for its check. Reads that must reach the backend use
    /// [`get_secret_fresh`](Secrets::get_secret_fresh).
    pub fn stale_while_revalidate(mut self, grace: Duration) -> Self {
        self.config.stale_grace = Some(grace);
        self
    }

    /// The budget of backend calls for source `name` (default: the source's own, its
    /// backend's documented quota, see [`Capabilities::request_budget`]): calls wait for room in
    /// it, and an adaptive budget is cut while the backend throttles. Set a fleet's share of a
    /// shared quota here, e.g. `RequestBudget::new(4_000, Duration::from_secs(10))` divided by
    /// the number of pods. See [`RequestBudget`].
    ///
    /// [`Capabilities::request_budget`]: crate::Capabilities::request_budget
    /// [`RequestBudget`]: crate::RequestBudget
    pub fn request_budget(mut self, name: impl Into<String>, budget: crate::RequestBudget) -> Self {
        self.config.budgets.insert(name.into(), Some(budget));
        self
    }

    /// No request budget for source `name`, not even the source's default.
    pub fn unbudgeted(mut self, name: impl Into<String>) -> Self {
        self.config.budgets.insert(name.into(), None);
        self
    }

    /// The rate routine checks of source `name`'s secrets may cost, per process (default: half
    /// of its request budget, leaving the rest to first reads, renewals and retries; none for an
    /// unbudgeted source). While the secrets' refresh intervals would cost more, the shortest
    /// are stretched to a common floor that fits (a secret checked every minute is stretched
    /// before one checked every hour), instead of a fixed interval that a fleet multiplies past
    /// the backend's quota. Leased secrets are neither counted nor stretched: their renewals
    /// follow their leases. The floor is [`Secrets::refresh_floor`] and the
    /// `keyrack_refresh_interval_floor_seconds` gauge. Only the budget's rate is used.
    ///
    /// Checks come early by up to the [jitter](Self::refresh_jitter), by half of it on average,
    /// and the floor allows for that: 20 secrets checked every 5 minutes cost 0.067 checks per
    /// second; with a refresh budget of `RequestBudget::new(1, Duration::from_secs(100))` and
    /// the default 20 % jitter their floor is 2,222 s, and they are checked every 2,000 s on
    /// average.
    pub fn refresh_budget(mut self, name: impl Into<String>, budget: crate::RequestBudget) -> Self {
        self.config
            .refresh_budgets
            .insert(name.into(), Some(budget));
        self
    }

    /// No refresh budget for source `name`: its secrets are checked at their refresh intervals
    /// whatever that costs (each check still waits for room in the request budget).
    pub fn no_refresh_budget(mut self, name: impl Into<String>) -> Self {
        self.config.refresh_budgets.insert(name.into(), None);
        self
    }

    /// Backoff after failures (default: full jitter, 1 s doubling to 5 min).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// How many references the cache holds (default 10,000). Secrets behind live handles are
    /// kept regardless.
    pub fn cache_capacity(mut self, entries: u64) -> Self {
        self.config.capacity = entries;
        self
    }

    /// Revoke held leases on [`Secrets::shutdown`] (default: no, let them expire).
    pub fn revoke_on_shutdown(mut self, revoke: bool) -> Self {
        self.config.revoke_on_shutdown = revoke;
        self
    }

    /// Revoke a lease this long after a re-issued secret replaced it (default: let it expire).
    pub fn revoke_replaced_leases_after(mut self, overlap: Duration) -> Self {
        self.config.revoke_replaced_after = Some(overlap);
        self
    }

    /// The increment asked for on renewal (default: the backend's).
    pub fn renew_increment(mut self, increment: Duration) -> Self {
        self.config.renew_increment = Some(increment);
        self
    }

    /// Buffer of each event stream before slow subscribers see [`RotationEvent::Lagged`]
    /// (default 256).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.config.event_capacity = events;
        self
    }

    /// How long one backend call may take before it counts as failed with
    /// [`ErrorKind::Timeout`] (default 30 s), on the client's clock. A call of several requests
    /// (a prefetch's reads, [`fetch_each`](crate::fetch_each), [`timed_request`](crate::timed_request))
    /// may take longer while its requests are answered: each request has this long, and the call
    /// this long from its latest request sent or answered. A backend that accepts and never
    /// answers costs this long, never more (once one request of a call has timed out, the call
    /// sends no more); `Expired` is reported at a value's hard expiry even while a call is
    /// waiting.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Seed the jitter's random numbers, for repeatable tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Secrets> {
        let mut problems = self.problems;
        let mut sources: HashMap<String, (Arc<str>, Arc<dyn SecretSource>)> = HashMap::new();
        for (name, source) in self.sources {
            match SecretRef::new(&name, "x") {
                Ok(r) if r.source() == name => {}
                _ => problems.push(format!(
                    "source name `{name}` is not a lowercase URI scheme (letters, digits, `+-._`)"
                )),
            }
            if sources
                .insert(name.clone(), (Arc::from(name.as_str()), source))
                .is_some()
            {
                problems.push(format!("source name `{name}` is registered twice"));
            }
        }
        let mut config = self.config;
        let c = &config;
        if c.refresh_interval < MIN_INTERVAL {
            problems.push(format!(
                "refresh interval {:?} is shorter than the minimum of {MIN_INTERVAL:?}",
                c.refresh_interval
            ));
        }
        if let Some(short) = c.refresh_overrides.values().find(|d| **d < MIN_INTERVAL) {
            problems.push(format!(
                "a per-secret refresh interval of {short:?} is shorter than the minimum of \
                 {MIN_INTERVAL:?}"
            ));
        }
        if !(0.0..=1.0).contains(&c.jitter) {
            problems.push(format!("refresh jitter {} is not within 0..=1", c.jitter));
        }
        if c.backoff.initial.is_zero() || c.backoff.max < c.backoff.initial {
            problems.push("backoff needs 0 < initial <= max".into());
        }
        if c.capacity == 0 {
            problems.push("cache capacity must be at least 1".into());
        }
        if c.request_timeout.is_zero() {
            problems.push("request timeout must be positive".into());
        }
        for (what, budgets) in [("request", &c.budgets), ("refresh", &c.refresh_budgets)] {
            for (name, budget) in budgets {
                if !sources.contains_key(name) {
                    problems.push(format!(
                        "a {what} budget names `{name}`, which is not registered"
                    ));
                }
                if let Some(problem) = budget.and_then(|b| b.problem()) {
                    problems.push(format!("source `{name}`: {problem}"));
                }
            }
        }
        // One bucket and one pacer per source: a source registered under two names shares one
        // budget of each kind (the first name's, in name order).
        let mut buckets = HashMap::new();
        let mut pacers = HashMap::new();
        let mut by_source: Vec<(Arc<dyn SecretSource>, SourceBudgets)> = Vec::new();
        // Each budget's phase (see `Bucket::with_phase`), from the jitter seed when one is set.
        let mut phases = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed.rotate_left(17)),
            None => fastrand::Rng::new(),
        };
        let mut names: Vec<&String> = sources.keys().collect();
        names.sort_unstable();
        for name in names {
            let (shared, source) = &sources[name];
            let same = |(s, _): &&(Arc<dyn SecretSource>, _)| {
                std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(source))
            };
            let (bucket, pacer) = match by_source.iter().find(same) {
                Some((_, budgets)) => budgets.clone(),
                None => {
                    let usable = |b: &Option<RequestBudget>| b.filter(|b| b.problem().is_none());
                    let budget = usable(&match c.budgets.get(name) {
                        Some(set) => *set,
                        None => source.capabilities().request_budget,
                    });
                    let refresh_rate = match c.refresh_budgets.get(name) {
                        Some(set) => usable(set).map(|b| b.rate()),
                        None => budget.map(|b| b.rate() / 2.0),
                    };
                    let b = budget.map(|b| Arc::new(Bucket::with_phase(b, phases.f64())));
                    // Checks come early by up to the jitter, by half of it on average.
                    let p = refresh_rate.map(|r| Arc::new(Pacer::new(r * (1.0 - c.jitter / 2.0))));
                    by_source.push((source.clone(), (b.clone(), p.clone())));
                    (b, p)
                }
            };
            if let Some(bucket) = bucket {
                telemetry::budget_rate(shared, bucket.rate());
                buckets.insert(shared.clone(), bucket);
            }
            if let Some(pacer) = pacer {
                telemetry::refresh_floor(shared, pacer.floor());
                pacers.insert(shared.clone(), pacer);
            }
        }
        if !problems.is_empty() {
            return Err(Error::new(ErrorKind::Config, problems.join("; ")));
        }
        // Anything longer than a process lives means "never", and must not overflow a deadline.
        let clamp = |d: &mut Duration| *d = (*d).min(FOREVER);
        clamp(&mut config.refresh_interval);
        config.refresh_overrides.values_mut().for_each(clamp);
        clamp(&mut config.negative_ttl);
        config.max_staleness.as_mut().map(clamp);
        config.revoke_replaced_after.as_mut().map(clamp);
        config.renew_increment.as_mut().map(clamp);
        clamp(&mut config.request_timeout);
        clamp(&mut config.backoff.initial);
        clamp(&mut config.backoff.max);
        let ctx = Arc::new(Ctx::new(self.clock, config, buckets, pacers, self.seed));
        let front = Arc::new(Front::default());
        let evicted = Arc::downgrade(&front);
        let policy = moka::sync::Cache::builder()
            .max_capacity(ctx.config.capacity)
            .eviction_listener(move |key: Arc<SecretRef>, (), cause: RemovalCause| {
                // Front and policy take a key in together, so an eviction is of the view front
                // holds. A view behind a live handle stays alive and is found again through its
                // entry.
                if cause.was_evicted()
                    && let Some(front) = evicted.upgrade()
                {
                    front.remove(key.as_str());
                }
            })
            .build();
        let negative = moka::sync::Cache::builder()
            .max_capacity(ctx.config.capacity.clamp(16, 10_000))
            .build();
        Ok(Secrets {
            inner: Arc::new(Shared {
                sources,
                ctx,
                front,
                policy,
                flights: Flights::default(),
                loads: Flights::default(),
                entries: Mutex::new(HashMap::new()),
                negative,
            }),
        })
    }
}
