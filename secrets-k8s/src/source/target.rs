//! What a `k8s://` reference names, checked against Kubernetes' own rules before any request.

use keyrack_core::{Error, ErrorKind, Result, SecretRef, Selector};

use super::KEY_PARAM;

/// The object (and key) a reference names.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(super) namespace: String,
    pub(super) name: String,
    /// The one key of `data` read (`?key=`), if any.
    pub(super) key: Option<String>,
}

impl Target {
    pub(super) fn parse(r: &SecretRef) -> Result<Target> {
        match r.selector() {
            Some(Selector::Version(_)) => {
                return Err(Error::unsupported(
                    "Kubernetes keeps no older versions of a Secret: remove `?version=`",
                ));
            }
            Some(_) => {
                return Err(Error::unsupported(
                    "Kubernetes Secrets have no stages: remove `?stage=`",
                ));
            }
            None => {}
        }
        // A misspelt `?key=` must not read the whole map.
        r.expect_params(&[KEY_PARAM])?;
        let key = r.param(KEY_PARAM);
        if let Some(key) = key {
            Part::Key.check(key)?;
        }
        let (namespace, name) = r.path().split_once('/').ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidRef,
                "a k8s:// reference is `k8s://<namespace>/<name>[#<key>]`",
            )
        })?;
        Part::Namespace.check(namespace)?;
        Part::Name.check(name)?;
        Ok(Target {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.map(str::to_owned),
        })
    }

    /// `namespace/name`.
    pub(super) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What the reference reads: the object, and the key when one is selected.
    pub(super) fn id(&self) -> String {
        match &self.key {
            Some(k) => format!("{}/{}?{KEY_PARAM}={k}", self.namespace, self.name),
            None => self.key(),
        }
    }
}

/// A part of a reference, checked against Kubernetes' own rules before any request. Errors say
/// which part and which rule, never the part itself: a reference that does not check out may be
/// a value pasted in the wrong place.
#[derive(Clone, Copy)]
enum Part {
    /// A namespace name: an RFC 1123 label (at most 63 characters).
    Namespace,
    /// A Secret name: an RFC 1123 subdomain (at most 253 characters).
    Name,
    /// A key of `data` (`?key=`): at most 253 letters, digits, `-`, `_`, `.`.
    Key,
}

impl Part {
    fn what(self) -> &'static str {
        match self {
            Part::Namespace => "namespace",
            Part::Name => "Secret name",
            Part::Key => "`?key=` value",
        }
    }

    /// The longest the part may be (Kubernetes' validation: `IsDNS1123Label`,
    /// `IsDNS1123Subdomain`, `IsConfigMapKey`).
    fn max(self) -> usize {
        match self {
            Part::Namespace => 63,
            Part::Name | Part::Key => 253,
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Part::Namespace => {
                "lowercase letters, digits and `-`, starting and ending with a letter or digit"
            }
            Part::Name => {
                "lowercase letters, digits, `-` and `.`, each dot-separated part starting and \
                 ending with a letter or digit"
            }
            Part::Key => "letters, digits, `-`, `_` and `.`",
        }
    }

    fn valid(self, s: &str) -> bool {
        match self {
            Part::Namespace => is_dns_label(s),
            Part::Name => s.split('.').all(is_dns_label),
            Part::Key => s
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')),
        }
    }

    fn check(self, s: &str) -> Result<()> {
        let invalid = |m: String| Err(Error::new(ErrorKind::InvalidRef, m));
        let (what, max) = (self.what(), self.max());
        let len = s.chars().count();
        if len > max {
            return invalid(format!(
                "the {what} is {len} characters long; Kubernetes allows at most {max}"
            ));
        }
        if s.is_empty() {
            return invalid(format!("the {what} is empty"));
        }
        if !self.valid(s) {
            return invalid(format!(
                "the {what} is not one Kubernetes accepts ({}, at most {max})",
                self.rule()
            ));
        }
        Ok(())
    }
}

/// An RFC 1123 label: at most 63 lowercase letters, digits and `-`, not at either end.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
