//! How Secrets Manager's errors map onto [`ErrorKind`].
//!
//! The classification is done once, here, from the error code (`__type` of the JSON error body),
//! the service's message and the HTTP status. Messages kept in an [`Error`] are the service's own
//! (which never contain a secret value) or ours; a response that could not be parsed is reported
//! without its details, since its body may hold a value.

use std::time::{Duration, SystemTime};

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use keyrack_core::backoff::parse_retry_after;
use keyrack_core::{Error, ErrorKind};

/// The kind of a Secrets Manager error from its code, message and HTTP status.
pub(crate) fn kind_for(
    code: Option<&str>,
    message: Option<&str>,
    status: Option<u16>,
) -> ErrorKind {
    match code.unwrap_or_default() {
        "ResourceNotFoundException" => ErrorKind::NotFound,
        "AccessDeniedException" | "AccessDenied" => ErrorKind::PermissionDenied,
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => ErrorKind::Throttled,
        // The API has no code of its own for "scheduled for deletion": it is an
        // InvalidRequestException whose message says so ("...because it was marked for
        // deletion", moto: "...currently marked deleted").
        "InvalidRequestException" if mentions_deletion(message) => ErrorKind::Deleted,
        "DecryptionFailure" => ErrorKind::Corrupted,
        "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => ErrorKind::Unavailable,
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException" => ErrorKind::Unauthenticated,
        "InvalidParameterException" | "ValidationException" => ErrorKind::InvalidRef,
        _ => match status {
            Some(429) => ErrorKind::Throttled,
            Some(401) => ErrorKind::Unauthenticated,
            Some(403) => ErrorKind::PermissionDenied,
            Some(s) if s >= 500 => ErrorKind::Unavailable,
            _ => ErrorKind::Backend,
        },
    }
}

fn mentions_deletion(message: Option<&str>) -> bool {
    let m = message.unwrap_or_default().to_ascii_lowercase();
    m.contains("deleted") || m.contains("deletion")
}

/// An error for one failed secret of a batch (`Errors` of BatchGetSecretValue).
pub(crate) fn batch_entry_error(code: Option<&str>, message: Option<&str>) -> Error {
    let kind = kind_for(code, message, None);
    Error::new(
        kind.clone(),
        describe("BatchGetSecretValue", &kind, code, message),
    )
}

fn describe(op: &str, kind: &ErrorKind, code: Option<&str>, message: Option<&str>) -> String {
    let mut s = format!("Secrets Manager {op}");
    if let Some(code) = code {
        s.push_str(": ");
        s.push_str(code);
    }
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        s.push_str(": ");
        s.push_str(m);
    }
    if kind == &ErrorKind::Deleted {
        s.push_str(" (the secret is scheduled for deletion: restore it with RestoreSecret or stop referring to it)");
    }
    s
}

/// `Retry-After`, if the response carries one (Secrets Manager rarely does; a proxy or a load
/// balancer in front of it may, on any status): seconds or an HTTP date, counted from `now`.
fn retry_after(raw: &HttpResponse, now: SystemTime) -> Option<Duration> {
    raw.headers()
        .get("retry-after")
        .and_then(|v| parse_retry_after(v, now))
}

/// Map an SDK error of operation `op` (e.g. `GetSecretValue`); `now` is the wall time of the
/// source's clock, which a `Retry-After` date is counted from.
pub(crate) fn from_sdk<E>(op: &str, err: SdkError<E, HttpResponse>, now: SystemTime) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let raw = ctx.raw();
            let e = ctx.err();
            let kind = kind_for(e.code(), e.message(), Some(raw.status().as_u16()));
            let error = Error::new(kind.clone(), describe(op, &kind, e.code(), e.message()));
            match retry_after(raw, now) {
                Some(wait) => error.with_retry_after(wait),
                None => error,
            }
        }
        SdkError::TimeoutError(_) => Error::new(
            ErrorKind::Timeout,
            format!("Secrets Manager {op}: timed out"),
        ),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Unavailable
            };
            // Connector and credential errors: no response body is involved, so the chain of
            // causes (e.g. "connection refused", "no credentials in the chain") is safe to show.
            Error::new(
                kind,
                format!(
                    "Secrets Manager {op}: request not sent: {}",
                    DisplayErrorContext(&err)
                ),
            )
        }
        // The body of a response that failed to parse may hold a value: no details.
        SdkError::ResponseError(_) => Error::new(
            ErrorKind::Unavailable,
            format!("Secrets Manager {op}: unreadable response"),
        ),
        SdkError::ConstructionFailure(_) => Error::new(
            ErrorKind::Config,
            format!(
                "Secrets Manager {op}: request could not be built: {}",
                DisplayErrorContext(&err)
            ),
        ),
        _ => Error::new(ErrorKind::Backend, format!("Secrets Manager {op} failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_secretsmanager::config::http::HttpResponse;
    use aws_sdk_secretsmanager::error::ErrorMetadata;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
    use aws_smithy_types::body::SdkBody;

    fn service_error(code: &str, message: &str, status: u16) -> Error {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let err = GetSecretValueError::generic(meta);
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        from_sdk(
            "GetSecretValue",
            SdkError::service_error(err, raw),
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn codes_map_to_kinds() {
        let cases: &[(&str, &str, u16, ErrorKind)] = &[
            (
                "ResourceNotFoundException",
                "Secrets Manager can't find the specified secret.",
                400,
                ErrorKind::NotFound,
            ),
            (
                "AccessDeniedException",
                "User: arn:aws:iam::1:user/x is not authorized to perform: secretsmanager:GetSecretValue",
                400,
                ErrorKind::PermissionDenied,
            ),
            (
                "ThrottlingException",
                "Rate exceeded",
                400,
                ErrorKind::Throttled,
            ),
            (
                "InvalidRequestException",
                "You can't perform this operation on the secret because it was marked for deletion.",
                400,
                ErrorKind::Deleted,
            ),
            (
                "InvalidRequestException",
                "You tried to perform the operation on a secret that's currently marked deleted.",
                400,
                ErrorKind::Deleted,
            ),
            (
                "InvalidRequestException",
                "something else",
                400,
                ErrorKind::Backend,
            ),
            (
                "DecryptionFailure",
                "Access to KMS is not allowed",
                400,
                ErrorKind::Corrupted,
            ),
            ("InternalServiceError", "oops", 500, ErrorKind::Unavailable),
            (
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
                400,
                ErrorKind::Unauthenticated,
            ),
            (
                "InvalidParameterException",
                "bad",
                400,
                ErrorKind::InvalidRef,
            ),
            ("SomethingNew", "x", 429, ErrorKind::Throttled),
            ("SomethingNew", "x", 503, ErrorKind::Unavailable),
            ("SomethingNew", "x", 400, ErrorKind::Backend),
        ];
        for (code, message, status, want) in cases {
            let e = service_error(code, message, *status);
            assert_eq!(e.kind(), want, "{code} / {status}");
            assert!(e.to_string().contains(code), "{e}");
        }
    }

    #[test]
    fn throttling_is_retryable_and_keeps_retry_after() {
        let meta = ErrorMetadata::builder().code("ThrottlingException").build();
        let mut raw = HttpResponse::new(400.try_into().unwrap(), SdkBody::empty());
        raw.headers_mut().insert("retry-after", "3");
        let e = from_sdk(
            "GetSecretValue",
            SdkError::service_error(GetSecretValueError::generic(meta), raw),
            SystemTime::UNIX_EPOCH,
        );
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        // Any status, and the HTTP-date form, counted from the given wall time.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let meta = ErrorMetadata::builder().code("ServiceUnavailable").build();
        let mut raw = HttpResponse::new(503.try_into().unwrap(), SdkBody::empty());
        raw.headers_mut()
            .insert("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT");
        let e = from_sdk(
            "GetSecretValue",
            SdkError::service_error(GetSecretValueError::generic(meta), raw),
            now,
        );
        assert_eq!(e.kind(), &ErrorKind::Unavailable);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        assert!(service_error("InternalServiceError", "x", 500).is_retryable());
        assert!(!service_error("DecryptionFailure", "x", 400).is_retryable());
    }

    #[test]
    fn deleted_says_what_to_do() {
        let e = service_error("InvalidRequestException", "marked for deletion", 400);
        assert!(e.to_string().contains("RestoreSecret"), "{e}");
    }

    #[test]
    fn unparsable_response_has_no_details() {
        let raw = HttpResponse::new(
            200.try_into().unwrap(),
            SdkBody::from(r#"{"SecretString":"hunter2""#),
        );
        let e = from_sdk::<GetSecretValueError>(
            "GetSecretValue",
            SdkError::response_error(std::io::Error::other("parse error near hunter2"), raw),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(e.kind(), &ErrorKind::Unavailable);
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }

    #[test]
    fn batch_entries_are_classified() {
        let e = batch_entry_error(Some("ResourceNotFoundException"), Some("not here"));
        assert_eq!(e.kind(), &ErrorKind::NotFound);
        let e = batch_entry_error(Some("DecryptionFailure"), None);
        assert_eq!(e.kind(), &ErrorKind::Corrupted);
    }
}
