//! The task that keeps a watched entry fresh: it sleeps until the entry's next deadline (on the
//! injected clock), listens to the source's push feed where there is one, runs the entry's
//! maintenance, and reports `Expired` at the hard deadline even while a backend call hangs. One
//! per entry with live handles or a lease; it holds the entry weakly, and the entry stops it when
//! it goes.

use std::sync::{Arc, Weak};

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::error::Result;
use crate::source::SourceEvent;

use super::context::{MIN_GAP, later};
use super::entry::{Entry, Trigger};

pub(crate) async fn drive(entry: Weak<Entry>, mut feed: Option<Feed>, replan: Arc<Notify>) {
    if feed.is_some()
        && let Some(e) = entry.upgrade()
    {
        // The value may have changed between its read and the feed's start (it may have been
        // cached long before this handle): look once, then rely on the feed.
        let _ = e.maintain_watching_expiry(Trigger::FeedOpened).await;
    }
    // Whatever went wrong (a maintenance cut short leaves its deadline in the past), the loop
    // never spins: a second pass in a row with nothing left to wait for waits a while.
    let mut overdue = false;
    loop {
        let (sleep, check_at) = {
            let Some(e) = entry.upgrade() else { return };
            let Some(snap) = e.snapshot() else { return };
            if e.is_closed() {
                return;
            }
            let now = e.ctx.clock.now();
            let mut wake = snap.next_check;
            if let Some(expiry) = e.unreported_expiry(&snap) {
                wake = wake.min(expiry);
            }
            if wake <= now && overdue {
                wake = later(now, MIN_GAP);
            }
            overdue = wake <= now;
            (e.ctx.clock.sleep_until(wake), snap.next_check)
        };
        tokio::select! {
            () = sleep => {
                let Some(e) = entry.upgrade() else { return };
                e.note_expiry();
                if e.ctx.clock.now() >= check_at {
                    let _ = e.maintain_watching_expiry(Trigger::Due).await;
                    if feed.is_none() {
                        // A feed that failed is re-opened at the next routine check.
                        feed = open_feed(&e);
                    }
                }
            }
            () = replan.notified() => {}
            event = next_event(&mut feed) => match event {
                // Changed, Deleted and Resync all mean: read it again and compare.
                Some(Ok(_)) => {
                    let Some(e) = entry.upgrade() else { return };
                    let _ = e.maintain_watching_expiry(Trigger::Forced).await;
                }
                Some(Err(err)) => {
                    if let Some(e) = entry.upgrade() {
                        tracing::warn!(secret = %e.key, error = %err, "change feed failed; polling until it is re-opened");
                    }
                    feed = None;
                }
                None => feed = None,
            },
        }
    }
}

type Feed = BoxStream<'static, Result<SourceEvent>>;

pub(crate) fn open_feed(entry: &Entry) -> Option<Feed> {
    if entry.caps().watch {
        entry.source.watch(&entry.key)
    } else {
        None
    }
}

async fn next_event(feed: &mut Option<Feed>) -> Option<Result<SourceEvent>> {
    match feed {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}
