//! What the commands print: a secret's metadata with its value redacted, a reason's short tag,
//! an event as one line. Nothing here prints a value unless `get --reveal` asked for it.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use base64::Engine;
use keyrack::{ErrorKind, RotationEvent, Secret, SecretRef, Version};

/// A reference as printed: whole when short, else its start and length (as the library's
/// errors show it), so a long string passed by mistake is not echoed whole.
pub(crate) struct Shown<'a>(pub(crate) &'a str);

const SHOWN_MAX: usize = 120;

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= SHOWN_MAX {
            return f.write_str(text);
        }
        let mut cut = SHOWN_MAX / 2;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}… ({} bytes)", &text[..cut], text.len())
    }
}

/// The short reason of a failure, for scripts: the word after `fail  <ref>  `.
pub(crate) fn kind_tag(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::PermissionDenied => "denied",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::NotFound => "not-found",
        ErrorKind::Deleted => "deleted",
        ErrorKind::Disabled => "disabled",
        ErrorKind::Unavailable => "unreachable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Throttled => "throttled",
        ErrorKind::InvalidRef => "bad-reference",
        ErrorKind::InvalidValue => "bad-value",
        ErrorKind::Config => "config",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Expired => "expired",
        _ => "error",
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn span(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// `at` and how far from `now` it is.
fn when(at: SystemTime, now: SystemTime) -> String {
    match at.duration_since(now) {
        Ok(left) => format!("{} (in {})", time(at), span(left)),
        Err(past) => format!("{} ({} ago)", time(at), span(past.duration())),
    }
}

fn version(v: Option<&Version>) -> &str {
    v.map_or("-", |v| v.as_str())
}

/// The `get` block of one secret.
pub(crate) fn describe(r: &SecretRef, secret: &Secret, now: SystemTime, reveal: bool) -> String {
    let meta = secret.metadata();
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<14}{value}");
    };
    line("reference", &Shown(r.as_str()).to_string());
    line("source", r.source());
    line("version", version(meta.version.as_ref()));
    if let Some(at) = meta.created_at {
        line("created", &time(at));
    }
    if let Some(at) = meta.expires_at {
        line("expires", &when(at, now));
    }
    if let Some(at) = meta.next_rotation {
        line("next rotation", &when(at, now));
    }
    if let Some(lease) = &meta.lease {
        line(
            "lease",
            &format!(
                "{} ttl {}, {}, ends {}",
                lease.id,
                span(lease.ttl),
                if lease.renewable {
                    "renewable"
                } else {
                    "not renewable"
                },
                when(lease.expires_at(), now)
            ),
        );
    }
    // The names of a JSON object's members (names, never values).
    if let Ok(serde_json::Value::Object(map)) =
        serde_json::from_slice::<serde_json::Value>(secret.expose_bytes())
    {
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        line("fields", &names.join(", "));
    }
    line("size", &format!("{} bytes", secret.value().len()));
    if reveal {
        match secret.expose_str() {
            Ok(text) => line("value", text),
            Err(_) => line(
                "value (base64)",
                &base64::engine::general_purpose::STANDARD.encode(secret.expose_bytes()),
            ),
        }
    } else {
        line("value", "[REDACTED] (--reveal prints it)");
    }
    out
}

/// One `watch` line per event.
pub(crate) fn event_line(event: &RotationEvent) -> String {
    let at = event.at().map_or_else(|| "-".to_owned(), time);
    let name = |s: &SecretRef| Shown(s.as_str()).to_string();
    match event {
        RotationEvent::Rotated {
            secret,
            old,
            new,
            old_lease_ends,
            new_lease_ttl,
            ..
        } => {
            let mut s = format!(
                "{at} rotated {} version {} -> {}",
                name(secret),
                version(old.as_ref()),
                version(new.as_ref())
            );
            if let Some(end) = old_lease_ends {
                let _ = write!(s, ", old lease ends {}", time(*end));
            }
            if let Some(ttl) = new_lease_ttl {
                let _ = write!(s, ", new lease ttl {}", span(*ttl));
            }
            s
        }
        RotationEvent::Renewed {
            secret,
            lease_id,
            ttl,
            ..
        } => format!(
            "{at} renewed {} lease {lease_id} ttl {}",
            name(secret),
            span(*ttl)
        ),
        RotationEvent::RefreshFailed {
            secret,
            error,
            attempt,
            retry_in,
            ..
        } => format!(
            "{at} refresh-failed {} attempt {attempt}, retry in {}: {}: {error}",
            name(secret),
            span(*retry_in),
            kind_tag(error.kind())
        ),
        RotationEvent::Recovered {
            secret, failures, ..
        } => format!("{at} recovered {} after {failures} failures", name(secret)),
        RotationEvent::Expired {
            secret, version: v, ..
        } => format!(
            "{at} expired {} version {}",
            name(secret),
            version(v.as_ref())
        ),
        RotationEvent::Deleted {
            secret, version: v, ..
        } => format!(
            "{at} deleted {} version {}",
            name(secret),
            version(v.as_ref())
        ),
        RotationEvent::Lagged { missed } => format!("- lagged: {missed} events missed"),
        other => format!(
            "{at} event {}",
            other.secret().map_or_else(|| "-".to_owned(), name)
        ),
    }
}
