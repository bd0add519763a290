//! How Key Vault's (and Entra ID's) errors map onto [`ErrorKind`].
//!
//! Classified once, here, from the HTTP status, the error code of the JSON error body
//! (`{"error":{"code","message","innererror":{"code"}}}`) and `Retry-After`. Messages kept in an
//! [`Error`] are the service's own (Key Vault's error messages name secrets, never values) or
//! ours. A response that could not be parsed is reported without its details: the body of a
//! successful read holds the value, and serde's messages quote what they could not parse.

use std::fmt;
use std::time::{Duration, SystemTime};

use azure_core::error::ErrorKind as AzureKind;
use azure_core::http::RawResponse;
use azure_core::http::headers::{HeaderName, RETRY_AFTER};
use keyrack_core::backoff::parse_retry_after;
use keyrack_core::{Error, ErrorKind};

/// `retry-after-ms` / `x-ms-retry-after-ms`: Azure's millisecond variants of `Retry-After`.
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const X_MS_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");

/// The parts of a Key Vault error body this crate reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceError {
    pub(crate) code: Option<String>,
    pub(crate) inner_code: Option<String>,
    pub(crate) message: Option<String>,
}

impl ServiceError {
    /// Parse `{"error":{"code","message","innererror":{"code"}}}`; anything else gives nothing.
    pub(crate) fn parse(body: &[u8]) -> Self {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Self::default();
        };
        let e = &v["error"];
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        ServiceError {
            code: text(&e["code"]),
            inner_code: text(&e["innererror"]["code"]),
            message: text(&e["message"]).map(|m| one_line(&m)),
        }
    }
}

/// The longest service message kept in an error.
const MAX_MESSAGE: usize = 1024;

/// A service message on one line: Key Vault's hold `\r\n`-separated lines (client address,
/// caller, action, vault), joined here with `; `, each line's runs of whitespace made one space.
pub(crate) fn one_line(message: &str) -> String {
    let mut out = message
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some((cut, _)) = out.char_indices().nth(MAX_MESSAGE) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The kind of a Key Vault answer from its status and error codes.
pub(crate) fn kind_for(status: u16, service: &ServiceError) -> ErrorKind {
    let inner = service.inner_code.as_deref().unwrap_or_default();
    let code = service.code.as_deref().unwrap_or_default();
    match status {
        401 => ErrorKind::Unauthenticated,
        // A disabled secret is refused with 403 Forbidden and innererror SecretDisabled
        // ("Operation get is not allowed on a disabled secret.").
        403 if inner == "SecretDisabled" || mentions_disabled(service.message.as_deref()) => {
            ErrorKind::Disabled
        }
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        408 => ErrorKind::Timeout,
        // rust/purge_secret.json: 409 Conflict, innererror ObjectIsBeingDeleted, while a delete
        // is in progress.
        409 if inner == "ObjectIsBeingDeleted" => ErrorKind::Deleted,
        429 => ErrorKind::Throttled,
        400 if code == "BadParameter" => ErrorKind::InvalidRef,
        s if s >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    }
}

fn mentions_disabled(message: Option<&str>) -> bool {
    message
        .unwrap_or_default()
        .to_ascii_lowercase()
        .contains("disabled secret")
}

/// Azure's millisecond variants of `Retry-After` first, else `Retry-After` in seconds or as an
/// HTTP-date counted from `now` (the source clock's wall time when the answer came), whatever the
/// status.
pub(crate) fn retry_after(raw: &RawResponse, now: SystemTime) -> Option<Duration> {
    let headers = raw.headers();
    let ms = |name: &HeaderName| {
        headers
            .get_optional_str(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    ms(&RETRY_AFTER_MS)
        .or_else(|| ms(&X_MS_RETRY_AFTER_MS))
        .or_else(|| {
            headers
                .get_optional_str(&RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, now))
        })
}

fn describe(op: &str, status: u16, service: &ServiceError, kind: &ErrorKind) -> String {
    let mut s = format!("Key Vault {op}: HTTP {status}");
    if let Some(code) = &service.code {
        s.push(' ');
        s.push_str(code);
    }
    if let Some(inner) = &service.inner_code {
        s.push_str(" (");
        s.push_str(inner);
        s.push(')');
    }
    if let Some(m) = service.message.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.push_str(m);
    }
    match kind {
        ErrorKind::Disabled => {
            s.push_str(" (enable the secret or the version, or refer to another version)");
        }
        ErrorKind::PermissionDenied if status == 403 => s.push_str(forbidden_hint(service)),
        _ => {}
    }
    s
}

/// What would fix a 403, told apart by Key Vault's inner error code: only a refusal of the
/// identity is fixed by a role or an access policy.
fn forbidden_hint(service: &ServiceError) -> &'static str {
    if service.code.is_none() {
        return " (the answer is not Key Vault's: a proxy, gateway or firewall in front of the \
                vault refused the request)";
    }
    match service.inner_code.as_deref() {
        Some("ForbiddenByFirewall") => {
            " (the vault's firewall refused this client's address: add it to the vault's \
             network rules, or reach the vault through a private endpoint)"
        }
        Some("ForbiddenByConnection") => {
            " (the vault takes requests only through its approved private endpoints: reach it \
             through one, or allow public network access)"
        }
        Some("ForbiddenByRbac") => {
            " (the vault uses Azure RBAC: assign the identity the Key Vault Secrets User role on \
             the vault or the secret; new assignments take a few minutes to apply)"
        }
        Some("AccessDenied") => {
            " (the vault uses access policies: give the identity Get on secrets in one; on a \
             vault that uses Azure RBAC, the Key Vault Secrets User role)"
        }
        _ => {
            " (Key Vault refused the identity: it needs the Key Vault Secrets User role on a \
             vault that uses Azure RBAC, or Get on secrets in an access policy)"
        }
    }
}

/// Map an error of operation `op` (e.g. `GetSecret`) from the SDK; `now` is the source clock's
/// wall time, for a `Retry-After` given as a date.
pub(crate) fn from_azure(op: &str, err: azure_core::Error, now: SystemTime) -> Error {
    // Our scope guard refused the challenge's resource: a configuration matter, however the
    // SDK wrapped it.
    if let Some(refused) = find::<ScopeRefused>(&err) {
        return Error::new(ErrorKind::Config, format!("Key Vault {op}: {refused}"));
    }
    match err.kind() {
        AzureKind::HttpResponse {
            status,
            raw_response,
            ..
        } => {
            let status = u16::from(*status);
            let (service, wait) = match raw_response {
                Some(raw) => (ServiceError::parse(raw.body()), retry_after(raw, now)),
                None => (ServiceError::default(), None),
            };
            let kind = kind_for(status, &service);
            let error = Error::new(kind.clone(), describe(op, status, &service, &kind));
            match wait {
                Some(wait) => error.with_retry_after(wait),
                None => error,
            }
        }
        AzureKind::Credential => credential_error(op, &err, now),
        AzureKind::Connection => Error::new(
            ErrorKind::Unavailable,
            format!("Key Vault {op}: cannot connect: {err}"),
        ),
        AzureKind::Io => Error::new(
            ErrorKind::Unavailable,
            format!("Key Vault {op}: request failed: {err}"),
        ),
        // The body of a response that failed to parse may hold a value: no details.
        AzureKind::DataConversion => Error::new(
            ErrorKind::Backend,
            format!("Key Vault {op}: unreadable response"),
        ),
        // The SDK refuses a challenge whose resource is not a suffix of the vault's host.
        AzureKind::Other if err.to_string().contains("challenge resource") => Error::new(
            ErrorKind::Config,
            format!(
                "Key Vault {op}: {err} (for a vault served under another host name, use \
                 AzureBuilder::with_challenge_resource_verification(false))"
            ),
        ),
        _ => Error::new(ErrorKind::Backend, format!("Key Vault {op}: {err}")),
    }
}

/// The scope guard's refusal of a challenge naming another resource than the vault audience.
#[derive(Debug)]
pub(crate) struct ScopeRefused(pub(crate) String);

impl fmt::Display for ScopeRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScopeRefused {}

/// A token could not be had. Entra ID's answers (error descriptions, AADSTS codes) and our chain's
/// reasons carry no secret, so the message is kept; the kind says whether waiting may help.
fn credential_error(op: &str, err: &azure_core::Error, now: SystemTime) -> Error {
    let error = Error::new(
        token_error_kind(err),
        format!("Key Vault {op}: no token: {err}"),
    );
    match root_http(err).and_then(|(_, raw)| raw.and_then(|raw| retry_after(raw, now))) {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// The kind of a failed token request, from the innermost HTTP answer in the error's chain
/// (credential errors wrap the token endpoint's, which carries its status and `Retry-After`
/// because the credentials' `EntraErrors` policy turns every non-2xx answer into such an error):
/// 429 → `Throttled` with `Retry-After`, 5xx → `Unavailable`, any other status (400
/// `invalid_grant`, `invalid_client`, 401, …) → `Unauthenticated`. Without a status: a failure
/// to connect is `Unavailable`, anything else `Unauthenticated`.
pub(crate) fn token_error_kind(err: &azure_core::Error) -> ErrorKind {
    match root_http(err) {
        Some((429, _)) => ErrorKind::Throttled,
        Some((s, _)) if s >= 500 => ErrorKind::Unavailable,
        Some(_) => ErrorKind::Unauthenticated,
        None if has_kind(err, |k| matches!(k, AzureKind::Connection | AzureKind::Io)) => {
            ErrorKind::Unavailable
        }
        None => ErrorKind::Unauthenticated,
    }
}

/// The status and response of the innermost SDK error that has a status.
fn root_http(err: &azure_core::Error) -> Option<(u16, Option<&RawResponse>)> {
    let mut current = Some(err);
    let mut found = None;
    while let Some(e) = current {
        if let AzureKind::HttpResponse {
            status,
            raw_response,
            ..
        } = e.kind()
        {
            found = Some((u16::from(*status), raw_response.as_deref()));
        }
        current = e.downcast_ref::<azure_core::Error>();
    }
    found
}

pub(crate) fn has_kind(err: &azure_core::Error, pred: impl Fn(&AzureKind) -> bool) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if pred(e.kind()) {
            return true;
        }
        current = e.downcast_ref::<azure_core::Error>();
    }
    false
}

/// The first error of type `T` in the chain of SDK errors.
fn find<T: std::error::Error + 'static>(err: &azure_core::Error) -> Option<&T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        current = e.downcast_ref::<azure_core::Error>();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::StatusCode;
    use azure_core::http::headers::Headers;

    fn http_error(status: u16, body: &str, headers: &[(&'static str, &str)]) -> Error {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_static(k), v.to_string());
        }
        let status = StatusCode::from(status);
        let raw = RawResponse::from_bytes(status, h, body.as_bytes().to_vec());
        let err = azure_core::Error::with_message(
            AzureKind::HttpResponse {
                status,
                error_code: None,
                raw_response: Some(Box::new(raw)),
            },
            "failed",
        );
        from_azure("GetSecret", err, std::time::UNIX_EPOCH)
    }

    #[test]
    fn statuses_and_codes_map_to_kinds() {
        // Body of the 404 in python/test_samples_secrets...crud_operations[7.3].json, entry 8.
        let e = http_error(
            404,
            r#"{"error":{"code":"SecretNotFound","message":"Deleted Secret not found: livekvtestsecret-name75d93512"}}"#,
            &[],
        );
        assert_eq!(e.kind(), &ErrorKind::NotFound);
        assert!(e.to_string().contains("SecretNotFound"), "{e}");
        // Body of the 401 in rust/list_secrets_by_pages_verify_telemetry.excerpt.json, entry 0.
        let e = http_error(
            401,
            r#"{"error":{"code":"Unauthorized","message":"AKV10000: Request is missing a Bearer, PoP, or MTLS_POP token."}}"#,
            &[],
        );
        assert_eq!(e.kind(), &ErrorKind::Unauthenticated);
        // 403 and 429 bodies shaped after the Key Vault REST reference (no recording exists).
        let e = http_error(
            403,
            r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#,
            &[],
        );
        assert_eq!(e.kind(), &ErrorKind::Disabled);
        let e = http_error(
            403,
            r#"{"error":{"code":"Forbidden","message":"The user, group or application does not have secrets get permission.","innererror":{"code":"AccessDenied"}}}"#,
            &[],
        );
        assert_eq!(e.kind(), &ErrorKind::PermissionDenied);
        let e = http_error(
            429,
            r#"{"error":{"code":"Throttled","message":"Request was not processed because too many requests were received."}}"#,
            &[("retry-after", "7")],
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_retryable());
        let e = http_error(429, "", &[("retry-after-ms", "1500")]);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        // Body of the 409 in rust/purge_secret.json (a delete in progress).
        let e = http_error(
            409,
            r#"{"error":{"code":"Conflict","message":"Secret is currently being deleted.","innererror":{"code":"ObjectIsBeingDeleted"}}}"#,
            &[],
        );
        assert_eq!(e.kind(), &ErrorKind::Deleted);
        assert_eq!(http_error(503, "", &[]).kind(), &ErrorKind::Unavailable);
        assert_eq!(http_error(418, "", &[]).kind(), &ErrorKind::Backend);
    }

    /// A token endpoint's answer as `EntraErrors` reports it, wrapped as azure_identity wraps it.
    fn token_error(status: u16, headers: &[(&'static str, &str)]) -> Error {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_static(k), v.to_string());
        }
        let code = StatusCode::from(status);
        let entra = azure_core::Error::with_message(
            AzureKind::HttpResponse {
                status: code,
                error_code: None,
                raw_response: Some(Box::new(RawResponse::from_bytes(code, h, Vec::new()))),
            },
            format!("Entra ID token endpoint: HTTP {status}"),
        );
        let wrapped = azure_core::Error::with_error(
            AzureKind::Credential,
            entra,
            "ClientAssertionCredential authentication failed.",
        );
        from_azure("GetSecret", wrapped, std::time::UNIX_EPOCH)
    }

    #[test]
    fn token_failures_map_by_the_token_endpoints_status() {
        let e = token_error(429, &[("retry-after", "5")]);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
        assert!(e.is_retryable());
        let e = token_error(429, &[("retry-after-ms", "250")]);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(token_error(503, &[]).kind(), &ErrorKind::Unavailable);
        assert_eq!(token_error(400, &[]).kind(), &ErrorKind::Unauthenticated);
        assert_eq!(token_error(401, &[]).kind(), &ErrorKind::Unauthenticated);
    }

    #[test]
    fn a_refused_challenge_scope_is_a_config_error() {
        let refused = ScopeRefused("only `https://vault.azure.net/.default` is allowed".into());
        let message = refused.0.clone();
        let err = azure_core::Error::with_error(AzureKind::Credential, refused, message);
        let e = from_azure(
            "GetSecret",
            azure_core::Error::with_error(AzureKind::Other, err, "x"),
            std::time::UNIX_EPOCH,
        );
        assert_eq!(e.kind(), &ErrorKind::Config);
        assert!(e.to_string().contains("vault.azure.net/.default"), "{e}");
    }

    #[test]
    fn unparsable_bodies_leave_no_details() {
        let e = from_azure(
            "GetSecret",
            azure_core::Error::with_message(
                AzureKind::DataConversion,
                "invalid type: string \"hunter2\", expected a map",
            ),
            std::time::UNIX_EPOCH,
        );
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        let e = http_error(500, r#"{"value":"hunter2""#, &[]);
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }
}
