//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! cargo-fuzz passes). Each calls the crate's own code; nothing here is part of the API.

use std::time::SystemTime;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use aws_sdk_secretsmanager::primitives::{Blob, DateTime};
use keyrack_core::{Error, ErrorKind, Result, Secret, SecretRef};

/// The kind of an error code, message and status.
pub fn kind_for(code: Option<&str>, message: Option<&str>, status: Option<u16>) -> ErrorKind {
    crate::errors::kind_for(code, message, status)
}

/// The error of one failed entry of a BatchGetSecretValue.
pub fn batch_entry_error(code: Option<&str>, message: Option<&str>) -> Error {
    crate::errors::batch_entry_error(code, message)
}

/// The secret id a reference names, and its selector as sent (`Version(…)` or `Stage(…)`).
pub fn secret_id(r: &SecretRef) -> Result<(String, String)> {
    let id = crate::source::secret_id(r)?;
    let pick = crate::source::pick(r)?;
    Ok((id.to_owned(), format!("{pick:?}")))
}

/// A secret from GetSecretValue's parts (`created` in seconds since the epoch).
pub fn secret_from(
    string: Option<String>,
    binary: Option<Vec<u8>>,
    version: Option<String>,
    created: Option<f64>,
) -> Result<Secret> {
    let created = created.map(DateTime::from_secs_f64);
    crate::source::secret_from(string, binary.map(Blob::new), version, created.as_ref())
}

/// A service error of GetSecretValue as the SDK reports it (code and message from the error
/// body, the HTTP status, a `Retry-After` header), mapped at wall time `now`.
pub fn service_error(
    code: Option<&str>,
    message: Option<&str>,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Error {
    let mut meta = ErrorMetadata::builder();
    if let Some(code) = code {
        meta = meta.code(code);
    }
    if let Some(message) = message {
        meta = meta.message(message);
    }
    let err = GetSecretValueError::generic(meta.build());
    let status = status
        .try_into()
        .unwrap_or_else(|_| 500.try_into().expect("a valid status"));
    let mut raw = HttpResponse::new(status, body.to_vec().into());
    if let Some(v) = retry_after {
        let _ = raw.headers_mut().try_insert("retry-after", v.to_owned());
    }
    crate::errors::from_sdk("GetSecretValue", SdkError::service_error(err, raw), now)
}

/// A response the SDK could not parse (its body may hold a value).
pub fn response_error(status: u16, body: &[u8], now: SystemTime) -> Error {
    let status = status
        .try_into()
        .unwrap_or_else(|_| 500.try_into().expect("a valid status"));
    let raw = HttpResponse::new(status, body.to_vec().into());
    let cause = std::io::Error::other(String::from_utf8_lossy(body).into_owned());
    crate::errors::from_sdk::<GetSecretValueError>(
        "GetSecretValue",
        SdkError::response_error(cause, raw),
        now,
    )
}
