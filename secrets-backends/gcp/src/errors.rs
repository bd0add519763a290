//! How Secret Manager's errors map onto [`ErrorKind`].
//!
//! The classification is done once, here, from the `google.rpc.Status` of the error body
//! (AIP-193: `{"error": {"code", "message", "status", "details"}}`), or from the HTTP status
//! when the body is not a Status (a proxy, a load balancer: an HTML page, or the envelope without
//! a `status`). Messages kept in an [`Error`] are
//! the service's own (which name resources, never payloads) or ours; a body that is not a Status
//! and a response that could not be parsed are reported without their bytes, since they may hold
//! a value.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use google_cloud_gax::error::CredentialsError;
use google_cloud_gax::error::rpc::{Code, Status, StatusDetails};
use keyrack_core::backoff::parse_retry_after;
use keyrack_core::{Error, ErrorKind};

/// The kind of a `google.rpc.Status`.
pub(crate) fn kind_for(status: &Status) -> ErrorKind {
    match status.code {
        Code::NotFound => ErrorKind::NotFound,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::ResourceExhausted => ErrorKind::Throttled,
        // AIP-194: INTERNAL may be retried, like UNAVAILABLE (and like a 5xx of the other
        // backends).
        Code::Unavailable | Code::Internal => ErrorKind::Unavailable,
        Code::DeadlineExceeded => ErrorKind::Timeout,
        // The API has no codes of its own for a disabled or destroyed version: both are
        // FAILED_PRECONDITION, told apart by the end of the message ("Secret Version [...] is in
        // DISABLED state." / "... is in DESTROYED state."); the resource name before it may
        // contain either word.
        Code::FailedPrecondition if in_state(&status.message, "DESTROYED") => ErrorKind::Deleted,
        Code::FailedPrecondition if in_state(&status.message, "DISABLED") => ErrorKind::Disabled,
        Code::InvalidArgument => ErrorKind::InvalidRef,
        _ => ErrorKind::Backend,
    }
}

/// Whether `message` ends with the state phrase of `state` (`… is in DISABLED state.`).
fn in_state(message: &str, state: &str) -> bool {
    let message = message.trim_end();
    let message = message.strip_suffix('.').unwrap_or(message);
    message
        .strip_suffix(" state")
        .and_then(|m| m.strip_suffix(state))
        .is_some_and(|m| m.ends_with(" is in "))
}

/// Whether the service refused the access token (UNAUTHENTICATED, or an HTTP 401 whose body is
/// not a Status): the credentials are built again so the next read has a new token.
pub(crate) fn is_refused_token(e: &google_cloud_gax::error::Error) -> bool {
    match e.status() {
        Some(status) => status.code == Code::Unauthenticated,
        None => e.http_status_code() == Some(401),
    }
}

/// `google.rpc.RetryInfo.retry_delay`, when the service sent one.
fn retry_delay(status: &Status) -> Option<Duration> {
    status.details.iter().find_map(|d| match d {
        StatusDetails::RetryInfo(info) => info.retry_delay.and_then(|d| Duration::try_from(d).ok()),
        _ => None,
    })
}

fn kind_for_http(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        429 => ErrorKind::Throttled,
        408 | 504 => ErrorKind::Timeout,
        s if s >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    }
}

fn hint(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Disabled => " (enable the version, or refer to another one)",
        ErrorKind::Deleted => " (a destroyed version cannot be read again: refer to another one)",
        _ => "",
    }
}

/// `error` (from [`from_gax`]) with the answer's `Retry-After` when the Status gave no
/// `RetryInfo`: kept whatever the status and whoever sent it (a proxy's 503 too), in seconds or as
/// an HTTP-date counted from `now` (the source clock's wall time when the answer came).
pub(crate) fn with_retry_after_header(
    error: Error,
    e: &google_cloud_gax::error::Error,
    now: SystemTime,
) -> Error {
    if error.retry_after().is_some() {
        return error;
    }
    let header = e
        .http_headers()
        .and_then(|h| h.get("retry-after"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    match header {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// The longest reason of a token endpoint kept in an error.
const MAX_REASON: usize = 512;

/// The OAuth 2.0 error of a token endpoint's refusal (STS, or the IAM Credentials API), found in
/// the chain of `c`: the auth library keeps the response body in the text of an inner error
/// (`… body=<{"error":"invalid_grant","error_description":"…"}>`). Only `error` and
/// `error_description` are kept, whitespace normalised: they describe the token's claims
/// (audience, issue time), never the token; anything else in the body is not repeated.
fn token_endpoint_reason(c: &CredentialsError) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(c);
    while let Some(e) = current {
        let text = e.to_string();
        if let Some((_, body)) = text.split_once("body=<")
            && let Some((body, _)) = body.rsplit_once('>')
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(body)
        {
            let field = |name: &str| {
                v[name]
                    .as_str()
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .filter(|s| !s.is_empty())
            };
            let reason = match (field("error"), field("error_description")) {
                (Some(error), Some(description)) => Some(format!("{error}: {description}")),
                (Some(error), None) => Some(error),
                (None, Some(description)) => Some(description),
                (None, None) => None,
            };
            if let Some(mut reason) = reason {
                if let Some((cut, _)) = reason.char_indices().nth(MAX_REASON) {
                    reason.truncate(cut);
                    reason.push('…');
                }
                return Some(reason);
            }
        }
        current = e.source();
    }
    None
}

/// The credentials error behind a failed request, if authentication is what failed.
pub(crate) fn credentials_error(e: &google_cloud_gax::error::Error) -> Option<&CredentialsError> {
    e.source()?.downcast_ref::<CredentialsError>()
}

/// Map an SDK error of operation `op` (e.g. `AccessSecretVersion`).
pub(crate) fn from_gax(op: &str, e: &google_cloud_gax::error::Error) -> Error {
    // A body without a `status` (or with one the SDK does not know) parses as UNKNOWN: it is
    // not the service's Status but a proxy's or a front end's answer in the same envelope (a 503
    // from a load balancer, say), and the HTTP status is what says whether to retry.
    let unknown = e.status().is_some_and(|s| s.code == Code::Unknown);
    if unknown && let Some(status) = e.http_status_code() {
        return Error::new(
            kind_for_http(status),
            format!(
                "Secret Manager {op}: HTTP {status} (the error body carries no google.rpc status)"
            ),
        );
    }
    if let Some(status) = e.status() {
        let kind = kind_for(status);
        let mut message = format!("Secret Manager {op}: {}", status.code.name());
        if !status.message.is_empty() {
            message.push_str(": ");
            message.push_str(&status.message);
        }
        message.push_str(hint(&kind));
        let error = Error::new(kind, message);
        return match retry_delay(status) {
            Some(wait) => error.with_retry_after(wait),
            None => error,
        };
    }
    if let Some(c) = credentials_error(e) {
        // A token exchange or metadata-server answer that failed: transient ones (5xx, 429,
        // network) are worth retrying, the others need a new token or new configuration. Their
        // text is the auth library's, which quotes the token endpoint's error, not a token.
        let kind = if c.is_transient() {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Unauthenticated
        };
        // The token endpoint's own reason (an expired token and one for another audience are
        // told apart only by it) is in an inner error of the chain, not in this one's text.
        let message = match token_endpoint_reason(c) {
            Some(reason) => {
                format!("Secret Manager {op}: no access token: the token endpoint said {reason}")
            }
            None => format!("Secret Manager {op}: no access token: {c}"),
        };
        return Error::new(kind, message);
    }
    if e.is_timeout() {
        return Error::new(
            ErrorKind::Timeout,
            format!("Secret Manager {op}: timed out"),
        );
    }
    if let Some(status) = e.http_status_code() {
        // A body that is not a google.rpc.Status: its bytes are not repeated.
        return Error::new(
            kind_for_http(status),
            format!("Secret Manager {op}: HTTP {status}"),
        );
    }
    if e.is_deserialization() {
        // The body of a response that failed to parse may hold a value: no details.
        return Error::new(
            ErrorKind::Unavailable,
            format!("Secret Manager {op}: unreadable response"),
        );
    }
    if e.is_binding() {
        return Error::new(
            ErrorKind::InvalidRef,
            format!("Secret Manager {op}: the resource name has no route: {e}"),
        );
    }
    // Connection and I/O failures: no response is involved, so the transport's text is safe.
    Error::new(
        ErrorKind::Unavailable,
        format!("Secret Manager {op}: request failed: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> Status {
        Status::default().set_code(code).set_message(message)
    }

    #[test]
    fn codes_map_to_kinds() {
        // Messages as recorded in fixtures/gcp/google_rpc_status_errors.assembled.json
        // (secret_manager_observed_messages).
        let cases = [
            (
                Code::NotFound,
                "Secret [projects/153396971788/secrets/X] not found or has no versions.",
                ErrorKind::NotFound,
            ),
            (
                Code::PermissionDenied,
                "Permission 'secretmanager.versions.access' denied on resource (or it may not exist).",
                ErrorKind::PermissionDenied,
            ),
            (
                Code::FailedPrecondition,
                "Secret Version [projects/153396971788/secrets/X/versions/3] is in DISABLED state.",
                ErrorKind::Disabled,
            ),
            (
                Code::FailedPrecondition,
                "Secret Version [projects/153396971788/secrets/X/versions/3] is in DESTROYED state.",
                ErrorKind::Deleted,
            ),
            (
                Code::InvalidArgument,
                "Resource ID [projects/688327991979/secrets/foobar] is not in a valid format.",
                ErrorKind::InvalidRef,
            ),
            (
                Code::ResourceExhausted,
                "Quota exceeded",
                ErrorKind::Throttled,
            ),
            (Code::Unavailable, "", ErrorKind::Unavailable),
            (Code::DeadlineExceeded, "", ErrorKind::Timeout),
            (Code::Unauthenticated, "", ErrorKind::Unauthenticated),
            // The state is read from the end of the message, not from the resource name.
            (
                Code::FailedPrecondition,
                "Secret Version [projects/1/secrets/DESTROYED-keys-backup/versions/1] is in \
                 DISABLED state.",
                ErrorKind::Disabled,
            ),
            (
                Code::FailedPrecondition,
                "Secret Version [projects/1/secrets/DISABLED-keys/versions/1] is in DESTROYED \
                 state.",
                ErrorKind::Deleted,
            ),
            (
                Code::FailedPrecondition,
                "Secret [projects/1/secrets/DISABLED] has a DESTROYED precondition",
                ErrorKind::Backend,
            ),
            (
                Code::FailedPrecondition,
                "something else",
                ErrorKind::Backend,
            ),
            // AIP-194: INTERNAL may be retried.
            (Code::Internal, "", ErrorKind::Unavailable),
            (Code::Unknown, "", ErrorKind::Backend),
        ];
        for (code, message, want) in cases {
            let e = from_gax(
                "AccessSecretVersion",
                &google_cloud_gax::error::Error::service(status(code, message)),
            );
            assert_eq!(e.kind(), &want, "{code:?} {message}");
            assert!(e.to_string().contains(message), "{e}");
        }
    }

    #[test]
    fn retry_info_becomes_the_throttling_hint() {
        // google.rpc.RetryInfo in its proto3 JSON form (no recorded Secret Manager 429 carries
        // one; the fixtures' 429 has ErrorInfo and Help only, and gives no hint).
        let detail: StatusDetails = serde_json::from_value(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": "3s"
        }))
        .unwrap();
        let status = status(Code::ResourceExhausted, "Quota exceeded").set_details([detail]);
        let e = from_gax(
            "AccessSecretVersion",
            &google_cloud_gax::error::Error::service(status),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
    }

    #[test]
    fn disabled_and_destroyed_say_what_to_do() {
        let e = from_gax(
            "AccessSecretVersion",
            &google_cloud_gax::error::Error::service(status(
                Code::FailedPrecondition,
                "Secret Version [projects/1/secrets/X/versions/3] is in DISABLED state.",
            )),
        );
        assert!(e.to_string().contains("enable the version"), "{e}");
    }

    #[test]
    fn a_body_that_is_not_a_status_is_not_repeated() {
        let e = google_cloud_gax::error::Error::http(
            503,
            Default::default(),
            "upstream said hunter2".into(),
        );
        let e = from_gax("AccessSecretVersion", &e);
        assert_eq!(e.kind(), &ErrorKind::Unavailable);
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
        assert!(e.is_retryable());
    }

    #[test]
    fn refused_tokens_are_recognised() {
        use google_cloud_gax::error::Error as GaxError;
        let unauthenticated = GaxError::service(status(Code::Unauthenticated, ""));
        assert!(is_refused_token(&unauthenticated));
        // A 401 from a proxy, whose body is not a Status.
        let proxy = GaxError::http(401, Default::default(), "denied".into());
        assert!(is_refused_token(&proxy));
        assert!(!is_refused_token(&GaxError::service(status(
            Code::PermissionDenied,
            ""
        ))));
        let proxy = GaxError::http(403, Default::default(), "denied".into());
        assert!(!is_refused_token(&proxy));
    }

    #[test]
    fn credential_failures_are_unauthenticated_unless_transient() {
        let e = google_cloud_gax::error::Error::authentication(CredentialsError::from_msg(
            false,
            "failed to exchange token",
        ));
        assert_eq!(
            from_gax("AccessSecretVersion", &e).kind(),
            &ErrorKind::Unauthenticated
        );
        let e = google_cloud_gax::error::Error::authentication(CredentialsError::from_msg(
            true, "timeout",
        ));
        assert_eq!(
            from_gax("AccessSecretVersion", &e).kind(),
            &ErrorKind::Unavailable
        );
    }
}
