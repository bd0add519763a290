//! [`Pod`]: what a pod was given to log in with, read from its environment and token paths, and
//! an error that names exactly what is missing when a backend's identity is not there.
//!
//! | backend | what is read | who sets it |
//! |---|---|---|
//! | Vault | `VAULT_ADDR`, `VAULT_K8S_ROLE`, optional `VAULT_K8S_AUTH` (`kubernetes` or `jwt`, default `kubernetes`), `VAULT_K8S_MOUNT` (default: the method's name), `VAULT_K8S_TOKEN_FILE` (default `/var/run/secrets/tokens/vault` if it exists, else, for kubernetes auth only, the service-account token) | you, in the Deployment (examples/k8s/deployment.yaml) |
//! | AWS | `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`, optional `AWS_ROLE_SESSION_NAME`, `AWS_REGION` or `AWS_DEFAULT_REGION` | EKS's pod identity webhook for an annotated service account, or you |
//! | Azure | `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, optional `AZURE_AUTHORITY_HOST` | Azure workload identity's webhook for a labelled pod, or you |
//! | Google | `GOOGLE_APPLICATION_CREDENTIALS` naming an `external_account` JSON whose `credential_source.file` exists | you (a ConfigMap made by `gcloud iam workload-identity-pools create-cred-config`) |

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use keyrack_core::{Error, ErrorKind, Result};

use crate::in_cluster::{InCluster, SERVICE_ACCOUNT_DIR};

/// Where a projected token with audience `vault` is mounted in examples/k8s/deployment.yaml.
pub const VAULT_TOKEN_FILE: &str = "/var/run/secrets/tokens/vault";

/// A snapshot of the pod's environment, asked which identities it carries.
#[derive(Clone)]
pub struct Pod {
    vars: BTreeMap<String, String>,
    service_account_dir: PathBuf,
}

/// How to log in to Vault.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VaultLogin {
    /// `VAULT_ADDR`.
    pub address: String,
    /// `kubernetes` or `jwt`.
    pub method: VaultMethod,
    /// The auth mount path.
    pub mount: String,
    /// The Vault role.
    pub role: String,
    /// The projected token to log in with.
    pub token_file: PathBuf,
}

/// Vault's two ways to accept a Kubernetes token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VaultMethod {
    /// Kubernetes auth: Vault asks the API server (TokenReview) whether the token is valid.
    Kubernetes,
    /// JWT auth: Vault checks the signature against the cluster's issuer keys itself.
    Jwt,
}

/// EKS IRSA.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsWebIdentity {
    /// `AWS_ROLE_ARN`.
    pub role_arn: String,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`.
    pub token_file: PathBuf,
    /// `AWS_ROLE_SESSION_NAME`.
    pub session_name: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: String,
}

/// Azure workload identity.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AzureWorkloadIdentity {
    /// `AZURE_CLIENT_ID`.
    pub client_id: String,
    /// `AZURE_TENANT_ID`.
    pub tenant_id: String,
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    pub token_file: PathBuf,
    /// `AZURE_AUTHORITY_HOST` (public cloud when absent).
    pub authority_host: Option<String>,
}

/// Google workload identity federation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcpExternalAccount {
    /// `GOOGLE_APPLICATION_CREDENTIALS`: the external-account configuration.
    pub credentials_file: PathBuf,
    /// Its `credential_source.file`: the projected token.
    pub token_file: PathBuf,
}

/// Collects what is missing for one backend, then fails with all of it at once.
struct Missing {
    what: &'static str,
    hint: &'static str,
    items: Vec<String>,
}

impl Missing {
    fn new(what: &'static str, hint: &'static str) -> Self {
        Missing {
            what,
            hint,
            items: Vec::new(),
        }
    }

    fn var(&mut self, pod: &Pod, name: &str) -> Option<String> {
        let value = pod.var(name);
        if value.is_none() {
            self.items.push(format!("{name} is not set"));
        }
        value
    }

    fn file(&mut self, var: &str, path: Option<String>) -> Option<PathBuf> {
        let path = PathBuf::from(path?);
        if path.is_file() {
            Some(path)
        } else {
            self.items
                .push(format!("{var}={} does not exist", path.display()));
            None
        }
    }

    fn finish(self) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "{} is not configured in this pod: {}. {}",
                self.what,
                self.items.join("; "),
                self.hint
            ),
        ))
    }
}

impl Pod {
    /// The current process's environment and the default service-account mount.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Given variables (tests, or a configuration that is not the environment).
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Pod {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        }
    }

    /// Look for the service-account mount in `dir` instead of [`SERVICE_ACCOUNT_DIR`].
    pub fn with_service_account_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.service_account_dir = dir.into();
        self
    }

    fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// The API server, namespace, CA and service-account token.
    pub fn in_cluster(&self) -> Result<InCluster> {
        InCluster::from_parts(
            self.var("KUBERNETES_SERVICE_HOST").as_deref(),
            self.var("KUBERNETES_SERVICE_PORT").as_deref(),
            &self.service_account_dir,
        )
    }

    /// Vault kubernetes or jwt login.
    pub fn vault(&self) -> Result<VaultLogin> {
        let mut m = Missing::new(
            "Vault login with the pod's token",
            "Set VAULT_ADDR and VAULT_K8S_ROLE in the Deployment (see examples/k8s/deployment.yaml).",
        );
        let address = m.var(self, "VAULT_ADDR");
        let role = m.var(self, "VAULT_K8S_ROLE");
        let method = match self.var("VAULT_K8S_AUTH").as_deref() {
            None | Some("kubernetes") => Some(VaultMethod::Kubernetes),
            Some("jwt") => Some(VaultMethod::Jwt),
            Some(other) => {
                m.items.push(format!(
                    "VAULT_K8S_AUTH={other} is neither `kubernetes` nor `jwt`"
                ));
                None
            }
        };
        let token_file = match self.var("VAULT_K8S_TOKEN_FILE") {
            Some(path) => m.file("VAULT_K8S_TOKEN_FILE", Some(path)),
            None => {
                let projected = Path::new(VAULT_TOKEN_FILE);
                let default = self.service_account_dir.join("token");
                if projected.is_file() {
                    Some(projected.to_path_buf())
                } else if method == Some(VaultMethod::Jwt) {
                    // The service-account token's audience is the API server, which a JWT role's
                    // `bound_audiences` (normally `vault`) refuses.
                    m.items.push(format!(
                        "no token for jwt auth: VAULT_K8S_TOKEN_FILE is not set and {VAULT_TOKEN_FILE} \
                         (a projected token with the role's audience) does not exist"
                    ));
                    None
                } else if default.is_file() {
                    Some(default)
                } else {
                    m.items.push(format!(
                        "no token: VAULT_K8S_TOKEN_FILE is not set and neither {VAULT_TOKEN_FILE} nor {} exists",
                        default.display()
                    ));
                    None
                }
            }
        };
        m.finish()?;
        let (Some(address), Some(role), Some(method), Some(token_file)) =
            (address, role, method, token_file)
        else {
            unreachable!("Missing::finish fails whenever a piece is absent")
        };
        let mount = self.var("VAULT_K8S_MOUNT").unwrap_or_else(|| match method {
            VaultMethod::Kubernetes => "kubernetes".into(),
            VaultMethod::Jwt => "jwt".into(),
        });
        Ok(VaultLogin {
            address,
            method,
            mount,
            role,
            token_file,
        })
    }

    /// EKS IRSA.
    pub fn aws(&self) -> Result<AwsWebIdentity> {
        let mut m = Missing::new(
            "AWS web identity (IRSA)",
            "EKS sets AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE when the service account is \
             annotated with eks.amazonaws.com/role-arn.",
        );
        let role_arn = m.var(self, "AWS_ROLE_ARN");
        let token_file = m.var(self, "AWS_WEB_IDENTITY_TOKEN_FILE");
        let token_file = m.file("AWS_WEB_IDENTITY_TOKEN_FILE", token_file);
        let region = self
            .var("AWS_REGION")
            .or_else(|| self.var("AWS_DEFAULT_REGION"));
        if region.is_none() {
            m.items
                .push("neither AWS_REGION nor AWS_DEFAULT_REGION is set".into());
        }
        m.finish()?;
        let (Some(role_arn), Some(token_file), Some(region)) = (role_arn, token_file, region)
        else {
            unreachable!("Missing::finish fails whenever a piece is absent")
        };
        Ok(AwsWebIdentity {
            role_arn,
            token_file,
            session_name: self.var("AWS_ROLE_SESSION_NAME"),
            region,
        })
    }

    /// Azure workload identity.
    pub fn azure(&self) -> Result<AzureWorkloadIdentity> {
        let mut m = Missing::new(
            "Azure workload identity",
            "Azure's workload identity webhook sets these for pods labelled \
             azure.workload.identity/use: \"true\" whose service account names a client id.",
        );
        let client_id = m.var(self, "AZURE_CLIENT_ID");
        let tenant_id = m.var(self, "AZURE_TENANT_ID");
        let token_file = m.var(self, "AZURE_FEDERATED_TOKEN_FILE");
        let token_file = m.file("AZURE_FEDERATED_TOKEN_FILE", token_file);
        m.finish()?;
        let (Some(client_id), Some(tenant_id), Some(token_file)) =
            (client_id, tenant_id, token_file)
        else {
            unreachable!("Missing::finish fails whenever a piece is absent")
        };
        Ok(AzureWorkloadIdentity {
            client_id,
            tenant_id,
            token_file,
            authority_host: self.var("AZURE_AUTHORITY_HOST"),
        })
    }

    /// Google workload identity federation from an external-account file.
    pub fn gcp(&self) -> Result<GcpExternalAccount> {
        let mut m = Missing::new(
            "Google workload identity federation",
            "Mount the configuration made by `gcloud iam workload-identity-pools create-cred-config \
             --credential-source-file=<projected token path>` and point GOOGLE_APPLICATION_CREDENTIALS at it.",
        );
        let file = m.var(self, "GOOGLE_APPLICATION_CREDENTIALS");
        let file = m.file("GOOGLE_APPLICATION_CREDENTIALS", file);
        let mut token_file = None;
        if let Some(file) = &file {
            let json = std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            match json {
                None => m.items.push(format!("{} is not JSON", file.display())),
                Some(json) if json["type"] != "external_account" => m.items.push(format!(
                    "{} has type {} rather than \"external_account\"",
                    file.display(),
                    json["type"]
                )),
                Some(json) => match json["credential_source"]["file"].as_str() {
                    None => m.items.push(format!(
                        "{} has no credential_source.file (a projected token path)",
                        file.display()
                    )),
                    Some(path) => {
                        token_file = m.file("credential_source.file", Some(path.to_owned()))
                    }
                },
            }
        }
        m.finish()?;
        let (Some(credentials_file), Some(token_file)) = (file, token_file) else {
            unreachable!("Missing::finish fails whenever a piece is absent")
        };
        Ok(GcpExternalAccount {
            credentials_file,
            token_file,
        })
    }
}

impl fmt::Debug for Pod {
    /// The names of the variables that concern a backend, never their values (some hold
    /// credentials), and without reading any file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let relevant = ["KUBERNETES_", "VAULT_", "AWS_", "AZURE_", "GOOGLE_"];
        let names: Vec<&str> = self
            .vars
            .keys()
            .filter(|k| relevant.iter().any(|p| k.starts_with(p)))
            .map(String::as_str)
            .collect();
        f.debug_struct("Pod")
            .field("vars", &names)
            .field("service_account_dir", &self.service_account_dir)
            .finish()
    }
}
