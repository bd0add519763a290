//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! cargo-fuzz passes). Each calls the crate's own code; nothing here is part of the API.

use std::time::SystemTime;

use google_cloud_gax::error::rpc::Status;
use google_cloud_secretmanager_v1::model::AccessSecretVersionResponse;
use keyrack_core::{Error, Result, Secret, SecretRef};

use crate::name::{Defaults, resolve, version_of};

/// What a `gcp-sm://` reference resolves to: the version name, the location, the secret's
/// name, whether a version number is pinned, and the version `version_of` reads from the name.
pub fn resolve_ref(
    r: &SecretRef,
    project: Option<&str>,
    location: Option<&str>,
) -> Result<(String, Option<String>, String, bool, Option<String>)> {
    let defaults = Defaults {
        project: project.map(str::to_owned),
        location: location.map(str::to_owned),
    };
    let t = resolve(r, &defaults)?;
    let secret = t.secret().to_owned();
    let pinned = t.pinned();
    let version = version_of(&t.name).map(str::to_owned);
    Ok((t.name, t.location, secret, pinned, version))
}

/// The version in a version's resource name.
pub fn version_in(name: &str) -> Option<&str> {
    version_of(name)
}

/// A failed answer of `status` with `body` (and a `Retry-After` header), made an SDK error as
/// the SDK's HTTP transport makes it (a `google.rpc.Status` body is a service error, any other an
/// HTTP error), then mapped.
pub fn http_error(status: u16, retry_after: Option<&str>, body: &[u8], now: SystemTime) -> Error {
    let mut headers = http::HeaderMap::new();
    if let Some(v) = retry_after.and_then(|v| http::HeaderValue::from_str(v).ok()) {
        headers.insert(http::header::RETRY_AFTER, v);
    }
    let body = bytes::Bytes::copy_from_slice(body);
    let e = match Status::try_from(&body) {
        Ok(s) => google_cloud_gax::error::Error::service_with_http_metadata(
            s,
            Some(status),
            Some(headers),
        ),
        Err(_) => google_cloud_gax::error::Error::http(status, headers, body),
    };
    let error = crate::errors::from_gax("AccessSecretVersion", &e);
    crate::errors::with_retry_after_header(error, &e, now)
}

/// An AccessSecretVersion answer's body as the SDK decodes it (`None` when it does not), made
/// the secret of version `name`.
pub fn access_response(body: &[u8], name: &str) -> Option<Result<Secret>> {
    let response: AccessSecretVersionResponse = serde_json::from_slice(body).ok()?;
    Some(crate::source::secret_from(response, name))
}
