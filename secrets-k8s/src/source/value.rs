//! The value a reference reads, made from a Secret's `data`.

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine;
use keyrack_core::{Error, ErrorKind, Result, SecretValue};

use super::KEY_PARAM;
use super::api::SecretObject;
use super::data::Data;
use super::target::Target;

/// Decode one `data` value into a zeroizing buffer (sized up front, so it never reallocates and
/// leaves a copy behind).
fn decode(key: &str, b64: &str) -> Result<SecretValue> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(base64::decoded_len_estimate(b64.len()));
    // The decoder's error names the offending byte, which is part of the value: dropped.
    engine
        .decode_vec(b64, &mut out)
        .map_err(|_| Error::new(ErrorKind::Backend, format!("key `{key}` is not base64")))?;
    Ok(SecretValue::from_bytes(out))
}

/// The value a reference reads: one key's bytes, or every key as a JSON object of strings.
pub(super) fn value_of(object: &SecretObject<'_>, t: &Target) -> Result<SecretValue> {
    let empty = Data::new();
    let data = object.data.as_ref().unwrap_or(&empty);
    if let Some(key) = &t.key {
        let b64 = data.get(key.as_str()).ok_or_else(|| {
            Error::invalid_value(format!("key `{key}` is not in Secret `{}`", t.key()))
        })?;
        return decode(key, b64);
    }
    let mut decoded = BTreeMap::new();
    for (key, b64) in data {
        decoded.insert(key.as_ref(), decode(key, b64)?);
    }
    let mut texts = BTreeMap::new();
    let mut binary = Vec::new();
    for (key, value) in &decoded {
        // A JSON string cannot hold bytes that are not UTF-8: such a key is left out, so the
        // text keys stay readable (`#note` must not fail because of a keystore next to it).
        match std::str::from_utf8(value.expose_bytes()) {
            Ok(text) => {
                texts.insert(*key, text);
            }
            Err(_) => binary.push(*key),
        }
    }
    if !binary.is_empty() {
        tracing::debug!(namespace = %t.namespace, name = %t.name, keys = ?binary,
            "binary keys left out of the Secret's JSON map: read each with `?{KEY_PARAM}=<key>`");
    }
    // Measured first, so the buffer is allocated once and never leaves a copy of the value in
    // memory freed by a reallocation.
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, &texts).map_err(json_write_error)?;
    let mut json = Vec::with_capacity(counter.0);
    serde_json::to_writer(&mut json, &texts).map_err(json_write_error)?;
    Ok(SecretValue::from_bytes(json))
}

fn json_write_error(e: serde_json::Error) -> Error {
    // Writing strings into memory cannot fail; should it, serde's text is not kept.
    let _ = e;
    Error::new(ErrorKind::Backend, "cannot write the Secret's keys as JSON")
}

/// A writer that only counts.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
