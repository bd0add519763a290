//! [`PoolError`]: what went wrong, as a kind a program can match on.

use std::fmt;

/// What kind of failure a [`PoolError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolErrorKind {
    /// The secret is not database credentials: not a JSON object with string `username` and
    /// `password` members.
    InvalidCredentials,
    /// The database refused the credentials (SQLSTATE class 28: wrong password, role without
    /// `LOGIN`, role dropped, `VALID UNTIL` passed).
    Refused,
    /// The credentials the pool connects with reached the end of their lease (less the expiry
    /// margin) and no usable replacement arrived: no connection is handed out until one does.
    Expired,
    /// The database could not be reached, or did not answer in time.
    Unavailable,
    /// The pool was closed.
    Closed,
    /// Any other database or driver error.
    Database,
}

impl PoolErrorKind {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(self, PoolErrorKind::Expired | PoolErrorKind::Unavailable)
    }
}

/// An error from a [`RotatingPgPool`](crate::RotatingPgPool).
///
/// Its message is fixed text chosen here; the cause (a driver error, a `keyrack_core::Error`)
/// is its [`source`](std::error::Error::source). Neither quotes a password: PostgreSQL's own
/// messages name the user at most, and the driver's options are never formatted.
pub struct PoolError {
    kind: PoolErrorKind,
    message: &'static str,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PoolError {
    pub(crate) fn new(kind: PoolErrorKind, message: &'static str) -> Self {
        PoolError {
            kind,
            message,
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Classify a driver error: authentication failures (SQLSTATE class 28) are
    /// [`PoolErrorKind::Refused`], I/O and timeouts [`PoolErrorKind::Unavailable`].
    pub(crate) fn from_sqlx(error: sqlx::Error, context: &'static str) -> Self {
        let kind = match &error {
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")) => {
                PoolErrorKind::Refused
            }
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                PoolErrorKind::Unavailable
            }
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => PoolErrorKind::Closed,
            _ => PoolErrorKind::Database,
        };
        PoolError::new(kind, context).with_source(error)
    }

    /// The kind of failure.
    pub fn kind(&self) -> PoolErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl Clone for PoolError {
    /// The clone keeps the kind and message; the cause is kept as its text (the driver's errors
    /// are not `Clone`), which never holds a password either.
    fn clone(&self) -> Self {
        PoolError {
            kind: self.kind,
            message: self.message,
            source: self
                .source
                .as_ref()
                .map(|s| Box::<dyn std::error::Error + Send + Sync>::from(s.to_string())),
        }
    }
}

impl fmt::Debug for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
