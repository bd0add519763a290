//! The sources a command needs, built from the environment the way a service using the library
//! builds them, only for the schemes its references name (so an unconfigured backend the
//! command does not use costs nothing and fails nothing).
//!
//! | scheme | built with |
//! |---|---|
//! | `vault://` | `keyrack::k8s::vault::from_pod` when `VAULT_K8S_ROLE` is set (the pod's projected token), else `VaultBuilder::from_env` (`VAULT_ADDR`, `VAULT_TOKEN`, …) |
//! | `aws-sm://` | `AwsBuilder::from_env` (the SDK's chain: environment, profile, IRSA, ECS/EKS, IMDS) |
//! | `azure-kv://` | `AzureBuilder::from_env` (workload identity, client secret, managed identity) |
//! | `gcp-sm://` | `GcpBuilder::from_env` (Application Default Credentials, workload identity federation) |
//! | `k8s://` | `InCluster::detect` when `KUBERNETES_SERVICE_HOST` is set, else the kubeconfig |
//! | `env://`, `file://` | `EnvSource`, `FileSource` |

use std::collections::BTreeMap;
use std::time::Duration;

use keyrack::k8s::{InCluster, Pod};
use keyrack::sources::{EnvSource, FileSource};
use keyrack::{Error, ErrorKind, Result, SecretRef, Secrets};

use crate::kubeconfig::KubeConfig;

/// Options that shape the client.
pub(crate) struct Options {
    /// Bound on each backend call.
    pub(crate) timeout: Duration,
    /// How often held secrets are re-checked (`watch`).
    pub(crate) interval: Option<Duration>,
    /// The kubeconfig context for `k8s://` outside a cluster.
    pub(crate) context: Option<String>,
}

/// A client with a source for each scheme that could be built, and why the others could not.
pub(crate) struct Client {
    pub(crate) secrets: Secrets,
    pub(crate) failed: BTreeMap<String, Error>,
}

/// Builds the sources the references name, each setup bounded by `options.timeout`.
pub(crate) async fn client(refs: &[&SecretRef], options: &Options) -> Result<Client> {
    // Leases this command had issued (a check of `vault://database/creds/app`) end with it.
    let mut builder = Secrets::builder()
        .request_timeout(options.timeout)
        .revoke_on_shutdown(true);
    if let Some(every) = options.interval {
        builder = builder.refresh_interval(every);
    }
    let mut failed = BTreeMap::new();
    let mut schemes: Vec<&str> = refs.iter().map(|r| r.source()).collect();
    schemes.sort_unstable();
    schemes.dedup();
    for scheme in schemes {
        match tokio::time::timeout(options.timeout, source(scheme, options)).await {
            Ok(Ok(Some(s))) => builder = builder.shared_source(scheme, s),
            // Not a scheme of ours: the client reports the reference as naming no source.
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                failed.insert(scheme.to_owned(), e.with_source_name(scheme));
            }
            Err(_) => {
                let e = Error::new(ErrorKind::Timeout, "setting up the source did not finish");
                failed.insert(scheme.to_owned(), e.with_source_name(scheme));
            }
        }
    }
    Ok(Client {
        secrets: builder.build()?,
        failed,
    })
}

async fn source(
    scheme: &str,
    options: &Options,
) -> Result<Option<std::sync::Arc<dyn keyrack::SecretSource>>> {
    use std::sync::Arc;
    Ok(Some(match scheme {
        "vault" => {
            let pod = Pod::from_env();
            let b = if std::env::var_os("VAULT_K8S_ROLE").is_some() {
                keyrack::k8s::vault::from_pod(&pod)?
            } else {
                keyrack::vault::VaultBuilder::from_env()
            };
            Arc::new(b.build()?)
        }
        "aws-sm" => Arc::new(keyrack::aws::AwsBuilder::from_env().build().await?),
        "azure-kv" => Arc::new(keyrack::azure::AzureBuilder::from_env().build()?),
        "gcp-sm" => Arc::new(keyrack::gcp::GcpBuilder::from_env().build().await?),
        "k8s" => {
            let b = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                keyrack::k8s::source::KubernetesSecrets::builder().in_cluster(&InCluster::detect()?)
            } else {
                KubeConfig::load(options.context.as_deref())?.builder()
            };
            Arc::new(b.request_timeout(options.timeout).build()?)
        }
        "env" => Arc::new(EnvSource::new()),
        "file" => Arc::new(FileSource::new()),
        _ => return Ok(None),
    }))
}
