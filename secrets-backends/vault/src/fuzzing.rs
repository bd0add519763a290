//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! cargo-fuzz passes). Each calls the crate's own decoder on an answer made of a status and a
//! body; nothing here is part of the API.

use std::time::{Duration, SystemTime};

use keyrack_core::{Error, Lease, Result, Secret, SecretValue, Version};
use reqwest::StatusCode;

use crate::api::Answer;

fn answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Answer {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Answer::new(status, retry_after, SecretValue::copy_from_slice(body))
}

/// The error for a failed answer (`errors` read from the body, the status classified).
pub fn answer_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    answer(status, body, retry_after).error()
}

/// The envelope's lease fields and whether it has `data` and `auth`.
pub fn envelope(status: u16, body: &[u8]) -> Result<(String, u64, bool, bool, bool)> {
    let answer = answer(status, body, None);
    let e = answer.envelope()?;
    Ok((
        e.lease_id,
        e.lease_duration,
        e.renewable,
        e.data.is_some(),
        e.auth.is_some(),
    ))
}

/// A KV v2 read (`<mount>/data/<path>`).
pub fn kv2_secret(status: u16, body: &[u8]) -> Result<Secret> {
    crate::source::kv2_secret(&answer(status, body, None))
}

/// A KV v2 version probe (`<mount>/metadata/<path>`).
pub fn kv2_served(status: u16, body: &[u8], pinned: Option<&str>) -> Result<Option<Version>> {
    crate::source::kv2_served(&answer(status, body, None), pinned)
}

/// A KV v1 read.
pub fn kv1_secret(status: u16, body: &[u8]) -> Result<Secret> {
    crate::source::kv1_secret(&answer(status, body, None))
}

/// A mount description (`sys/internal/ui/mounts/<path>`): the mount path and its engine.
pub fn mount(status: u16, body: &[u8]) -> Result<(String, String)> {
    crate::source::mount_from(&answer(status, body, None))
        .map(|m| (m.path, format!("{:?}", m.engine)))
}

/// A logical read or write (dynamic secrets, PKI issues) answered at `now`, and its expiry.
pub fn issued_secret(
    status: u16,
    body: &[u8],
    now: SystemTime,
) -> Result<(Secret, Option<SystemTime>)> {
    let answer = answer(status, body, None);
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    crate::source::issued_secret(&answer.envelope()?, now)
}

/// A `sys/leases/renew` or `revoke` answer for lease `id`.
pub fn lease(status: u16, body: &[u8], id: &str, now: SystemTime) -> Result<Lease> {
    crate::source::lease_from(&answer(status, body, None), id, now)
}

/// A login's or renew-self's `auth`: the token, its TTL and whether it is renewable.
pub fn login(status: u16, body: &[u8]) -> Result<(SecretValue, Option<Duration>, bool)> {
    let login = crate::auth::auth_of(&answer(status, body, None), "login")?;
    Ok((login.token, login.ttl, login.renewable))
}
