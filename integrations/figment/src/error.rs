//! [`ConfigError`]: why a configuration's secret references did not resolve, key by key.

use std::fmt;

use figment::{Metadata, Profile};
use keyrack_core::{ErrorKind, RefErrorKind, SecretRef};

/// Why [`resolve`](crate::resolve) failed.
///
/// Every failing key is reported, not only the first: a configuration with three bad references
/// is fixed in one round. No variant holds or prints a secret value, nor the text of a
/// placeholder that did not parse (it may be a value pasted where a reference belongs).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration itself did not load (a file that does not parse, say): figment's own
    /// error, as [`Figment::extract`](figment::Figment::extract) would have returned it. It is
    /// raised before any secret is fetched, so it quotes no secret value.
    Load(Box<figment::Error>),
    /// One or more keys hold a reference that could not be resolved.
    Secrets(Vec<Problem>),
}

impl ConfigError {
    /// The keys that failed, in profile and key order (empty for [`ConfigError::Load`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Load(_) => &[],
            ConfigError::Secrets(p) => p,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Load(e) => write!(f, "the configuration did not load: {e}"),
            ConfigError::Secrets(problems) => {
                match problems.len() {
                    1 => f.write_str("1 configuration value did not resolve:")?,
                    n => write!(f, "{n} configuration values did not resolve:")?,
                }
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Load(e) => Some(&**e),
            ConfigError::Secrets(p) => p
                .first()
                .and_then(|p| p.cause.as_ref())
                .map(|e| e as &(dyn std::error::Error + 'static)),
        }
    }
}

/// One key whose reference did not resolve: which key, in which profile, where its value came
/// from, and why.
#[derive(Clone)]
pub struct Problem {
    pub(crate) profile: Profile,
    pub(crate) key: Vec<String>,
    pub(crate) metadata: Option<Metadata>,
    pub(crate) reference: Option<SecretRef>,
    pub(crate) kind: ProblemKind,
    pub(crate) cause: Option<keyrack_core::Error>,
}

/// Why a key's reference did not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The text after `secret:` is not a reference (see [`RefErrorKind`]); the text itself is
    /// never shown.
    InvalidReference(RefErrorKind),
    /// The reference names a source no client source is registered under.
    UnregisteredSource {
        /// The reference's source (its scheme), e.g. `vault-eu`.
        source: String,
    },
    /// The secret, its version or its field does not exist.
    NotFound,
    /// The source refused: the caller may not read it.
    PermissionDenied,
    /// The source refused the caller's credentials.
    Unauthenticated,
    /// The source could not be reached, did not answer in time, or asked to slow down.
    Unreachable,
    /// The secret is not UTF-8 text, which a resolved configuration value must be (a live key's
    /// value may be binary: it stays behind its handle).
    NotText,
    /// The key was named live ([`Resolver::live`](crate::Resolver::live)) but holds a value
    /// that is not a `secret:` reference.
    NotAReference,
    /// Any other failure the client reported, by its kind.
    Other(ErrorKind),
}

impl ProblemKind {
    pub(crate) fn from_error(e: &keyrack_core::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound | ErrorKind::Deleted => ProblemKind::NotFound,
            ErrorKind::PermissionDenied => ProblemKind::PermissionDenied,
            ErrorKind::Unauthenticated => ProblemKind::Unauthenticated,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Throttled => {
                ProblemKind::Unreachable
            }
            other => ProblemKind::Other(other.clone()),
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::InvalidReference(k) => write!(f, "invalid secret reference: {k}"),
            ProblemKind::UnregisteredSource { source } => {
                write!(f, "no secret source is registered as `{source}`")
            }
            ProblemKind::NotFound => f.write_str("secret not found"),
            ProblemKind::PermissionDenied => f.write_str("permission to read the secret denied"),
            ProblemKind::Unauthenticated => {
                f.write_str("the secret source refused our credentials")
            }
            ProblemKind::Unreachable => f.write_str("the secret source could not be reached"),
            ProblemKind::NotText => f.write_str("the secret is not UTF-8 text"),
            ProblemKind::NotAReference => {
                f.write_str("the key is to be live but holds no `secret:` reference")
            }
            ProblemKind::Other(kind) => write!(f, "the secret could not be read ({kind:?})"),
        }
    }
}

impl Problem {
    /// The key's path, dot-separated (`db.password`; array items by index, `hosts.0`).
    pub fn key(&self) -> String {
        self.key.join(".")
    }

    /// The profile the key is in.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Where the value came from (the provider's name and source: a file's path, an
    /// environment prefix), when figment knows.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The key as its source spells it (`APP_DB_PASSWORD` for an environment variable), when
    /// the source says.
    pub fn native_key(&self) -> Option<String> {
        self.metadata
            .as_ref()
            .map(|m| m.interpolate(&self.profile, &self.key))
    }

    /// The reference, when it parsed.
    pub fn reference(&self) -> Option<&SecretRef> {
        self.reference.as_ref()
    }

    /// Why it failed.
    pub fn kind(&self) -> &ProblemKind {
        &self.kind
    }

    /// The client's error, for a failed fetch (free of secret values, like every keyrack error).
    pub fn cause(&self) -> Option<&keyrack_core::Error> {
        self.cause.as_ref()
    }

    /// Whether loading again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        self.kind == ProblemKind::Unreachable
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.key())?;
        if let Some(m) = &self.metadata {
            // Shown when the source spells the key its own way (an environment variable).
            let native = m.interpolate(&self.profile, &self.key);
            let key = self.key();
            if native == key || native == format!("{}.{key}", self.profile) {
                write!(f, " (in {}", m.name)?;
            } else {
                write!(f, " (`{native}` in {}", m.name)?;
            }
            if let Some(source) = &m.source {
                write!(f, " `{source}`")?;
            }
            f.write_str(")")?;
        }
        if self.profile != Profile::Default {
            write!(f, " in profile `{}`", self.profile)?;
        }
        write!(f, ": {}", self.kind)?;
        if let Some(r) = &self.reference {
            write!(f, " [ref `{}`]", r.shown())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Problem")
            .field("key", &self.key())
            .field("profile", &self.profile.as_str())
            .field("from", &self.metadata.as_ref().map(|m| &m.name))
            .field("reference", &self.reference.as_ref().map(SecretRef::shown))
            .field("kind", &self.kind)
            .field("cause", &self.cause)
            .finish()
    }
}
