//! What the fuzz targets share: the marker planted where a secret value goes, and the checks
//! that it never reaches an error.

use std::fmt::{Debug, Display};

use base64::Engine as _;
use keyrack_core::SecretRef;
use serde_json::Value;

/// Planted in value positions; no error may show it. Letters and digits only, so it is also a
/// valid name or scheme wherever the fuzzer puts it.
pub const MARKER: &str = "kR7s3cr3tQ9zmArK";

/// [`MARKER`] in standard base64 (how Kubernetes and Google carry values).
pub fn marker_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(MARKER)
}

/// Panics when `e`'s `Display` or `Debug` shows the marker (or its base64).
pub fn assert_clean<E: Display + Debug>(e: &E, what: &str) {
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains(MARKER) && !shown.contains(&marker_b64()),
        "{what}: an error shows a planted value: {shown}"
    );
}

/// Panics when `message` shows the marker.
pub fn assert_message_clean(message: &str, what: &str) {
    assert!(
        !message.contains(MARKER),
        "{what}: an error message quotes a planted part: {message}"
    );
}

/// `s` without the marker (and its base64), so only planted copies remain.
pub fn scrub_str(s: &str) -> String {
    s.replace(MARKER, "_").replace(&marker_b64(), "_")
}

/// Removes the marker from every string and key of `v`.
pub fn scrub(v: &mut Value) {
    match v {
        Value::String(s) => *s = scrub_str(s),
        Value::Array(a) => a.iter_mut().for_each(scrub),
        Value::Object(o) => {
            let entries = std::mem::take(o);
            for (k, mut v) in entries {
                scrub(&mut v);
                o.insert(scrub_str(&k), v);
            }
        }
        _ => {}
    }
}

/// Sets every string leaf of `v` to `with` (keys are left as they are).
pub fn plant(v: &mut Value, with: &str) {
    match v {
        Value::String(s) => *s = with.to_owned(),
        Value::Array(a) => a.iter_mut().for_each(|v| plant(v, with)),
        Value::Object(o) => o.values_mut().for_each(|v| plant(v, with)),
        _ => {}
    }
}

/// `body` parsed as a JSON object, with the marker scrubbed, for planting.
pub fn json_object(body: &[u8]) -> Option<serde_json::Map<String, Value>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    scrub(&mut v);
    match v {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

/// `r` with the marker inserted into its path (at the char boundary nearest `at`) and before
/// every parameter value: what a reference parser may refuse but never quote in its own message.
pub fn plant_in_ref(r: &SecretRef, at: usize) -> Option<SecretRef> {
    let path = scrub_str(r.path());
    let mut i = at % (path.len() + 1);
    while !path.is_char_boundary(i) {
        i -= 1;
    }
    let planted = format!("{}{MARKER}{}", &path[..i], &path[i..]);
    let mut out = SecretRef::new(r.source(), &planted).ok()?;
    if let Some(v) = r.version() {
        out = out.with_version(v).ok()?;
    }
    if let Some(s) = r.stage() {
        out = out.with_stage(s).ok()?;
    }
    for (k, v) in r.params() {
        out = out
            .with_param(scrub_str(k), format!("{MARKER}{}", scrub_str(v)))
            .ok()?;
    }
    if let Some(f) = r.field() {
        out = out.with_field(f).ok()?;
    }
    Some(out)
}

/// Splits `data` at `0xff` bytes into at most `n` parts (the last keeps the rest).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0xff).collect()
}

/// A part as text (lossy), and `None` for an absent part.
pub fn text(parts: &[&[u8]], i: usize) -> Option<String> {
    parts
        .get(i)
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// An HTTP status from two bytes: mostly the statuses the decoders tell apart.
pub fn status(b0: u8, b1: u8) -> u16 {
    const KNOWN: [u16; 20] = [
        200, 204, 301, 307, 400, 401, 403, 404, 405, 408, 409, 410, 412, 422, 429, 473, 500, 502,
        503, 504,
    ];
    if b0 < 0xc0 {
        KNOWN[usize::from(b0) % KNOWN.len()]
    } else {
        100 + u16::from_be_bytes([b0 & 0x3f, b1]) % 900
    }
}
