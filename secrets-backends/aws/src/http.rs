//! The SDK's HTTP client: hyper 1 over rustls with the source's crypto provider.
//!
//! aws-smithy-http-client builds its rustls configuration itself and takes the provider only
//! as a `CryptoMode` (ring or aws-lc-rs, chosen by cargo feature); a caller's own
//! `CryptoProvider` (`CryptoMode::Custom`) exists only under the `aws_sdk_unstable` cfg flag.
//! The SDK does take any [`HttpClient`], so this is one: the same hyper client and
//! hyper-rustls connector the SDK's own uses, on a `rustls::ClientConfig` built with the
//! provider the builder was given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keyrack_core::tls::rustls::ClientConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connect and read timeouts a connector was built for.
type Timeouts = (Option<Duration>, Option<Duration>);

/// An [`HttpClient`] whose connections use one rustls configuration. One hyper client (and
/// connection pool) per distinct pair of connect and read timeouts the SDK asks for, as the
/// SDK's own client does.
#[derive(Debug, Clone)]
pub(crate) struct RustlsHttpClient {
    tls: Arc<ClientConfig>,
    connectors: Arc<Mutex<HashMap<Timeouts, SharedHttpConnector>>>,
}

impl RustlsHttpClient {
    pub(crate) fn new(tls: ClientConfig) -> Self {
        RustlsHttpClient {
            tls: Arc::new(tls),
            connectors: Arc::default(),
        }
    }
}

impl HttpClient for RustlsHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        connectors
            .entry(key)
            .or_insert_with(|| {
                SharedHttpConnector::new(Connector::new(self.tls.clone(), key.0, key.1))
            })
            .clone()
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("hyper", Some("1.x".into())))
    }
}

#[derive(Debug, Clone)]
struct Connector {
    client: Client<HttpsConnector<TcpConnector>, SdkBody>,
    read_timeout: Option<Duration>,
}

impl Connector {
    fn new(tls: Arc<ClientConfig>, connect: Option<Duration>, read: Option<Duration>) -> Self {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false); // the https connector takes `https` URIs
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(connect);
        // `http` URIs (a local emulator) pass in clear; `https` ones go through rustls.
        let https = HttpsConnector::from((tcp, tls));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        Connector {
            client,
            read_timeout: read,
        }
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                Some(limit) => match tokio::time::timeout(limit, response).await {
                    Ok(response) => response,
                    Err(elapsed) => return Err(ConnectorError::timeout(elapsed.into())),
                },
                None => response.await,
            };
            let response = response.map_err(classify)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// The SDK's kinds, as its own client tells them apart: a connect timeout is a timeout (the
/// source reports [`Timeout`](keyrack_core::ErrorKind::Timeout)); a failed connection, TLS
/// handshake or I/O is `io`; anything else `other`.
fn classify(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let timed_out = chain(&e).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    let io = chain(&e).any(|c| c.is::<std::io::Error>());
    let connect = e.is_connect();
    let boxed: BoxError = Box::new(e);
    if connect && timed_out {
        ConnectorError::timeout(boxed)
    } else if connect || io {
        ConnectorError::io(boxed)
    } else {
        ConnectorError::other(boxed, None)
    }
}

/// `e` and its sources; an `io::Error`'s payload counts as its source (`io::Error::source`
/// skips it).
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |&e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io
            .get_ref()
            .map(|inner| inner as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}
