//! [`SecretValue`]: secret bytes that are zeroized on drop, shared on clone, and never printed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretBox};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Secret bytes.
///
/// * The bytes live in one zeroize-on-drop allocation; cloning shares it (no copy of the secret).
/// * `Debug` and `Display` print `[REDACTED]`; there is no `Serialize`.
/// * The bytes are read only through the explicit `expose_*` calls or typed decoding
///   ([`json`](Self::json), [`field`](Self::field)).
#[derive(Clone)]
pub struct SecretValue(Arc<SecretBox<[u8]>>);

impl SecretValue {
    /// Take ownership of `bytes` without copying them.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        // `into_boxed_slice` reallocates (and would leave a copy behind) only when the capacity
        // is larger than the length: shrink through a zeroizing buffer in that case.
        let boxed = if bytes.capacity() == bytes.len() {
            bytes.into_boxed_slice()
        } else {
            let bytes = Zeroizing::new(bytes);
            bytes.as_slice().to_vec().into_boxed_slice()
        };
        SecretValue(Arc::new(SecretBox::new(boxed)))
    }

    /// Copy `bytes` into a new zeroizing allocation.
    pub fn copy_from_slice(bytes: &[u8]) -> Self {
        SecretValue(Arc::new(SecretBox::new(bytes.to_vec().into_boxed_slice())))
    }

    /// Take ownership of a string's bytes.
    pub fn from_string(s: String) -> Self {
        Self::from_bytes(s.into_bytes())
    }

    /// The raw bytes. Do not log them.
    pub fn expose_bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The value as UTF-8 text, or [`ErrorKind::InvalidValue`](crate::ErrorKind::InvalidValue)
    /// if it is binary.
    pub fn expose_str(&self) -> Result<&str> {
        std::str::from_utf8(self.expose_bytes()).map_err(|e| {
            Error::invalid_value(format!(
                "value is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })
    }

    /// Length in bytes (not secret in itself, but avoid logging it for short secrets).
    pub fn len(&self) -> usize {
        self.expose_bytes().len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decode the value as JSON into `T`.
    ///
    /// Errors say where the JSON went wrong (line, column, category) but never quote the input:
    /// serde's own messages can contain fragments of the value, so they are not used.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(self.expose_bytes()).map_err(scrub_json_error)
    }

    /// Select a member of a JSON value. `name` is either a top-level member name (`password`)
    /// or, when it starts with `/`, a JSON Pointer (RFC 6901) into nested objects and arrays:
    /// `/db/password`, `/users/0/token`, with `~1` for a `/` and `~0` for a `~` inside a name.
    /// A string member yields its unescaped text; any other member (number, object, …) yields
    /// its JSON text as written.
    ///
    /// Errors name the step of the pointer that failed, never the value.
    pub fn field(&self, name: &str) -> Result<SecretValue> {
        let text = if let Some(pointer) = name.strip_prefix('/') {
            let mut raw: &RawValue =
                serde_json::from_slice(self.expose_bytes()).map_err(|e| not_json(name, e))?;
            let mut walked = 0;
            for token in pointer.split('/') {
                raw = step(raw, token, &name[..walked])?;
                walked += 1 + token.len();
            }
            raw.get()
        } else {
            let object: HashMap<String, &RawValue> =
                serde_json::from_slice(self.expose_bytes()).map_err(|e| not_json(name, e))?;
            let raw = object.get(name).ok_or_else(|| {
                Error::invalid_value(format!("field `{name}` is not in the value"))
            })?;
            raw.get()
        };
        if let Some(quoted) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            // Unescaped here rather than by serde_json, whose scratch buffer for escapes is
            // freed without being wiped.
            let unescaped = unescape(quoted)?;
            Ok(SecretValue::copy_from_slice(&unescaped))
        } else {
            Ok(SecretValue::copy_from_slice(text.as_bytes()))
        }
    }

    /// Whether two values hold the same bytes (compared in constant time for equal lengths).
    pub fn same_bytes(&self, other: &SecretValue) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let (a, b) = (self.expose_bytes(), other.expose_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Whether two handles share one allocation (a clone, not a copy).
    pub fn shares_allocation_with(&self, other: &SecretValue) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn not_json(name: &str, e: serde_json::Error) -> Error {
    let e = scrub_json_error(e);
    Error::invalid_value(format!(
        "cannot select field `{name}`: value is not JSON ({})",
        e.message()
    ))
}

/// One step of a JSON Pointer: member `token` of an object, or element `token` of an array.
/// `at` is the pointer walked so far (for the error).
fn step<'a>(raw: &'a RawValue, token: &str, at: &str) -> Result<&'a RawValue> {
    let name = decode_pointer_token(token);
    let text = raw.get().trim_start();
    let missing = || Error::invalid_value(format!("field `{at}/{token}` is not in the value"));
    match text.as_bytes().first() {
        Some(b'{') => {
            let object: HashMap<String, &'a RawValue> =
                serde_json::from_str(raw.get()).map_err(|e| not_json(at, e))?;
            object.get(&*name).copied().ok_or_else(missing)
        }
        Some(b'[') => {
            // RFC 6901: decimal digits, no leading zero (except "0" itself).
            let index = (!token.is_empty()
                && token.bytes().all(|b| b.is_ascii_digit())
                && (token == "0" || !token.starts_with('0')))
            .then(|| token.parse::<usize>().ok())
            .flatten()
            .ok_or_else(|| {
                Error::invalid_value(format!(
                    "field `{at}/{token}`: `{at}` is an array, and `{token}` is not an index"
                ))
            })?;
            let array: Vec<&'a RawValue> =
                serde_json::from_str(raw.get()).map_err(|e| not_json(at, e))?;
            array.get(index).copied().ok_or_else(missing)
        }
        _ => Err(Error::invalid_value(format!(
            "field `{at}/{token}`: `{}` is neither an object nor an array",
            if at.is_empty() { "the value" } else { at }
        ))),
    }
}

/// `~1` is `/` and `~0` is `~` in a pointer's token (in that order, per RFC 6901).
fn decode_pointer_token(token: &str) -> std::borrow::Cow<'_, str> {
    if token.contains('~') {
        token.replace("~1", "/").replace("~0", "~").into()
    } else {
        token.into()
    }
}

/// The text of a JSON string (between its quotes, already validated by the parser), unescaped
/// into a buffer that is wiped when dropped and never grows (so no copy is left behind).
fn unescape(quoted: &str) -> Result<Zeroizing<Vec<u8>>> {
    let bad = || Error::invalid_value("the selected field is not a valid JSON string");
    let mut out = Zeroizing::new(Vec::with_capacity(quoted.len()));
    let mut bytes = quoted.bytes();
    let hex4 = |bytes: &mut std::str::Bytes<'_>| -> Option<u32> {
        let mut n = 0;
        for _ in 0..4 {
            n = n * 16 + char::from(bytes.next()?).to_digit(16)?;
        }
        Some(n)
    };
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let c = match bytes.next().ok_or_else(bad)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(&mut bytes).ok_or_else(bad)?;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A surrogate pair: `\uD83D\uDE00`.
                    if bytes.next() != Some(b'\\') || bytes.next() != Some(b'u') {
                        return Err(bad());
                    }
                    let lo = hex4(&mut bytes).ok_or_else(bad)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(bad());
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code).ok_or_else(bad)?
            }
            _ => return Err(bad()),
        };
        let mut utf8 = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }
    Ok(out)
}

fn scrub_json_error(e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "malformed JSON",
        Category::Data => "JSON of the wrong shape for the requested type",
        Category::Eof => "truncated JSON",
    };
    Error::invalid_value(format!(
        "value is not the JSON expected: {what} at line {} column {}",
        e.line(),
        e.column()
    ))
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<Vec<u8>> for SecretValue {
    fn from(v: Vec<u8>) -> Self {
        Self::from_bytes(v)
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        Self::from_string(s)
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        Self::copy_from_slice(s.as_bytes())
    }
}

impl From<&[u8]> for SecretValue {
    fn from(s: &[u8]) -> Self {
        Self::copy_from_slice(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Creds {
        user: String,
        port: u16,
    }

    #[test]
    fn redacted_everywhere() {
        let v = SecretValue::from("hunter2");
        assert_eq!(format!("{v:?}"), "[REDACTED]");
        assert_eq!(format!("{v}"), "[REDACTED]");
        assert_eq!(v.expose_str().unwrap(), "hunter2");
    }

    #[test]
    fn clone_shares_bytes() {
        let v = SecretValue::from("hunter2");
        let w = v.clone();
        assert!(v.shares_allocation_with(&w));
        assert_eq!(v.expose_bytes().as_ptr(), w.expose_bytes().as_ptr());
    }

    #[test]
    fn binary_values() {
        let v = SecretValue::from_bytes(vec![0, 159, 146, 150]);
        assert_eq!(v.expose_bytes(), &[0, 159, 146, 150]);
        let e = v.expose_str().unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidValue);
    }

    #[test]
    fn json_typed_and_errors_do_not_quote_value() {
        let v = SecretValue::from(r#"{"user":"app","port":5432}"#);
        assert_eq!(
            v.json::<Creds>().unwrap(),
            Creds {
                user: "app".into(),
                port: 5432
            }
        );
        let bad = SecretValue::from(r#"{"user":"s3cr3t-user","port":"s3cr3t-port"}"#);
        let e = bad.json::<Creds>().unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidValue);
        assert!(!format!("{e} {e:?}").contains("s3cr3t"), "{e}");
        let not_json = SecretValue::from("s3cr3t plain");
        let e = not_json.json::<Creds>().unwrap_err();
        assert!(!format!("{e} {e:?}").contains("s3cr3t"), "{e}");
    }

    #[test]
    fn field_selection() {
        let v = SecretValue::from(r#"{"password":"p\"w","port":5432,"nested":{"a":1}}"#);
        assert_eq!(v.field("password").unwrap().expose_str().unwrap(), "p\"w");
        assert_eq!(v.field("port").unwrap().expose_str().unwrap(), "5432");
        assert_eq!(
            v.field("nested").unwrap().expose_str().unwrap(),
            r#"{"a":1}"#
        );
        let e = v.field("missing").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidValue);
        assert!(e.to_string().contains("`missing`"));
        let e = SecretValue::from("s3cr3t").field("x").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
        let v = SecretValue::from(r#"{"k":"a\u00e9\ud83d\ude00\n\t\/\\b"}"#);
        assert_eq!(v.field("k").unwrap().expose_str().unwrap(), "aé😀\n\t/\\b");
    }

    #[test]
    fn json_pointer_selection() {
        let v = SecretValue::from(
            r#"{"db":{"password":"p\"w","hosts":["a","b"]},"a/b":{"~x":7},"":{"":"empty"}}"#,
        );
        let get = |p: &str| v.field(p).map(|f| f.expose_str().unwrap().to_owned());
        assert_eq!(get("/db/password").unwrap(), "p\"w");
        assert_eq!(get("/db/hosts/1").unwrap(), "b");
        assert_eq!(get("/db/hosts").unwrap(), r#"["a","b"]"#);
        assert_eq!(get("/a~1b/~0x").unwrap(), "7");
        assert_eq!(get("//").unwrap(), "empty");
        // A top-level name is still a name: `db` is the whole member.
        assert!(get("db").unwrap().starts_with('{'));
        let err = |p: &str| v.field(p).unwrap_err();
        for (pointer, says) in [
            ("/db/user", "`/db/user` is not in the value"),
            ("/db/hosts/2", "`/db/hosts/2` is not in the value"),
            (
                "/db/hosts/01",
                "`/db/hosts` is an array, and `01` is not an index",
            ),
            ("/db/hosts/-", "is not an index"),
            (
                "/db/password/x",
                "`/db/password` is neither an object nor an array",
            ),
        ] {
            let e = err(pointer);
            assert_eq!(e.kind(), &ErrorKind::InvalidValue);
            assert!(e.to_string().contains(says), "{pointer}: {e}");
            assert!(!e.to_string().contains("p\"w") && !e.to_string().contains("p\\\"w"));
        }
        let e = SecretValue::from("s3cr3t").field("/x").unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = SecretValue::from("\"s3cr3t\"")
            .field("/x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`the value` is neither") && !e.contains("s3cr3t"),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn field_unescapes_as_serde_json_does(text in proptest::prelude::any::<String>()) {
            let object = serde_json::json!({ "k": text }).to_string();
            let field = SecretValue::from(object.as_str()).field("k").unwrap();
            proptest::prop_assert_eq!(field.expose_str().unwrap(), text.as_str());
            // Escaping every non-ASCII character as \uXXXX (pairs above the BMP) too.
            let escaped: String = text
                .encode_utf16()
                .map(|u| format!("\\u{u:04x}"))
                .collect();
            let field = SecretValue::from(format!(r#"{{"k":"{escaped}"}}"#)).field("k").unwrap();
            proptest::prop_assert_eq!(field.expose_str().unwrap(), text.as_str());
        }
    }

    #[test]
    fn same_bytes_compares_content() {
        assert!(SecretValue::from("a").same_bytes(&SecretValue::from("a")));
        assert!(!SecretValue::from("a").same_bytes(&SecretValue::from("b")));
        assert!(!SecretValue::from("a").same_bytes(&SecretValue::from("ab")));
    }
}
