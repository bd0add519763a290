//! `azure-kv://` references: vault, secret name and version. Never panics; accepted parts are
//! within Key Vault's rules; the backend's message never quotes a part.
#![no_main]

use keyrack_azure::fuzzing as z;
use keyrack_core::SecretRef;
use keyrack_fuzz::{assert_message_clean, plant_in_ref};
use libfuzzer_sys::fuzz_target;

fn name_ok(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(r) = SecretRef::parse(&format!("azure-kv://{s}")) else {
        return;
    };
    let default = (at & 1 == 1).then_some("default-vault");
    if let Ok((vault, name, version)) = z::locate(&r, default) {
        assert!(name_ok(&vault, 24) && vault.len() >= 3, "{vault:?}");
        assert!(name_ok(&name, 127), "{name:?}");
        if let Some(v) = version {
            assert!(v.bytes().all(|b| b.is_ascii_alphanumeric()), "{v:?}");
        }
    }
    if let Some(p) = plant_in_ref(&r, usize::from(at >> 1)) {
        if let Err(e) = z::locate(&p, default) {
            assert_message_clean(e.message(), "azure locate");
        }
    }
});
