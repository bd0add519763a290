//! Key Vault's errors (`ServiceError::parse`, `one_line`, `kind_for`, `Retry-After` headers) and
//! GetSecret answers (`secret_from`). Never panics; a message comes out on one line within its
//! limit; nothing but the error body's code, inner code and message reaches an error.
#![no_main]

use std::time::{Duration, SystemTime};

use keyrack_azure::fuzzing as z;
use keyrack_fuzz::{MARKER, assert_clean, json_object, parts, plant, status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = status(data[0], data[1]);
    let p = parts(&data[2..], 3);
    let headers: Vec<(u8, String)> = p
        .first()
        .map(|h| {
            h.split(|&b| b == b'\n')
                .filter_map(|l| l.split_first())
                .map(|(&i, v)| (i, String::from_utf8_lossy(v).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let body = p.get(1).copied().unwrap_or_default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    let (_, _, message) = z::service_error(body);
    if let Some(m) = message {
        assert!(!m.contains('\n') && !m.contains('\r'), "{m:?}");
        assert!(m.chars().count() <= 1025, "{} chars", m.chars().count());
    }
    let text = String::from_utf8_lossy(body);
    let line = z::one_line(&text);
    assert!(!line.contains(['\n', '\r']), "{line:?}");
    assert!(
        line.chars().count() <= 1025,
        "{} chars",
        line.chars().count()
    );
    assert!(!line.starts_with(' ') && !line.ends_with(' '), "{line:?}");
    let _ = z::kind_for(status, body);
    let _ = z::http_error(status, &headers, body, now);
    if let Some(Err(e)) = z::secret_from(body) {
        let _ = e;
    }

    // Planted: everything but `error.code`, `error.message` and `error.innererror.code`, and
    // every string of a GetSecret answer.
    if let Some(o) = json_object(body) {
        let mut planted = serde_json::Value::Object(o.clone());
        let keep = |v: &serde_json::Value, ptr: &str| v.pointer(ptr).cloned();
        let kept = [
            ("/error/code", keep(&planted, "/error/code")),
            ("/error/message", keep(&planted, "/error/message")),
            (
                "/error/innererror/code",
                keep(&planted, "/error/innererror/code"),
            ),
        ];
        plant(&mut planted, MARKER);
        for (ptr, v) in kept {
            if let (Some(v), Some(slot)) = (v, planted.pointer_mut(ptr)) {
                *slot = v;
            }
        }
        let planted = serde_json::to_vec(&planted).expect("serializes");
        assert_clean(
            &z::http_error(status, &headers, &planted, now),
            "http_error",
        );
        let mut answer = serde_json::Value::Object(o);
        plant(&mut answer, MARKER);
        let answer = serde_json::to_vec(&answer).expect("serializes");
        if let Some(Err(e)) = z::secret_from(&answer) {
            assert_clean(&e, "secret_from");
        }
    } else {
        let planted = [MARKER.as_bytes(), body].concat();
        assert_clean(
            &z::http_error(status, &headers, &planted, now),
            "http_error",
        );
    }
});
