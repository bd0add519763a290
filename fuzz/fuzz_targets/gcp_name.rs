//! `gcp-sm://` references resolved to a version name and an endpoint location. Never panics;
//! what resolves is a well-formed name whose version `version_of` finds again; the backend's
//! message never quotes a part.
#![no_main]

use keyrack_core::SecretRef;
use keyrack_fuzz::{assert_message_clean, plant_in_ref};
use keyrack_gcp::fuzzing as g;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let _ = g::version_in(s);
    let Ok(r) = SecretRef::parse(&format!("gcp-sm://{s}")) else {
        return;
    };
    let project = (at & 1 == 1).then_some("my-project");
    let location = (at & 2 == 2).then_some("europe-west1");
    if let Ok((name, _location, secret, _pinned, version)) = g::resolve_ref(&r, project, location) {
        assert!(name.starts_with("projects/"), "{name}");
        assert!(name.starts_with(&secret), "{name} / {secret}");
        assert!(version.is_some(), "{name}");
    }
    if let Some(p) = plant_in_ref(&r, usize::from(at >> 2)) {
        if let Err(e) = g::resolve_ref(&p, project, location) {
            assert_message_clean(e.message(), "gcp resolve");
        }
    }
});
