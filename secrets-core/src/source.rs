//! The [`SecretSource`] contract every backend implements.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;

use crate::budget::RequestBudget;
use crate::error::{Error, Result};
use crate::reference::SecretRef;
use crate::secret::{Lease, Secret, Version};

/// What a source can do. The engine calls a method only when the matching capability is set, so a
/// source answers the others with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) (or
/// `None` for [`watch`](SecretSource::watch)) rather than a made-up success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `version()` answers without reading the value (a metadata call).
    pub version_probe: bool,
    /// `fetch_many()` uses a batch API rather than one call per reference.
    pub batch: bool,
    /// `?version=<id>` addresses older versions.
    pub versions: bool,
    /// `?stage=<label>` addresses staging labels (AWSCURRENT, AWSPENDING, …).
    pub stages: bool,
    /// Values may be arbitrary bytes, not only text.
    pub binary: bool,
    /// Fetched secrets may carry leases that `renew()` extends.
    pub renew: bool,
    /// `revoke()` ends a lease.
    pub revoke: bool,
    /// `watch()` yields a push feed of changes.
    pub watch: bool,
    /// The shortest wait before the client asks again after a failure (the backend's retry
    /// guidance; default 1 s). Backoff grows from here; a `Retry-After` may ask for longer.
    pub retry_floor: Duration,
    /// The budget of calls the client gives this source unless the application sets its own
    /// ([`SecretsBuilder::request_budget`](crate::SecretsBuilder::request_budget)): the backend's
    /// documented quota, so that one process alone never exceeds it. `None`: unbudgeted.
    pub request_budget: Option<RequestBudget>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::NONE
    }
}

impl Capabilities {
    /// No optional capability: plain `fetch` only.
    pub const NONE: Capabilities = Capabilities {
        version_probe: false,
        batch: false,
        versions: false,
        stages: false,
        binary: false,
        renew: false,
        revoke: false,
        watch: false,
        retry_floor: Duration::from_secs(1),
        request_budget: None,
    };
}

/// A change reported by a source's push feed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceEvent {
    /// The secret may have changed; the engine re-reads it and compares versions.
    Changed {
        /// The new version, if the feed carries it.
        version: Option<Version>,
    },
    /// The secret was deleted.
    Deleted,
    /// The feed was interrupted and restarted: anything may have changed in between.
    Resync,
}

/// A backend that holds secrets.
///
/// Implementations are object-safe and used as `Arc<dyn SecretSource>`. Every method is required:
/// a source states in [`capabilities`](Self::capabilities) what it supports and answers the rest
/// with [`Error::unsupported`](crate::Error::unsupported). [`fetch_each`] is a ready-made
/// `fetch_many` for sources without a batch API.
///
/// The engine passes references without `#field` (it selects fields itself) and with the source
/// name the source was registered under; a source reads [`SecretRef::path`],
/// [`SecretRef::selector`] and [`SecretRef::params`].
#[async_trait]
pub trait SecretSource: Send + Sync + Debug + 'static {
    /// What this source supports. Called at every maintenance step: it must be cheap, make no
    /// call, and answer the same for the source's lifetime.
    fn capabilities(&self) -> Capabilities;

    /// Read one secret: value, version and expiry/lease metadata.
    async fn fetch(&self, r: &SecretRef) -> Result<Secret>;

    /// Read many secrets; one result per reference, in order.
    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>>;

    /// The current version without reading the value (`Ok(None)` if the source does not version
    /// this secret). Called only when `capabilities().version_probe`.
    async fn version(&self, r: &SecretRef) -> Result<Option<Version>>;

    /// Extend a lease by `increment` (the backend's default when `None`). Called only when
    /// `capabilities().renew`.
    async fn renew(&self, lease: &Lease, increment: Option<Duration>) -> Result<Lease>;

    /// End a lease now. Called only when `capabilities().revoke`.
    async fn revoke(&self, lease: &Lease) -> Result<()>;

    /// A push feed of changes to `r`. Called only when `capabilities().watch`; `None` when this
    /// particular reference cannot be watched.
    fn watch(&self, r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>>;

    /// Stop the source's own background work (token renewal, open watches) and release what it
    /// holds (a Vault source revokes its own token, if so configured). Called once by
    /// [`Secrets::shutdown`](crate::Secrets::shutdown) after the client's own tasks have stopped;
    /// later calls may fail with [`ErrorKind::Shutdown`](crate::ErrorKind::Shutdown). A source
    /// registered with several clients is shut down by the first of them to shut down.
    async fn shutdown(&self);
}

/// `fetch_many` for sources without a batch API: one `fetch` per reference, at most `concurrency`
/// at a time, results in input order. Each `fetch` is counted as a request against the source's
/// [request budget](crate::budget) when a [`Secrets`](crate::Secrets) client calls it.
///
/// Once a read fails in a way that says the backend, not the secret, is the trouble (it timed
/// out, is unavailable, or throttled the read), the reads not yet sent whose paths begin with
/// the same segment (the same Key Vault, Vault mount; the whole source for paths without a
/// `/`) are not sent: each fails
/// with the same kind and `Retry-After`, saying so. Twenty reads of a backend that hangs then
/// cost one timeout, not one per `concurrency` reads in turn, and a throttling backend gets no
/// more of the batch than was sent before its answer came.
///
/// Within a [`Secrets`](crate::Secrets) call, each read is bounded by the request timeout on its
/// own, and the call by the timeout from its latest read sent or answered: a prefetch that takes
/// longer than the timeout in all against a busy backend keeps every answer, and one that hangs
/// still costs one timeout after the last read that moved.
///
/// It starts slow, as TCP does: half of `concurrency` in flight at first (rounded up), one more
/// for each read answered, up to `concurrency`. Twenty reads with a `concurrency` of 8 still
/// take three round trips (4, 8, 8), and a backend that refuses the first reads (a fleet
/// restarting together against a shared quota) gets four of them, not eight.
pub async fn fetch_each<S: SecretSource + ?Sized>(
    source: &S,
    refs: &[SecretRef],
    concurrency: usize,
) -> Vec<Result<Secret>> {
    // Each read is a request of its own against the source's budget (the client took a place
    // for the call, which covers the first).
    fetch_each_within(
        source,
        refs,
        concurrency,
        &crate::budget::CallRequests::new(),
    )
    .await
}

/// [`fetch_each`] within a call that may have sent requests of its own before the reads (a
/// login): each read takes its place through `requests`, so the call's first place goes to
/// whichever request took it first.
pub async fn fetch_each_within<S: SecretSource + ?Sized>(
    source: &S,
    refs: &[SecretRef],
    concurrency: usize,
    requests: &crate::budget::CallRequests,
) -> Vec<Result<Secret>> {
    let concurrency = concurrency.max(1);
    let window = SlowStart::new(concurrency);
    let window = &window;
    // The first backend failure per first path segment.
    let failures = std::sync::Mutex::new(std::collections::HashMap::<&str, Error>::new());
    let failures = &failures;
    let failed = |r: &SecretRef| {
        let failures = failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(first_segment(r)).map(not_sent_after)
    };
    // Collected first: a lazily mapped iterator inside the stream makes the future's `Send`-ness
    // unprovable to rustc inside `#[async_trait]` methods.
    let fetches: Vec<_> = refs
        .iter()
        .map(|r| async move {
            if let Some(e) = failed(r) {
                return Err(e);
            }
            let _turn = window.turn().await;
            if let Some(e) = failed(r) {
                return Err(e);
            }
            requests.before_request().await?;
            // The failure may have come while this read waited for its place.
            if let Some(e) = failed(r) {
                return Err(e);
            }
            // Bounded on its own within a client's call, whose timeout runs from its last read.
            let result = timed_request(source.fetch(r)).await;
            match &result {
                Err(e) if says_backend_is_down(e) => {
                    let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                    failures
                        .entry(first_segment(r))
                        .or_insert_with(|| e.clone());
                }
                _ => window.answered(),
            }
            result
        })
        .collect();
    futures_util::stream::iter(fetches)
        .buffered(concurrency)
        .collect()
        .await
}

/// One request of a source call that sends several (a `fetch_many` of its own: batches, then
/// single reads). Within a [`Secrets`](crate::Secrets) call it is bounded by the request
/// timeout on its own, and it keeps the call alive: such a call is bounded by the timeout from
/// its latest request sent or answered, not from its start, so a busy backend that answers each
/// request in time never has the call cut off midway (and every answer it had received
/// dropped). Outside a client's call, `request` as it is. [`fetch_each`] does this for each read.
pub async fn timed_request<T>(request: impl Future<Output = Result<T>>) -> Result<T> {
    crate::client::progress::request(request).await
}

/// [`fetch_each`]'s reads in flight: half of the most at first, one more per read answered.
struct SlowStart {
    turns: tokio::sync::Semaphore,
    /// Turns given so far, up to `most`.
    given: std::sync::atomic::AtomicUsize,
    most: usize,
}

impl SlowStart {
    fn new(most: usize) -> Self {
        // A concurrency past what a semaphore can count is as good as unbounded.
        let most = most.min(tokio::sync::Semaphore::MAX_PERMITS);
        let first = most.div_ceil(2);
        SlowStart {
            turns: tokio::sync::Semaphore::new(first),
            given: std::sync::atomic::AtomicUsize::new(first),
            most,
        }
    }

    /// Wait for a turn to send a read; held until the read is answered.
    async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed.
        self.turns.acquire().await.ok()
    }

    /// A read was answered without saying the backend is the trouble: one more in flight.
    fn answered(&self) {
        let more = self
            .given
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| (n < self.most).then_some(n + 1),
            )
            .is_ok();
        if more {
            self.turns.add_permits(1);
        }
    }
}

/// The part of the backend a read goes to, as far as `fetch_each` can tell: the first segment of
/// a path of several (a Key Vault, a Vault mount), else the whole source (flat names).
fn first_segment(r: &SecretRef) -> &str {
    r.path().split_once('/').map_or("", |(first, _)| first)
}

/// Whether `e` is about the backend rather than the secret read: a read of another secret now
/// would most likely fail the same way.
fn says_backend_is_down(e: &Error) -> bool {
    !e.is_budget_refusal()
        && matches!(
            e.kind(),
            crate::ErrorKind::Timeout | crate::ErrorKind::Unavailable | crate::ErrorKind::Throttled
        )
}

/// The error of a read [`fetch_each`] did not send after `first` (which may name another
/// secret: only its kind and message's gist are kept, with its `Retry-After`).
fn not_sent_after(first: &Error) -> Error {
    let e = Error::new(
        first.kind().clone(),
        format!(
            "not sent: another read of the same batch failed first ({:?})",
            first.kind()
        ),
    );
    match first.retry_after() {
        Some(wait) => e.with_retry_after(wait),
        None => e,
    }
}
