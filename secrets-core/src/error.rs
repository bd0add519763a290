//! One error type for every source and the engine, classified by [`ErrorKind`].
//!
//! Errors name the reference and the source they concern, never a secret value: constructors take
//! a message written by the library, and causes are only ever the transport's or parser's own
//! errors (never an error built from secret bytes; see [`crate::value`] for how JSON errors are
//! scrubbed).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::reference::{RefError, SecretRef};

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The secret (or the requested version) does not exist.
    NotFound,
    /// The caller is known but not allowed to read it.
    PermissionDenied,
    /// The caller's credentials are missing, invalid or expired.
    Unauthenticated,
    /// The backend asked us to slow down ([`Error::retry_after`] is its hint when it gave one).
    Throttled,
    /// The backend could not be reached or is not serving (down, sealed, standby).
    Unavailable,
    /// The reference is malformed, or names a source that is not registered.
    InvalidRef,
    /// The value is not what was asked for (not UTF-8, not the JSON expected, no such field).
    InvalidValue,
    /// The source cannot do this (e.g. renew on a source without leases).
    Unsupported,
    /// The value or lease is past its hard expiry and could not be replaced.
    Expired,
    /// The secret exists but was deleted or destroyed (a soft-deleted version, a secret scheduled
    /// for deletion).
    Deleted,
    /// The secret exists but is disabled.
    Disabled,
    /// The payload failed an integrity check (checksum mismatch, decryption failure).
    Corrupted,
    /// The operation did not complete in time.
    Timeout,
    /// The configuration is invalid (builder input, environment).
    Config,
    /// The client was shut down.
    Shutdown,
    /// Any other backend failure.
    Backend,
}

impl ErrorKind {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout
        )
    }

    fn describe(&self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "backend unavailable",
            ErrorKind::InvalidRef => "invalid reference",
            ErrorKind::InvalidValue => "invalid value",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Expired => "expired",
            ErrorKind::Deleted => "deleted",
            ErrorKind::Disabled => "disabled",
            ErrorKind::Corrupted => "corrupted",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Shutdown => "client shut down",
            ErrorKind::Backend => "backend error",
        }
    }
}

/// An error from a source or the engine. Cheap to clone (shared by every waiter of a
/// single-flight load) and free of secret values.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source_name: Option<String>,
    reference: Option<SecretRef>,
    /// How long the backend asked us to wait (`Retry-After`, `retryAfterSeconds`, …).
    retry_after: Option<Duration>,
    cause: Option<Box<dyn StdError + Send + Sync>>,
    /// Refused by the client's own request budget: the backend never saw the request.
    budget_refusal: bool,
}

impl Error {
    /// A new error of `kind` with a message written by the library (never include a value).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source_name: None,
                reference: None,
                retry_after: None,
                cause: None,
                budget_refusal: false,
            }),
        }
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for [`ErrorKind::InvalidValue`].
    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidValue, message)
    }

    /// Shorthand for [`ErrorKind::Throttled`], with the backend's hint when it gave one.
    pub fn throttled(retry_after: Option<Duration>, message: impl Into<String>) -> Self {
        let e = Self::new(ErrorKind::Throttled, message);
        match retry_after {
            Some(d) => e.with_retry_after(d),
            None => e,
        }
    }

    /// Record how long the backend asked us to wait before trying again (a 429's or a 503's
    /// `Retry-After`): the client waits at least that long, whatever the kind.
    pub fn with_retry_after(self, wait: Duration) -> Self {
        self.map_inner(|i| i.retry_after = Some(wait))
    }

    /// Attach the underlying error (a transport or parser error, never one carrying a value).
    pub fn with_cause(self, cause: impl StdError + Send + Sync + 'static) -> Self {
        self.map_inner(|i| i.cause = Some(Box::new(cause)))
    }

    /// Name the reference this error concerns.
    pub fn with_ref(self, r: &SecretRef) -> Self {
        self.map_inner(|i| i.reference = Some(r.clone()))
    }

    /// Name the source (the registered name, e.g. `vault-eu`) this error came from.
    pub fn with_source_name(self, name: impl Into<String>) -> Self {
        self.map_inner(|i| i.source_name = Some(name.into()))
    }

    fn map_inner(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            // Shared: rebuild without the cause, which cannot be cloned; keep its text.
            Err(shared) => Inner {
                kind: shared.kind.clone(),
                message: match &shared.cause {
                    Some(c) => format!("{}: {c}", shared.message),
                    None => shared.message.clone(),
                },
                source_name: shared.source_name.clone(),
                reference: shared.reference.clone(),
                retry_after: shared.retry_after,
                cause: None,
                budget_refusal: shared.budget_refusal,
            },
        };
        f(&mut inner);
        Error {
            inner: Arc::new(inner),
        }
    }

    /// A [`Throttled`](ErrorKind::Throttled) error of the client's own making: the source's
    /// request budget had no room for the request within the request timeout, so it was never
    /// sent. The backend did not refuse anything; such errors do not cut the budget's rate.
    pub fn is_budget_refusal(&self) -> bool {
        self.inner.budget_refusal
    }

    pub(crate) fn marked_budget_refusal(self) -> Self {
        self.map_inner(|i| i.budget_refusal = true)
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// Whether trying again later may succeed (throttling, unavailability, timeouts).
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// How long the backend asked us to wait before trying again, when it said (a throttling
    /// answer's or an outage's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The reference this error concerns, when known.
    pub fn reference(&self) -> Option<&SecretRef> {
        self.inner.reference.as_ref()
    }

    /// The registered source name this error came from, when known.
    pub fn source_name(&self) -> Option<&str> {
        self.inner.source_name.as_deref()
    }

    /// The library's message, without kind, ref or source.
    pub fn message(&self) -> &str {
        &self.inner.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.write_str(i.kind.describe())?;
        if let Some(d) = i.retry_after {
            write!(f, " (retry after {d:?})")?;
        }
        if !i.message.is_empty() {
            write!(f, ": {}", i.message)?;
        }
        if let Some(r) = &i.reference {
            write!(f, " [ref `{}`", r.shown())?;
            if let Some(s) = &i.source_name {
                write!(f, ", source `{s}`")?;
            }
            f.write_str("]")?;
        } else if let Some(s) = &i.source_name {
            write!(f, " [source `{s}`]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &i.kind).field("message", &i.message);
        if let Some(r) = &i.reference {
            d.field("ref", &format_args!("{}", r.shown()));
        }
        if let Some(s) = &i.source_name {
            d.field("source", s);
        }
        if let Some(w) = &i.retry_after {
            d.field("retry_after", w);
        }
        if let Some(c) = &i.cause {
            d.field("cause", &format_args!("{c}"));
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .cause
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

impl From<RefError> for Error {
    fn from(e: RefError) -> Self {
        Error::new(ErrorKind::InvalidRef, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_ref_and_source() {
        let r = SecretRef::parse("vault://secret/app#key").unwrap();
        let e = Error::not_found("no such secret")
            .with_ref(&r)
            .with_source_name("vault");
        assert_eq!(
            e.to_string(),
            "not found: no such secret [ref `vault://secret/app#key`, source `vault`]"
        );
        assert_eq!(e.kind(), &ErrorKind::NotFound);
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_long_reference_is_cut() {
        let long = format!("aws-sm://{}", "k".repeat(3000));
        let r = SecretRef::parse(&long).unwrap();
        let e = Error::new(ErrorKind::InvalidRef, "too long").with_ref(&r);
        let shown = format!("{e} {e:?}");
        assert!(shown.len() < 400, "{shown}");
        assert!(shown.contains("(3009 bytes)"), "{shown}");
    }

    #[test]
    fn throttled_is_retryable_and_keeps_hint() {
        let e = Error::throttled(Some(Duration::from_secs(2)), "slow down");
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(e.to_string().contains("retry after 2s"));
    }

    #[test]
    fn any_kind_carries_a_retry_hint() {
        let e = Error::new(ErrorKind::Unavailable, "503").with_retry_after(Duration::from_secs(4));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
        assert!(e.is_retryable());
        let shared = e.clone();
        assert_eq!(
            shared.with_source_name("vault").retry_after(),
            Some(Duration::from_secs(4))
        );
    }

    #[test]
    fn shared_error_keeps_cause_text_when_annotated() {
        let e = Error::new(ErrorKind::Backend, "request failed")
            .with_cause(std::io::Error::other("connection reset"));
        let shared = e.clone();
        let annotated = shared.with_source_name("aws");
        assert!(annotated.to_string().contains("connection reset"));
        assert!(e.source().is_some());
    }
}
