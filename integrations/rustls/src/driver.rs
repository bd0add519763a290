//! The task behind a [`RotatingCertificate`](crate::RotatingCertificate): it wakes when the
//! source's handles change, checks what they hold, and swaps the served certificate, or refuses
//! it and says why; and it announces the served certificate's end when no replacement came.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use keyrack_core::{Clock, Version};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use tokio::sync::broadcast;

use crate::certified::{self, CertInfo, Checked};
use crate::error::{CertError, CertErrorKind};
use crate::events::CertEvent;
use crate::source::{CertSource, Origin, Parts};

/// What handshakes are given: swapped whole, so a key never meets another certificate.
pub(crate) struct Served {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// What the resolver and its task share.
pub(crate) struct Shared {
    pub(crate) serving: ArcSwap<Served>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) events: broadcast::Sender<CertEvent>,
}

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) source: CertSource,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) settle: Duration,
    /// The values last checked: a wake-up that brings nothing new is not checked again.
    pub(crate) examined: Origin,
    /// The values the served certificate was read from.
    pub(crate) installed: Origin,
    /// When to check again: a certificate whose validity begins then, or a pair given time for
    /// its other half.
    pub(crate) recheck: Option<Instant>,
    /// When the served certificate ends (`None` once that was announced).
    pub(crate) expiry: Option<Instant>,
}

enum Wake {
    Changed,
    Closed,
    Expiry,
    Recheck,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        loop {
            let clock = self.shared.clock.clone();
            let (expiry, recheck) = (self.expiry, self.recheck);
            let wake = tokio::select! {
                r = changed(self.source.parts_mut()) => if r { Wake::Changed } else { Wake::Closed },
                () = at(&*clock, expiry) => Wake::Expiry,
                () = at(&*clock, recheck) => Wake::Recheck,
            };
            match wake {
                Wake::Changed => self.examine(false),
                Wake::Recheck => {
                    self.recheck = None;
                    self.examine(true);
                }
                Wake::Expiry => self.expired(),
                // The client was shut down: nothing will change any more. The served certificate
                // is still refused by `resolve` once it ends.
                Wake::Closed => break,
            }
        }
        tracing::debug!(target: "keyrack_rustls", "the secrets client was shut down; the certificate is no longer followed");
    }

    fn examine(&mut self, forced: bool) {
        let clock = self.shared.clock.clone();
        let material = match self.source.read() {
            Ok(m) => m,
            Err(e) => {
                self.recheck = None;
                self.reject(self.source.version(), e);
                return;
            }
        };
        if !forced && material.origin.same_as(&self.examined) {
            return;
        }
        self.examined = material.origin.clone();
        self.recheck = None;
        let result = certified::check(
            material.cert_pem.expose_bytes(),
            &material.chain,
            material.key_pem.expose_bytes(),
            material.version.clone(),
            &self.provider,
            clock.wall(),
        );
        match result {
            Ok(checked) => self.install(checked, material.origin),
            Err(e) if e.kind() == CertErrorKind::NotYetValid => {
                if let Some(begins) = e.not_before() {
                    self.recheck = Some(clock.deadline_for(begins));
                }
                self.reject(material.version, e);
            }
            Err(e)
                if e.kind() == CertErrorKind::KeyMismatch
                    && !forced
                    && self.source.is_pair()
                    && material.origin.one_side_differs(&self.installed) =>
            {
                // One file of the pair was replaced and the other not yet: give it time.
                tracing::debug!(target: "keyrack_rustls", settle = ?self.settle,
                    "the certificate and key changed apart; waiting for the other half");
                self.recheck = Some(clock.now() + self.settle);
            }
            Err(e) => self.reject(material.version, e),
        }
    }

    fn install(&mut self, checked: Checked, origin: Origin) {
        let clock = &self.shared.clock;
        self.installed = origin;
        let current = self.shared.serving.load();
        if current.key.cert == checked.key.cert
            && current.key.key.public_key() == checked.key.key.public_key()
        {
            // The same certificate and key read again (a file rewritten as it was).
            tracing::debug!(target: "keyrack_rustls", serial = checked.info.serial(),
                "the certificate read is the one served");
            return;
        }
        let replaced = current.info.serial().to_owned();
        drop(current);
        let info = checked.info.clone();
        self.shared.serving.store(Arc::new(Served {
            key: checked.key,
            info: checked.info,
        }));
        self.expiry = Some(clock.deadline_for(info.not_after()));
        tracing::info!(target: "keyrack_rustls", serial = info.serial(), replaced = %replaced,
            not_after = ?info.not_after(), "new certificate installed");
        let _ = self.shared.events.send(CertEvent::Installed {
            at: clock.wall(),
            certificate: info,
            replaced,
        });
    }

    fn reject(&self, version: Option<Version>, error: CertError) {
        let serving = self.shared.serving.load().info.serial().to_owned();
        tracing::warn!(target: "keyrack_rustls", version = ?version.as_ref().map(Version::as_str),
            serving = %serving, error = %error, "certificate refused; the one served is kept");
        let _ = self.shared.events.send(CertEvent::Rejected {
            at: self.shared.clock.wall(),
            version,
            error,
            serving,
        });
    }

    fn expired(&mut self) {
        let clock = &self.shared.clock;
        let served = self.shared.serving.load();
        let now = clock.wall();
        if now < served.info.not_after() {
            // The wall clock was set back since the deadline was computed.
            self.expiry = Some(clock.deadline_for(served.info.not_after()));
            return;
        }
        self.expiry = None;
        tracing::warn!(target: "keyrack_rustls", serial = served.info.serial(),
            "certificate expired with no acceptable replacement; handshakes get none");
        let _ = self.shared.events.send(CertEvent::Expired {
            at: now,
            certificate: served.info.clone(),
        });
    }
}

/// Whether a handle of the source changed (`false`: the client was shut down).
async fn changed(parts: &mut Parts) -> bool {
    match parts {
        Parts::Fields { handle, .. }
        | Parts::Pem {
            cert: handle,
            key: None,
        } => handle.changed().await.is_ok(),
        Parts::Pem {
            cert,
            key: Some(key),
        } => tokio::select! {
            r = cert.changed() => r.is_ok(),
            r = key.changed() => r.is_ok(),
        },
    }
}

/// Completes at `deadline` on `clock`; never without one.
fn at(clock: &dyn Clock, deadline: Option<Instant>) -> impl Future<Output = ()> + use<> {
    let sleep = deadline.map(|d| clock.sleep_until(d));
    async move {
        match sleep {
            Some(sleep) => sleep.await,
            None => std::future::pending().await,
        }
    }
}
