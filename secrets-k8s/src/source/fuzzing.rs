//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! cargo-fuzz passes). Each calls the source's own code; nothing here is part of the API.

use std::time::Duration;

use keyrack_core::{Error, Result, SecretRef, SecretValue, Version};
use reqwest::StatusCode;

use super::api::{SecretObject, failure_of};
use super::data::Fingerprint;
use super::target::Target;
use super::value::value_of;
use super::watch::{Parsed, parse};
use super::wiping::Lines;

fn target(namespace: &str, name: &str, key: Option<&str>) -> Target {
    Target {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.map(str::to_owned),
    }
}

/// What a `k8s://` reference names: `namespace/name[?key=<key>]`.
pub fn target_id(r: &SecretRef) -> Result<String> {
    Target::parse(r).map(|t| t.id())
}

/// What one line of a watch stream said.
#[derive(Debug)]
pub enum WatchLine {
    /// An empty line.
    Blank,
    /// Not a watch event, and the column where parsing stopped.
    Malformed(usize),
    /// An event: its type, resourceVersion, whether it ends the initial events, and the version
    /// of the data the target reads.
    Event(String, Option<String>, bool, Version),
    /// An `ERROR` event, as the error it reports.
    Error(Error),
}

/// A watch stream that arrives in `chunks`, framed into lines and each line parsed as the watch
/// parses it (for the target `key`, or every key); also the bytes left waiting for a line end.
pub fn watch_stream(chunks: &[&[u8]], key: Option<&str>) -> (Vec<WatchLine>, usize) {
    let t = target("ns", "name", key);
    let fingerprint = Fingerprint::new();
    let mut lines = Lines::new();
    let mut out = Vec::new();
    for chunk in chunks {
        lines.push(chunk);
        while let Some(parsed) = lines.next_line(|line| parse(line, &fingerprint, &t)) {
            out.push(match parsed {
                Parsed::Blank => WatchLine::Blank,
                Parsed::Malformed { column } => WatchLine::Malformed(column),
                Parsed::Event(line) if line.kind == "ERROR" => WatchLine::Error(line.error(&t)),
                Parsed::Event(line) => WatchLine::Event(
                    line.kind,
                    line.resource_version,
                    line.initial_events_end,
                    line.version,
                ),
            });
        }
    }
    (out, lines.len())
}

/// A GET's body as a Secret: the value the target reads (one key, or all as JSON) and its
/// version.
pub fn secret(body: &[u8], key: Option<&str>) -> Result<(SecretValue, Version)> {
    let t = target("ns", "name", key);
    let object = SecretObject::parse(body)?;
    let value = value_of(&object, &t)?;
    let version = Fingerprint::new().version(object.data.as_ref(), t.key.as_deref());
    Ok((value, version))
}

/// The error for a failed answer of `status` with `body`.
pub fn failure(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    failure_of(status, body, retry_after, &target("ns", "name", None))
}
