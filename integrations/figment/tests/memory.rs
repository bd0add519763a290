//! Resolution on keyrack-core's in-memory source (no server): values and their provenance, one
//! fetch per reference, every error kind with its key and origin, live handles, and that no
//! value reaches an error or a `Debug`.

#![allow(clippy::unwrap_used)]
// figment::Jail's closure returns figment's own (large) error type.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use keyrack_core::sources::MemorySource;
use keyrack_core::{ErrorKind, Secrets};
use keyrack_figment::{ConfigError, PROVIDER_NAME, ProblemKind, Resolver, SecretRefField, resolve};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

const PASSWORD: &str = "hunter2-Zq9-not-for-logs";
const API_KEY: &str = "ak-7Yp2-not-for-logs";

fn memory() -> MemorySource {
    let m = MemorySource::new();
    m.set(
        "db",
        format!(r#"{{"user":"app","password":"{PASSWORD}","port":"not-a-port-{PASSWORD}"}}"#),
    );
    m.set("api", API_KEY);
    m
}

fn client(m: &MemorySource) -> Secrets {
    Secrets::builder().source("mem", m.clone()).build().unwrap()
}

fn toml(text: &str) -> Figment {
    Figment::from(Toml::string(text))
}

/// A TOML file whose top-level tables are profiles.
fn toml_profiles(text: &str) -> Figment {
    Figment::from(Toml::string(text).nested())
}

#[derive(Debug, Deserialize)]
struct Db {
    host: String,
    user: String,
    password: SecretString,
}

#[tokio::test]
async fn references_resolve_and_say_where_they_came_from() {
    let m = memory();
    let secrets = client(&m);
    let figment = toml(
        r#"
        name = "payments"
        literal = "secret::this is not a reference"
        [db]
        host = "db.internal"
        user = "secret:mem://db#user"
        password = "secret:mem://db#password"
        "#,
    );
    let config = resolve(&figment, &secrets).await.unwrap();
    let db: Db = config.extract_inner("db").unwrap();
    assert_eq!(db.host, "db.internal");
    assert_eq!(db.user, "app");
    assert_eq!(db.password.expose_secret(), PASSWORD);
    // The escape reads as the literal text, with its own provenance.
    assert_eq!(
        config.extract_inner::<String>("literal").unwrap(),
        "secret:this is not a reference"
    );
    let f = config.figment();
    assert_eq!(f.find_metadata("db.password").unwrap().name, PROVIDER_NAME);
    assert_eq!(f.find_metadata("db.user").unwrap().name, PROVIDER_NAME);
    let toml_name = figment.find_metadata("name").unwrap().name.clone();
    assert_eq!(f.find_metadata("db.host").unwrap().name, toml_name);
    assert_eq!(f.find_metadata("literal").unwrap().name, toml_name);
    assert_eq!(f.find_metadata("name").unwrap().name, toml_name);
    let mut keys: Vec<String> = config.resolved_keys().map(|(_, k)| k.to_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["db.password", "db.user"]);
    // Debug lists the keys, not the values.
    let shown = format!("{config:?}");
    assert!(shown.contains("db.password"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[tokio::test]
async fn each_reference_is_fetched_once() {
    let m = memory();
    let secrets = client(&m);
    // Three keys on one reference, two more on other fields of the same secret, and one
    // reference in two profiles: the source reads each secret once.
    let figment = toml_profiles(
        r#"
        [default]
        a = "secret:mem://db#password"
        b = "secret:mem://db#password"
        nested = { c = "secret:mem://db#password", user = "secret:mem://db#user" }
        api = "secret:mem://api"
        [staging]
        api = "secret:mem://api"
        port = "secret:mem://db#port"
        "#,
    )
    .select("staging");
    let config = resolve(&figment, &secrets).await.unwrap();
    let calls = m.calls();
    assert_eq!(
        (calls.fetch, calls.fetch_many),
        (0, 1),
        "one batch for the source, each secret in it once: {calls:?}"
    );
    assert_eq!(config.extract_inner::<String>("a").unwrap(), PASSWORD);
    assert_eq!(
        config.extract_inner::<String>("nested.c").unwrap(),
        PASSWORD
    );
    assert_eq!(config.extract_inner::<String>("api").unwrap(), API_KEY);
    assert_eq!(config.resolved_keys().count(), 7);
}

#[tokio::test]
async fn arrays_and_profiles_keep_what_is_not_a_reference() {
    let m = memory();
    let secrets = client(&m);
    let figment = toml_profiles(
        r#"
        [default]
        tokens = ["plain", "secret:mem://api", "secret::escaped"]
        [prod]
        db = { password = "secret:mem://db#password", host = "prod.db" }
        "#,
    )
    .select("prod");
    let config = resolve(&figment, &secrets).await.unwrap();
    let tokens: Vec<String> = config.extract_inner("tokens").unwrap();
    assert_eq!(tokens, ["plain", API_KEY, "secret:escaped"]);
    assert_eq!(
        config.extract_inner::<String>("db.password").unwrap(),
        PASSWORD
    );
    assert_eq!(
        config.extract_inner::<String>("db.host").unwrap(),
        "prod.db"
    );
    // The array's untouched item keeps the TOML provenance.
    let f = config.figment();
    let toml_name = figment.find_metadata("tokens").unwrap().name.clone();
    let items = f.find_value("tokens").unwrap().into_array().unwrap();
    assert_eq!(f.get_metadata(items[0].tag()).unwrap().name, toml_name);
    assert_eq!(f.get_metadata(items[1].tag()).unwrap().name, PROVIDER_NAME);
}

/// Every failure at once, each with its key, its origin and its kind; and nothing of the values
/// or of the unparsable placeholder in the error's text.
#[tokio::test]
async fn every_failing_key_is_reported_with_its_kind() {
    let m = memory();
    let denied = MemorySource::new();
    denied.set("db", "x");
    denied.fail(ErrorKind::PermissionDenied);
    let locked = MemorySource::new();
    locked.fail(ErrorKind::Unauthenticated);
    let down = MemorySource::new();
    down.fail(ErrorKind::Unavailable);
    let hung = MemorySource::new();
    hung.hang();
    let binary = MemorySource::new();
    binary.set("blob", vec![0xff_u8, 0xfe, 0x00]);
    let secrets = Secrets::builder()
        .source("mem", m.clone())
        .source("denied", denied)
        .source("locked", locked)
        .source("down", down)
        .source("hung", hung)
        .source("bin", binary)
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let figment = toml(&format!(
        r#"
        ok = "secret:mem://db#password"
        pasted = "secret:{PASSWORD}"
        spaced = "secret:mem://has space"
        [refs]
        unregistered = "secret:vault-eu://secret/db#password"
        missing = "secret:mem://nope"
        missing_field = "secret:mem://db#nope"
        denied = "secret:denied://db"
        locked = "secret:locked://db"
        down = "secret:down://db"
        hung = "secret:hung://db"
        binary = "secret:bin://blob"
        "#
    ));
    // A hung source costs the request timeout (300 ms), not a hang.
    let err = tokio::time::timeout(Duration::from_secs(30), resolve(&figment, &secrets))
        .await
        .expect("resolve returns although a source hangs")
        .unwrap_err();
    let ConfigError::Secrets(problems) = &err else {
        panic!("{err:?}")
    };
    let got: Vec<(String, ProblemKind)> = problems
        .iter()
        .map(|p| (p.key(), p.kind().clone()))
        .collect();
    let kind_of = |key: &str| {
        got.iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{key} not reported: {got:?}"))
            .1
            .clone()
    };
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(matches!(
        kind_of("pasted"),
        ProblemKind::InvalidReference(keyrack_core::RefErrorKind::MissingSeparator)
    ));
    assert!(matches!(
        kind_of("spaced"),
        ProblemKind::InvalidReference(keyrack_core::RefErrorKind::RawCharacter { .. })
    ));
    assert_eq!(
        kind_of("refs.unregistered"),
        ProblemKind::UnregisteredSource {
            source: "vault-eu".into()
        }
    );
    assert_eq!(kind_of("refs.missing"), ProblemKind::NotFound);
    assert_eq!(
        kind_of("refs.missing_field"),
        ProblemKind::Other(ErrorKind::InvalidValue)
    );
    assert_eq!(kind_of("refs.denied"), ProblemKind::PermissionDenied);
    assert_eq!(kind_of("refs.locked"), ProblemKind::Unauthenticated);
    assert_eq!(kind_of("refs.down"), ProblemKind::Unreachable);
    assert_eq!(kind_of("refs.hung"), ProblemKind::Unreachable);
    assert_eq!(kind_of("refs.binary"), ProblemKind::NotText);
    assert!(
        problems
            .iter()
            .any(|p| p.key() == "refs.down" && p.is_retryable())
    );

    // Each names its origin (the TOML source) and, once parsed, its reference.
    let toml_name = figment.find_metadata("ok").unwrap().name.clone();
    for p in problems {
        assert_eq!(p.metadata().unwrap().name, toml_name, "{p}");
    }
    let denied = problems.iter().find(|p| p.key() == "refs.denied").unwrap();
    assert_eq!(denied.reference().unwrap().as_str(), "denied://db");
    assert_eq!(denied.cause().unwrap().kind(), &ErrorKind::PermissionDenied);

    let text = err.to_string();
    assert!(
        text.starts_with("10 configuration values did not resolve:"),
        "{text}"
    );
    assert!(
        text.contains("`refs.unregistered` (in TOML source string)"),
        "{text}"
    );
    assert!(
        text.contains("no secret source is registered as `vault-eu`"),
        "{text}"
    );
    for shown in [text, format!("{err:?}")] {
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(!shown.contains("has space"), "{shown}");
    }
}

#[tokio::test]
async fn a_configuration_that_does_not_load_is_a_load_error() {
    let secrets = client(&memory());
    let err = resolve(&toml("a = [1"), &secrets).await.unwrap_err();
    assert!(matches!(err, ConfigError::Load(_)), "{err:?}");
    assert!(err.problems().is_empty());
}

#[test]
fn an_environment_variable_is_named_as_such() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("KRT_DB_PASSWORD", "secret:mem://nope#password");
        jail.set_env("KRT_DB_USER", "secret:mem://db#user");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let m = memory();
        let secrets = client(&m);
        let figment = Figment::from(Env::prefixed("KRT_").split("_"));
        let err = runtime.block_on(resolve(&figment, &secrets)).unwrap_err();
        let [p] = err.problems() else { panic!("{err}") };
        assert_eq!(p.key(), "db.password");
        // Figment's environment provider spells its keys this way (without the prefix).
        assert_eq!(p.native_key().as_deref(), Some("DB.PASSWORD"));
        assert!(
            err.to_string()
                .contains("`db.password` (`DB.PASSWORD` in `KRT_` environment variable(s))"),
            "{err}"
        );
        // And once it exists, it resolves from the environment's placeholder.
        m.set("nope", format!(r#"{{"password":"{PASSWORD}"}}"#));
        let config = runtime.block_on(resolve(&figment, &secrets)).unwrap();
        assert_eq!(
            config.extract_inner::<String>("db.password").unwrap(),
            PASSWORD
        );
        assert_eq!(config.extract_inner::<String>("db.user").unwrap(), "app");
        Ok(())
    });
}

/// Serde's type errors quote the string they found: for a resolved key, the secret. Ours do not.
#[tokio::test]
async fn a_type_error_on_a_resolved_value_withholds_it() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Typed {
        port: u16,
        mode: Mode,
    }
    #[derive(Debug, Deserialize)]
    enum Mode {
        A,
    }
    let secrets = client(&memory());
    let figment = toml(
        r#"
        port = "secret:mem://db#port"
        mode = "secret:mem://db#password"
        "#,
    );
    let config = resolve(&figment, &secrets).await.unwrap();
    let err = config.extract::<Typed>().unwrap_err();
    let all: Vec<String> = err
        .clone()
        .into_iter()
        .map(|e| format!("{e} {e:?}"))
        .collect();
    let shown = format!("{err} {err:?} {all:?}");
    assert!(
        shown.contains("for key \"default.mode\" in keyrack secret reference"),
        "{shown}"
    );
    assert!(shown.contains("withheld"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    let err = config.extract_inner::<u16>("port").unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(
        err.to_string().starts_with(
            "invalid type: found a secret's value (withheld), expected u16 for key \"default.port\""
        ),
        "{err}"
    );
    // The figment's own error quotes it: the reason `Resolved` wraps extraction.
    let raw = config.figment().extract_inner::<u16>("port").unwrap_err();
    assert!(raw.to_string().contains(PASSWORD));
}

#[derive(Debug, Deserialize)]
struct LiveDb {
    host: String,
    user: String,
    password: SecretRefField,
}

#[tokio::test]
async fn a_live_key_becomes_a_handle_that_follows_rotation() {
    let m = memory();
    let secrets = client(&m);
    let figment = toml(
        r#"
        [db]
        host = "db.internal"
        user = "secret:mem://db#user"
        password = "secret:mem://db#password"
        "#,
    );
    let config = Resolver::new(&secrets)
        .live("db.password")
        .resolve(&figment)
        .await
        .unwrap();
    // The typed struct: snapshots for the rest, the reference for the live key.
    let db: LiveDb = config.extract_inner("db").unwrap();
    assert_eq!(db.host, "db.internal");
    assert_eq!(db.user, "app");
    assert_eq!(db.password.reference().as_str(), "mem://db#password");
    assert!(!format!("{db:?}").contains(PASSWORD));
    assert_eq!(config.resolved_keys().count(), 1);

    let handle = config.handle("db.password").unwrap();
    assert_eq!(handle.current().expose_str().unwrap(), PASSWORD);
    assert!(
        config.handle("db.user").is_none(),
        "a snapshot key has no handle"
    );
    // The field's own handle is the same live secret (no second fetch).
    let before = m.calls();
    let same = db.password.handle(&secrets).await.unwrap();
    assert_eq!(m.calls(), before);

    m.set("db", r#"{"user":"app","password":"rotated"}"#);
    handle.refresh_now().await.unwrap();
    assert_eq!(handle.current().expose_str().unwrap(), "rotated");
    assert_eq!(same.current().expose_str().unwrap(), "rotated");
    // The snapshot did not move.
    let again: LiveDb = config.extract_inner("db").unwrap();
    assert_eq!(again.user, "app");
    assert!(!format!("{config:?}").contains("rotated"));
}

/// A live value stays behind its handle, so it may be binary; resolved into the figment, it
/// may not.
#[tokio::test]
async fn a_live_key_may_hold_bytes() {
    let m = memory();
    m.set("keystore", vec![0xff_u8, 0x00, 0x01]);
    let secrets = client(&m);
    let figment = toml(r#"keystore = "secret:mem://keystore""#);
    let config = Resolver::new(&secrets)
        .live("keystore")
        .resolve(&figment)
        .await
        .unwrap();
    let handle = config.handle("keystore").unwrap();
    assert_eq!(handle.current().expose_bytes(), [0xff, 0x00, 0x01]);
    let err = resolve(&figment, &secrets).await.unwrap_err();
    assert_eq!(err.problems()[0].kind(), &ProblemKind::NotText);
}

#[tokio::test]
async fn a_live_key_fails_like_any_other() {
    let m = memory();
    let secrets = client(&m);
    let figment = toml(
        r#"
        plain = "not a reference"
        missing = "secret:mem://nope"
        unregistered = "secret:other://x"
        "#,
    );
    let err = Resolver::new(&secrets)
        .live("plain")
        .live("missing")
        .live("unregistered")
        .live("absent")
        .resolve(&figment)
        .await
        .unwrap_err();
    let got: Vec<(String, ProblemKind)> = err
        .problems()
        .iter()
        .map(|p| (p.key(), p.kind().clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("missing".into(), ProblemKind::NotFound),
            ("plain".into(), ProblemKind::NotAReference),
            (
                "unregistered".into(),
                ProblemKind::UnregisteredSource {
                    source: "other".into()
                }
            ),
        ],
    );
    assert!(!err.to_string().contains("not a reference\""), "{err}");
}

#[test]
fn a_ref_field_takes_only_placeholders_and_never_quotes_input() {
    #[derive(Debug, Deserialize)]
    struct C {
        #[allow(dead_code)]
        key: SecretRefField,
    }
    let ok: C = Figment::from(Serialized::default("key", "secret:mem://db#password"))
        .extract()
        .unwrap();
    assert_eq!(format!("{:?}", ok.key), "SecretRefField(mem://db#password)");
    assert_eq!(ok.key.to_string(), "secret:mem://db#password");
    for bad in [PASSWORD.to_owned(), format!("secret:{PASSWORD}")] {
        let err = Figment::from(Serialized::default("key", &bad))
            .extract::<C>()
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
        assert!(shown.contains("key"), "{shown}");
    }
}

#[tokio::test]
async fn a_configuration_without_references_is_unchanged() {
    let m = memory();
    let secrets = client(&m);
    let figment = toml("a = 1\nb = \"text\"");
    let config = resolve(&figment, &secrets).await.unwrap();
    assert_eq!(config.extract_inner::<u32>("a").unwrap(), 1);
    assert_eq!(m.calls(), Default::default());
}

/// Only the profiles the selected one reads are resolved by default: a `prod` profile naming a
/// source that is not registered here does not fail a `dev` start.
#[tokio::test]
async fn profiles_not_selected_are_left_alone_unless_asked() {
    let m = memory();
    let secrets = client(&m);
    let figment = toml_profiles(
        r#"
        [default]
        api = "secret:mem://api"
        [dev]
        db = "secret:mem://db#password"
        [prod]
        db = "secret:vault-prod://secret/db#password"
        "#,
    )
    .select("dev");
    let config = resolve(&figment, &secrets).await.unwrap();
    assert_eq!(config.extract_inner::<String>("db").unwrap(), PASSWORD);
    assert_eq!(config.extract_inner::<String>("api").unwrap(), API_KEY);

    let err = Resolver::new(&secrets)
        .all_profiles(true)
        .resolve(&figment)
        .await
        .unwrap_err();
    let [p] = err.problems() else { panic!("{err}") };
    assert_eq!(p.profile().as_str(), "prod");
    assert_eq!(p.key(), "db");
    assert!(err.to_string().contains("in profile `prod`"), "{err}");
}

/// A long reference (perhaps a value pasted after `secret:x://`) is cut in messages.
#[tokio::test]
async fn a_long_reference_is_cut_in_errors() {
    let secrets = client(&memory());
    let long = "Q".repeat(3000);
    let figment = toml(&format!(r#"key = "secret:mem://{long}""#));
    let err = resolve(&figment, &secrets).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(&long[..200]), "{shown}");
    assert!(shown.contains("(3006 bytes)"), "{shown}");
}
