//! The task that keeps a watched entry fresh: it sleeps until the entry's next deadline (on the
//! injected clock), listens to the source's push feed where there is one, and runs the entry's
//! maintenance. One per entry with live handles; stopped when the last handle goes.

use std::sync::Arc;

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::error::Result;
use crate::source::SourceEvent;

use super::entry::{Entry, Trigger};

pub(crate) async fn drive(entry: Arc<Entry>, mut feed: Option<Feed>, replan: Arc<Notify>) {
    if feed.is_some() {
        // The value may have changed between its read and the feed's start (it may have been
        // cached long before this handle): look once, then rely on the feed.
        let _ = entry.maintain(Trigger::FeedOpened).await;
    }
    loop {
        let Some(snap) = entry.snapshot() else { return };
        let sleep = entry.ctx.clock.sleep_until(snap.wake_at());
        drop(snap);
        tokio::select! {
            () = sleep => {
                let _ = entry.maintain(Trigger::Due).await;
                if feed.is_none() {
                    // A feed that failed is re-opened at the next routine check.
                    feed = open_feed(&entry);
                }
            }
            () = replan.notified() => {}
            event = next_event(&mut feed) => match event {
                // Changed, Deleted and Resync all mean: read it again and compare.
                Some(Ok(_)) => {
                    let _ = entry.maintain(Trigger::Forced).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(secret = %entry.key, error = %e, "change feed failed; polling until it is re-opened");
                    feed = None;
                }
                None => feed = None,
            },
        }
    }
}

type Feed = BoxStream<'static, Result<SourceEvent>>;

pub(crate) fn open_feed(entry: &Entry) -> Option<Feed> {
    if entry.caps.watch {
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
