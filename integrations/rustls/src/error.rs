//! [`CertError`]: why a certificate and key were refused, as a kind a program can match on.

use std::fmt;
use std::time::SystemTime;

/// Why a certificate and key were refused (or a resolver could not be built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertErrorKind {
    /// A field the source names is not in the secret's value (or the value is not a JSON
    /// object): the certificate or key field of a [`CertSource::fields`](crate::CertSource::fields)
    /// source, say `tls.crt` read from a secret that has `certificate`.
    MissingField,
    /// The certificate PEM holds no certificate.
    MissingCertificate,
    /// The key PEM holds no private key: a certificate without its key.
    MissingKey,
    /// A certificate or key is not what it claims to be: bad PEM, bad base64, DER that is not
    /// an X.509 certificate or a private key, a chain field that is neither PEM nor a JSON array
    /// of PEM strings.
    Unparsable,
    /// The key is well formed but the crypto provider cannot sign with it (an algorithm or size
    /// it does not support).
    UnsupportedKey,
    /// The private key does not belong to the certificate: it is the key of another one.
    KeyMismatch,
    /// The certificate's validity ended (`notAfter` is past).
    Expired,
    /// The certificate's validity has not begun (`notBefore` is ahead). A new certificate in this
    /// state is put in place when its validity begins, if it is still the source's value then.
    NotYetValid,
    /// The resolver was misconfigured (built outside a Tokio runtime, a chain field on a PEM
    /// source).
    Config,
}

impl CertErrorKind {
    fn describe(self) -> &'static str {
        match self {
            CertErrorKind::MissingField => "a field is missing",
            CertErrorKind::MissingCertificate => "no certificate",
            CertErrorKind::MissingKey => "no private key",
            CertErrorKind::Unparsable => "unparsable",
            CertErrorKind::UnsupportedKey => "unsupported key",
            CertErrorKind::KeyMismatch => "the key does not match the certificate",
            CertErrorKind::Expired => "expired",
            CertErrorKind::NotYetValid => "not yet valid",
            CertErrorKind::Config => "configuration",
        }
    }
}

/// A certificate and key refused, or a resolver that could not be built.
///
/// The message is written here from fixed text and facts that are public anyway (field names
/// from the configuration, a certificate's validity dates and serial number); it never quotes the
/// PEM, the key, or a parser's message (PEM errors carry a line of the input, which may be a
/// line of the key).
#[derive(Clone, PartialEq, Eq)]
pub struct CertError {
    kind: CertErrorKind,
    message: String,
    not_before: Option<SystemTime>,
    not_after: Option<SystemTime>,
}

impl CertError {
    pub(crate) fn new(kind: CertErrorKind, message: impl Into<String>) -> Self {
        CertError {
            kind,
            message: message.into(),
            not_before: None,
            not_after: None,
        }
    }

    pub(crate) fn with_validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = Some(not_before);
        self.not_after = Some(not_after);
        self
    }

    /// What was wrong.
    pub fn kind(&self) -> CertErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For [`Expired`](CertErrorKind::Expired) and [`NotYetValid`](CertErrorKind::NotYetValid):
    /// the certificate's `notBefore`.
    pub fn not_before(&self) -> Option<SystemTime> {
        self.not_before
    }

    /// For [`Expired`](CertErrorKind::Expired) and [`NotYetValid`](CertErrorKind::NotYetValid):
    /// the certificate's `notAfter`.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }
}

impl fmt::Debug for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.describe(), self.message)
    }
}

impl std::error::Error for CertError {}
