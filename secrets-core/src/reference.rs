//! [`SecretRef`]: a parsed, validated reference to a secret.
//!
//! The grammar is `<source>://<path>[?<query>][#<field>]`:
//!
//! * `source` is a URI scheme (`vault`, `aws-sm`, `vault-eu`, ...), compared case-insensitively
//!   and stored lowercased; it names the source the reference is resolved against.
//! * `path` is everything up to the first `?` or `#`, percent-decoded and otherwise kept as given.
//! * `query` is `&`-separated `key=value` pairs. `version=<id>` and `stage=<label>` select which
//!   revision of the secret is meant (at most one of them); every other key is a backend parameter.
//! * `field` names one entry inside a structured secret: a top-level JSON member (`#password`),
//!   or a JSON Pointer into nested objects and arrays when it starts with `/` (`#/db/hosts/0`;
//!   see [`SecretValue::field`](crate::SecretValue::field)). Sources with named entries of
//!   their own (a Kubernetes Secret's keys) read the field as an entry name.
//!
//! Raw spaces and control characters are never accepted: they must be percent-encoded.
//! [`Display`](fmt::Display) writes the canonical form, which parses back to an equal reference.
//!
//! ```
//! # use keyrack_core::reference::SecretRef;
//! let r: SecretRef = "aws-sm://prod/db?stage=AWSCURRENT#password".parse()?;
//! assert_eq!(r.source(), "aws-sm");
//! assert_eq!(r.path(), "prod/db");
//! assert_eq!(r.stage(), Some("AWSCURRENT"));
//! assert_eq!(r.field(), Some("password"));
//! assert_eq!(r.without_field().to_string(), "aws-sm://prod/db?stage=AWSCURRENT");
//! # Ok::<(), keyrack_core::reference::RefError>(())
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Bytes percent-encoded in the path (non-ASCII bytes are always encoded).
const PATH_SET: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'?').add(b'#');
/// Bytes percent-encoded in query keys and values.
const QUERY_SET: &AsciiSet = &PATH_SET.add(b'&').add(b'=');
/// Bytes percent-encoded in the field.
const FIELD_SET: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'#');

const VERSION: &str = "version";
const STAGE: &str = "stage";

/// A parsed reference to a secret: `<source>://<path>[?<query>][#<field>]`.
///
/// Build one by parsing (`"vault://secret/app#key".parse()`, [`SecretRef::parse`], `TryFrom`)
/// or with [`SecretRef::new`] and the `with_*` builders. Equal references have equal
/// canonical strings ([`Display`](fmt::Display)), and the canonical string parses back to an
/// equal reference.
///
/// Cheap to clone (the parts are shared), to hash (the hash is computed once, when the reference
/// is made) and to print (the canonical text too): references are the keys of the client's cache.
#[derive(Clone)]
pub struct SecretRef {
    inner: Arc<Inner>,
    hash: u64,
}

struct Inner {
    parts: Parts,
    /// The canonical URI.
    text: Box<str>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    source: String,
    path: String,
    selector: Option<Selector>,
    params: Vec<(String, String)>,
    field: Option<String>,
}

impl From<Parts> for SecretRef {
    fn from(parts: Parts) -> Self {
        // A fixed-key hasher: the value is stored, so it must not depend on a per-map seed.
        // References come from configuration, not from untrusted input, so hash flooding is
        // not a concern here.
        let mut h = std::hash::DefaultHasher::new();
        parts.hash(&mut h);
        let text = parts.to_string().into_boxed_str();
        SecretRef {
            hash: h.finish(),
            inner: Arc::new(Inner { parts, text }),
        }
    }
}

impl PartialEq for SecretRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.hash == other.hash && self.inner.parts == other.inner.parts)
    }
}

impl Eq for SecretRef {}

impl Hash for SecretRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for SecretRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SecretRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.inner.parts.cmp(&other.inner.parts)
    }
}

/// Which revision of a secret a reference selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Selector {
    /// A specific version id (`?version=<id>`).
    Version(String),
    /// A staging label such as `AWSCURRENT` (`?stage=<label>`).
    Stage(String),
}

impl Selector {
    fn key_value(&self) -> (&'static str, &str) {
        match self {
            Self::Version(v) => (VERSION, v),
            Self::Stage(s) => (STAGE, s),
        }
    }
}

/// The longest reference accepted, in bytes: longer than any backend's names (an AWS ARN is at
/// most 2,048 characters), short enough that a value pasted by mistake is not carried around.
pub const MAX_REF_LEN: usize = 4096;

/// Why a string (or a builder call) does not make a valid [`SecretRef`].
///
/// `Display` and `Debug` never quote the input beyond its `source://` prefix: a reference that
/// does not parse may be a secret value passed by mistake (`get_secret(password)`), and errors
/// end up in logs.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret reference{}: {kind}", Prefix(&self.input))]
pub struct RefError {
    input: String,
    kind: RefErrorKind,
}

/// ` `scheme://…`` when the input starts with a valid scheme, else nothing.
struct Prefix<'a>(&'a str);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once("://") {
            Some((scheme, _)) if scheme.len() <= 64 && check_source(scheme).is_ok() => {
                write!(f, " `{scheme}://…`")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefError")
            .field("input", &format_args!("{}", Prefix(&self.input)))
            .field("len", &self.input.len())
            .field("kind", &KindShown(&self.kind))
            .finish()
    }
}

impl RefError {
    fn new(input: impl Into<String>, kind: RefErrorKind) -> Self {
        Self {
            input: input.into(),
            kind,
        }
    }

    /// The rejected input: the parsed string, or for a builder call the reference being
    /// extended (or, for [`SecretRef::new`], `<source>://<path>` as given). It may be a value
    /// passed where a reference was expected: do not log it.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with the input.
    pub fn kind(&self) -> &RefErrorKind {
        &self.kind
    }
}

/// The specific problem a [`RefError`] reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefErrorKind {
    /// There is no `://` between the source and the path.
    #[error("missing `://` between the source and the path")]
    MissingSeparator,
    /// Nothing comes before `://`.
    #[error("the source before `://` is empty")]
    EmptySource,
    /// The source is not a URI scheme; `ch` is the first offending character.
    #[error(
        "invalid character {ch:?} in the source; a source starts with an ASCII letter followed by \
         ASCII letters, digits, `+`, `-`, `.` or `_`"
    )]
    InvalidSource {
        /// The first character that is not allowed at its position.
        ch: char,
    },
    /// Nothing comes between `://` and the query, field or end.
    #[error("the path after `://` is empty")]
    EmptyPath,
    /// A space or control character appears unencoded.
    #[error("raw space or control character at byte {offset}; percent-encode it")]
    RawCharacter {
        /// Byte offset of the character in the input.
        offset: usize,
    },
    /// A `%` is not followed by two hexadecimal digits.
    #[error("`%` at byte {offset} is not followed by two hex digits")]
    BadPercentEncoding {
        /// Byte offset of the `%` in the input.
        offset: usize,
    },
    /// A part does not decode to UTF-8.
    #[error("the {part} is not valid UTF-8 after percent-decoding")]
    NotUtf8 {
        /// Which part failed to decode.
        part: RefPart,
    },
    /// `?` is followed by nothing.
    #[error("`?` is followed by an empty query")]
    EmptyQuery,
    /// A query item has no `=`.
    #[error("the query item at byte {offset} has no `=` (write `key=` for an empty value)")]
    MissingEquals {
        /// Byte offset of the item in the input.
        offset: usize,
    },
    /// The reference is longer than [`MAX_REF_LEN`].
    #[error("{len} bytes, longer than the {max} a reference may have")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A query item, or a parameter given to a builder, has an empty key.
    #[error("a query item has an empty key")]
    EmptyKey,
    /// `version` or `stage` has an empty value.
    #[error("`{key}` needs a non-empty value")]
    EmptySelector {
        /// `"version"` or `"stage"`.
        key: &'static str,
    },
    /// Both `version` and `stage` are given.
    #[error("both `version` and `stage` are given; a reference selects one")]
    ConflictingSelectors,
    /// A query key is given more than once.
    #[error("{} is given more than once", RepeatedKey(key))]
    DuplicateKey {
        /// The repeated (decoded) key. Neither `Display` nor the [`RefError`]'s `Debug` shows it
        /// unless it is `version` or `stage`: it is part of the input.
        key: String,
    },
    /// `#` is followed by nothing, or a builder was given an empty field.
    #[error("the field after `#` is empty")]
    EmptyField,
    /// [`SecretRef::with_param`] was given `version` or `stage`, which are selectors.
    #[error("`{key}` selects a revision and is not a parameter; use `with_{key}`")]
    ReservedKey {
        /// `"version"` or `"stage"`.
        key: &'static str,
    },
}

/// A repeated query key as errors name it: a selector by its name, any other key not at all.
struct RepeatedKey<'a>(&'a str);

impl fmt::Display for RepeatedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            key @ (VERSION | STAGE) => write!(f, "query key `{key}`"),
            _ => f.write_str("a query key"),
        }
    }
}

/// A [`RefErrorKind`] as [`RefError`]'s `Debug` shows it: without a repeated key's text.
struct KindShown<'a>(&'a RefErrorKind);

impl fmt::Debug for KindShown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            RefErrorKind::DuplicateKey { key } if key != VERSION && key != STAGE => f
                .debug_struct("DuplicateKey")
                .field("key", &format_args!("…"))
                .finish(),
            kind => kind.fmt(f),
        }
    }
}

/// A part of a reference, named by [`RefErrorKind::NotUtf8`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefPart {
    /// The path between `://` and `?`/`#`.
    Path,
    /// A key or value in the query.
    Query,
    /// The field after `#`.
    Field,
}

impl fmt::Display for RefPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Field => "field",
        })
    }
}

impl SecretRef {
    /// Parses `<source>://<path>[?<query>][#<field>]`; the same as [`FromStr`].
    pub fn parse(s: &str) -> Result<Self, RefError> {
        parse_ref(s).map_err(|kind| RefError::new(s, kind))
    }

    /// A reference to `path` (taken literally, not percent-decoded) in `source`.
    ///
    /// Fails if `source` is not a valid scheme or `path` is empty.
    pub fn new(source: &str, path: &str) -> Result<Self, RefError> {
        let err = |kind| RefError::new(format!("{source}://{path}"), kind);
        let source = check_source(source).map_err(err)?;
        if path.is_empty() {
            return Err(err(RefErrorKind::EmptyPath));
        }
        let len = source.len() + 3 + path.len();
        if len > MAX_REF_LEN {
            return Err(err(RefErrorKind::TooLong {
                len,
                max: MAX_REF_LEN,
            }));
        }
        Ok(Parts {
            source,
            path: path.to_owned(),
            selector: None,
            params: Vec::new(),
            field: None,
        }
        .into())
    }

    /// Selects version `id`, replacing a version already selected.
    ///
    /// Fails if `id` is empty or a stage is already selected.
    pub fn with_version(self, id: impl Into<String>) -> Result<Self, RefError> {
        let id = id.into();
        if id.is_empty() {
            return Err(self.error(RefErrorKind::EmptySelector { key: VERSION }));
        }
        if let Some(Selector::Stage(_)) = self.inner.parts.selector {
            return Err(self.error(RefErrorKind::ConflictingSelectors));
        }
        Ok(self.edit(|p| p.selector = Some(Selector::Version(id))))
    }

    /// Selects stage `label`, replacing a stage already selected.
    ///
    /// Fails if `label` is empty or a version is already selected.
    pub fn with_stage(self, label: impl Into<String>) -> Result<Self, RefError> {
        let label = label.into();
        if label.is_empty() {
            return Err(self.error(RefErrorKind::EmptySelector { key: STAGE }));
        }
        if let Some(Selector::Version(_)) = self.inner.parts.selector {
            return Err(self.error(RefErrorKind::ConflictingSelectors));
        }
        Ok(self.edit(|p| p.selector = Some(Selector::Stage(label))))
    }

    /// Appends the backend parameter `key=value` (the value may be empty).
    ///
    /// Fails if `key` is empty, is `version` or `stage`, or is already present.
    pub fn with_param(
        self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, RefError> {
        let key = key.into();
        let kind = match key.as_str() {
            "" => Some(RefErrorKind::EmptyKey),
            VERSION => Some(RefErrorKind::ReservedKey { key: VERSION }),
            STAGE => Some(RefErrorKind::ReservedKey { key: STAGE }),
            k if self.param(k).is_some() => Some(RefErrorKind::DuplicateKey { key: key.clone() }),
            _ => None,
        };
        if let Some(kind) = kind {
            return Err(self.error(kind));
        }
        let value = value.into();
        Ok(self.edit(|p| p.params.push((key, value))))
    }

    /// Sets the field, replacing any field already set. Fails if `field` is empty.
    pub fn with_field(self, field: impl Into<String>) -> Result<Self, RefError> {
        let field = field.into();
        if field.is_empty() {
            return Err(self.error(RefErrorKind::EmptyField));
        }
        Ok(self.edit(|p| p.field = Some(field)))
    }

    /// The (lowercase) name of the source this reference is resolved against.
    pub fn source(&self) -> &str {
        &self.inner.parts.source
    }

    /// The decoded path within the source.
    pub fn path(&self) -> &str {
        &self.inner.parts.path
    }

    /// The selected version or stage, if any.
    pub fn selector(&self) -> Option<&Selector> {
        self.inner.parts.selector.as_ref()
    }

    /// The selected version id, if a version is selected.
    pub fn version(&self) -> Option<&str> {
        match &self.inner.parts.selector {
            Some(Selector::Version(v)) => Some(v),
            _ => None,
        }
    }

    /// The selected stage label, if a stage is selected.
    pub fn stage(&self) -> Option<&str> {
        match &self.inner.parts.selector {
            Some(Selector::Stage(s)) => Some(s),
            _ => None,
        }
    }

    /// The backend-specific query parameters, in order (excluding `version` and `stage`).
    pub fn params(&self) -> &[(String, String)] {
        &self.inner.parts.params
    }

    /// The value of the backend parameter `key`, if present.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.inner
            .parts
            .params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Refuse every parameter that is not in `known`: a source calls this first, so a mistyped
    /// key (`?stgae=`, `?Stage=`, `?versionId=`) is an error naming it instead of a read of the
    /// default revision.
    pub fn expect_params(&self, known: &[&str]) -> Result<(), crate::Error> {
        let Some((key, _)) = self
            .params()
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        else {
            return Ok(());
        };
        let lower = key.to_ascii_lowercase();
        let near = [VERSION, STAGE]
            .into_iter()
            .chain(known.iter().copied())
            .find(|k| {
                lower == *k
                    || lower.replace(['_', '-'], "") == k.replace(['_', '-'], "")
                    || (lower.len() == k.len() && is_swap(&lower, k))
                    || lower.starts_with(k)
            });
        let mut message = format!("unknown parameter `{}`", truncated(key));
        match near {
            Some(k) => message.push_str(&format!(" (did you mean `{k}`?)")),
            None if known.is_empty() => message.push_str(" (this source takes no parameters)"),
            None => message.push_str(&format!(" (this source takes: {})", known.join(", "))),
        }
        Err(crate::Error::new(crate::ErrorKind::InvalidRef, message).with_ref(self))
    }

    /// The field (the decoded part after `#`), if any.
    pub fn field(&self) -> Option<&str> {
        self.inner.parts.field.as_deref()
    }

    /// The reference as errors and messages show it: whole when short, else its start and its
    /// length, so a long string passed where a reference was expected (a pasted key) is never
    /// quoted whole. Its `Debug` is the same text in quotes.
    pub fn shown(&self) -> Shown<'_> {
        Shown(self)
    }

    /// The canonical URI (what `Display` prints), without formatting it.
    pub fn as_str(&self) -> &str {
        &self.inner.text
    }

    /// The same reference without `#field`: the unit a source fetches and a lease belongs to.
    pub fn without_field(&self) -> SecretRef {
        if self.inner.parts.field.is_none() {
            return self.clone();
        }
        Parts {
            field: None,
            ..self.inner.parts.clone()
        }
        .into()
    }

    fn edit(self, change: impl FnOnce(&mut Parts)) -> Self {
        let mut parts = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.parts,
            Err(shared) => shared.parts.clone(),
        };
        change(&mut parts);
        parts.into()
    }

    fn error(&self, kind: RefErrorKind) -> RefError {
        RefError::new(self.to_string(), kind)
    }
}

/// Whether `a` is `b` with two neighbouring characters swapped (`stgae` for `stage`).
fn is_swap(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    matches!(diff[..], [i, j] if j == i + 1 && a[i] == b[j] && a[j] == b[i])
}

/// A key cut to a length that is safe to quote.
fn truncated(key: &str) -> String {
    match key.char_indices().nth(32) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_owned(),
    }
}

/// Validates a scheme and returns it lowercased.
fn check_source(source: &str) -> Result<String, RefErrorKind> {
    let mut chars = source.chars();
    let first = chars.next().ok_or(RefErrorKind::EmptySource)?;
    if !first.is_ascii_alphabetic() {
        return Err(RefErrorKind::InvalidSource { ch: first });
    }
    if let Some(ch) = chars.find(|&c| !(c.is_ascii_alphanumeric() || "+-._".contains(c))) {
        return Err(RefErrorKind::InvalidSource { ch });
    }
    Ok(source.to_ascii_lowercase())
}

/// Percent-decodes `raw`, which starts at byte `base` of the input.
fn decode(raw: &str, base: usize, part: RefPart) -> Result<String, RefErrorKind> {
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let hex = |b: Option<&u8>| b.is_some_and(u8::is_ascii_hexdigit);
            if !hex(bytes.get(i + 1)) || !hex(bytes.get(i + 2)) {
                return Err(RefErrorKind::BadPercentEncoding { offset: base + i });
            }
        }
    }
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| RefErrorKind::NotUtf8 { part })
}

fn parse_ref(s: &str) -> Result<SecretRef, RefErrorKind> {
    parse_parts(s).map(SecretRef::from)
}

fn parse_parts(s: &str) -> Result<Parts, RefErrorKind> {
    if s.len() > MAX_REF_LEN {
        return Err(RefErrorKind::TooLong {
            len: s.len(),
            max: MAX_REF_LEN,
        });
    }
    if let Some(offset) = s.bytes().position(|b| b == b' ' || b.is_ascii_control()) {
        return Err(RefErrorKind::RawCharacter { offset });
    }
    let (source, rest) = s.split_once("://").ok_or(RefErrorKind::MissingSeparator)?;
    let source_lower = check_source(source)?;
    let rest_base = source.len() + 3;

    let (before_field, field_raw) = match rest.split_once('#') {
        Some((before, field)) => (before, Some(field)),
        None => (rest, None),
    };
    let (path_raw, query_raw) = match before_field.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (before_field, None),
    };

    if path_raw.is_empty() {
        return Err(RefErrorKind::EmptyPath);
    }
    let mut r = Parts {
        source: source_lower,
        path: decode(path_raw, rest_base, RefPart::Path)?,
        selector: None,
        params: Vec::new(),
        field: None,
    };

    if let Some(query) = query_raw {
        parse_query(&mut r, query, rest_base + path_raw.len() + 1)?;
    }

    if let Some(field) = field_raw {
        if field.is_empty() {
            return Err(RefErrorKind::EmptyField);
        }
        r.field = Some(decode(
            field,
            rest_base + before_field.len() + 1,
            RefPart::Field,
        )?);
    }
    Ok(r)
}

/// Parses the query (which starts at byte `base` of the input) into `r`.
fn parse_query(r: &mut Parts, query: &str, base: usize) -> Result<(), RefErrorKind> {
    if query.is_empty() {
        return Err(RefErrorKind::EmptyQuery);
    }
    let mut item_base = base;
    for item in query.split('&') {
        let Some((k, v)) = item.split_once('=') else {
            if item.is_empty() {
                return Err(RefErrorKind::EmptyKey);
            }
            decode(item, item_base, RefPart::Query)?;
            return Err(RefErrorKind::MissingEquals { offset: item_base });
        };
        let key = decode(k, item_base, RefPart::Query)?;
        let value = decode(v, item_base + k.len() + 1, RefPart::Query)?;
        item_base += item.len() + 1;

        let selector = match key.as_str() {
            "" => return Err(RefErrorKind::EmptyKey),
            VERSION => Selector::Version(value),
            STAGE => Selector::Stage(value),
            _ => {
                if r.params.iter().any(|(k, _)| *k == key) {
                    return Err(RefErrorKind::DuplicateKey { key });
                }
                r.params.push((key, value));
                continue;
            }
        };
        let (sel_key, sel_value) = selector.key_value();
        if sel_value.is_empty() {
            return Err(RefErrorKind::EmptySelector { key: sel_key });
        }
        if let Some(existing) = &r.selector {
            return Err(if existing.key_value().0 == sel_key {
                RefErrorKind::DuplicateKey { key }
            } else {
                RefErrorKind::ConflictingSelectors
            });
        }
        r.selector = Some(selector);
    }
    Ok(())
}

impl FromStr for SecretRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for SecretRef {
    type Error = RefError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SecretRef {
    type Error = RefError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.text)
    }
}

impl fmt::Display for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}",
            self.source,
            utf8_percent_encode(&self.path, PATH_SET)
        )?;
        let selector = self.selector.as_ref().map(Selector::key_value);
        let params = self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (i, (key, value)) in selector.into_iter().chain(params).enumerate() {
            write!(
                f,
                "{}{}={}",
                if i == 0 { '?' } else { '&' },
                utf8_percent_encode(key, QUERY_SET),
                utf8_percent_encode(value, QUERY_SET)
            )?;
        }
        if let Some(field) = &self.field {
            write!(f, "#{}", utf8_percent_encode(field, FIELD_SET))?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretRef")
            .field(&&*self.inner.text)
            .finish()
    }
}

impl serde::Serialize for SecretRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl serde::de::Visitor<'_> for RefVisitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret reference such as `vault://secret/app#api_key`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretRef, E> {
                SecretRef::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(RefVisitor)
    }
}

/// A [`SecretRef`] as messages show it (from [`SecretRef::shown`]).
pub struct Shown<'a>(&'a SecretRef);

/// Longer references are cut in messages.
const SHOWN_REF_MAX: usize = 120;

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.as_str();
        if text.len() <= SHOWN_REF_MAX {
            return f.write_str(text);
        }
        let mut cut = SHOWN_REF_MAX / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}… ({} bytes)", &text[..cut], text.len())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SecretRef {
        SecretRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn kind(s: &str) -> RefErrorKind {
        match SecretRef::parse(s) {
            Ok(r) => panic!("{s} parsed as {r:?}"),
            Err(e) => {
                assert_eq!(e.input(), s);
                e.kind().clone()
            }
        }
    }

    fn roundtrips(r: &SecretRef) {
        assert_eq!(&p(&r.to_string()), r, "{r}");
    }

    #[test]
    fn examples_parse() {
        let r = p("vault://secret/payments#api_key");
        assert_eq!(
            (r.source(), r.path(), r.field()),
            ("vault", "secret/payments", Some("api_key"))
        );
        assert_eq!(r.selector(), None);
        assert!(r.params().is_empty());

        let r = p("vault://database/creds/app");
        assert_eq!((r.path(), r.field()), ("database/creds/app", None));

        let r = p("aws-sm://prod/db?stage=AWSCURRENT#password");
        assert_eq!(r.source(), "aws-sm");
        assert_eq!(r.selector(), Some(&Selector::Stage("AWSCURRENT".into())));
        assert_eq!((r.stage(), r.version()), (Some("AWSCURRENT"), None));
        assert_eq!(r.field(), Some("password"));

        let r = p("azure-kv://my-vault/db-password");
        assert_eq!((r.source(), r.path()), ("azure-kv", "my-vault/db-password"));

        let r = p("gcp-sm://projects/p1/secrets/db/versions/latest");
        assert_eq!(r.path(), "projects/p1/secrets/db/versions/latest");

        let r = p("k8s://payments/db-creds#password");
        assert_eq!(
            (r.source(), r.path(), r.field()),
            ("k8s", "payments/db-creds", Some("password"))
        );

        let r = p("env://DB_URL");
        assert_eq!((r.source(), r.path()), ("env", "DB_URL"));

        let r = p("file:///etc/app/secrets/token");
        assert_eq!((r.source(), r.path()), ("file", "/etc/app/secrets/token"));

        let r = p("vault-eu://secret/x?version=3");
        assert_eq!(
            (r.source(), r.version(), r.stage()),
            ("vault-eu", Some("3"), None)
        );

        let r = p("vault://pki/issue/web?common_name=a.example.com&ttl=1h");
        assert_eq!(r.path(), "pki/issue/web");
        assert_eq!(r.param("common_name"), Some("a.example.com"));
        assert_eq!(r.param("ttl"), Some("1h"));
        assert_eq!(r.param("nope"), None);
        assert_eq!(r.params().len(), 2);
        assert_eq!(r.params()[1], ("ttl".to_owned(), "1h".to_owned()));

        let r = p("mem://a%20b#f%23x");
        assert_eq!((r.path(), r.field()), ("a b", Some("f#x")));
    }

    #[test]
    fn examples_display_canonically() {
        for s in [
            "vault://secret/payments#api_key",
            "vault://database/creds/app",
            "aws-sm://prod/db?stage=AWSCURRENT#password",
            "azure-kv://my-vault/db-password",
            "gcp-sm://projects/p1/secrets/db/versions/latest",
            "k8s://payments/db-creds#password",
            "env://DB_URL",
            "file:///etc/app/secrets/token",
            "vault-eu://secret/x?version=3",
            "vault://pki/issue/web?common_name=a.example.com&ttl=1h",
            "mem://a%20b#f%23x",
        ] {
            assert_eq!(p(s).to_string(), s);
            roundtrips(&p(s));
        }
    }

    #[test]
    fn canonicalisation() {
        assert_eq!(p("VaUlT://x").to_string(), "vault://x");
        assert_eq!(p("v://a?x=1&version=2").to_string(), "v://a?version=2&x=1");
        assert_eq!(p("v://%61?%6b=%76#%66").to_string(), "v://a?k=v#f");
        assert_eq!(p("v://é").to_string(), "v://%C3%A9");
        assert_eq!(p("v://a?flag=").param("flag"), Some(""));
        assert_eq!(p("v://a?%76ersion=1").version(), Some("1"));
        // Raw `?` in the query and `#`/`?` in the field are taken literally.
        let r = p("v://a?k=x?y#f#g?h");
        assert_eq!((r.param("k"), r.field()), (Some("x?y"), Some("f#g?h")));
        assert_eq!(r.to_string(), "v://a?k=x%3Fy#f%23g?h");
        roundtrips(&r);
    }

    #[test]
    fn display_encodes_special_characters() {
        let r = SecretRef::new("m", "a%b?c#d e\u{1}/ü")
            .and_then(|r| r.with_version("1&2=3"))
            .and_then(|r| r.with_param("k&=", "v #%?"))
            .and_then(|r| r.with_field("f# %\u{7f}?/"))
            .unwrap();
        assert_eq!(
            r.to_string(),
            "m://a%25b%3Fc%23d%20e%01/%C3%BC?version=1%262%3D3&k%26%3D=v%20%23%25%3F#f%23%20%25%7F?/"
        );
        roundtrips(&r);
    }

    #[test]
    fn debug_and_serde() {
        let r = p("aws-sm://prod/db?stage=AWSCURRENT#password");
        assert_eq!(
            format!("{r:?}"),
            r#"SecretRef("aws-sm://prod/db?stage=AWSCURRENT#password")"#
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#""aws-sm://prod/db?stage=AWSCURRENT#password""#);
        assert_eq!(serde_json::from_str::<SecretRef>(&json).unwrap(), r);
        let err = serde_json::from_str::<SecretRef>(r#""nope""#).unwrap_err();
        assert!(err.to_string().contains("missing `://`"), "{err}");
        assert!(serde_json::from_str::<SecretRef>("3").is_err());
    }

    #[test]
    fn conversions() {
        let r = p("env://X");
        assert_eq!(SecretRef::try_from("env://X").unwrap(), r);
        assert_eq!(SecretRef::try_from(String::from("env://X")).unwrap(), r);
        assert_eq!("env://X".parse::<SecretRef>().unwrap(), r);
    }

    #[test]
    fn without_field() {
        let r = p("vault://pki/issue?version=2&ttl=1h#cert");
        let bare = r.without_field();
        assert_eq!(bare.to_string(), "vault://pki/issue?version=2&ttl=1h");
        assert_eq!(bare.field(), None);
        assert_eq!(bare.without_field(), bare);
        assert_eq!(bare.with_field("cert").unwrap(), r);
    }

    #[test]
    fn builders() {
        let r = SecretRef::new("Vault", "secret/app").unwrap();
        assert_eq!(r.to_string(), "vault://secret/app");
        let r = r.with_version("1").unwrap().with_version("2").unwrap();
        assert_eq!(r.version(), Some("2"));
        let e = r.clone().with_stage("AWSCURRENT").unwrap_err();
        assert_eq!(e.kind(), &RefErrorKind::ConflictingSelectors);
        assert_eq!(e.input(), "vault://secret/app?version=2");

        let s = SecretRef::new("a", "b").unwrap().with_stage("x").unwrap();
        assert_eq!(s.with_stage("y").unwrap().stage(), Some("y"));
        let s = SecretRef::new("a", "b").unwrap().with_stage("x").unwrap();
        assert_eq!(
            s.with_version("1").unwrap_err().kind(),
            &RefErrorKind::ConflictingSelectors
        );

        let b = SecretRef::new("a", "b").unwrap();
        let empty_version = RefErrorKind::EmptySelector { key: "version" };
        assert_eq!(
            b.clone().with_version("").unwrap_err().kind(),
            &empty_version
        );
        let empty_stage = RefErrorKind::EmptySelector { key: "stage" };
        assert_eq!(b.clone().with_stage("").unwrap_err().kind(), &empty_stage);
        assert_eq!(
            b.clone().with_field("").unwrap_err().kind(),
            &RefErrorKind::EmptyField
        );
        assert_eq!(
            b.clone().with_param("", "v").unwrap_err().kind(),
            &RefErrorKind::EmptyKey
        );
        let reserved = |key| RefErrorKind::ReservedKey { key };
        assert_eq!(
            b.clone().with_param("version", "1").unwrap_err().kind(),
            &reserved("version")
        );
        assert_eq!(
            b.clone().with_param("stage", "1").unwrap_err().kind(),
            &reserved("stage")
        );
        let b = b.with_param("k", "").unwrap();
        assert_eq!(
            b.clone().with_param("k", "2").unwrap_err().kind(),
            &RefErrorKind::DuplicateKey { key: "k".into() }
        );
        let b = b.with_field("f").unwrap().with_field("g").unwrap();
        assert_eq!(b.to_string(), "a://b?k=#g");

        let e = SecretRef::new("", "x").unwrap_err();
        assert_eq!((e.kind(), e.input()), (&RefErrorKind::EmptySource, "://x"));
        assert_eq!(
            SecretRef::new("1a", "x").unwrap_err().kind(),
            &RefErrorKind::InvalidSource { ch: '1' }
        );
        assert_eq!(
            SecretRef::new("a", "").unwrap_err().kind(),
            &RefErrorKind::EmptyPath
        );
    }

    #[test]
    fn source_errors() {
        assert_eq!(kind(""), RefErrorKind::MissingSeparator);
        assert_eq!(kind("vault:/x"), RefErrorKind::MissingSeparator);
        assert_eq!(kind("secret/payments"), RefErrorKind::MissingSeparator);
        assert_eq!(kind("://x"), RefErrorKind::EmptySource);
        assert_eq!(kind("1vault://x"), RefErrorKind::InvalidSource { ch: '1' });
        assert_eq!(kind("-v://x"), RefErrorKind::InvalidSource { ch: '-' });
        assert_eq!(kind("va:ult://x"), RefErrorKind::InvalidSource { ch: ':' });
        assert_eq!(kind("vaé://x"), RefErrorKind::InvalidSource { ch: 'é' });
        assert_eq!(kind("v%41://x"), RefErrorKind::InvalidSource { ch: '%' });
        assert_eq!(p("a+b-c.d_e9://x").source(), "a+b-c.d_e9");
    }

    #[test]
    fn path_errors() {
        assert_eq!(kind("v://"), RefErrorKind::EmptyPath);
        assert_eq!(kind("v://?version=1"), RefErrorKind::EmptyPath);
        assert_eq!(kind("v://#f"), RefErrorKind::EmptyPath);
        assert_eq!(
            kind("v://%ff"),
            RefErrorKind::NotUtf8 {
                part: RefPart::Path
            }
        );
    }

    #[test]
    fn raw_characters() {
        assert_eq!(kind("v://a b"), RefErrorKind::RawCharacter { offset: 5 });
        assert_eq!(kind("v://ab\n"), RefErrorKind::RawCharacter { offset: 6 });
        assert_eq!(
            kind("v://a#\u{7f}"),
            RefErrorKind::RawCharacter { offset: 6 }
        );
        assert_eq!(kind("v://a?k=\t"), RefErrorKind::RawCharacter { offset: 8 });
        assert_eq!(kind(" v://a"), RefErrorKind::RawCharacter { offset: 0 });
    }

    #[test]
    fn bad_percent_encoding() {
        let bad = |offset| RefErrorKind::BadPercentEncoding { offset };
        assert_eq!(kind("v://a%"), bad(5));
        assert_eq!(kind("v://a%4"), bad(5));
        assert_eq!(kind("v://a%zz"), bad(5));
        assert_eq!(kind("v://a%%41"), bad(5));
        assert_eq!(kind("v://é%g0"), bad(6));
        assert_eq!(kind("v://a?k=%4"), bad(8));
        assert_eq!(kind("v://a?x=1&%k=1"), bad(10));
        assert_eq!(kind("v://a?x=1&k%=1"), bad(11));
        assert_eq!(kind("v://a?x=1#%"), bad(10));
        assert_eq!(kind("v://a?x#%"), RefErrorKind::MissingEquals { offset: 6 });
        assert_eq!(p("v://%41%6a").path(), "Aj");
    }

    #[test]
    fn query_errors() {
        assert_eq!(kind("x://a?"), RefErrorKind::EmptyQuery);
        assert_eq!(kind("x://a?#f"), RefErrorKind::EmptyQuery);
        assert_eq!(
            kind("x://a?flag"),
            RefErrorKind::MissingEquals { offset: 6 }
        );
        assert_eq!(
            kind("x://a?k=1&fl%61g"),
            RefErrorKind::MissingEquals { offset: 10 }
        );
        assert_eq!(kind("x://a?=1"), RefErrorKind::EmptyKey);
        assert_eq!(kind("x://a?k=1&"), RefErrorKind::EmptyKey);
        assert_eq!(kind("x://a?k=1&&j=2"), RefErrorKind::EmptyKey);
        assert_eq!(
            kind("x://a?version="),
            RefErrorKind::EmptySelector { key: "version" }
        );
        assert_eq!(
            kind("x://a?stage=#f"),
            RefErrorKind::EmptySelector { key: "stage" }
        );
        assert_eq!(
            kind("x://a?version=1&stage=s"),
            RefErrorKind::ConflictingSelectors
        );
        assert_eq!(
            kind("x://a?stage=s&version=1"),
            RefErrorKind::ConflictingSelectors
        );
        let dup = |key: &str| RefErrorKind::DuplicateKey { key: key.into() };
        assert_eq!(kind("x://a?version=1&version=2"), dup("version"));
        assert_eq!(kind("x://a?stage=1&stage=1"), dup("stage"));
        assert_eq!(kind("x://a?k=1&k=2"), dup("k"));
        assert_eq!(kind("x://a?k=1&%6b=2"), dup("k"));
        assert_eq!(
            kind("x://a?k=%ff"),
            RefErrorKind::NotUtf8 {
                part: RefPart::Query
            }
        );
        assert_eq!(
            kind("x://a?%c3=1"),
            RefErrorKind::NotUtf8 {
                part: RefPart::Query
            }
        );
        // `+` is not a space.
        assert_eq!(p("x://a?k=a+b").param("k"), Some("a+b"));
    }

    /// Found by the `secret_ref` fuzz target (`v://?=&=` with a value planted in each part).
    #[test]
    fn a_repeated_query_key_is_not_quoted() {
        // A key may be a value pasted by mistake: the error names it by kind, not by text.
        let e = SecretRef::parse("x://a?hunter2=1&hunter2=2").unwrap_err();
        assert_eq!(
            e.kind(),
            &RefErrorKind::DuplicateKey {
                key: "hunter2".into()
            }
        );
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let e = SecretRef::new("a", "b")
            .and_then(|r| r.with_param("hunter2", ""))
            .and_then(|r| r.with_param("hunter2", "x"))
            .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // The selectors' names are the grammar's, not the input's: still named.
        assert_eq!(
            kind("x://a?version=1&version=2").to_string(),
            "query key `version` is given more than once"
        );
    }

    #[test]
    fn field_errors() {
        assert_eq!(kind("x://a#"), RefErrorKind::EmptyField);
        assert_eq!(kind("x://a?k=v#"), RefErrorKind::EmptyField);
        assert_eq!(
            kind("x://a#%80"),
            RefErrorKind::NotUtf8 {
                part: RefPart::Field
            }
        );
    }

    #[test]
    fn unknown_parameters_are_refused_with_a_hint() {
        let ok = p("aws-sm://db?region=eu-west-1");
        assert!(ok.expect_params(&["region"]).is_ok());
        let hint = |s: &str, known: &[&str]| p(s).expect_params(known).unwrap_err().to_string();
        assert!(hint("aws-sm://db?Stage=X", &["region"]).contains("did you mean `stage`?"));
        assert!(hint("aws-sm://db?stgae=X", &["region"]).contains("did you mean `stage`?"));
        assert!(hint("aws-sm://db?versionId=1", &["region"]).contains("did you mean `version`?"));
        assert!(hint("aws-sm://db?zone=1", &["region"]).contains("this source takes: region"));
        assert!(hint("mem://db?zone=1", &[]).contains("takes no parameters"));
        let e = p("aws-sm://db?Region=x")
            .expect_params(&["region"])
            .unwrap_err();
        assert_eq!(e.kind(), &crate::ErrorKind::InvalidRef);
        assert!(e.to_string().contains("did you mean `region`?"), "{e}");
    }

    #[test]
    fn error_messages() {
        let e = SecretRef::parse("x://a?version=1&stage=s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid secret reference `x://…`: both `version` and `stage` are given; a \
             reference selects one"
        );
        // What does not parse may be a value passed by mistake: never quoted, in any form.
        for input in [
            "hunter2",
            "hunter2 with spaces",
            "s3cr3t?x=1#y",
            "://hunter2",
        ] {
            let e = SecretRef::parse(input).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("s3cr3t"),
                "{shown}"
            );
        }
        let e = SecretRef::parse(&format!("v://{}", "a".repeat(MAX_REF_LEN))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid secret reference `v://…`: 4100 bytes, longer than the 4096 a reference may have"
        );
        assert_eq!(
            kind("v://a%zz").to_string(),
            "`%` at byte 5 is not followed by two hex digits"
        );
        assert_eq!(
            kind("v://%ff").to_string(),
            "the path is not valid UTF-8 after percent-decoding"
        );
    }
}
