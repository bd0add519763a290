//! Property tests for `SecretRef`: display/parse round-trips and total, idempotent parsing.

use keyrack_core::{SecretRef, Selector};
use proptest::prelude::*;

/// Text that exercises every character the grammar treats specially, plus arbitrary Unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9%?#&= /:+.~_\\-é日\u{1F510}\u{0}\u{1f}\u{7f}\u{85}]{0,12}",
        any::<String>(),
    ]
}

fn non_empty_text() -> impl Strategy<Value = String> {
    text().prop_filter("non-empty", |s| !s.is_empty())
}

fn selector() -> impl Strategy<Value = Option<Selector>> {
    prop::option::of(prop_oneof![
        non_empty_text().prop_map(Selector::Version),
        non_empty_text().prop_map(Selector::Stage),
    ])
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = non_empty_text().prop_filter("not a selector", |k| k != "version" && k != "stage");
    prop::collection::vec((key, text()), 0..4).prop_map(|pairs| {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            if !out.iter().any(|(seen, _)| *seen == k) {
                out.push((k, v));
            }
        }
        out
    })
}

prop_compose! {
    fn secret_ref()(
        source in "[a-zA-Z][a-zA-Z0-9+.\\-_]{0,10}",
        path in non_empty_text(),
        selector in selector(),
        params in params(),
        field in prop::option::of(non_empty_text()),
    ) -> SecretRef {
        let mut r = SecretRef::new(&source, &path).expect("valid source and path");
        r = match selector {
            Some(Selector::Version(v)) => r.with_version(v).expect("valid version"),
            Some(Selector::Stage(s)) => r.with_stage(s).expect("valid stage"),
            Some(_) | None => r,
        };
        for (k, v) in params {
            r = r.with_param(k, v).expect("valid param");
        }
        if let Some(f) = field {
            r = r.with_field(f).expect("valid field");
        }
        r
    }
}

/// Strings over an alphabet that looks like references, so many of them parse.
fn uri_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z][a-zA-Z0-9+.\\-_]{0,4}://[a-zA-Z0-9/%?#&=]{0,16}",
        "[vV]://[a/%?#&=]{0,6}(version|stage|k)?[=&%]?[0-9a-fA-F%é]{0,4}[?#&=]?[a-z]{0,2}",
        "[a-zA-Z0-9+.\\-_:/%?#&= é\u{0}\u{7f}]{0,24}",
    ]
}

proptest! {
    #[test]
    fn display_then_parse_roundtrips(r in secret_ref()) {
        let shown = r.to_string();
        prop_assert_eq!(shown.parse::<SecretRef>(), Ok(r.clone()), "{}", shown);
        prop_assert!(!shown.bytes().any(|b| b == b' ' || b.is_ascii_control() || !b.is_ascii()));
        prop_assert!(r.without_field().field().is_none());
    }

    #[test]
    fn serde_roundtrips(r in secret_ref()) {
        let json = serde_json::to_string(&r).expect("serialize");
        prop_assert_eq!(serde_json::from_str::<SecretRef>(&json).expect("deserialize"), r);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_strings(s in any::<String>()) {
        if let Ok(r) = SecretRef::parse(&s) {
            prop_assert_eq!(SecretRef::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn parse_display_is_idempotent(s in uri_ish()) {
        match SecretRef::parse(&s) {
            Ok(r) => {
                let again = SecretRef::parse(&r.to_string());
                prop_assert_eq!(&again, &Ok(r.clone()), "{} -> {}", s, r);
                prop_assert_eq!(again.map(|a| a.to_string()), Ok(r.to_string()));
            }
            Err(e) => prop_assert_eq!(e.input(), s.as_str()),
        }
    }
}
