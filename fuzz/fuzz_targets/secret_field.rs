//! `SecretValue::field`: never panics; a string member comes out as serde_json unescapes it; a
//! member is never longer than the value, and without escapes it is bytes of the value; errors
//! never show the value.
#![no_main]

use std::collections::HashMap;

use keyrack_core::SecretValue;
use keyrack_fuzz::{MARKER, assert_clean, json_object, plant, scrub_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let name = String::from_utf8_lossy(&rest[..n]).into_owned();
    let value = &rest[n..];

    let got = SecretValue::copy_from_slice(value).field(&name);
    if let Ok(got) = &got {
        let got = got.expose_bytes();
        assert!(got.len() <= value.len());
        if !value.contains(&b'\\') {
            assert!(
                got.is_empty() || value.windows(got.len()).any(|w| w == got),
                "member {name:?} is not bytes of the value"
            );
        }
    }
    // A name starting with `/` is a JSON Pointer, not a top-level member: compared below only
    // for never panicking and never showing the value.
    if !name.starts_with('/')
        && let Ok(map) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(value)
    {
        match map.get(&name) {
            Some(serde_json::Value::String(want)) => {
                let got = got
                    .as_ref()
                    .unwrap_or_else(|e| panic!("serde_json reads member {name:?}, field: {e}"));
                assert_eq!(got.expose_bytes(), want.as_bytes(), "member {name:?}");
            }
            Some(want) => {
                let got = got
                    .as_ref()
                    .unwrap_or_else(|e| panic!("serde_json reads member {name:?}, field: {e}"));
                let again: serde_json::Value = serde_json::from_slice(got.expose_bytes())
                    .expect("a non-string member is its JSON text");
                assert_eq!(&again, want, "member {name:?}");
            }
            None => assert!(got.is_err(), "member {name:?} is not in the object"),
        }
    }

    // Planted: every string member of an object, and bytes that are not JSON at all.
    let name = scrub_str(&name);
    let mut planted = vec![[MARKER.as_bytes(), value].concat()];
    if let Some(mut o) = json_object(value) {
        o.values_mut().for_each(|v| plant(v, MARKER));
        planted.push(serde_json::to_vec(&o).expect("a map serializes"));
    }
    for p in planted {
        if let Err(e) = SecretValue::from_bytes(p).field(&name) {
            assert_clean(&e, "SecretValue::field");
        }
    }
});
