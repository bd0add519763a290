//! Which secrets engine serves a path: KV v1, KV v2 or anything else. Detected once per mount
//! through `sys/internal/ui/mounts/<path>` (the endpoint Vault's own CLI uses, open to any token
//! with a capability on the path) and remembered.

use std::sync::Mutex;

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Kv1,
    Kv2,
    /// Any other engine (database, aws, pki, …): read as a plain logical path.
    Other,
}

#[derive(Clone, Debug)]
pub(crate) struct Mount {
    /// The mount path with a trailing slash (`secret/`).
    pub(crate) path: String,
    pub(crate) engine: Engine,
}

impl Mount {
    /// The part of `path` below the mount.
    pub(crate) fn rest<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(self.path.as_str()).unwrap_or(path)
    }
}

#[derive(Deserialize)]
pub(crate) struct UiMount {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    options: Option<UiMountOptions>,
}

#[derive(Deserialize)]
struct UiMountOptions {
    #[serde(default)]
    version: Option<String>,
}

impl From<UiMount> for Mount {
    fn from(m: UiMount) -> Self {
        let version = m.options.and_then(|o| o.version);
        let engine = match (m.kind.as_str(), version.as_deref()) {
            ("kv", Some("2")) => Engine::Kv2,
            ("kv" | "generic", _) => Engine::Kv1,
            _ => Engine::Other,
        };
        let mut path = m.path;
        if !path.ends_with('/') {
            path.push('/');
        }
        Mount { path, engine }
    }
}

/// Mounts seen so far.
#[derive(Default, Debug)]
pub(crate) struct Mounts(Mutex<Vec<Mount>>);

impl Mounts {
    /// The known mount `path` lies under (the longest match).
    pub(crate) fn find(&self, path: &str) -> Option<Mount> {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .filter(|m| path.starts_with(m.path.as_str()))
            .max_by_key(|m| m.path.len())
            .cloned()
    }

    pub(crate) fn remember(&self, mount: Mount) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !known.iter().any(|m| m.path == mount.path) {
            known.push(mount);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_longest_prefix() {
        let ui = |path: &str, kind: &str, version: Option<&str>| {
            Mount::from(UiMount {
                path: path.into(),
                kind: kind.into(),
                options: Some(UiMountOptions {
                    version: version.map(Into::into),
                }),
            })
        };
        let mounts = Mounts::default();
        mounts.remember(ui("secret/", "kv", Some("2")));
        mounts.remember(ui("secret/team", "kv", Some("1")));
        mounts.remember(ui("database/", "database", None));
        assert_eq!(mounts.find("secret/app/x").unwrap().engine, Engine::Kv2);
        let team = mounts.find("secret/team/x").unwrap();
        assert_eq!(
            (team.engine.clone(), team.rest("secret/team/x")),
            (Engine::Kv1, "x")
        );
        assert_eq!(
            mounts.find("database/creds/app").unwrap().engine,
            Engine::Other
        );
        assert!(mounts.find("pki/issue/app").is_none());
    }
}
