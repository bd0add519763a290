//! [`SecretRefField`]: a configuration field that holds a reference, not a value.

use std::fmt;

use keyrack_core::{Result, Secret, SecretHandle, SecretRef, Secrets};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::placeholder::{PREFIX, Placeholder};

/// A field of a configuration struct that keeps its `secret:` reference instead of a value,
/// for values that rotate: turn it into a live [`SecretHandle`] with
/// [`handle`](Self::handle).
///
/// Deserializes from a placeholder string (`"secret:vault://database/creds/app"`) and nothing
/// else; a string that does not parse is refused with the reason only, never quoted. Pair it
/// with [`Resolver::live`](crate::Resolver::live) so [`resolve`](crate::resolve) leaves the key
/// as a placeholder (and checks and fetches it at load time), or extract it from the figment
/// before resolution.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretRefField(SecretRef);

impl SecretRefField {
    /// The reference.
    pub fn reference(&self) -> &SecretRef {
        &self.0
    }

    /// A live handle on the secret, kept fresh by `secrets` while it exists.
    pub async fn handle(&self, secrets: &Secrets) -> Result<SecretHandle> {
        secrets.handle(&self.0).await
    }

    /// The secret's current value, once.
    pub async fn get(&self, secrets: &Secrets) -> Result<Secret> {
        secrets.get_secret(&self.0).await
    }
}

impl From<SecretRef> for SecretRefField {
    fn from(r: SecretRef) -> Self {
        SecretRefField(r)
    }
}

impl fmt::Debug for SecretRefField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRefField({})", self.0)
    }
}

impl fmt::Display for SecretRefField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.0)
    }
}

impl Serialize for SecretRefField {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretRefField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Placeholders;

        impl Visitor<'_> for Placeholders {
            type Value = SecretRefField;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `secret:<source>://<path>` reference")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<SecretRefField, E> {
                // Never `invalid_value(Unexpected::Str(s))`: that would quote the string, which
                // may be a value written where a reference belongs.
                match Placeholder::read(s) {
                    Placeholder::Reference(Ok(r)) => Ok(SecretRefField(r)),
                    Placeholder::Reference(Err(e)) => Err(E::custom(format_args!(
                        "invalid secret reference: {}",
                        e.kind()
                    ))),
                    Placeholder::Plain | Placeholder::Escaped(_) => Err(E::custom(
                        "expected a `secret:<source>://<path>` reference (the value is not quoted)",
                    )),
                }
            }
        }

        d.deserialize_str(Placeholders)
    }
}
