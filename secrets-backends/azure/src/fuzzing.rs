//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! cargo-fuzz passes). Each calls the crate's own code; nothing here is part of the API.

use std::time::SystemTime;

use azure_core::error::ErrorKind as AzureKind;
use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::{RawResponse, StatusCode};
use azure_security_keyvault_secrets::models;
use keyrack_core::{Error, ErrorKind, Result, Secret, SecretRef};

use crate::errors::ServiceError;

/// `ServiceError::parse`: the code, inner code and message of an error body.
pub fn service_error(body: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let e = ServiceError::parse(body);
    (e.code, e.inner_code, e.message)
}

/// A service message on one line, cut to its limit.
pub fn one_line(message: &str) -> String {
    crate::errors::one_line(message)
}

/// The kind of an answer of `status` with `body`.
pub fn kind_for(status: u16, body: &[u8]) -> ErrorKind {
    crate::errors::kind_for(status, &ServiceError::parse(body))
}

/// The headers a `Retry-After` is read from, by index.
const RETRY_HEADERS: [&str; 3] = ["retry-after", "retry-after-ms", "x-ms-retry-after-ms"];

/// An HTTP error of GetSecret as the SDK reports it, mapped at wall time `now`. `headers` are
/// (index into `retry-after`, `retry-after-ms`, `x-ms-retry-after-ms`; value).
pub fn http_error(status: u16, headers: &[(u8, String)], body: &[u8], now: SystemTime) -> Error {
    let mut h = Headers::new();
    for (i, v) in headers {
        let name = RETRY_HEADERS[usize::from(*i) % RETRY_HEADERS.len()];
        h.insert(HeaderName::from_static(name), v.clone());
    }
    let status = StatusCode::from(status);
    let raw = RawResponse::from_bytes(status, h, body.to_vec());
    let err = azure_core::Error::with_message(
        AzureKind::HttpResponse {
            status,
            error_code: None,
            raw_response: Some(Box::new(raw)),
        },
        "failed",
    );
    crate::errors::from_azure("GetSecret", err, now)
}

/// The vault, secret name and pinned version an `azure-kv://` reference names.
pub fn locate(
    r: &SecretRef,
    default_vault: Option<&str>,
) -> Result<(String, String, Option<String>)> {
    let (vault, name) = crate::source::locate(r, default_vault)?;
    let version = crate::source::selected_version(r)?;
    Ok((vault.to_owned(), name.to_owned(), version))
}

/// A GetSecret answer's body as the SDK decodes it (`None` when it does not), made a secret.
pub fn secret_from(body: &[u8]) -> Option<Result<Secret>> {
    let model: models::Secret = azure_core::json::from_json(body).ok()?;
    Some(crate::source::secret_from(model))
}
