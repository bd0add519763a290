//! `SecretRef::parse` and the builders: never panics; the canonical string parses back to an
//! equal reference (and is its own canonical form); the parts survive the trip; an error never
//! shows the input beyond its `scheme://` prefix, wherever in the rest a value may be.
#![no_main]

use keyrack_core::SecretRef;
use keyrack_fuzz::{MARKER, assert_clean, scrub_str};
use libfuzzer_sys::fuzz_target;

/// Parses `s`; on failure, checks the error shows none of the marker.
fn parse_clean(s: &str) {
    if let Err(e) = SecretRef::parse(s) {
        assert_eq!(e.input(), s);
        assert_clean(&e, "SecretRef::parse");
        assert_clean(&keyrack_core::Error::from(e), "SecretRef::parse as Error");
    }
}

fuzz_target!(|s: &str| {
    match SecretRef::parse(s) {
        Ok(r) => {
            let canonical = r.to_string();
            let again = SecretRef::parse(&canonical)
                .unwrap_or_else(|e| panic!("canonical {canonical:?} of {s:?} does not parse: {e}"));
            assert_eq!(again, r, "{s:?} -> {canonical:?}");
            assert_eq!(again.to_string(), canonical);
            assert_eq!(r.as_str(), canonical);
            assert_eq!(
                (
                    again.source(),
                    again.path(),
                    again.selector(),
                    again.params(),
                    again.field()
                ),
                (r.source(), r.path(), r.selector(), r.params(), r.field())
            );
            assert_eq!(r.source(), r.source().to_ascii_lowercase());
            // The same reference made with the builders.
            let mut built = SecretRef::new(r.source(), r.path()).expect("a parsed path builds");
            if let Some(v) = r.version() {
                built = built.with_version(v).expect("version");
            }
            if let Some(st) = r.stage() {
                built = built.with_stage(st).expect("stage");
            }
            for (k, v) in r.params() {
                built = built.with_param(k, v).expect("param");
            }
            if let Some(f) = r.field() {
                built = built.with_field(f).expect("field");
            }
            assert_eq!(built, r);
            assert_eq!(built.without_field().field(), None);
        }
        Err(e) => assert_eq!(e.input(), s),
    }

    // The marker where a value passed by mistake may be: before and after an input without
    // `://`; right after the `scheme://` of one with it, and after each `?`, `&`, `=` and `#` of
    // the rest (a key, a value, a field).
    let s = scrub_str(s);
    match s.split_once("://") {
        None => {
            parse_clean(&format!("{MARKER}{s}"));
            parse_clean(&format!("{s}{MARKER}"));
        }
        Some((scheme, rest)) => {
            parse_clean(&format!("{scheme}://{MARKER}{rest}"));
            for (i, _) in rest.match_indices(['?', '&', '=', '#']) {
                let (a, b) = rest.split_at(i + 1);
                parse_clean(&format!("{scheme}://{a}{MARKER}{b}"));
            }
            parse_clean(&format!("{scheme}://{rest}{MARKER}"));
            // And after all of them at once (the same key twice, say).
            let everywhere: String = rest
                .chars()
                .flat_map(|c| {
                    let marker = ['?', '&', '=', '#'].contains(&c).then_some(MARKER);
                    std::iter::once(c.to_string()).chain(marker.map(str::to_owned))
                })
                .collect();
            parse_clean(&format!("{scheme}://{MARKER}{everywhere}"));
        }
    }
});
