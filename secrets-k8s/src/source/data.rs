//! A Secret's `data` as parsed from an answer, and the version derived from it.
//!
//! The version of a `k8s://` secret follows its data, not the object's `resourceVersion`: a
//! label, an annotation or `kubectl apply`'s last-applied annotation gives the object a new
//! resourceVersion (and watches a MODIFIED event) without changing a byte of what a reference
//! reads. The version is a digest of the data a reference reads (every key, or the one key of
//! `?key=`), keyed with random keys made for the source: a version shows up in events and logs,
//! and an unkeyed hash of a short password could be reversed by trying candidates.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::ops::Deref;

use keyrack_core::Version;
use serde::de::{self, Deserialize, Deserializer, Visitor};
use zeroize::Zeroizing;

/// A Secret's `data`, borrowed from the buffer it was parsed from: keys to base64 text.
pub(super) type Data<'a> = BTreeMap<Cow<'a, str>, B64<'a>>;

/// One base64 value of `data`: borrowed from the answer's buffer, or, when the JSON escaped a
/// character (which the API server never does in base64), held in a zeroizing string.
pub(super) enum B64<'a> {
    Borrowed(&'a str),
    Owned(Zeroizing<String>),
}

impl Deref for B64<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            B64::Borrowed(s) => s,
            B64::Owned(s) => s,
        }
    }
}

impl fmt::Debug for B64<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for B64<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct B64Visitor;

        impl<'de> Visitor<'de> for B64Visitor {
            type Value = B64<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<B64<'de>, E> {
                Ok(B64::Borrowed(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<B64<'de>, E> {
                Ok(B64::Owned(Zeroizing::new(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<B64<'de>, E> {
                Ok(B64::Owned(Zeroizing::new(v)))
            }
        }

        deserializer.deserialize_str(B64Visitor)
    }
}

/// Makes the versions of one source: a digest of data, keyed with keys made at random for it.
#[derive(Clone, Debug)]
pub(super) struct Fingerprint {
    keys: RandomState,
}

impl Fingerprint {
    pub(super) fn new() -> Self {
        Fingerprint {
            keys: RandomState::new(),
        }
    }

    /// The version of what a reference reads from `data`: every key, or only `key`.
    pub(super) fn version(&self, data: Option<&Data<'_>>, key: Option<&str>) -> Version {
        let mut h = self.keys.build_hasher();
        let entries = data
            .into_iter()
            .flatten()
            .filter(|(k, _)| key.is_none_or(|key| k.as_ref() == key));
        for (k, v) in entries {
            // Length-prefixed, so no two different maps feed the hasher the same bytes.
            h.write_usize(k.len());
            h.write(k.as_bytes());
            h.write_usize(v.len());
            h.write(v.as_bytes());
        }
        Version::new(format!("{:016x}", h.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(entries: &[(&'static str, &'static str)]) -> Data<'static> {
        entries
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), B64::Borrowed(v)))
            .collect()
    }

    #[test]
    fn versions_follow_the_data_read() {
        let fp = Fingerprint::new();
        let a = data(&[("password", "czNjcjN0"), ("username", "YWRtaW4=")]);
        let b = data(&[("password", "bjN3"), ("username", "YWRtaW4=")]);
        assert_eq!(fp.version(Some(&a), None), fp.version(Some(&a), None));
        assert_ne!(fp.version(Some(&a), None), fp.version(Some(&b), None));
        // A key reference changes only with its key.
        assert_eq!(
            fp.version(Some(&a), Some("username")),
            fp.version(Some(&b), Some("username"))
        );
        assert_ne!(
            fp.version(Some(&a), Some("password")),
            fp.version(Some(&b), Some("password"))
        );
        // Entries do not run into each other.
        let c = data(&[("ab", "Yw==")]);
        let d = data(&[("a", "YmM=")]);
        assert_ne!(fp.version(Some(&c), None), fp.version(Some(&d), None));
        // Another source's keys give other versions: nothing to compare across processes.
        assert_ne!(
            Fingerprint::new().version(Some(&a), None),
            fp.version(Some(&a), None)
        );
    }

    #[test]
    fn an_escaped_value_is_held_in_a_zeroizing_string() {
        let parsed: Data<'_> =
            serde_json::from_str(r#"{"k":"YQ\u003d\u003d","l":"Yg=="}"#).unwrap();
        assert!(matches!(parsed["k"], B64::Owned(_)));
        assert_eq!(&*parsed["k"], "YQ==");
        assert!(matches!(parsed["l"], B64::Borrowed(_)));
        assert_eq!(format!("{:?}", parsed["l"]), "[REDACTED]");
    }
}
