//! [`CertSource`]: where a certificate chain and its key come from: two fields of one secret, or
//! PEM in one or two secrets.

use std::fmt;

use keyrack_core::{SecretHandle, SecretValue, Version};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{CertError, CertErrorKind};

/// Where a [`RotatingCertificate`](crate::RotatingCertificate) reads its certificate chain and
/// private key: [handles](SecretHandle) the client keeps current.
///
/// | secret | source |
/// |---|---|
/// | Vault / OpenBao PKI issue (`vault://pki/issue/web?common_name=…&ttl=…`) | [`vault_pki`](Self::vault_pki): `certificate`, `private_key`, `ca_chain` |
/// | Kubernetes `kubernetes.io/tls` Secret (`k8s://ns/name`) | [`kubernetes_tls`](Self::kubernetes_tls): `tls.crt`, `tls.key` |
/// | PEM files (`file:///etc/tls/tls.crt` and `…/tls.key`) | [`pem`](Self::pem) |
/// | one PEM holding both (`file:///etc/tls/bundle.pem`) | [`pem_bundle`](Self::pem_bundle) |
/// | any secret that is a JSON object with two string members | [`fields`](Self::fields) |
///
/// Certificates are PEM (`-----BEGIN CERTIFICATE-----`), leaf first, followed by any
/// intermediates; keys are unencrypted PEM: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or
/// SEC1 (`EC PRIVATE KEY`).
pub struct CertSource {
    parts: Parts,
    chain_field: Option<String>,
}

pub(crate) enum Parts {
    /// Two (three) members of one JSON object.
    Fields {
        handle: SecretHandle,
        cert: String,
        key: String,
    },
    /// PEM text in one secret (both) or two.
    Pem {
        cert: SecretHandle,
        key: Option<SecretHandle>,
    },
}

impl CertSource {
    /// The members `cert_field` (the certificate PEM, leaf first, optionally followed by its
    /// chain) and `key_field` (the key PEM) of the JSON object `handle` holds. The handle reads
    /// the whole secret (no `#field` in its reference).
    pub fn fields(
        handle: SecretHandle,
        cert_field: impl Into<String>,
        key_field: impl Into<String>,
    ) -> Self {
        CertSource {
            parts: Parts::Fields {
                handle,
                cert: cert_field.into(),
                key: key_field.into(),
            },
            chain_field: None,
        }
    }

    /// A Vault / OpenBao PKI issue (`vault://pki/issue/<role>?common_name=…`): `certificate`,
    /// `private_key`, and the CA chain from `ca_chain`. The Vault source issues a certificate at
    /// each fetch and the client issues a new one at ⅔ of the way to the certificate's end.
    pub fn vault_pki(handle: SecretHandle) -> Self {
        Self::fields(handle, "certificate", "private_key").with_chain_field("ca_chain")
    }

    /// A Kubernetes `kubernetes.io/tls` Secret read through the `k8s://` source
    /// (`k8s://<namespace>/<name>`): `tls.crt` (leaf first, chain after it) and `tls.key`.
    pub fn kubernetes_tls(handle: SecretHandle) -> Self {
        Self::fields(handle, "tls.crt", "tls.key")
    }

    /// A certificate PEM (leaf first, chain after it) and a key PEM in two secrets: two files of
    /// a mounted Secret (`file:///etc/tls/tls.crt`, `file:///etc/tls/tls.key`) or any two
    /// references. The two change one after the other: a key that does not match the certificate
    /// while only one of them changed is given [`pair_settle`](crate::RotatingCertificateBuilder::pair_settle)
    /// to catch up before it is refused.
    pub fn pem(cert: SecretHandle, key: SecretHandle) -> Self {
        CertSource {
            parts: Parts::Pem {
                cert,
                key: Some(key),
            },
            chain_field: None,
        }
    }

    /// One PEM holding the certificate (leaf first), its chain and the key, in any order.
    pub fn pem_bundle(handle: SecretHandle) -> Self {
        CertSource {
            parts: Parts::Pem {
                cert: handle,
                key: None,
            },
            chain_field: None,
        }
    }

    /// Also read CA certificates to send after the leaf from the member `field` of a
    /// [`fields`](Self::fields) source, when the value has it: PEM text, or a JSON array of PEM
    /// strings (as Vault's `ca_chain`). Certificates already in the certificate field are not sent
    /// twice. A [`pem`](Self::pem) source has no fields: set on one, the resolver is refused with
    /// [`CertErrorKind::Config`].
    pub fn with_chain_field(mut self, field: impl Into<String>) -> Self {
        self.chain_field = Some(field.into());
        self
    }

    pub(crate) fn parts_mut(&mut self) -> &mut Parts {
        &mut self.parts
    }

    pub(crate) fn check(&self) -> Result<(), CertError> {
        if matches!(self.parts, Parts::Pem { .. }) && self.chain_field.is_some() {
            return Err(CertError::new(
                CertErrorKind::Config,
                "a chain field was set on a PEM source, which has no fields: put the chain after \
                 the leaf in the certificate PEM",
            ));
        }
        Ok(())
    }

    /// Whether the certificate and the key come from two secrets.
    pub(crate) fn is_pair(&self) -> bool {
        matches!(self.parts, Parts::Pem { key: Some(_), .. })
    }

    /// What the handles hold now.
    pub(crate) fn read(&self) -> Result<Material, CertError> {
        match &self.parts {
            Parts::Fields { handle, cert, key } => {
                let secret = handle.current().clone();
                let field = |name: &str, what: &str| {
                    secret.value().field(name).map_err(|_| {
                        CertError::new(
                            CertErrorKind::MissingField,
                            format!(
                                "the {what} field `{name}` is not in the value of `{}` (or the \
                                 value is not a JSON object)",
                                handle.reference()
                            ),
                        )
                    })
                };
                let cert_pem = field(cert, "certificate")?;
                let key_pem = field(key, "key")?;
                let chain = match &self.chain_field {
                    Some(name) => match secret.value().field(name) {
                        Ok(text) => chain_certificates(&text, name)?,
                        // Optional: a certificate issued by a root the clients hold needs none.
                        Err(_) => Vec::new(),
                    },
                    None => Vec::new(),
                };
                Ok(Material {
                    cert_pem,
                    key_pem,
                    chain,
                    version: secret.version().cloned(),
                    origin: Origin {
                        cert: secret.value().clone(),
                        key: None,
                    },
                })
            }
            Parts::Pem { cert, key } => {
                let cert_secret = cert.current().clone();
                let key_secret = key.as_ref().map(|k| k.current().clone());
                let key_pem = key_secret
                    .as_ref()
                    .map_or_else(|| cert_secret.value().clone(), |k| k.value().clone());
                Ok(Material {
                    cert_pem: cert_secret.value().clone(),
                    key_pem,
                    chain: Vec::new(),
                    version: cert_secret.version().cloned(),
                    origin: Origin {
                        cert: cert_secret.value().clone(),
                        key: key_secret.map(|k| k.value().clone()),
                    },
                })
            }
        }
    }

    /// The version of the certificate's secret now (for events about a value that could not be
    /// read).
    pub(crate) fn version(&self) -> Option<Version> {
        match &self.parts {
            Parts::Fields { handle, .. } | Parts::Pem { cert: handle, .. } => {
                handle.current().version().cloned()
            }
        }
    }
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.parts {
            Parts::Fields { handle, cert, key } => f
                .debug_struct("CertSource::Fields")
                .field("secret", &format_args!("{}", handle.reference()))
                .field("cert", cert)
                .field("key", key)
                .field("chain", &self.chain_field)
                .finish(),
            Parts::Pem { cert, key } => f
                .debug_struct("CertSource::Pem")
                .field("cert", &format_args!("{}", cert.reference()))
                .field(
                    "key",
                    &format_args!("{}", key.as_ref().unwrap_or(cert).reference()),
                )
                .finish(),
        }
    }
}

/// What a source held at one moment: the PEM texts (zeroized on drop) and the values they were
/// read from, to tell a change from the same value seen again.
pub(crate) struct Material {
    pub(crate) cert_pem: SecretValue,
    pub(crate) key_pem: SecretValue,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The version of the certificate's secret.
    pub(crate) version: Option<Version>,
    pub(crate) origin: Origin,
}

/// The values a [`Material`] was read from (shared with the handles, not copied).
#[derive(Clone)]
pub(crate) struct Origin {
    cert: SecretValue,
    /// The key's secret, when it is another one.
    key: Option<SecretValue>,
}

impl Origin {
    pub(crate) fn same_as(&self, other: &Origin) -> bool {
        self.cert.shares_allocation_with(&other.cert)
            && match (&self.key, &other.key) {
                (Some(a), Some(b)) => a.shares_allocation_with(b),
                (None, None) => true,
                _ => false,
            }
    }

    /// For a pair of secrets: whether exactly one of the two differs from `other`.
    pub(crate) fn one_side_differs(&self, other: &Origin) -> bool {
        match (&self.key, &other.key) {
            (Some(a), Some(b)) => {
                let cert_moved = !self.cert.shares_allocation_with(&other.cert);
                let key_moved = !a.shares_allocation_with(b);
                cert_moved != key_moved
            }
            _ => false,
        }
    }
}

/// The CA certificates of a chain member: PEM text, or a JSON array of PEM strings.
fn chain_certificates(
    text: &SecretValue,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = text.expose_bytes();
    let unparsable = || {
        CertError::new(
            CertErrorKind::Unparsable,
            format!(
                "the chain field `{name}` is neither PEM certificates nor a JSON array of them"
            ),
        )
    };
    let pem_certs = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| unparsable())
    };
    if bytes.trim_ascii_start().starts_with(b"[") {
        // CA certificates are public: plain strings are fine here.
        let list: Vec<String> = serde_json::from_slice(bytes).map_err(|_| unparsable())?;
        let mut out = Vec::new();
        for pem in &list {
            let certs = pem_certs(pem.as_bytes())?;
            if certs.is_empty() {
                return Err(unparsable());
            }
            out.extend(certs);
        }
        Ok(out)
    } else {
        pem_certs(bytes)
    }
}
