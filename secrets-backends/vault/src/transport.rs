//! [`Transport`]: how the source's requests reach Vault, and the built-in one (reqwest on
//! rustls, configured by the builder).

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use keyrack_core::{Error, ErrorKind, Result, SecretValue};
use zeroize::Zeroizing;

/// The largest answer read (Vault's own default `max_request_size` is 32 MiB).
pub(crate) const MAX_BODY: usize = 32 << 20;

/// Sends the source's HTTP requests to Vault and returns its answers.
///
/// [`VaultBuilder::build`](crate::VaultBuilder::build) makes one of its own unless given one:
/// reqwest on rustls, with the builder's CA files, client certificate, crypto provider, timeout
/// and redirect policy (same origin only). Give your own with
/// [`VaultBuilder::with_transport`](crate::VaultBuilder::with_transport) to send through an HTTP
/// stack your service already configures (a proxy that wants headers of its own, say) or to an
/// in-process fake (tests; `benches/fleet` simulates a fleet against one). The source still
/// checks the address and builds every request, and still bounds each one by
/// [`with_timeout`](crate::VaultBuilder::with_timeout) on its clock; the transport owns TLS,
/// connections and redirects, so the builder refuses the TLS settings next to it.
///
/// What passes through is secret: requests carry the token in `X-Vault-Token` (marked
/// sensitive) and logins carry a secret id or a JWT in their body; answers carry tokens and
/// secret values, which is why an answer's body is a [`SecretValue`] (wiped when dropped, never
/// printed). A transport must not log bodies or that header, and must not follow a redirect to
/// another origin with the token. Bound what it reads: the source refuses an answer over
/// 32 MiB (Vault's own default `max_request_size`), and the built-in transport stops reading
/// there.
#[async_trait]
pub trait Transport: fmt::Debug + Send + Sync + 'static {
    /// Send `request` (absolute URI; a JSON body or none) and return Vault's answer with its
    /// whole body. Any status is an answer: return an error only when no answer came, with
    /// [`ErrorKind::Unavailable`] (nothing reachable, the connection broke) or
    /// [`ErrorKind::Timeout`], and no part of the request in its message.
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<SecretValue>>;
}

/// The built-in transport: a reqwest client the builder configured.
#[derive(Debug)]
pub(crate) struct Reqwest(pub(crate) reqwest::Client);

fn transport_error(e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    Error::new(kind, "could not reach Vault").with_cause(e.without_url())
}

/// The whole body, into a wiped buffer that never grows in place.
async fn read_body(mut response: reqwest::Response) -> Result<SecretValue> {
    let hint = response
        .content_length()
        .map_or(0, |n| usize::try_from(n).unwrap_or(MAX_BODY).min(MAX_BODY));
    let mut body = Zeroizing::new(Vec::with_capacity(hint));
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        let needed = body.len() + chunk.len();
        if needed > MAX_BODY {
            return Err(Error::new(
                ErrorKind::Backend,
                "Vault's answer is larger than 32 MiB",
            ));
        }
        if needed > body.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(needed.max(body.capacity() * 2)));
            bigger.extend_from_slice(&body);
            body = bigger; // the smaller buffer is wiped as it drops
        }
        body.extend_from_slice(&chunk);
    }
    // Taken whole when the buffer is exactly full (the usual case: the length was announced);
    // otherwise copied once into an exact allocation and the buffer wiped.
    Ok(SecretValue::from_bytes(std::mem::take(&mut *body)))
}

#[async_trait]
impl Transport for Reqwest {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<SecretValue>> {
        let request = reqwest::Request::try_from(request).map_err(|e| {
            Error::new(ErrorKind::Config, "the request to Vault could not be built")
                .with_cause(e.without_url())
        })?;
        let response = self.0.execute(request).await.map_err(transport_error)?;
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        let body = read_body(response).await?;
        answer.body(body).map_err(|_| {
            Error::new(
                ErrorKind::Backend,
                "Vault's answer could not be taken apart",
            )
        })
    }
}
