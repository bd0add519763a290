//! Secret Manager's errors (a `google.rpc.Status` body or any other, `Retry-After`) and
//! AccessSecretVersion answers (`secret_from`, with its CRC32C check). Never panics; nothing but
//! the Status message reaches an error, and never the payload.
#![no_main]

use std::time::{Duration, SystemTime};

use keyrack_fuzz::{MARKER, assert_clean, json_object, marker_b64, parts, plant, status, text};
use keyrack_gcp::fuzzing as g;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = status(data[0], data[1]);
    let p = parts(&data[2..], 2);
    let retry = text(&p, 0);
    let body = p.get(1).copied().unwrap_or_default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let name = "projects/p/secrets/s/versions/1";

    let _ = g::http_error(status, retry.as_deref(), body, now);
    let _ = g::access_response(body, name);

    if let Some(o) = json_object(body) {
        // An error body: everything but `error.message` planted.
        let mut planted = serde_json::Value::Object(o.clone());
        let message = planted.pointer("/error/message").cloned();
        plant(&mut planted, MARKER);
        if let (Some(m), Some(slot)) = (message, planted.pointer_mut("/error/message")) {
            *slot = m;
        }
        let planted = serde_json::to_vec(&planted).expect("serializes");
        assert_clean(
            &g::http_error(status, retry.as_deref(), &planted, now),
            "http_error",
        );
        // An answer: the payload is the marker (in base64, as the service sends it).
        let mut answer = serde_json::Value::Object(o);
        if let Some(payload) = answer.get_mut("payload").and_then(|p| p.as_object_mut()) {
            payload.insert("data".into(), marker_b64().into());
        }
        let answer = serde_json::to_vec(&answer).expect("serializes");
        if let Some(Err(e)) = g::access_response(&answer, name) {
            assert_clean(&e, "access_response");
        }
    } else {
        let planted = [MARKER.as_bytes(), body].concat();
        assert_clean(
            &g::http_error(status, retry.as_deref(), &planted, now),
            "http_error",
        );
    }
});
