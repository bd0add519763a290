//! Figment errors about resolved values, with the values taken out.
//!
//! Serde's type errors quote what they found (`invalid type: found string "hunter2", expected
//! u16`): for a key whose value came from a secret source, that is the secret.

use figment::error::{Actual, Kind};

use crate::resolver::PROVIDER_NAME;

/// What an error says it found instead of a resolved value.
const WITHHELD: &str = "a secret's value (withheld)";

/// `e` with every error of its chain that concerns a resolved value rewritten so that it
/// quotes nothing of the value.
pub(crate) fn error(e: figment::Error) -> figment::Error {
    let mut chain: Vec<figment::Error> = e.into_iter().map(one).collect();
    let mut out = chain.pop().expect("an error chain has at least one error");
    while let Some(next) = chain.pop() {
        out = out.chain(next);
    }
    out
}

fn one(mut e: figment::Error) -> figment::Error {
    let resolved = e.metadata.as_ref().is_some_and(|m| m.name == PROVIDER_NAME);
    if resolved {
        e.kind = scrub(e.kind);
    }
    e
}

fn scrub(kind: Kind) -> Kind {
    let withheld = || Actual::Other(WITHHELD.into());
    match kind {
        Kind::InvalidType(_, expected) => Kind::InvalidType(withheld(), expected),
        Kind::InvalidValue(_, expected) => Kind::InvalidValue(withheld(), expected),
        Kind::Unsupported(_) => Kind::Unsupported(withheld()),
        Kind::UnsupportedKey(_, expected) => Kind::UnsupportedKey(withheld(), expected),
        Kind::UnknownVariant(_, expected) => Kind::Message(format!(
            "{WITHHELD} is not one of the variants {expected:?}"
        )),
        // A type's own message (`FromStr` errors through `serde_with`, say) may quote it.
        Kind::Message(_) => Kind::Message(format!(
            "{WITHHELD} was refused by the field's type (its message is withheld: it may quote \
             the value)"
        )),
        // Lengths, names of fields and integer ranges carry no part of a string value.
        other => other,
    }
}
