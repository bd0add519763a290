//! The watch of one Secret as a stream of [`SourceEvent`]s: reconnection, resume points, 410
//! recovery and backoff live here, so the client sees one feed that ends only on a failure
//! retrying cannot fix (it then polls and re-opens the feed later).

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use keyrack_core::{Backoff, Clock, Error, ErrorKind, Result, SourceEvent, Version};
use reqwest::Response;
use serde::Deserialize;

use super::Target;
use super::api::{Api, ObjectMeta, Opened, Status, StatusDetails};
use super::data::{Data, Fingerprint};
use super::tracked::{Tracked, Vouch};
use super::wiping::{Lines, wipe_chunk};

/// Longest event line kept while waiting for its end: a Secret is at most 1 MiB, about 1.4 MiB in
/// base64; anything far longer is not a watch stream.
const MAX_LINE: usize = 8 << 20;
/// Silence, beyond the requested `timeoutSeconds`, after which a stream is taken for dead (a
/// half-open connection otherwise waits forever).
const IDLE_GRACE: Duration = Duration::from_secs(60);

/// A watch, shared by its feed (which drives it) and the source's version probe (which may make
/// its first connection, see [`Watch::look`]).
pub(super) type Shared = Arc<tokio::sync::Mutex<Watch>>;

#[allow(clippy::too_many_arguments)] // the source's parts a watch shares, each once
pub(super) fn watch(
    api: Api,
    target: Target,
    tracked: Tracked,
    fingerprint: Fingerprint,
    streaming: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    closed: tokio::sync::watch::Receiver<bool>,
) -> BoxStream<'static, Result<SourceEvent>> {
    if *closed.borrow() {
        return futures_util::stream::empty().boxed();
    }
    let id = target.id();
    let state = Watch {
        api,
        target,
        id: id.clone(),
        tracked: tracked.clone(),
        vouch: None,
        first: true,
        looking: false,
        fingerprint,
        streaming,
        syncing: false,
        initial_added: false,
        clock,
        backoff,
        rv: None,
        known: None,
        from_now: false,
        advanced: false,
        relists: 0,
        opened_at: None,
        exists: None,
        relist: false,
        body: None,
        lines: Lines::new(),
        verify: false,
        pending: VecDeque::new(),
        failures: 0,
        timeout: Duration::ZERO,
        done: false,
    };
    let shared: Shared = Arc::new(tokio::sync::Mutex::new(state));
    tracked.register(&id, &shared);
    futures_util::stream::unfold((shared, closed), |(w, mut closed)| async move {
        let mut watch = w.lock().await;
        // The source's shutdown ends the feed, and lets its connection go, even while the
        // client still holds it.
        let item = tokio::select! {
            item = watch.next() => item,
            _ = closed.wait_for(|closed| *closed) => None,
        };
        let Some(item) = item else {
            watch.close();
            return None;
        };
        drop(watch);
        Some((item, (w, closed)))
    })
    .boxed()
}

pub(super) struct Watch {
    api: Api,
    target: Target,
    /// The target's [`Target::id`], its key in `tracked`.
    id: String,
    /// What the source knows of its targets: the latest state the first connection compares
    /// with, and where this watch reports what it sees.
    tracked: Tracked,
    /// Held while the watch vouches for the target's latest state: a stream is open (or being
    /// re-opened at once), not waiting after a failure.
    vouch: Option<Vouch>,
    /// No connection was made yet.
    first: bool,
    /// The version probe is making the first connection: a failure is left for the feed to wait
    /// out, not waited out there.
    looking: bool,
    fingerprint: Fingerprint,
    /// Whether the server serves streaming lists (shared by the source's watches: cleared at the
    /// first refusal, so the others do not ask again).
    streaming: Arc<AtomicBool>,
    /// The open stream is a streaming list whose initial events have not ended yet.
    syncing: bool,
    /// The open streaming list's initial events included the object.
    initial_added: bool,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
    /// Where the next watch resumes: the resourceVersion of the last change or bookmark the
    /// stream delivered. `None`: start at the most recent state. Never an object's own version
    /// from a read: that is the revision of its last write, usually older than what the server
    /// keeps, and would be answered 410 again and again.
    rv: Option<String>,
    /// The version of the object's data as last read or reported: what a change is compared
    /// with (a new resourceVersion with the same data, a label changed, is no change).
    known: Option<Version>,
    /// The open stream started at the most recent state: its first `ADDED` is the synthetic
    /// initial event, whose (old) resourceVersion is not a resume point.
    from_now: bool,
    /// The open stream delivered a change or bookmark.
    advanced: bool,
    /// Re-reads in a row with no stream progress between them, for pacing.
    relists: u32,
    /// When the open stream was opened.
    opened_at: Option<std::time::Instant>,
    /// Whether the object existed at the last look, when known.
    exists: Option<bool>,
    /// The resume point is gone: watch again from the most recent state.
    relist: bool,
    body: Option<Response>,
    /// Bytes of an event line not yet ended by `\n`.
    lines: Lines,
    /// The open stream started at the most recent state without a streaming list: read the
    /// object once, to catch what happened since the last look (a deletion has no synthetic
    /// ADDED to show it).
    verify: bool,
    pending: VecDeque<SourceEvent>,
    /// Failed attempts in a row, for backoff.
    failures: u32,
    /// The `timeoutSeconds` the open stream was asked for.
    timeout: Duration,
    done: bool,
}

/// One line of the stream (`metav1.WatchEvent`), borrowed from the line buffer: `data` is read
/// in place for its version and never copied.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    object: EventObject<'a>,
}

/// The event's object: a Secret or, for `ERROR`, a `metav1.Status`.
#[derive(Deserialize, Default)]
struct EventObject<'a> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
    /// An ERROR's `details` (`retryAfterSeconds`: how long the server asks the client to wait).
    #[serde(default)]
    details: Option<StatusDetails>,
}

/// What a line of the stream says, without the data it carried.
pub(super) struct Line {
    pub(super) kind: String,
    pub(super) resource_version: Option<String>,
    /// A BOOKMARK that ends a streaming list's initial events.
    pub(super) initial_events_end: bool,
    /// The version of the data the target reads, for ADDED, MODIFIED and DELETED.
    pub(super) version: Version,
    code: u16,
    reason: String,
    message: String,
    details: Option<StatusDetails>,
}

impl Line {
    /// The error an `ERROR` event reports. The Status may carry `details.retryAfterSeconds` (the
    /// server's throttling): the error keeps it, and the pause before the next watch honours it.
    pub(super) fn error(self, target: &Target) -> Error {
        let status = Status {
            message: self.message,
            reason: self.reason,
            code: self.code,
            details: self.details,
        };
        let code = reqwest::StatusCode::from_u16(status.code)
            .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
        super::api::classify(code, &status, None, target)
    }
}

/// A line of the stream, parsed.
pub(super) enum Parsed {
    Blank,
    Event(Line),
    /// Not a watch event; where the parser gave up.
    Malformed {
        column: usize,
    },
}

pub(super) fn parse(line: &[u8], fingerprint: &Fingerprint, target: &Target) -> Parsed {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Parsed::Blank;
    }
    match serde_json::from_slice::<Event<'_>>(line) {
        Ok(event) => {
            let o = event.object;
            Parsed::Event(Line {
                version: fingerprint.version(o.data.as_ref(), target.key.as_deref()),
                kind: event.kind,
                resource_version: o.metadata.resource_version,
                initial_events_end: o.metadata.initial_events_end.0,
                code: o.code,
                reason: o.reason,
                message: o.message,
                details: o.details,
            })
        }
        Err(e) => Parsed::Malformed { column: e.column() },
    }
}

/// What a line asks of the connection.
enum Next {
    Continue,
    /// The resume point is gone: watch again from the most recent state.
    Relist,
    /// Re-open the watch from the last resourceVersion, after a backoff.
    Reconnect(Error),
}

impl Watch {
    async fn next(&mut self) -> Option<Result<SourceEvent>> {
        // A look the probe gave up on (its call timed out) leaves the flag set.
        self.looking = false;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let step = if self.relist {
                self.relist().await
            } else if self.body.is_none() {
                self.open().await
            } else if self.verify {
                self.verify().await;
                Ok(())
            } else {
                self.read().await;
                Ok(())
            };
            if let Err(e) = step {
                tracing::warn!(namespace = %self.target.namespace, name = %self.target.name, error = %e, "watch of the Secret failed");
                self.done = true;
                self.vouch = None;
                return Some(Err(e));
            }
        }
    }

    /// For the version probe, when no connection was made yet: make the first connection now
    /// and read until the object's state is known (the end of a streaming list's initial
    /// events, or the read after a plain watch opened). That state is at least as new as this
    /// call, so the probe can answer from it truthfully, and the client's look right after it
    /// opened the feed costs the watch it needed anyway rather than another read. The events
    /// this produces are dropped: the probe's answer tells the client the same. Returns whether
    /// the state is known; if not, the feed carries on as usual when polled.
    pub(super) async fn look(&mut self) -> bool {
        if !self.first || self.done {
            return false;
        }
        self.looking = true;
        let synced = self.first_state().await;
        self.looking = false;
        if synced {
            self.pending.clear();
        }
        synced
    }

    async fn first_state(&mut self) -> bool {
        // At most two openings: a refused streaming list, then the plain watch.
        for _ in 0..2 {
            if self.body.is_some() {
                break;
            }
            if self.open().await.is_err() {
                return false;
            }
        }
        loop {
            if self.body.is_none() || self.relist || self.done {
                return false;
            }
            if self.verify {
                self.verify().await;
                return self.exists.is_some();
            }
            if !self.syncing {
                return true;
            }
            self.read().await;
        }
    }

    /// Whether no connection was made yet.
    pub(super) fn unconnected(&self) -> bool {
        self.first
    }

    /// The feed ended: let the connection and what was buffered go.
    fn close(&mut self) {
        self.done = true;
        self.body = None;
        self.lines.clear();
        self.vouch = None;
        self.pending.clear();
    }

    /// The resume point was lost (410, a malformed line): the next watch starts at the most
    /// recent state (a streaming list, which shows the object's state; or, on a server without
    /// them, a plain watch followed by one read).
    async fn relist(&mut self) -> Result<()> {
        // A server that keeps answering 410 (or malformed lines) is not asked again at once.
        self.relists = self.relists.saturating_add(1);
        if self.relists > 1 {
            let e = Error::new(
                ErrorKind::Unavailable,
                "the watch kept losing its resume point",
            );
            self.pause(&e).await;
        }
        self.rv = None;
        self.body = None;
        self.lines.clear();
        self.relist = false;
        Ok(())
    }

    /// Read the object once a watch from the most recent state is open, for the one change that
    /// watch cannot show: a deletion since the last look (a missing object has no synthetic
    /// ADDED). A present object is left to the stream (its ADDED, then its changes, in order); a
    /// failed read is let go (the client's interval checks still run).
    async fn verify(&mut self) {
        self.verify = false;
        match self.api.get_secret(&self.target).await {
            Ok(body) => {
                // Its version, for the version probe; a change is reported here, and the
                // synthetic ADDED of the same state is then no change.
                if let Ok(object) = super::api::SecretObject::parse(&body) {
                    let version = self
                        .fingerprint
                        .version(object.data.as_ref(), self.target.key.as_deref());
                    self.present(version);
                }
            }
            Err(e) if e.kind() == &ErrorKind::NotFound => {
                self.gone();
            }
            Err(e) => {
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, error = %e, "could not read the Secret after opening its watch");
            }
        }
    }

    async fn open(&mut self) -> Result<()> {
        if std::mem::take(&mut self.first) {
            // The first watch starts at the most recent state; the latest state a read saw (the
            // client's read, usually) is what the initial events are compared with, so a change
            // or a deletion between the read and the watch is still reported. Looked up now, not
            // when the feed was made: the client may read once more in between.
            self.known = self.tracked.latest(&self.id).flatten();
        }
        // 5-10 min at random, as client-go does, so a fleet's watches do not end together.
        let timeout = 300 + (unit() * 300.0) as u64;
        self.timeout = Duration::from_secs(timeout);
        let streaming = self.rv.is_none() && self.streaming.load(Ordering::Relaxed);
        let opened = self
            .api
            .watch(&self.target, self.rv.as_deref(), timeout, streaming)
            .await;
        match opened {
            Ok(Opened::Stream(body)) => {
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, resource_version = ?self.rv, streaming, "watching the Secret");
                self.body = Some(body);
                self.lines.clear();
                self.from_now = self.rv.is_none();
                self.syncing = streaming;
                self.initial_added = false;
                // A streaming list shows a missing object (its initial events end without it);
                // a plain watch from now does not, and is followed by one read.
                self.verify = self.from_now && !streaming;
                self.advanced = false;
                self.opened_at = Some(self.clock.now());
                if self.vouch.is_none() {
                    self.vouch = Some(self.tracked.vouch(&self.id));
                }
                Ok(())
            }
            Ok(Opened::Gone) => {
                self.relist = true;
                Ok(())
            }
            Ok(Opened::StreamingRefused) => {
                // Asked again at once, the plain way; the source's other watches will not ask.
                if self.streaming.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "the Kubernetes API server does not serve streaming lists (the WatchList feature): watches from the most recent state are followed by one read of the Secret"
                    );
                }
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                self.pause(&e).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Read one chunk and act on every line it completes.
    async fn read(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        let idle = self
            .clock
            .sleep_until(self.clock.now() + self.timeout + IDLE_GRACE);
        let chunk = tokio::select! {
            chunk = body.chunk() => chunk,
            () = idle => {
                let e = Error::new(ErrorKind::Timeout, "the watch went silent");
                return self.reconnect(e).await;
            }
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) if self.advanced || self.lasted_long() => {
                // The server's timeoutSeconds (a quiet Secret may see no line at all): routine,
                // resume at once.
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, "the API server ended the watch; resuming");
                return;
            }
            Ok(None) => {
                let e = Error::new(ErrorKind::Unavailable, "the watch ended without an event");
                return self.reconnect(e).await;
            }
            Err(e) => {
                let e = Error::new(ErrorKind::Unavailable, "the watch stream broke")
                    .with_cause(e.without_url());
                return self.reconnect(e).await;
            }
        };
        self.lines.push(&chunk);
        wipe_chunk(chunk);
        loop {
            // Parsed in place: the line holds the Secret's data, and is not copied anywhere.
            let (fingerprint, target) = (&self.fingerprint, &self.target);
            let Some(parsed) = self
                .lines
                .next_line(|line| parse(line, fingerprint, target))
            else {
                break;
            };
            match self.on_line(parsed) {
                Next::Continue => {}
                Next::Relist => {
                    self.relist = true;
                    return;
                }
                Next::Reconnect(e) => return self.reconnect(e).await,
            }
        }
        if self.lines.len() > MAX_LINE {
            tracing::warn!(namespace = %self.target.namespace, name = %self.target.name, "watch event line too long; watching again from the most recent state");
            self.lines.clear();
            self.relist = true;
            return;
        }
        self.body = Some(body);
    }

    fn on_line(&mut self, parsed: Parsed) -> Next {
        let mut event = match parsed {
            Parsed::Blank => return Next::Continue,
            Parsed::Event(event) => event,
            Parsed::Malformed { column } => {
                // Only the position: the line holds the Secret's data.
                tracing::warn!(namespace = %self.target.namespace, name = %self.target.name, column, "malformed watch event; watching again from the most recent state");
                return Next::Relist;
            }
        };
        let rv = event.resource_version.take();
        tracing::trace!(namespace = %self.target.namespace, name = %self.target.name, event = %event.kind, resource_version = ?rv, version = %event.version, "watch event");
        match event.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                // The initial ADDED of a watch from the most recent state carries the object's
                // last write, not a position in the server's history, and is no sign that the
                // stream works (a server closing every watch after it must still be backed off).
                let initial = event.kind == "ADDED" && self.from_now && !self.advanced;
                if !initial {
                    self.progress();
                }
                if self.syncing {
                    self.initial_added = true;
                }
                self.present(event.version);
                if rv.is_some() && !initial {
                    self.rv = rv;
                    self.advanced = true;
                }
            }
            "DELETED" => {
                self.progress();
                self.gone();
                if rv.is_some() {
                    self.rv = rv;
                    self.advanced = true;
                }
            }
            "BOOKMARK" if self.syncing && event.initial_events_end => {
                // The streaming list's initial events are over: without the object among them,
                // it is gone (deleted since the last look). The bookmark is a position in the
                // server's history to resume from, but, like the initial ADDED, no sign that the
                // stream works.
                self.syncing = false;
                if !self.initial_added {
                    self.gone();
                }
                if rv.is_some() {
                    self.rv = rv;
                }
            }
            "BOOKMARK" => {
                self.progress();
                if rv.is_some() {
                    self.rv = rv;
                    self.advanced = true;
                }
            }
            "ERROR" if event.code == 410 => {
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, reason = %event.reason, "watch resume point expired (410); watching again from the most recent state");
                return Next::Relist;
            }
            "ERROR" => {
                return Next::Reconnect(event.error(&self.target));
            }
            other => {
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, event = %other, "ignoring unknown watch event type");
            }
        }
        Next::Continue
    }

    /// The object is there at `version`: a change unless that is the version known (a new
    /// resourceVersion with the same data, a label or an annotation changed, is none).
    fn present(&mut self, version: Version) {
        if self.known.as_ref() != Some(&version) {
            self.pending.push_back(SourceEvent::Changed {
                version: Some(version.clone()),
            });
        }
        self.tracked.reported(&self.id, Some(version.clone()));
        self.exists = Some(true);
        self.known = Some(version);
    }

    /// The object is gone: reported once (the read after a plain watch opened may have seen it
    /// first), and the source's version probe answers `NotFound` while this watch is open.
    fn gone(&mut self) {
        if self.exists != Some(false) {
            self.pending.push_back(SourceEvent::Deleted);
        }
        self.tracked.reported(&self.id, None);
        self.exists = Some(false);
        self.known = None;
    }

    /// The stream works: failures and losses of the resume point in a row start over.
    fn progress(&mut self) {
        self.failures = 0;
        self.relists = 0;
    }

    /// Whether the open stream lived long enough that its end is the server's timeout rather than
    /// a refusal in disguise (a stream closed at once would otherwise be re-opened in a loop).
    fn lasted_long(&self) -> bool {
        self.opened_at
            .is_some_and(|at| self.clock.now().saturating_duration_since(at) >= self.timeout / 2)
    }

    /// Drop the connection and wait before the next one.
    async fn reconnect(&mut self, e: Error) {
        self.body = None;
        self.lines.clear();
        self.pause(&e).await;
    }

    async fn pause(&mut self, e: &Error) {
        // Waiting after a failure, the watch sees nothing: the client's checks read again until
        // a stream is open.
        self.vouch = None;
        if self.looking {
            // The version probe's attempt: the feed, when next polled, tries again (at once,
            // then backing off as usual).
            return;
        }
        let delay = self.backoff.delay(self.failures, e, Duration::ZERO, unit());
        self.failures = self.failures.saturating_add(1);
        tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, error = %e, ?delay, "watch interrupted; retrying");
        self.clock.sleep_until(self.clock.now() + delay).await;
    }
}

/// A uniform number in `[0, 1)`: std's randomly keyed hasher, fresh keys per call, is random
/// enough for jitter and needs no RNG dependency.
fn unit() -> f64 {
    let bits = RandomState::new().hash_one(0u8) >> 11;
    bits as f64 / (1u64 << 53) as f64
}
