//! A Kubernetes Secret read (`SecretObject::parse`, the value of one key or of all as JSON, its
//! version), failed answers (`metav1.Status`), and `k8s://` references. Never panics; one key's
//! value is its base64-decoded bytes; no value reaches an error.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use keyrack_core::SecretRef;
use keyrack_fuzz::{
    MARKER, assert_clean, assert_message_clean, json_object, marker_b64, parts, plant,
    plant_in_ref, status,
};
use keyrack_k8s::fuzzing as k;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = status(data[0], data[1]);
    let p = parts(&data[2..], 2);
    let body = p.first().copied().unwrap_or_default();
    let key = (data[0] & 1 == 1).then_some("password");

    match k::secret(body, key) {
        Ok((value, _)) => {
            if let (Some(key), Ok(v)) = (key, serde_json::from_slice::<serde_json::Value>(body))
                && let Some(b64) = v.pointer(&format!("/data/{key}")).and_then(|v| v.as_str())
            {
                let want = base64::engine::general_purpose::STANDARD.decode(b64);
                assert_eq!(Ok(value.expose_bytes()), want.as_deref().map_err(|_| ()));
            }
        }
        Err(_) => {}
    }
    let _ = k::failure(status, body, Some(Duration::from_secs(1)));

    if let Some(o) = json_object(body) {
        let mut secret = serde_json::Value::Object(o);
        if let Some(d) = secret.get_mut("data") {
            plant(d, &marker_b64());
        }
        if let Some(a) = secret
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
        {
            plant(a, MARKER);
        }
        let planted = serde_json::to_vec(&secret).expect("serializes");
        if let Err(e) = k::secret(&planted, key) {
            assert_clean(&e, "secret");
        }
        assert_clean(&k::failure(status, &planted, None), "failure");
    } else {
        let planted = [MARKER.as_bytes(), body].concat();
        if let Err(e) = k::secret(&planted, key) {
            assert_clean(&e, "secret");
        }
    }

    // References: `k8s://<namespace>/<name>[?key=<key>]`.
    if let Some(s) = p.get(1).and_then(|s| std::str::from_utf8(s).ok())
        && let Ok(r) = SecretRef::parse(&format!("k8s://{s}"))
    {
        if let Ok(id) = k::target_id(&r) {
            assert!(id.starts_with(r.path().split('/').next().unwrap_or_default()));
        }
        if let Some(planted) = plant_in_ref(&r, usize::from(data[1])) {
            if let Err(e) = k::target_id(&planted) {
                assert_message_clean(e.message(), "k8s target");
            }
        }
    }
});
