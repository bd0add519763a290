//! Requests to Vault's HTTP API and the mapping of its answers to [`ErrorKind`]s.
//!
//! Every call goes through here, logins and token renewal included: vaultrs keeps only `data`
//! (the lease of dynamic secrets is dropped, vaultrs#144), has no `sys/leases/*` endpoints, copies
//! the token into plain `String`s for each client it builds, and drops `Retry-After`.
//!
//! Requests go out through a [`Transport`] (the built-in one is reqwest, `transport.rs`), each
//! bounded by the source's timeout on its clock.
//!
//! What holds a secret here is wiped when dropped: request bodies (a login's secret id or JWT)
//! live in [`Zeroizing`] buffers sized before they are filled (a `Vec` that grows leaves its old
//! block behind unwiped), response bodies (a value, a token) in the [`SecretValue`] the
//! transport returns, the token header shares the token's own zeroizing allocation, and answers
//! are parsed in place (`&RawValue`, `&str`), not copied. What reqwest and hyper copy into their
//! own buffers (the header and body on their way out, each chunk read from the socket) is out of
//! reach and not wiped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Method, StatusCode};
use keyrack_core::backoff::parse_retry_after;
use keyrack_core::{Clock, Error, ErrorKind, Result, SecretValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use url::Url;
use zeroize::Zeroizing;

use crate::transport::{MAX_BODY, Transport};

/// An HTTP client bound to one Vault address (and namespace).
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub(crate) transport: Arc<dyn Transport>,
    /// The longest one request may take, transport and body included.
    pub(crate) timeout: Duration,
    pub(crate) address: Url,
    pub(crate) namespace: Option<String>,
    /// `Retry-After` dates are counted from this clock's wall time.
    pub(crate) clock: Arc<dyn Clock>,
}

/// A JSON request body in a buffer that is wiped once the request is done with it.
#[derive(Clone)]
pub(crate) struct Body(Zeroizing<Vec<u8>>);

/// Counts the bytes a serializer writes, to size a buffer before filling it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Body {
    /// `value` as JSON, written once into a buffer of exactly its size.
    pub(crate) fn json(value: &impl Serialize) -> Result<Self> {
        let failed = |_| Error::new(ErrorKind::Backend, "a request body could not be written");
        let mut size = Counter(0);
        serde_json::to_writer(&mut size, value).map_err(failed)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(size.0));
        serde_json::to_writer(&mut *buf, value).map_err(failed)?;
        Ok(Body(buf))
    }
}

/// Lends a token's zeroizing allocation to a header without copying it.
struct Shared(SecretValue);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.expose_bytes()
    }
}

/// The envelope of every Vault answer, borrowing from the answer's body.
#[derive(Deserialize, Debug, Default)]
pub(crate) struct Envelope<'a> {
    #[serde(default)]
    pub(crate) lease_id: String,
    #[serde(default)]
    pub(crate) lease_duration: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
    #[serde(default, borrow)]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) auth: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// A raw answer: status and body, before classification.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<Duration>,
    body: SecretValue,
}

/// Parse `raw` (a part of an answer) as `T`, borrowing from it; errors name the part and the
/// position, never the content.
pub(crate) fn parse<'a, T: Deserialize<'a>>(raw: &'a str, what: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!(
                "unexpected shape of Vault's {what} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

impl Answer {
    /// An answer of `status` with `body`.
    pub(crate) fn new(
        status: StatusCode,
        retry_after: Option<Duration>,
        body: SecretValue,
    ) -> Self {
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// The envelope of a successful answer (204 and empty bodies give an empty envelope).
    pub(crate) fn envelope(&self) -> Result<Envelope<'_>> {
        if self.body.is_empty() {
            return Ok(Envelope::default());
        }
        serde_json::from_slice(self.body.expose_bytes()).map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "Vault answered with a body that is not its JSON envelope (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }

    /// Vault's `errors` messages (they describe the request, not secret values).
    pub(crate) fn errors(&self) -> String {
        serde_json::from_slice::<ErrorBody>(self.body.expose_bytes())
            .map(|b| b.errors.join("; "))
            .unwrap_or_default()
    }

    /// The error for a failed answer.
    pub(crate) fn error(&self) -> Error {
        classify(self.status, &self.errors(), self.retry_after)
    }
}

/// Map a Vault status and its messages to an error.
pub(crate) fn classify(status: StatusCode, errors: &str, retry_after: Option<Duration>) -> Error {
    let says = |what: &str| errors.to_ascii_lowercase().contains(what);
    let (kind, what) = match status.as_u16() {
        // Only a redirect to another origin reaches here (see `redirect_policy`).
        301 | 302 | 303 | 307 | 308 => (
            ErrorKind::Unavailable,
            "Vault redirected the request to another address, which is not followed: the token \
             would go with it (point the address at the active node or at a load balancer)",
        ),
        400 if says("lease not found") || says("invalid lease") => {
            (ErrorKind::NotFound, "lease not found")
        }
        400 => (ErrorKind::Backend, "bad request"),
        401 => (ErrorKind::Unauthenticated, "unauthenticated"),
        403 => (ErrorKind::PermissionDenied, "permission denied"),
        404 => (ErrorKind::NotFound, "not found"),
        405 => (
            ErrorKind::Unsupported,
            "operation not supported on this path",
        ),
        412 => (ErrorKind::Unavailable, "not yet consistent on this node"),
        429 => (ErrorKind::Throttled, "rate limited"),
        473 => (ErrorKind::Unavailable, "performance standby"),
        503 if says("sealed") => (ErrorKind::Unavailable, "Vault is sealed"),
        503 => (ErrorKind::Unavailable, "Vault is unavailable or standby"),
        s if s >= 500 => (ErrorKind::Unavailable, "Vault server error"),
        _ => (ErrorKind::Backend, "unexpected status"),
    };
    let message = if errors.is_empty() {
        format!("{what} (HTTP {status})")
    } else {
        format!("{what} (HTTP {status}): {errors}")
    };
    let error = Error::new(kind, message);
    match retry_after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// Redirects are followed only within the origin of the request (at most 3): a redirect to
/// another origin would carry `X-Vault-Token` there (reqwest strips only the standard
/// credentials headers when the host changes). Vault's Go client follows one redirect to any
/// host; standby nodes forward requests to the active node instead of redirecting since request
/// forwarding (Vault 0.6.2), so a cross-origin redirect is a proxy or an old setup, and the
/// answer says to point the address elsewhere.
pub(crate) fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= 3 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

impl Http {
    /// Send one request with `token` (if any) and return the raw answer; transport failures are
    /// errors, HTTP failures are answers.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Body>,
        token: Option<&SecretValue>,
    ) -> Result<Answer> {
        let mut url = self.address.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                Error::new(ErrorKind::Config, "Vault address cannot be a base URL")
            })?;
            segments.pop_if_empty().push("v1");
            for part in path.split('/').filter(|p| !p.is_empty()) {
                segments.push(part);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = http::Request::builder()
            .method(method)
            .uri(url.as_str())
            .header("X-Vault-Request", "true");
        if let Some(token) = token {
            let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(Shared(
                token.clone(),
            )))
            .map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    "the Vault token is not a valid header value",
                )
            })?;
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            let ns = HeaderValue::from_str(ns).map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    "the Vault namespace is not a valid header value",
                )
            })?;
            request = request.header("X-Vault-Namespace", ns);
        }
        let body = match body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from_owner(body.0.clone())
            }
            None => Bytes::new(),
        };
        let request = request.body(body).map_err(|_| {
            Error::new(ErrorKind::Config, "the request to Vault could not be built")
        })?;
        let send = self.transport.send(request);
        // A timeout past what the clock can count is no timeout.
        let response = match self.clock.now().checked_add(self.timeout) {
            Some(deadline) => tokio::select! {
                biased;
                response = send => response?,
                () = self.clock.sleep_until(deadline) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "Vault did not answer within {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ));
                }
            },
            None => send.await?,
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.clock.wall()));
        let body = response.into_body();
        if body.len() > MAX_BODY {
            return Err(Error::new(
                ErrorKind::Backend,
                "Vault's answer is larger than 32 MiB",
            ));
        }
        Ok(Answer::new(status, retry_after, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        let k = |s: u16, e: &str| {
            classify(StatusCode::from_u16(s).unwrap(), e, None)
                .kind()
                .clone()
        };
        assert_eq!(k(403, "permission denied"), ErrorKind::PermissionDenied);
        assert_eq!(k(404, ""), ErrorKind::NotFound);
        assert_eq!(
            k(400, "lease not found or lease is not renewable"),
            ErrorKind::NotFound
        );
        assert_eq!(k(400, "missing common_name"), ErrorKind::Backend);
        assert_eq!(k(503, "Vault is sealed"), ErrorKind::Unavailable);
        assert_eq!(k(500, "internal error"), ErrorKind::Unavailable);
        assert_eq!(k(307, ""), ErrorKind::Unavailable);
        assert!(k(502, "").is_retryable());
        let t = classify(
            StatusCode::TOO_MANY_REQUESTS,
            "",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(t.retry_after(), Some(Duration::from_secs(3)));
        let u = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            Some(Duration::from_secs(4)),
        );
        assert_eq!(u.retry_after(), Some(Duration::from_secs(4)));
        assert!(
            classify(StatusCode::SERVICE_UNAVAILABLE, "Vault is sealed", None)
                .to_string()
                .contains("sealed")
        );
    }

    #[test]
    fn bodies_are_exactly_sized() {
        let body = Body::json(&serde_json::json!({ "role_id": "r", "secret_id": "s\"x" })).unwrap();
        assert_eq!(body.0.len(), body.0.capacity());
        let back: serde_json::Value = serde_json::from_slice(&body.0).unwrap();
        assert_eq!(back["secret_id"], "s\"x");
    }
}
