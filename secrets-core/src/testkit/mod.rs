//! Test helpers for sources (feature `testkit`): the conformance suite every
//! [`SecretSource`](crate::SecretSource) must pass, and [`Scripted`], a wrapper that makes any
//! source fail, hang or misbehave on cue.
//!
//! A backend supplies a [`Seeder`] — how to name and write test secrets in that backend — and
//! calls [`assert_conformance`] from its tests. The checks are gated by the source's declared
//! [`Capabilities`](crate::Capabilities): a capability that is declared is exercised, one that is
//! not must be refused with `Unsupported` rather than faked.

mod conformance;
mod logs;
mod scripted;

pub use crate::clock::settle;
pub use conformance::{Seeder, assert_conformance, conformance};
pub use logs::LogCapture;
pub use scripted::{Call, Fault, Op, Scripted};

use crate::client::{RotationEvent, RotationEvents};

/// Every event already delivered to `events`, without waiting.
pub fn drain(events: &mut RotationEvents) -> Vec<RotationEvent> {
    use futures_util::FutureExt;
    let mut out = Vec::new();
    while let Some(Some(ev)) = events.recv().now_or_never() {
        out.push(ev);
    }
    out
}
