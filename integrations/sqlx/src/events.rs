//! [`PoolEvent`]s: what the pool did about a rotation. They carry versions and times, never a
//! username or password.

use std::fmt;
use std::time::SystemTime;

use keyrack_core::Version;

use crate::error::PoolError;

/// Something the pool did about the credentials it connects with.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PoolEvent {
    /// New credentials logged in and are now the pool's: connections are opened with them,
    /// idle connections on the replaced ones were closed, and the ones in use are closed when
    /// released.
    Applied {
        /// The version of the secret now used.
        version: Option<Version>,
        /// How many idle connections on the replaced credentials were closed at once.
        retired_idle: usize,
        /// When the replaced credentials' lease ends, if they were leased.
        replaced_lease_ends: Option<SystemTime>,
        /// The pool had been [`Expired`](PoolEvent::Expired) and hands out connections again.
        recovered: bool,
    },
    /// The handle holds new credentials but they could not be put in place (the database
    /// refused them, or could not be reached to try them): the pool keeps connecting with the
    /// credentials in use until `in_use_until`, and tries again meanwhile.
    ReplacementFailed {
        /// The version of the secret that could not be used.
        version: Option<Version>,
        /// Why.
        error: PoolError,
        /// Consecutive failures with this version.
        attempt: u32,
        /// When the pool stops using the credentials it has (their lease end less the expiry
        /// margin), if they end.
        in_use_until: Option<SystemTime>,
    },
    /// The credentials in use reached their end (less the expiry margin) with no usable
    /// replacement: idle connections were closed, and [`acquire`](crate::RotatingPgPool::acquire)
    /// fails with [`PoolErrorKind::Expired`](crate::PoolErrorKind::Expired) until new
    /// credentials are applied.
    Expired {
        /// The version that ended.
        version: Option<Version>,
    },
}

struct OptVersion<'a>(&'a Option<Version>);

impl fmt::Display for OptVersion<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "version {v}"),
            None => f.write_str("unversioned credentials"),
        }
    }
}

impl fmt::Display for PoolEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolEvent::Applied {
                version,
                retired_idle,
                recovered,
                ..
            } => {
                write!(
                    f,
                    "pool now connects with {} ({retired_idle} idle connections retired)",
                    OptVersion(version)
                )?;
                if *recovered {
                    f.write_str("; recovered from expiry")?;
                }
                Ok(())
            }
            PoolEvent::ReplacementFailed {
                version,
                error,
                attempt,
                ..
            } => write!(
                f,
                "{} not applied (attempt {attempt}), keeping the credentials in use: {error}",
                OptVersion(version)
            ),
            PoolEvent::Expired { version } => write!(
                f,
                "{} ended with no usable replacement; the pool hands out no connection",
                OptVersion(version)
            ),
        }
    }
}
