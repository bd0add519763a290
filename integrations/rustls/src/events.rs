//! [`CertEvent`]s: what a resolver did about the certificates its source held. They carry serial
//! numbers, validity dates and versions, which every handshake shows anyway, never a key.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_core::Stream;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use keyrack_core::Version;
use tokio::sync::broadcast;

use crate::certified::CertInfo;
use crate::error::CertError;

/// Something a [`RotatingCertificate`](crate::RotatingCertificate) did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CertEvent {
    /// A new certificate passed every check and is served from the next handshake on.
    Installed {
        /// When (the resolver's wall clock).
        at: SystemTime,
        /// The certificate now served.
        certificate: CertInfo,
        /// The serial number of the one it replaced.
        replaced: String,
    },
    /// The source holds a certificate and key that were refused: the one served before is kept
    /// (until its own `notAfter`).
    Rejected {
        /// When (the resolver's wall clock).
        at: SystemTime,
        /// The version of the secret that was refused.
        version: Option<Version>,
        /// Why.
        error: CertError,
        /// The serial number of the certificate still served.
        serving: String,
    },
    /// The certificate served reached its `notAfter` with no acceptable replacement: handshakes
    /// get no certificate (a server's fail, a client's go without one) until one is installed.
    Expired {
        /// When (the resolver's wall clock).
        at: SystemTime,
        /// The certificate that ended.
        certificate: CertInfo,
    },
    /// This subscriber fell behind and missed events.
    Lagged {
        /// How many were dropped.
        missed: u64,
    },
}

impl fmt::Display for CertEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertEvent::Installed {
                certificate,
                replaced,
                ..
            } => write!(
                f,
                "certificate {} installed (replacing {replaced})",
                certificate.serial()
            ),
            CertEvent::Rejected {
                version,
                error,
                serving,
                ..
            } => {
                match version {
                    Some(v) => write!(f, "version {v} refused")?,
                    None => f.write_str("new certificate refused")?,
                }
                write!(f, ", still serving {serving}: {error}")
            }
            CertEvent::Expired { certificate, .. } => write!(
                f,
                "certificate {} expired with no acceptable replacement; none is served",
                certificate.serial()
            ),
            CertEvent::Lagged { missed } => write!(f, "{missed} certificate events missed"),
        }
    }
}

/// A stream of [`CertEvent`]s, from [`RotatingCertificate::subscribe`](crate::RotatingCertificate::subscribe).
/// Ends when the resolver and its task are gone.
pub struct CertEvents {
    inner: BoxStream<'static, CertEvent>,
}

impl CertEvents {
    pub(crate) fn new(rx: broadcast::Receiver<CertEvent>) -> Self {
        let inner = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((ev, rx)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((CertEvent::Lagged { missed }, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed();
        CertEvents { inner }
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<CertEvent> {
        self.inner.next().await
    }
}

impl Stream for CertEvents {
    type Item = CertEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CertEvent>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl fmt::Debug for CertEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertEvents")
    }
}
