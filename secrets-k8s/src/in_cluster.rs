//! [`InCluster`]: what a pod knows about the cluster it runs in — the API server from
//! `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, and the namespace, CA bundle and token the
//! kubelet mounts at `/var/run/secrets/kubernetes.io/serviceaccount/`.

use std::fmt;
use std::path::{Path, PathBuf};

use keyrack_core::{Error, ErrorKind, IdentityToken, Result};
use url::Url;

use crate::token::ProjectedToken;

/// The directory of the default service-account mount.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The API server, namespace, CA bundle and service-account token of the pod.
#[derive(Clone)]
pub struct InCluster {
    api_server: Url,
    namespace: String,
    ca_pem: Vec<u8>,
    token: ProjectedToken,
}

impl InCluster {
    /// Reads `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` (default 443) and the files in
    /// [`SERVICE_ACCOUNT_DIR`] (`namespace`, `ca.crt`; `token` is read when first used). The error
    /// names every piece that is missing.
    pub fn detect() -> Result<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").ok();
        Self::from_parts(
            host.as_deref(),
            port.as_deref(),
            Path::new(SERVICE_ACCOUNT_DIR),
        )
    }

    /// As [`detect`](Self::detect), from given values and a service-account directory.
    pub fn from_parts(host: Option<&str>, port: Option<&str>, dir: &Path) -> Result<Self> {
        let mut missing = Vec::new();
        let host = host.map(str::trim).filter(|h| !h.is_empty());
        if host.is_none() {
            missing.push(
                "KUBERNETES_SERVICE_HOST is not set (the kubelet sets it in every pod)".to_owned(),
            );
        }
        let namespace = read_text(&dir.join("namespace"), &mut missing);
        let ca_pem = read_file(&dir.join("ca.crt"), &mut missing);
        let token_path = dir.join("token");
        if !token_path.exists() {
            missing.push(format!(
                "{} does not exist (automountServiceAccountToken: false, or no projected volume?)",
                token_path.display()
            ));
        }
        let (Some(host), Some(namespace), Some(ca_pem), true) =
            (host, namespace, ca_pem, missing.is_empty())
        else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "not running in a Kubernetes pod, or its service account is not mounted: {}",
                    missing.join("; ")
                ),
            ));
        };
        let port = port
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .unwrap_or("443");
        // An IPv6 service address must be bracketed in a URL.
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let api_server = Url::parse(&format!("https://{authority}")).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("KUBERNETES_SERVICE_HOST/PORT do not form a URL ({authority}): {e}"),
            )
        })?;
        Ok(InCluster {
            api_server,
            namespace,
            ca_pem,
            token: ProjectedToken::new(token_path),
        })
    }

    /// `https://<KUBERNETES_SERVICE_HOST>:<KUBERNETES_SERVICE_PORT>`.
    pub fn api_server(&self) -> &Url {
        &self.api_server
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cluster CA bundle (PEM) that signs the API server's certificate.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The service-account token (re-read as the kubelet rotates it).
    pub fn token(&self) -> &ProjectedToken {
        &self.token
    }

    /// The pod's service account, from the token's claims (reads the token).
    pub async fn service_account(&self) -> Result<String> {
        self.token.token().await?;
        self.token
            .claims()
            .and_then(|c| c.service_account)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidValue,
                    "the service-account token names no service account",
                )
            })
    }
}

fn read_file(path: &PathBuf, missing: &mut Vec<String>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if !bytes.is_empty() => Some(bytes),
        Ok(_) => {
            missing.push(format!("{} is empty", path.display()));
            None
        }
        Err(e) => {
            missing.push(format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn read_text(path: &PathBuf, missing: &mut Vec<String>) -> Option<String> {
    let bytes = read_file(path, missing)?;
    match String::from_utf8(bytes) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => {
            missing.push(format!("{} is not a namespace name", path.display()));
            None
        }
    }
}

impl fmt::Debug for InCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InCluster")
            .field("api_server", &self.api_server.as_str())
            .field("namespace", &self.namespace)
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("token", &self.token)
            .finish()
    }
}
