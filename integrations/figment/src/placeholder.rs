//! The placeholder form: a configuration string that is, as a whole, `secret:<reference>`.

use keyrack_core::{RefError, SecretRef};

/// What a placeholder starts with.
pub const PREFIX: &str = "secret:";

/// What a literal string starting with `secret:` is written as: `secret::rest` stands for the
/// text `secret:rest`. A reference never starts with `:` (its source would be empty), so the
/// escape cannot be mistaken for one.
pub const ESCAPE: &str = "secret::";

/// How a configuration string reads.
#[derive(Debug)]
pub(crate) enum Placeholder<'a> {
    /// Not a placeholder: kept as it is.
    Plain,
    /// `secret::rest`: the literal text `secret:rest`.
    Escaped(&'a str),
    /// `secret:<reference>`, parsed or not.
    Reference(Result<SecretRef, RefError>),
}

impl<'a> Placeholder<'a> {
    pub(crate) fn read(s: &'a str) -> Self {
        if s.starts_with(ESCAPE) {
            // Drop the escaping colon: `secret::x` -> `secret:x`.
            return Placeholder::Escaped(&s[PREFIX.len()..]);
        }
        match s.strip_prefix(PREFIX) {
            Some(rest) => Placeholder::Reference(SecretRef::parse(rest)),
            None => Placeholder::Plain,
        }
    }
}

/// The text `secret:rest` for the escaped form, without the escaping colon.
pub(crate) fn unescape(escaped: &str) -> String {
    let mut s = String::with_capacity(escaped.len() + PREFIX.len());
    s.push_str("secret");
    s.push_str(escaped);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert!(matches!(Placeholder::read("plain"), Placeholder::Plain));
        assert!(matches!(Placeholder::read("Secret:x"), Placeholder::Plain));
        assert!(matches!(
            Placeholder::read(" secret:vault://a"),
            Placeholder::Plain
        ));
        match Placeholder::read("secret::not-a-ref") {
            Placeholder::Escaped(rest) => assert_eq!(unescape(rest), "secret:not-a-ref"),
            other => panic!("{other:?}"),
        }
        match Placeholder::read("secret:vault://secret/db#password") {
            Placeholder::Reference(Ok(r)) => {
                assert_eq!(r.as_str(), "vault://secret/db#password")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Placeholder::read("secret:hunter2"),
            Placeholder::Reference(Err(_))
        ));
    }
}
