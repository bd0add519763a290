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

/// Longest event line kept while waiting for its end: a Secret is at most 1 MiB, about 1.4 MiB in
/// base64; anything far longer is not a watch stream.
const MAX_LINE: usize = 8 << 20;
/// Silence, beyond the requested `timeoutSeconds`, after which a stream is taken for dead (a
/// half-open connection otherwise waits forever).
const IDLE_GRACE: Duration = Duration::from_secs(60);

/// Looks up the version of the target's last read: what the first watch compares with.
pub(super) type Resume = Box<dyn Fn(&Target) -> Option<Version> + Send + Sync>;

pub(super) fn watch(
    api: Api,
    target: Target,
    resume: Resume,
    fingerprint: Fingerprint,
    streaming: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
) -> BoxStream<'static, Result<SourceEvent>> {
    let state = Watch {
        api,
        target,
        resume: Some(resume),
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
        buf: Vec::new(),
        verify: false,
        pending: VecDeque::new(),
        failures: 0,
        timeout: Duration::ZERO,
        done: false,
    };
    futures_util::stream::unfold(state, |mut w| async move {
        let item = w.next().await?;
        Some((item, w))
    })
    .boxed()
}

struct Watch {
    api: Api,
    target: Target,
    /// Taken at the first connection.
    resume: Option<Resume>,
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
    /// The resume point is gone: read the object before watching again.
    relist: bool,
    body: Option<Response>,
    /// Bytes of an event line not yet ended by `\n`.
    buf: Vec<u8>,
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
struct Line {
    kind: String,
    resource_version: Option<String>,
    /// A BOOKMARK that ends a streaming list's initial events.
    initial_events_end: bool,
    /// The version of the data the target reads, for ADDED, MODIFIED and DELETED.
    version: Version,
    code: u16,
    reason: String,
    message: String,
    details: Option<StatusDetails>,
}

/// A line of the stream, parsed.
enum Parsed {
    Blank,
    Event(Line),
    /// Not a watch event; where the parser gave up.
    Malformed {
        column: usize,
    },
}

fn parse(line: &[u8], fingerprint: &Fingerprint, target: &Target) -> Parsed {
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
    /// The resume point is gone: watch again from the most recent state (and read the object).
    Relist,
    /// Re-open the watch from the last resourceVersion, after a backoff.
    Reconnect(Error),
}

impl Watch {
    async fn next(&mut self) -> Option<Result<SourceEvent>> {
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
                return Some(Err(e));
            }
        }
    }

    /// The resume point was lost (410, a malformed line): the next watch starts at the most
    /// recent state, and the object is read once that watch is open.
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
        self.buf.clear();
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
            Ok(body) => drop(body),
            Err(e) if e.kind() == &ErrorKind::NotFound => {
                if self.exists != Some(false) {
                    self.pending.push_back(SourceEvent::Deleted);
                }
                self.known = None;
                self.exists = Some(false);
            }
            Err(e) => {
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, error = %e, "could not read the Secret after opening its watch");
            }
        }
    }

    async fn open(&mut self) -> Result<()> {
        if let Some(resume) = self.resume.take() {
            // The first watch starts at the most recent state; the read the client made (its
            // version) is what the synthetic ADDED is compared with, so a change between the
            // read and the watch is still reported.
            self.known = resume(&self.target);
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
                self.buf.clear();
                self.from_now = self.rv.is_none();
                self.syncing = streaming;
                self.initial_added = false;
                // A streaming list shows a missing object (its initial events end without it);
                // a plain watch from now does not, and is followed by one read.
                self.verify = self.from_now && !streaming;
                self.advanced = false;
                self.opened_at = Some(self.clock.now());
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
        // Only the new bytes can end a line: the rest was searched when it arrived.
        let mut from = self.buf.len();
        self.buf.extend_from_slice(&chunk);
        drop(chunk);
        while let Some(at) = self.buf[from..].iter().position(|&b| b == b'\n') {
            let end = from + at;
            // Parsed in place: the line holds the Secret's data, and is not copied anywhere.
            let parsed = parse(&self.buf[..end], &self.fingerprint, &self.target);
            self.buf.drain(..=end);
            from = 0;
            match self.on_line(parsed) {
                Next::Continue => {}
                Next::Relist => {
                    self.relist = true;
                    return;
                }
                Next::Reconnect(e) => return self.reconnect(e).await,
            }
        }
        if self.buf.len() > MAX_LINE {
            tracing::warn!(namespace = %self.target.namespace, name = %self.target.name, "watch event line too long; re-reading the Secret");
            self.buf.clear();
            self.relist = true;
            return;
        }
        self.body = Some(body);
    }

    fn on_line(&mut self, parsed: Parsed) -> Next {
        let event = match parsed {
            Parsed::Blank => return Next::Continue,
            Parsed::Event(event) => event,
            Parsed::Malformed { column } => {
                // Only the position: the line holds the Secret's data.
                tracing::warn!(namespace = %self.target.namespace, name = %self.target.name, column, "malformed watch event; re-reading the Secret");
                return Next::Relist;
            }
        };
        let rv = event.resource_version;
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
                // A new resourceVersion with the same data (a label, an annotation) is no change.
                if self.known.as_ref() != Some(&event.version) {
                    self.pending.push_back(SourceEvent::Changed {
                        version: Some(event.version.clone()),
                    });
                }
                self.exists = Some(true);
                self.known = Some(event.version);
                if rv.is_some() && !initial {
                    self.rv = rv;
                    self.advanced = true;
                }
            }
            "DELETED" => {
                self.progress();
                // Already reported by the read after the watch opened.
                if self.exists != Some(false) {
                    self.pending.push_back(SourceEvent::Deleted);
                }
                self.exists = Some(false);
                self.known = None;
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
                    if self.exists != Some(false) {
                        self.pending.push_back(SourceEvent::Deleted);
                    }
                    self.exists = Some(false);
                    self.known = None;
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
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, reason = %event.reason, "watch resume point expired (410); re-reading the Secret");
                return Next::Relist;
            }
            "ERROR" => {
                // The Status may carry `details.retryAfterSeconds` (the server's throttling): the
                // error keeps it, and the pause before the next watch honours it.
                let status = Status {
                    message: event.message,
                    reason: event.reason,
                    code: event.code,
                    details: event.details,
                };
                let code = reqwest::StatusCode::from_u16(status.code)
                    .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
                return Next::Reconnect(super::api::classify(code, &status, None, &self.target));
            }
            other => {
                tracing::debug!(namespace = %self.target.namespace, name = %self.target.name, event = %other, "ignoring unknown watch event type");
            }
        }
        Next::Continue
    }

    /// The stream works: failures and re-reads in a row start over.
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
        self.buf.clear();
        self.pause(&e).await;
    }

    async fn pause(&mut self, e: &Error) {
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
