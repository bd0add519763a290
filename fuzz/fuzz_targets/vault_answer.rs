//! Vault's answers: the envelope, `errors`, KV v1/v2 reads and metadata, mount descriptions,
//! dynamic-secret and PKI answers, lease calls and logins. Never panics; a lease's end and an
//! expiry are representable; a token's TTL is at most a hundred years; no value (`data`,
//! `auth.client_token`) reaches an error.
#![no_main]

use std::time::{Duration, SystemTime};

use keyrack_fuzz::{MARKER, assert_clean, json_object, plant, status};
use keyrack_vault::fuzzing as v;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fn run(status: u16, body: &[u8], check: bool) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    let clean = |e: &keyrack_core::Error, what: &str| {
        if check {
            assert_clean(e, what);
        }
    };
    clean(
        &v::answer_error(status, body, Some(Duration::from_secs(1))),
        "answer_error",
    );
    if let Err(e) = v::envelope(status, body) {
        clean(&e, "envelope");
    }
    let secret = |r: keyrack_core::Result<keyrack_core::Secret>, what: &str| match r {
        Ok(s) => {
            if let Some(l) = &s.metadata().lease {
                let _ = l.expires_at();
            }
        }
        Err(e) => clean(&e, what),
    };
    secret(v::kv2_secret(status, body), "kv2_secret");
    secret(v::kv1_secret(status, body), "kv1_secret");
    for pinned in [None, Some("1"), Some("2")] {
        if let Err(e) = v::kv2_served(status, body, pinned) {
            clean(&e, "kv2_served");
        }
    }
    if let Err(e) = v::mount(status, body) {
        clean(&e, "mount");
    }
    secret(
        v::issued_secret(status, body, now).map(|(s, _)| s),
        "issued_secret",
    );
    match v::lease(status, body, "database/creds/app/abc", now) {
        Ok(l) => {
            let _ = l.expires_at();
        }
        Err(e) => clean(&e, "lease"),
    }
    match v::login(status, body) {
        // The keeper adds the TTL to an `Instant`: a hundred years at most.
        Ok((_, ttl, _)) => assert!(ttl <= Some(Duration::from_secs(100 * 365 * 24 * 3600))),
        Err(e) => clean(&e, "login"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = status(data[0], data[1]);
    let body = &data[2..];
    run(status, body, false);
    // The same answer with every string under `data` and `auth` (values, tokens) replaced by the
    // marker; `errors`, `warnings` and `lease_id` describe the request and may be shown.
    if let Some(mut o) = json_object(body) {
        for key in ["data", "auth"] {
            if let Some(part) = o.get_mut(key) {
                plant(part, MARKER);
            }
        }
        run(status, &serde_json::to_vec(&o).expect("serializes"), true);
    }
});
