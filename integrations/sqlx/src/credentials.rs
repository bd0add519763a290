//! Reading a username and password out of a secret and into the driver's connect options.

use std::time::{Duration, SystemTime};

use keyrack_core::{Secret, Version};
use sqlx::postgres::PgConnectOptions;

use crate::error::{PoolError, PoolErrorKind};

/// Which issued credential a value is: its lease id when leased (a renewal keeps it, a re-issue
/// changes it), else its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CredentialId {
    Lease(String),
    Version(Version),
    Unversioned,
}

impl CredentialId {
    pub(crate) fn of(secret: &Secret) -> Self {
        match (secret.lease(), secret.version()) {
            (Some(lease), _) => CredentialId::Lease(lease.id.clone()),
            (None, Some(v)) => CredentialId::Version(v.clone()),
            (None, None) => CredentialId::Unversioned,
        }
    }
}

/// Credentials applied to connect options.
pub(crate) struct Applied {
    pub(crate) id: CredentialId,
    pub(crate) version: Option<Version>,
    /// The username (not a secret: PostgreSQL shows it in `pg_stat_activity`).
    pub(crate) user: String,
    /// When these credentials stop working (lease end or expiry), if they do.
    pub(crate) ends: Option<SystemTime>,
    /// The lease's TTL when issued, if leased.
    pub(crate) ttl: Option<Duration>,
    /// Whether the lease may be renewed (`true` when not leased).
    pub(crate) renewable: bool,
    pub(crate) options: PgConnectOptions,
}

/// `base` with the `username` and `password` members of `secret` (a JSON object, as Vault's
/// database secrets engine issues).
///
/// The password is read from the secret's zeroized buffer as a `&str` and handed to
/// [`PgConnectOptions::password`], which keeps its own copy in a plain `String` (sqlx has no
/// zeroizing type): that copy lives as long as the options, and is not wiped when they drop.
pub(crate) fn apply(base: &PgConnectOptions, secret: &Secret) -> Result<Applied, PoolError> {
    let invalid = |e: keyrack_core::Error| {
        PoolError::new(
            PoolErrorKind::InvalidCredentials,
            "the secret is not a JSON object with string `username` and `password` members",
        )
        .with_source(e)
    };
    // `field` copies each member into its own zeroized buffer; nothing here makes a `String`
    // of the password.
    let user = secret.field("username").map_err(invalid)?;
    let password = secret.field("password").map_err(invalid)?;
    let user = user.expose_str().map_err(invalid)?.to_owned();
    let options = base
        .clone()
        .username(&user)
        .password(password.expose_str().map_err(invalid)?);
    Ok(Applied {
        id: CredentialId::of(secret),
        version: secret.version().cloned(),
        user,
        ends: secret.hard_expiry(),
        ttl: secret.lease().map(|l| l.ttl),
        renewable: secret.lease().is_none_or(|l| l.renewable),
        options,
    })
}
