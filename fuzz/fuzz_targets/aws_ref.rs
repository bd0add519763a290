//! `aws-sm://` references: the secret id and the selector sent. Never panics; the backend's
//! message never quotes the name (it may be a value pasted in the wrong place).
#![no_main]

use keyrack_aws::fuzzing as a;
use keyrack_core::SecretRef;
use keyrack_fuzz::{MARKER, assert_message_clean, plant_in_ref};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(r) = SecretRef::parse(&format!("aws-sm://{s}")) else {
        return;
    };
    if let Ok((id, _)) = a::secret_id(&r) {
        assert_eq!(id, r.path());
    }
    if let Some(p) = plant_in_ref(&r, usize::from(at)) {
        match a::secret_id(&p) {
            Ok((id, _)) => assert!(id.contains(MARKER)),
            Err(e) => assert_message_clean(e.message(), "aws secret_id"),
        }
    }
});
