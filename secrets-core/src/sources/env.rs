//! [`EnvSource`]: `env://VAR`, the process environment read at call time.

use std::ffi::OsString;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::stream::BoxStream;

use crate::error::{Error, ErrorKind, Result};
use crate::reference::SecretRef;
use crate::secret::{Lease, Secret, Version};
use crate::source::{Capabilities, SecretSource, SourceEvent, fetch_each};
use crate::value::SecretValue;

/// Environment variables: `env://DB_URL` reads `DB_URL`.
///
/// The variable is read on every fetch, so a value set after startup is seen by the next check.
/// Values are unversioned (the engine compares bytes to detect a change); on unix they may be any
/// bytes but NUL, so the source does not declare the `binary` capability. The environment of a process is readable by anyone who can read `/proc/<pid>/environ`:
/// this source exists for local development and for values injected by a platform, not as a
/// place to keep secrets.
#[derive(Clone, Debug, Default)]
pub struct EnvSource {
    _private: (),
}

impl EnvSource {
    /// A source reading this process's environment.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The variable a reference names, after checking it is one `std::env` can look up.
fn variable_name(r: &SecretRef) -> Result<&str> {
    if r.selector().is_some() {
        return Err(Error::unsupported(
            "environment variables have no versions or stages: remove `?version=`/`?stage=`",
        ));
    }
    if let Some((key, _)) = r.params().first() {
        return Err(Error::unsupported(format!(
            "the env source takes no query parameters (got `{key}`)"
        )));
    }
    let name = r.path();
    // `std::env::var_os` answers `None` for such names, as no variable can have one: say the
    // reference is wrong rather than that the variable is missing.
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(Error::new(
            ErrorKind::InvalidRef,
            format!(
                "`{}` is not a valid environment variable name",
                name.escape_debug()
            ),
        ));
    }
    Ok(name)
}

#[cfg(unix)]
fn into_value(value: OsString) -> Result<SecretValue> {
    use std::os::unix::ffi::OsStringExt;
    Ok(SecretValue::from_bytes(value.into_vec()))
}

#[cfg(not(unix))]
fn into_value(value: OsString) -> Result<SecretValue> {
    value
        .into_string()
        .map(SecretValue::from_string)
        .map_err(|_| Error::invalid_value("the environment variable's value is not Unicode"))
}

#[async_trait]
impl SecretSource for EnvSource {
    fn capabilities(&self) -> Capabilities {
        // Not `binary`: a variable cannot hold a NUL byte.
        Capabilities::NONE
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        let name = variable_name(r)?;
        match std::env::var_os(name) {
            Some(value) => Ok(Secret::new(into_value(value)?)),
            None => Err(Error::not_found(format!(
                "environment variable `{name}` is not set"
            ))),
        }
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        // One at a time: each fetch is a synchronous read that never yields.
        fetch_each(self, refs, 1).await
    }

    async fn version(&self, _r: &SecretRef) -> Result<Option<Version>> {
        Err(Error::unsupported(
            "environment variables are not versioned",
        ))
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(Error::unsupported("environment variables have no leases"))
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(Error::unsupported("environment variables have no leases"))
    }

    fn watch(&self, _r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        None
    }

    /// Nothing runs in the background.
    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_lookup() {
        let ok = SecretRef::new("env", "DB_URL").unwrap();
        assert_eq!(variable_name(&ok).unwrap(), "DB_URL");
        for bad in ["A=B", "A\0B"] {
            let r = SecretRef::new("env", bad).unwrap();
            assert_eq!(
                variable_name(&r).unwrap_err().kind(),
                &ErrorKind::InvalidRef
            );
        }
        let r = SecretRef::parse("env://A?x=1").unwrap();
        assert_eq!(
            variable_name(&r).unwrap_err().kind(),
            &ErrorKind::Unsupported
        );
    }

    #[test]
    fn capabilities_are_plain_fetch_only() {
        assert_eq!(EnvSource::new().capabilities(), Capabilities::NONE);
    }
}
