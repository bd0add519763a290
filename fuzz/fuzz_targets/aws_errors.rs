//! Secrets Manager's errors: `kind_for`, `batch_entry_error`, service errors with `Retry-After`,
//! unparsable responses, and `secret_from`. Never panics; a body the SDK could not parse, and
//! a value, never reach an error.
#![no_main]

use std::time::{Duration, SystemTime};

use keyrack_aws::fuzzing as a;
use keyrack_fuzz::{MARKER, assert_clean, parts, scrub_str, status, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = status(data[0], data[1]);
    let p = parts(&data[2..], 5);
    let code = text(&p, 0);
    let message = text(&p, 1);
    let retry = text(&p, 2);
    let body = p.get(3).copied().unwrap_or_default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    let _ = a::kind_for(code.as_deref(), message.as_deref(), Some(status));
    let _ = a::kind_for(code.as_deref(), message.as_deref(), None);
    let e = a::batch_entry_error(code.as_deref(), message.as_deref());
    if let Some(c) = &code {
        assert!(e.to_string().contains(c.as_str()), "{e}");
    }
    let _ = a::service_error(
        code.as_deref(),
        message.as_deref(),
        status,
        retry.as_deref(),
        body,
        now,
    );
    let _ = a::response_error(status, body, now);

    // Planted: the body of a response (service error or unparsable) holds the value; the code
    // and message are the service's own and are shown.
    let (code, message) = (code.map(|c| scrub_str(&c)), message.map(|m| scrub_str(&m)));
    let planted = [MARKER.as_bytes(), body].concat();
    let e = a::service_error(
        code.as_deref(),
        message.as_deref(),
        status,
        retry.as_deref(),
        &planted,
        now,
    );
    assert_clean(&e, "service_error");
    assert_clean(&a::response_error(status, &planted, now), "response_error");

    let created = p
        .get(4)
        .filter(|b| b.len() >= 8)
        .map(|b| f64::from_le_bytes(b[..8].try_into().expect("8 bytes")));
    let has_string = data[0] & 1 == 1;
    let has_binary = data[0] & 2 == 2;
    let r = a::secret_from(
        has_string.then(|| MARKER.to_owned()),
        has_binary.then(|| MARKER.as_bytes().to_vec()),
        message,
        created,
    );
    match r {
        Ok(s) => assert!(has_string || has_binary, "a secret without a value: {s:?}"),
        Err(e) => assert_clean(&e, "secret_from"),
    }
});
