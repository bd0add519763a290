//! A kubeconfig file's current context, for `k8s://` references outside a cluster.
//!
//! Supported: one file (`$KUBECONFIG` naming a single path, else `~/.kube/config`), the current
//! context or a named one, the cluster's `server` (https), its CA as
//! `certificate-authority-data` or a `certificate-authority` file (else the platform's trust
//! store), and the user's bearer `token` or `tokenFile`. Everything else a user entry can hold
//! is refused with [`ErrorKind::Unsupported`] naming it: client certificates, `exec` plugins
//! (EKS, GKE, AKS), `auth-provider`, basic auth; so are `insecure-skip-tls-verify`, a `proxy-url`
//! and a `$KUBECONFIG` listing several files (kubectl merges them; this reads one).
//!
//! No error quotes the file's contents: a parse error says where, never what (the file holds
//! tokens and keys).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use keyrack::k8s::source::{KubernetesSecrets, KubernetesSecretsBuilder};
use keyrack::{Error, ErrorKind, IdentityToken, Result, SecretValue, StaticToken};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    #[serde(default)]
    cluster: Cluster,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    #[serde(default)]
    context: Context,
}

trait Named {
    type Inner;
    fn name(&self) -> &str;
    fn inner(self) -> Self::Inner;
}

macro_rules! named {
    ($t:ty, $field:ident, $inner:ty) => {
        impl Named for $t {
            type Inner = $inner;
            fn name(&self) -> &str {
                &self.name
            }
            fn inner(self) -> $inner {
                self.$field
            }
        }
    };
}
named!(NamedCluster, cluster, Cluster);
named!(NamedUser, user, User);
named!(NamedContext, context, Context);

#[derive(Deserialize, Default)]
struct Cluster {
    server: Option<String>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<String>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
    #[serde(rename = "proxy-url")]
    proxy_url: Option<String>,
}

#[derive(Deserialize, Default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(rename = "client-certificate-data")]
    client_cert_data: Option<serde::de::IgnoredAny>,
    #[serde(rename = "client-certificate")]
    client_cert: Option<serde::de::IgnoredAny>,
    exec: Option<serde::de::IgnoredAny>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde::de::IgnoredAny>,
    username: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct Context {
    cluster: Option<String>,
    user: Option<String>,
}

/// What was read from the kubeconfig: enough to build the source.
pub(crate) struct KubeConfig {
    server: String,
    ca_pem: Option<Vec<u8>>,
    token: Arc<dyn IdentityToken>,
}

fn config(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, message)
}

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "kubeconfig: {what} is not supported by keyrack; use a user entry with `token` or \
             `tokenFile` (e.g. `kubectl create token <service-account>`)"
        ),
    )
}

impl KubeConfig {
    /// The file `$KUBECONFIG` names, else `~/.kube/config`, at `context` or the current one.
    pub(crate) fn load(context: Option<&str>) -> Result<Self> {
        let path = locate(
            std::env::var_os("KUBECONFIG"),
            std::env::var_os("HOME").map(PathBuf::from),
        )?;
        Self::read(&path, context)
    }

    /// One kubeconfig file.
    pub(crate) fn read(path: &Path, context: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            config(format!(
                "cannot read the kubeconfig {}: {e}",
                path.display()
            ))
        })?;
        let file: File = serde_saphyr::from_str(&text).map_err(|_| {
            // The parser's message quotes the offending lines, which may hold a token or key.
            config(format!(
                "the kubeconfig {} is not a kubeconfig (YAML with clusters, users and contexts)",
                path.display()
            ))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, context, dir)
    }

    fn from_file(file: File, context: Option<&str>, dir: &Path) -> Result<Self> {
        let name = match context {
            Some(c) => c.to_owned(),
            None => file
                .current_context
                .filter(|c| !c.is_empty())
                .ok_or_else(|| config("the kubeconfig has no current-context (pass --context)"))?,
        };
        let ctx = find(file.contexts, &name, "context")?;
        let cluster_name = ctx
            .cluster
            .ok_or_else(|| config("the kubeconfig's context names no cluster"))?;
        let user_name = ctx
            .user
            .ok_or_else(|| config("the kubeconfig's context names no user"))?;
        let cluster = find(file.clusters, &cluster_name, "cluster")?;
        let user = find(file.users, &user_name, "user")?;

        let server = cluster
            .server
            .ok_or_else(|| config("the kubeconfig's cluster has no server"))?;
        if cluster.insecure {
            return Err(unsupported("insecure-skip-tls-verify"));
        }
        if cluster.proxy_url.is_some() {
            return Err(unsupported("proxy-url"));
        }
        let ca_pem = match (cluster.ca_data, cluster.ca_file) {
            (Some(data), _) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|_| {
                        config("the kubeconfig's certificate-authority-data is not base64")
                    })?,
            ),
            (None, Some(file)) => {
                let path = dir.join(file);
                Some(std::fs::read(&path).map_err(|e| {
                    config(format!(
                        "cannot read the kubeconfig's certificate-authority {}: {e}",
                        path.display()
                    ))
                })?)
            }
            (None, None) => None,
        };

        if user.exec.is_some() {
            return Err(unsupported("an exec credential plugin"));
        }
        if user.auth_provider.is_some() {
            return Err(unsupported("an auth-provider"));
        }
        if user.client_cert_data.is_some() || user.client_cert.is_some() {
            return Err(unsupported("a client certificate"));
        }
        if user.username.is_some() {
            return Err(unsupported("basic authentication (username/password)"));
        }
        let token: Arc<dyn IdentityToken> = match (user.token, user.token_file) {
            (Some(token), _) if !token.trim().is_empty() => {
                Arc::new(StaticToken::new(token.trim().to_owned()))
            }
            (_, Some(file)) => Arc::new(TokenFile(dir.join(file))),
            _ => {
                return Err(config(
                    "the kubeconfig's user has no credentials (token or tokenFile)",
                ));
            }
        };
        Ok(KubeConfig {
            server,
            ca_pem,
            token,
        })
    }

    /// The `k8s://` source on this configuration.
    pub(crate) fn builder(self) -> KubernetesSecretsBuilder {
        let b = KubernetesSecrets::builder()
            .api_server(self.server)
            .token(self.token);
        match self.ca_pem {
            Some(pem) => b.ca_pem(pem),
            None => b,
        }
    }
}

/// A `tokenFile`: any bearer token (not necessarily a JWT), read at every request so a
/// rotated file is followed.
#[derive(Debug)]
struct TokenFile(PathBuf);

#[keyrack::async_trait]
impl IdentityToken for TokenFile {
    async fn token(&self) -> Result<SecretValue> {
        let bytes = std::fs::read(&self.0).map_err(|e| {
            config(format!(
                "cannot read the kubeconfig's tokenFile {}: {e}",
                self.0.display()
            ))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| config("the kubeconfig's tokenFile is not text"))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(config("the kubeconfig's tokenFile is empty"));
        }
        Ok(SecretValue::from_string(token.to_owned()))
    }

    fn invalidate(&self) {}
}

fn find<N: Named>(entries: Vec<N>, name: &str, what: &str) -> Result<N::Inner> {
    entries
        .into_iter()
        .find(|e| e.name() == name)
        .map(N::inner)
        .ok_or_else(|| config(format!("the kubeconfig has no {what} named `{name}`")))
}

fn locate(kubeconfig: Option<std::ffi::OsString>, home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(list) = kubeconfig.filter(|v| !v.is_empty()) {
        let paths: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        return match paths.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(config("KUBECONFIG is empty")),
            _ => Err(unsupported(
                "a KUBECONFIG listing several files (kubectl merges them)",
            )),
        };
    }
    let home =
        home.ok_or_else(|| config("neither KUBECONFIG nor HOME is set: no kubeconfig to read"))?;
    Ok(home.join(".kube").join("config"))
}
