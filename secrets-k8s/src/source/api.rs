//! Requests to the API server and the mapping of its answers to [`ErrorKind`]s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keyrack_core::backoff::parse_retry_after;
use keyrack_core::{Clock, Error, ErrorKind, IdentityToken, Result};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use url::Url;

use super::Target;
use super::data::Data;
use super::wiping::{WipingBuf, wipe_chunk};

/// The largest answer to a GET of one Secret read: a Secret holds at most 1 MiB (about 1.4 MiB
/// in base64), and `kubectl apply`'s last-applied annotation may hold it once more.
const MAX_BODY: usize = 8 << 20;

/// Authenticated GETs against one API server.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) client: reqwest::Client,
    pub(super) base: Url,
    pub(super) token: Arc<dyn IdentityToken>,
    /// Bound on a whole GET; watches are bounded by `timeoutSeconds` and an idle limit instead.
    pub(super) timeout: Duration,
    /// Its wall time reads a `Retry-After` given as an HTTP-date.
    pub(super) clock: Arc<dyn Clock>,
}

/// `metav1.Status`: the body of every failed answer and of a watch `ERROR` event.
#[derive(Deserialize, Default, Debug)]
pub(super) struct Status {
    #[serde(default)]
    pub(super) message: String,
    #[serde(default)]
    pub(super) reason: String,
    #[serde(default)]
    pub(super) code: u16,
    #[serde(default)]
    pub(super) details: Option<StatusDetails>,
}

#[derive(Deserialize, Default, Debug)]
pub(super) struct StatusDetails {
    #[serde(default, rename = "retryAfterSeconds")]
    retry_after_seconds: Option<u64>,
}

/// The parts of `ObjectMeta` this source reads.
#[derive(Deserialize, Default, Debug)]
pub(super) struct ObjectMeta {
    #[serde(default, rename = "resourceVersion")]
    pub(super) resource_version: Option<String>,
    /// Whether the annotation `k8s.io/initial-events-end` is `"true"`: the BOOKMARK that ends a
    /// streaming list's initial events.
    #[serde(default, rename = "annotations")]
    pub(super) initial_events_end: InitialEventsEnd,
}

/// Reads the one annotation this source needs and skips the others unread: `kubectl apply`'s
/// last-applied annotation holds the whole manifest, the Secret's data included.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InitialEventsEnd(pub(super) bool);

impl<'de> Deserialize<'de> for InitialEventsEnd {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Annotations;

        impl<'de> serde::de::Visitor<'de> for Annotations {
            type Value = InitialEventsEnd;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of annotations")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<InitialEventsEnd, E> {
                Ok(InitialEventsEnd(false))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<InitialEventsEnd, A::Error> {
                let mut end = false;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == INITIAL_EVENTS_END {
                        end = map.next_value::<std::borrow::Cow<'de, str>>()? == "true";
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(InitialEventsEnd(end))
            }
        }

        deserializer.deserialize_any(Annotations)
    }
}

/// The annotation of the BOOKMARK that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A core/v1 Secret, borrowed from the answer's body. `data` holds base64 text; it is decoded by
/// the caller, straight into zeroizing buffers.
#[derive(Deserialize)]
pub(super) struct SecretObject<'a> {
    #[serde(default)]
    pub(super) metadata: ObjectMeta,
    #[serde(default, borrow)]
    pub(super) data: Option<Data<'a>>,
}

impl<'a> SecretObject<'a> {
    /// Parse a GET's body. serde's messages can quote the input (here: base64 of the value), so
    /// only the position is kept.
    pub(super) fn parse(body: &'a [u8]) -> Result<Self> {
        serde_json::from_slice(body).map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!(
                    "the API server answered with a body that is not a Secret (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}

/// What opening a watch gave.
pub(super) enum Opened {
    /// The event stream.
    Stream(Response),
    /// HTTP 410: the resourceVersion is older than the server keeps.
    Gone,
    /// A streaming list was asked for and refused (HTTP 422 `Invalid` or 400): the server lacks
    /// the `WatchList` feature.
    StreamingRefused,
}

impl Api {
    fn url(&self, t: &Target, named: bool) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| {
                Error::new(ErrorKind::Config, "the API server URL cannot be a base URL")
            })?;
            segments
                .pop_if_empty()
                .extend(["api", "v1", "namespaces", &t.namespace, "secrets"]);
            if named {
                segments.push(&t.name);
            }
        }
        Ok(url)
    }

    /// `GET /api/v1/namespaces/{ns}/secrets/{name}`: the body, for [`SecretObject::parse`], read
    /// into a buffer that wipes itself (it holds the data in base64).
    pub(super) async fn get_secret(&self, t: &Target) -> Result<WipingBuf> {
        let mut response = self.send(self.url(t, true)?, false).await?;
        if !response.status().is_success() {
            return Err(failure(response, t, self.clock.wall()).await);
        }
        let expected = response.content_length().unwrap_or(0);
        let mut body =
            WipingBuf::with_capacity(usize::try_from(expected).unwrap_or(0).min(MAX_BODY));
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > MAX_BODY {
                wipe_chunk(chunk);
                return Err(Error::new(
                    ErrorKind::Backend,
                    "the API server's answer is larger than any Secret can be",
                ));
            }
            body.push(&chunk);
            wipe_chunk(chunk);
        }
        Ok(body)
    }

    /// A watch of the one named Secret, from `resource_version` (from now, with the current
    /// object as a synthetic `ADDED`, when `None`). From now and `streaming`, a streaming list:
    /// the initial events end with a BOOKMARK annotated `k8s.io/initial-events-end`, so the
    /// absence of the object shows too.
    pub(super) async fn watch(
        &self,
        t: &Target,
        resource_version: Option<&str>,
        timeout_seconds: u64,
        streaming: bool,
    ) -> Result<Opened> {
        let streaming = streaming && resource_version.is_none();
        let mut url = self.url(t, false)?;
        {
            let mut q = url.query_pairs_mut();
            // A field selector on the name is what lets a Role with `resourceNames` authorize
            // the watch: the authorizer sees a request for that one object.
            q.append_pair("fieldSelector", &format!("metadata.name={}", t.name))
                .append_pair("watch", "1");
            if let Some(rv) = resource_version {
                q.append_pair("resourceVersion", rv);
            }
            if streaming {
                // Kubernetes' streaming lists (KEP-3157; the `WatchList` feature, beta and on by
                // default since 1.32): "data at least as new as" the request's start, then the
                // end-of-initial-events BOOKMARK.
                q.append_pair("sendInitialEvents", "true")
                    .append_pair("resourceVersionMatch", "NotOlderThan");
            }
            q.append_pair("allowWatchBookmarks", "true")
                .append_pair("timeoutSeconds", &timeout_seconds.to_string());
        }
        let response = self.send(url, true).await?;
        match response.status() {
            s if s.is_success() => Ok(Opened::Stream(response)),
            StatusCode::GONE => Ok(Opened::Gone),
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST if streaming => {
                Ok(Opened::StreamingRefused)
            }
            _ => Err(failure(response, t, self.clock.wall()).await),
        }
    }

    /// One GET with the current token; after a 401 the token is invalidated and the request sent
    /// once more with a fresh one (the kubelet may have rotated it since it was read). The answer
    /// is returned whatever its status.
    async fn send(&self, url: Url, streaming: bool) -> Result<Response> {
        let mut retried = false;
        loop {
            let token = self.token.token().await?;
            let mut header = Vec::with_capacity(7 + token.len());
            header.extend_from_slice(b"Bearer ");
            header.extend_from_slice(token.expose_bytes());
            // Shared rather than copied, so no second copy of the token is left behind.
            let mut auth = HeaderValue::from_maybe_shared(Bytes::from(header)).map_err(|_| {
                Error::new(
                    ErrorKind::Unauthenticated,
                    "the service-account token is not a valid HTTP header value",
                )
            })?;
            auth.set_sensitive(true);
            let mut request = self
                .client
                .get(url.clone())
                .header(AUTHORIZATION, auth)
                .header(ACCEPT, "application/json");
            if !streaming {
                request = request.timeout(self.timeout);
            }
            let response = request.send().await.map_err(transport_error)?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                tracing::debug!(
                    "the API server refused the token (401); retrying with a fresh one"
                );
                self.token.invalidate();
                retried = true;
                continue;
            }
            return Ok(response);
        }
    }
}

fn transport_error(e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    Error::new(kind, "could not reach the Kubernetes API server").with_cause(e.without_url())
}

/// The error for a failed answer, from its status and `metav1.Status` body. `Retry-After` is
/// kept whatever the status (an API server or a proxy in front of it may send it with a 503
/// too), in seconds or as an HTTP-date counted from `now_wall`.
async fn failure(response: Response, t: &Target, now_wall: std::time::SystemTime) -> Error {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now_wall));
    match response.bytes().await {
        Ok(bytes) => failure_of(status, &bytes, retry_after, t),
        Err(_) => classify(status, &Status::default(), retry_after, t),
    }
}

/// The error for a failed answer's status and body (a `metav1.Status`, or anything else).
pub(super) fn failure_of(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    t: &Target,
) -> Error {
    let body: Status = serde_json::from_slice(body).unwrap_or_default();
    classify(status, &body, retry_after, t)
}

/// Map an API server status to an error. The Status `message` is the server's description of the
/// request (names, verbs, the caller), never of a Secret's data, so it is kept.
pub(super) fn classify(
    status: StatusCode,
    body: &Status,
    retry_after: Option<Duration>,
    t: &Target,
) -> Error {
    let retry_after = retry_after.or(body
        .details
        .as_ref()
        .and_then(|d| d.retry_after_seconds)
        .map(Duration::from_secs));
    let (kind, what) = match status.as_u16() {
        401 => (
            ErrorKind::Unauthenticated,
            "the API server refused the service-account token, also after re-reading it".to_owned(),
        ),
        403 => (
            ErrorKind::PermissionDenied,
            format!(
                "the service account may not read it: bind it to a Role in namespace `{ns}` \
                 granting verbs `get` and `watch` on resource `secrets` with \
                 resourceNames [\"{name}\"]",
                ns = t.namespace,
                name = t.name
            ),
        ),
        404 => (
            ErrorKind::NotFound,
            format!("no Secret `{}` in namespace `{}`", t.name, t.namespace),
        ),
        429 => (
            ErrorKind::Throttled,
            "the API server is rate limiting (API priority and fairness)".to_owned(),
        ),
        s if s >= 500 => (
            ErrorKind::Unavailable,
            "the API server failed to answer".to_owned(),
        ),
        _ => (ErrorKind::Backend, "unexpected answer".to_owned()),
    };
    let mut message = format!("{what} (HTTP {}", status.as_u16());
    if !body.reason.is_empty() {
        message.push_str(", ");
        message.push_str(&body.reason);
    }
    message.push(')');
    if !body.message.is_empty() {
        message.push_str(": ");
        message.push_str(&body.message);
    }
    let error = Error::new(kind, message);
    match retry_after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}
