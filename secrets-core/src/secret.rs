//! [`Secret`]: a value with the metadata the engine schedules by (version, expiry, lease).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::value::SecretValue;

/// A backend's identifier for one version of a secret (Vault KV version, AWS VersionId, Azure
/// version id, GCP version number, a file's generation). Opaque; compared for equality only.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Arc<str>);

impl Version {
    /// A version with this identifier.
    pub fn new(id: impl AsRef<str>) -> Self {
        Version(Arc::from(id.as_ref()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({:?})", &*self.0)
    }
}

impl From<&str> for Version {
    fn from(s: &str) -> Self {
        Version::new(s)
    }
}

impl From<String> for Version {
    fn from(s: String) -> Self {
        Version(Arc::from(s))
    }
}

/// A lease on a dynamic secret (Vault database credentials, …): it ends `ttl` after `issued_at`
/// unless renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The backend's lease id (not secret: it cannot be used to read the value).
    pub id: String,
    /// Time to live from `issued_at`.
    pub ttl: Duration,
    /// Whether the backend allows renewing it.
    pub renewable: bool,
    /// When the backend issued or last renewed it.
    pub issued_at: SystemTime,
}

impl Lease {
    /// A lease `id` of `ttl`, issued at `issued_at`.
    pub fn new(
        id: impl Into<String>,
        ttl: Duration,
        renewable: bool,
        issued_at: SystemTime,
    ) -> Self {
        Lease {
            id: id.into(),
            ttl,
            renewable,
            issued_at,
        }
    }

    /// When the lease ends unless renewed. A TTL longer than a hundred years (what the client
    /// takes for "never") counts as a hundred years, so the end is always a time.
    pub fn expires_at(&self) -> SystemTime {
        let ttl = self.ttl.min(crate::client::FOREVER);
        self.issued_at.checked_add(ttl).unwrap_or(self.issued_at)
    }
}

/// Everything about a secret except its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The version this value is, when the backend versions secrets.
    pub version: Option<Version>,
    /// When this version was created.
    pub created_at: Option<SystemTime>,
    /// Hard expiry of the value itself (a certificate's not-after, Azure `exp`).
    pub expires_at: Option<SystemTime>,
    /// When the backend plans to rotate it next (AWS NextRotationDate): the engine checks right
    /// after that.
    pub next_rotation: Option<SystemTime>,
    /// The lease, for dynamic secrets.
    pub lease: Option<Lease>,
}

/// A secret value and its metadata. Cloning shares the value's bytes (one reference count).
#[derive(Clone)]
pub struct Secret {
    inner: Arc<SecretInner>,
}

/// What a [`Secret`] points to (public only to name it in the `RefCnt` impl; not reachable).
#[derive(Clone)]
pub struct SecretInner {
    value: SecretValue,
    meta: Metadata,
}

// SAFETY: `Secret` is exactly one `Arc<SecretInner>`; every operation is delegated to the
// implementation for that `Arc` (same pointer, same reference count, same tag), so `Secret` is as
// sound a `RefCnt` as the `Arc` is. This lets the client keep a `Secret` in an `ArcSwap` without
// wrapping it in a second `Arc` (one allocation and one indirection less per cached secret).
#[allow(unsafe_code)]
unsafe impl arc_swap::RefCnt for Secret {
    type Base = SecretInner;

    fn into_ptr(me: Self) -> *mut SecretInner {
        <Arc<SecretInner> as arc_swap::RefCnt>::into_ptr(me.inner)
    }

    fn as_ptr(me: &Self) -> *mut SecretInner {
        <Arc<SecretInner> as arc_swap::RefCnt>::as_ptr(&me.inner)
    }

    unsafe fn from_ptr(ptr: *const SecretInner) -> Self {
        Secret {
            // SAFETY: forwarded from the caller, who hands back a pointer from `into_ptr`.
            inner: unsafe { <Arc<SecretInner> as arc_swap::RefCnt>::from_ptr(ptr) },
        }
    }
}

impl Secret {
    /// A secret with no metadata.
    pub fn new(value: impl Into<SecretValue>) -> Self {
        Self::with_metadata(value, Metadata::default())
    }

    /// A secret with metadata.
    pub fn with_metadata(value: impl Into<SecretValue>, meta: Metadata) -> Self {
        Secret {
            inner: Arc::new(SecretInner {
                value: value.into(),
                meta,
            }),
        }
    }

    fn meta_mut(&mut self) -> &mut Metadata {
        &mut Arc::make_mut(&mut self.inner).meta
    }

    /// Set the version.
    pub fn versioned(mut self, version: impl Into<Version>) -> Self {
        self.meta_mut().version = Some(version.into());
        self
    }

    /// Set the creation time.
    pub fn created_at(mut self, at: SystemTime) -> Self {
        self.meta_mut().created_at = Some(at);
        self
    }

    /// Set the hard expiry.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.meta_mut().expires_at = Some(at);
        self
    }

    /// Set the next planned rotation.
    pub fn next_rotation(mut self, at: SystemTime) -> Self {
        self.meta_mut().next_rotation = Some(at);
        self
    }

    /// Attach a lease.
    pub fn leased(mut self, lease: Lease) -> Self {
        self.meta_mut().lease = Some(lease);
        self
    }

    /// The value.
    pub fn value(&self) -> &SecretValue {
        &self.inner.value
    }

    /// All metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.inner.meta
    }

    /// The version, when the backend versions secrets.
    pub fn version(&self) -> Option<&Version> {
        self.inner.meta.version.as_ref()
    }

    /// The lease, for dynamic secrets.
    pub fn lease(&self) -> Option<&Lease> {
        self.inner.meta.lease.as_ref()
    }

    /// The earliest of the value's own expiry and its lease's end.
    pub fn hard_expiry(&self) -> Option<SystemTime> {
        let meta = &self.inner.meta;
        let lease_end = meta.lease.as_ref().map(Lease::expires_at);
        match (meta.expires_at, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The raw bytes. Do not log them.
    pub fn expose_bytes(&self) -> &[u8] {
        self.inner.value.expose_bytes()
    }

    /// The value as text (error if binary).
    pub fn expose_str(&self) -> Result<&str> {
        self.inner.value.expose_str()
    }

    /// Decode the value as JSON into `T` (errors never quote the value).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        self.inner.value.json()
    }

    /// The same secret with its value replaced by the JSON member `name` (metadata kept).
    pub fn field(&self, name: &str) -> Result<Secret> {
        Ok(Self::with_metadata(
            self.inner.value.field(name)?,
            self.inner.meta.clone(),
        ))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("value", &self.inner.value)
            .field("meta", &self.inner.meta)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_expiry_is_the_earliest() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let s = Secret::new("x")
            .expires_at(t0 + Duration::from_secs(100))
            .leased(Lease::new("l1", Duration::from_secs(10), true, t0));
        assert_eq!(s.hard_expiry(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(Secret::new("x").hard_expiry(), None);
    }

    /// Found while checking the `vault_answer` fuzz target's property (a lease's end is
    /// representable): a TTL past what `SystemTime` holds (`lease_duration` 2^64 - 1) panicked.
    #[test]
    fn a_lease_longer_than_time_ends_in_a_hundred_years() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let forever = Duration::from_secs(100 * 365 * 24 * 3600);
        let l = Lease::new("l1", Duration::from_secs(u64::MAX), true, t0);
        assert_eq!(l.expires_at(), t0 + forever);
        let s = Secret::new("x").leased(l);
        assert_eq!(s.hard_expiry(), Some(t0 + forever));
        let short = Lease::new("l2", Duration::from_secs(10), true, t0);
        assert_eq!(short.expires_at(), t0 + Duration::from_secs(10));
    }

    #[test]
    fn debug_redacts_value_and_shows_metadata() {
        let s = Secret::new("hunter2").versioned("7");
        let d = format!("{s:?}");
        assert!(d.contains("[REDACTED]") && d.contains("\"7\"") && !d.contains("hunter2"));
    }

    #[test]
    fn field_keeps_metadata() {
        let s = Secret::new(r#"{"a":"b"}"#).versioned("3");
        let f = s.field("a").unwrap();
        assert_eq!(f.expose_str().unwrap(), "b");
        assert_eq!(f.version().map(Version::as_str), Some("3"));
    }
}
