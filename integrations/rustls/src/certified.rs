//! Turning PEM into a [`CertifiedKey`] rustls can serve, refusing anything known to be wrong:
//! no certificate, no key, unparsable input, a key the provider cannot use or that belongs to
//! another certificate, a leaf outside its validity.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyrack_core::Version;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};

use crate::error::{CertError, CertErrorKind};

/// Facts about a certificate that every handshake shows anyway: its serial number and validity.
#[derive(Clone, PartialEq, Eq)]
pub struct CertInfo {
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    version: Option<Version>,
}

impl CertInfo {
    /// The leaf's serial number, as lowercase hex bytes separated by colons, without leading
    /// zero bytes: the form Vault gives as `serial_number` (and as the secret's version).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the leaf's validity: it is not served from then on.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The version of the secret it was read from (Vault PKI: the serial number; a Kubernetes
    /// Secret or a file: its own version).
    pub fn version(&self) -> Option<&Version> {
        self.version.as_ref()
    }
}

impl fmt::Debug for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertInfo")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("version", &self.version)
            .finish()
    }
}

/// A checked certificate chain and key.
pub(crate) struct Checked {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// The PEM a source held, checked at `now`. `chain` is sent after the certificates of
/// `cert_pem` (those already there are skipped).
pub(crate) fn check(
    cert_pem: &[u8],
    chain: &[CertificateDer<'static>],
    key_pem: &[u8],
    version: Option<Version>,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Checked, CertError> {
    let mut certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            CertError::new(
                CertErrorKind::Unparsable,
                format!("the certificate PEM is malformed ({})", pem_reason(&e)),
            )
        })?;
    if certs.is_empty() {
        return Err(CertError::new(
            CertErrorKind::MissingCertificate,
            "the certificate PEM holds no `CERTIFICATE` section",
        ));
    }
    for ca in chain {
        if !certs.contains(ca) {
            certs.push(ca.clone());
        }
    }
    // The key's bytes never reach a message: PEM errors carry a line of the input.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => CertError::new(
            CertErrorKind::MissingKey,
            "the key PEM holds no unencrypted private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or \
             `EC PRIVATE KEY` section): a certificate without its key",
        ),
        e => CertError::new(
            CertErrorKind::Unparsable,
            format!("the key PEM is malformed ({})", pem_reason(&e)),
        ),
    })?;

    let (serial, not_before, not_after) = leaf_facts(&certs[0])?;
    for (i, ca) in certs.iter().enumerate().skip(1) {
        // Validity of the chain is the client's to judge (an expired cross-signed root in a
        // bundle must not make the server refuse a good leaf); only its form is checked.
        if x509_parser::parse_x509_certificate(ca).is_err() {
            return Err(CertError::new(
                CertErrorKind::Unparsable,
                format!(
                    "certificate {} of the chain (after the leaf) is not X.509",
                    i
                ),
            ));
        }
    }

    let signing_key = provider.key_provider.load_private_key(key).map_err(|_| {
        CertError::new(
            CertErrorKind::UnsupportedKey,
            "the private key is not one the crypto provider can sign with (algorithm, curve or \
             size), or its DER is malformed",
        )
    })?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        // As rustls' own `CertifiedKey::from_der`: a provider that cannot tell is not a refusal.
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::new(
                CertErrorKind::KeyMismatch,
                format!(
                    "the private key is not the key of the certificate (serial {serial}): it \
                     belongs to another certificate"
                ),
            ));
        }
        Err(_) => {
            return Err(CertError::new(
                CertErrorKind::Unparsable,
                format!("the certificate (serial {serial}) is not a well-formed X.509 leaf"),
            ));
        }
    }

    if now >= not_after {
        return Err(CertError::new(
            CertErrorKind::Expired,
            format!(
                "the certificate (serial {serial}) ended {} ago",
                Secs(now.duration_since(not_after).unwrap_or_default())
            ),
        )
        .with_validity(not_before, not_after));
    }
    if now < not_before {
        return Err(CertError::new(
            CertErrorKind::NotYetValid,
            format!(
                "the certificate (serial {serial}) begins in {}",
                Secs(not_before.duration_since(now).unwrap_or_default())
            ),
        )
        .with_validity(not_before, not_after));
    }
    Ok(Checked {
        key: Arc::new(certified),
        info: CertInfo {
            serial,
            not_before,
            not_after,
            version,
        },
    })
}

/// The leaf's serial number and validity.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(String, SystemTime, SystemTime), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| {
        CertError::new(
            CertErrorKind::Unparsable,
            "the first certificate of the PEM is not X.509",
        )
    })?;
    let validity = cert.validity();
    Ok((
        serial_text(cert.raw_serial()),
        unix_time(validity.not_before.timestamp()),
        unix_time(validity.not_after.timestamp()),
    ))
}

/// Serial bytes as Vault writes them: `3a:0f:…`, leading zero bytes (DER's sign padding) dropped.
pub(crate) fn serial_text(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let bytes = raw.get(start..).unwrap_or_default();
    if bytes.is_empty() {
        return "00".into();
    }
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unix_time(secs: i64) -> SystemTime {
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.unwrap_or(SystemTime::UNIX_EPOCH)
}

fn pem_reason(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::NoItemsFound => "nothing found",
        pem::Error::MissingSectionEnd { .. } | pem::Error::IllegalSectionStart { .. } => {
            "a section is not closed or is malformed"
        }
        pem::Error::Base64Decode(_) => "bad base64",
        _ => "unreadable",
    }
}

/// A duration in whole seconds, for messages.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} s", self.0.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_written_as_vault_writes_them() {
        assert_eq!(serial_text(&[0x00, 0x9a, 0x01]), "9a:01");
        assert_eq!(serial_text(&[0x01]), "01");
        assert_eq!(serial_text(&[0x00]), "00");
        assert_eq!(serial_text(&[]), "00");
    }

    #[test]
    fn times_before_1970_and_far_ahead_do_not_panic() {
        assert!(unix_time(-86_400) < SystemTime::UNIX_EPOCH);
        let _ = unix_time(i64::MAX);
        let _ = unix_time(i64::MIN);
    }
}
