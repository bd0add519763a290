//! How a `gcp-sm://` reference becomes a Secret Manager version resource name and an endpoint.

use keyrack_core::{Error, ErrorKind, Result, SecretRef, Selector};

/// The version read when a reference names none.
pub const LATEST: &str = "latest";

/// What the builder supplies to references that leave it out.
#[derive(Clone, Debug, Default)]
pub(crate) struct Defaults {
    pub(crate) project: Option<String>,
    pub(crate) location: Option<String>,
}

/// A resolved reference: the full version name sent to AccessSecretVersion, and the location
/// whose regional endpoint serves it (`None`: the global endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) location: Option<String>,
}

impl Target {
    /// The secret's resource name (`projects/<p>[/locations/<l>]/secrets/<s>`).
    pub(crate) fn secret(&self) -> &str {
        self.name
            .rsplit_once("/versions/")
            .map_or(self.name.as_str(), |(secret, _)| secret)
    }

    /// Whether the reference names a version number (`/versions/3`, `?version=3`) rather than
    /// an alias (`latest`, or one of the secret's version aliases), which may move.
    pub(crate) fn pinned(&self) -> bool {
        version_of(&self.name).is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// A reference that does not name a secret version. The message says what is wrong but does not
/// quote the reference: it may be a value pasted in the wrong place.
fn invalid(why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidRef,
        format!(
            "{why}; expected gcp-sm://projects/<project>[/locations/<location>]/secrets/\
             <secret>[/versions/<version>] or gcp-sm://<secret>[/versions/<version>] with a \
             default project"
        ),
    )
}

/// `what` of `len` characters is longer than `max`.
fn too_long(what: &str, len: usize, max: usize) -> Error {
    Error::new(
        ErrorKind::InvalidRef,
        format!("the {what} is {len} characters long; Google Cloud allows at most {max}"),
    )
}

/// The longest secret id (Secret Manager: letters, digits, `_` and `-`, at most 255).
const MAX_SECRET_ID: usize = 255;

/// Secret ids are `[A-Za-z0-9_-]{1,255}`; version numbers and aliases use the same characters.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SECRET_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Project ids (lowercase letters, digits and hyphens, at most 30), project numbers (digits) and
/// domain-scoped ids (`example.com:my-project`), and nothing else: the project is pasted into the
/// request's path, where `..` or `.` would address another resource than the reference names,
/// with the access token attached.
fn is_project(s: &str) -> bool {
    let id = |p: &str| {
        (1..=MAX_PROJECT).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match s.split_once(':') {
        Some((domain, project)) => is_domain(domain) && id(project),
        None => id(s),
    }
}

/// The domain of a domain-scoped project id: dot-separated labels, none empty.
fn is_domain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The longest project id (Resource Manager: "6 to 30 lowercase ASCII letters, digits, or
/// hyphens").
const MAX_PROJECT: usize = 30;

/// Locations are lowercase region names such as `europe-west1`.
fn is_location(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Resolve `r` against the builder's defaults.
pub(crate) fn resolve(r: &SecretRef, defaults: &Defaults) -> Result<Target> {
    // A misspelt `?version=` must not read `latest`: no parameter is known (`version` is a
    // selector), and a near miss is named.
    r.expect_params(&[])?;
    let segments: Vec<&str> = r.path().split('/').collect();
    let (project, location, rest) = match segments.as_slice() {
        ["projects", project, "locations", location, rest @ ..] => {
            (*project, Some(*location), rest)
        }
        ["projects", project, rest @ ..] => (*project, None, rest),
        rest => {
            let project = defaults.project.as_deref().ok_or_else(|| {
                invalid(
                    "no project in the reference and no default project (GcpBuilder::with_project)",
                )
            })?;
            (project, defaults.location.as_deref(), rest)
        }
    };
    let (secret, path_version) = match rest {
        ["secrets", secret] => (*secret, None),
        ["secrets", secret, "versions", version] => (*secret, Some(*version)),
        // The short form names the secret alone.
        [secret] if !r.path().starts_with("projects/") => (*secret, None),
        [secret, "versions", version] if !r.path().starts_with("projects/") => {
            (*secret, Some(*version))
        }
        _ => return Err(invalid("unrecognised path")),
    };
    let project_id = project.rsplit_once(':').map_or(project, |(_, id)| id);
    if project_id.len() > MAX_PROJECT {
        return Err(too_long(
            "project id",
            project_id.chars().count(),
            MAX_PROJECT,
        ));
    }
    if !is_project(project) {
        return Err(invalid("invalid project"));
    }
    if let Some(l) = location
        && !is_location(l)
    {
        return Err(invalid("invalid location"));
    }
    if secret.len() > MAX_SECRET_ID {
        return Err(too_long("secret id", secret.chars().count(), MAX_SECRET_ID));
    }
    if !is_id(secret) {
        return Err(invalid("invalid secret id"));
    }
    let version = match (path_version, r.selector()) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "the version is given both in the path and as ?version=",
            ));
        }
        (Some(v), None) => v,
        (None, Some(Selector::Version(v))) => v.as_str(),
        (None, None) => LATEST,
        (None, Some(_)) => {
            return Err(Error::unsupported(
                "Secret Manager selects versions by number or alias (?version=), not by stage",
            ));
        }
    };
    if !is_id(version) {
        return Err(invalid("invalid version"));
    }
    let name = match location {
        Some(l) => format!("projects/{project}/locations/{l}/secrets/{secret}/versions/{version}"),
        None => format!("projects/{project}/secrets/{secret}/versions/{version}"),
    };
    Ok(Target {
        name,
        location: location.map(str::to_owned),
    })
}

/// The version id in a version's resource name (`…/versions/2` → `2`).
pub(crate) fn version_of(name: &str) -> Option<&str> {
    let (_, v) = name.rsplit_once("/versions/")?;
    (!v.is_empty() && !v.contains('/')).then_some(v)
}

/// The documented regional endpoint of `location`.
pub(crate) fn regional_endpoint(location: &str) -> String {
    format!("https://secretmanager.{location}.rep.googleapis.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> SecretRef {
        SecretRef::parse(s).unwrap()
    }

    fn with_project() -> Defaults {
        Defaults {
            project: Some("p1".into()),
            location: None,
        }
    }

    #[test]
    fn full_names() {
        let d = Defaults::default();
        let t = resolve(&r("gcp-sm://projects/p1/secrets/db"), &d).unwrap();
        assert_eq!(t.name, "projects/p1/secrets/db/versions/latest");
        assert_eq!(t.location, None);
        let t = resolve(&r("gcp-sm://projects/p1/secrets/db/versions/3"), &d).unwrap();
        assert_eq!(t.name, "projects/p1/secrets/db/versions/3");
        let t = resolve(&r("gcp-sm://projects/p1/secrets/db?version=prod"), &d).unwrap();
        assert_eq!(t.name, "projects/p1/secrets/db/versions/prod");
        let t = resolve(
            &r("gcp-sm://projects/p1/locations/europe-west1/secrets/db/versions/2"),
            &d,
        )
        .unwrap();
        assert_eq!(
            t.name,
            "projects/p1/locations/europe-west1/secrets/db/versions/2"
        );
        assert_eq!(t.location.as_deref(), Some("europe-west1"));
        // The engine strips #field before the source sees a reference; the path is unaffected.
        let t = resolve(
            &r("gcp-sm://projects/p1/secrets/db#password").without_field(),
            &d,
        );
        assert_eq!(t.unwrap().name, "projects/p1/secrets/db/versions/latest");
    }

    #[test]
    fn short_form_uses_the_default_project_and_location() {
        let t = resolve(&r("gcp-sm://db"), &with_project()).unwrap();
        assert_eq!(t.name, "projects/p1/secrets/db/versions/latest");
        let t = resolve(&r("gcp-sm://db/versions/7"), &with_project()).unwrap();
        assert_eq!(t.name, "projects/p1/secrets/db/versions/7");
        let regional = Defaults {
            project: Some("p1".into()),
            location: Some("us-east1".into()),
        };
        let t = resolve(&r("gcp-sm://db?version=2"), &regional).unwrap();
        assert_eq!(
            t.name,
            "projects/p1/locations/us-east1/secrets/db/versions/2"
        );
        assert_eq!(t.location.as_deref(), Some("us-east1"));
        let e = resolve(&r("gcp-sm://db"), &Defaults::default()).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::InvalidRef);
        assert!(e.to_string().contains("default project"), "{e}");
    }

    #[test]
    fn malformed_references_are_refused() {
        let d = with_project();
        for bad in [
            "gcp-sm://projects/p1/secrets/db/versions/1?version=2",
            "gcp-sm://projects/p1/secrets",
            "gcp-sm://projects/p1/secrets/db/extra",
            "gcp-sm://projects//secrets/db",
            "gcp-sm://projects/p1/locations/EU/secrets/db",
            "gcp-sm://projects/p1/secrets/d:b",
            "gcp-sm://projects/p1/secrets/db/versions/",
            "gcp-sm://a/b/c/d",
            "gcp-sm://projects/p1",
        ] {
            let e = resolve(&r(bad), &d).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}: {e}");
        }
        let e = resolve(&r("gcp-sm://projects/p1/secrets/db?stage=prod"), &d).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Unsupported);
    }

    /// Issue #12: names over Secret Manager's and Resource Manager's limits (secret ids 255,
    /// project ids 30) are refused with a message that says which part and which limit, and no
    /// refusal quotes the reference (it may be a value pasted in the wrong place).
    #[test]
    fn names_are_checked_against_the_documented_limits_without_quoting_them() {
        let d = with_project();
        let long_secret = format!("s3cr3t{}", "x".repeat(250));
        let long_project = format!("s3cr3t{}", "x".repeat(25));
        for (bad, says) in [
            (format!("gcp-sm://projects/p1/secrets/{long_secret}"), "255"),
            (format!("gcp-sm://{long_secret}"), "255"),
            (format!("gcp-sm://projects/{long_project}/secrets/db"), "30"),
            (
                "gcp-sm://projects/p1/secrets/s3cr3t.x".to_owned(),
                "secret id",
            ),
            ("gcp-sm://projects/S3CR3T/secrets/db".to_owned(), "project"),
            (
                "gcp-sm://projects/p1/secrets/s3cr3t/extra".to_owned(),
                "path",
            ),
        ] {
            let e = resolve(&r(&bad), &d).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}");
            let shown = e.message().to_ascii_lowercase();
            assert!(shown.contains(says), "{bad}: {shown}");
            assert!(
                !shown.contains("s3cr3t"),
                "the reference was quoted: {shown}"
            );
        }
        // `?version=` is the only query key; a near miss is named.
        let e = resolve(&r("gcp-sm://db?Version=1"), &d).unwrap_err();
        assert!(e.to_string().contains("did you mean `version`?"), "{e}");
    }

    #[test]
    fn parameters_other_than_version_are_refused() {
        let d = with_project();
        for bad in [
            "gcp-sm://projects/p1/secrets/db?verison=1",
            "gcp-sm://db?version=1&location=us-east1",
            "gcp-sm://db?x=",
        ] {
            let e = resolve(&r(bad), &d).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::InvalidRef, "{bad}: {e}");
            assert!(e.to_string().contains("unknown parameter"), "{e}");
        }
    }

    #[test]
    fn secret_name_and_pinned_versions() {
        let d = with_project();
        let t = resolve(&r("gcp-sm://projects/p1/locations/us-east1/secrets/db"), &d).unwrap();
        assert_eq!(t.secret(), "projects/p1/locations/us-east1/secrets/db");
        assert!(!t.pinned());
        for pinned in ["gcp-sm://db/versions/3", "gcp-sm://db?version=12"] {
            let t = resolve(&r(pinned), &d).unwrap();
            assert_eq!(t.secret(), "projects/p1/secrets/db");
            assert!(t.pinned(), "{pinned}");
        }
        for moving in [
            "gcp-sm://db",
            "gcp-sm://db?version=prod",
            "gcp-sm://db/versions/v2",
        ] {
            assert!(!resolve(&r(moving), &d).unwrap().pinned(), "{moving}");
        }
    }

    #[test]
    fn version_from_name_and_regional_endpoint() {
        assert_eq!(
            version_of("projects/123/secrets/my_secret/versions/2"),
            Some("2")
        );
        assert_eq!(
            version_of("projects/1/locations/l/secrets/s/versions/14"),
            Some("14")
        );
        assert_eq!(version_of("projects/1/secrets/s"), None);
        assert_eq!(
            regional_endpoint("europe-west1"),
            "https://secretmanager.europe-west1.rep.googleapis.com"
        );
    }
}
