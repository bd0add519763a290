//! Requests to Vault's HTTP API and the mapping of its answers to [`ErrorKind`]s.
//!
//! Logical reads go through here rather than through vaultrs because vaultrs keeps only `data`:
//! the lease (`lease_id`, `lease_duration`, `renewable`) of dynamic secrets is dropped
//! (vaultrs#144), and it has no `sys/leases/*` endpoints.

use std::time::Duration;

use keyrack_core::{Error, ErrorKind, Result, SecretValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

/// An HTTP client bound to one Vault address (and namespace).
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) address: Url,
    pub(crate) namespace: Option<String>,
}

/// The envelope of every Vault answer.
#[derive(Deserialize, Debug, Default)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub(crate) lease_id: String,
    #[serde(default)]
    pub(crate) lease_duration: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
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
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The envelope of a successful answer (204 and empty bodies give an empty envelope).
    pub(crate) fn envelope(&self) -> Result<Envelope> {
        if self.body.is_empty() {
            return Ok(Envelope::default());
        }
        serde_json::from_slice(&self.body).map_err(|e| {
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
        serde_json::from_slice::<ErrorBody>(&self.body)
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

fn transport_error(e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    Error::new(kind, "could not reach Vault").with_cause(e.without_url())
}

impl Http {
    /// Send one request with `token` (if any) and return the raw answer; transport failures are
    /// errors, HTTP failures are answers.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
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
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            let value =
                reqwest::header::HeaderValue::from_bytes(token.expose_bytes()).map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        "the Vault token is not a valid header value",
                    )
                })?;
            let mut value = value;
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        request = request.header("X-Vault-Request", "true");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(transport_error)?.to_vec();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
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
        assert!(k(502, "").is_retryable());
        let t = classify(
            StatusCode::TOO_MANY_REQUESTS,
            "",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(t.retry_after(), Some(Duration::from_secs(3)));
        assert!(
            classify(StatusCode::SERVICE_UNAVAILABLE, "Vault is sealed", None)
                .to_string()
                .contains("sealed")
        );
    }
}
