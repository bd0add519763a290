//! A service in a Kubernetes pod that reads one secret from Vault (logged in with the pod's
//! projected token, audience `vault`) and one key of a Kubernetes Secret (read with the pod's
//! API-server token), keeps both current, and logs what happens to them — never their values.
//!
//! The manifests and the Vault configuration it expects are beside it in `examples/k8s/`; the
//! README there says how to apply them. Outside a pod it stops at once with exit code 2 and a
//! message naming everything that is missing:
//!
//! ```text
//! cargo run -p keyrack-examples --example k8s
//! ```
//!
//! | variable | default |
//! |---|---|
//! | `VAULT_ADDR`, `VAULT_K8S_ROLE`, `VAULT_K8S_AUTH`, `VAULT_K8S_MOUNT`, `VAULT_K8S_TOKEN_FILE`, `VAULT_CACERT` | see `keyrack::k8s::detect` |
//! | `APP_VAULT_SECRET` | `vault://secret/app/config#api_key` |
//! | `APP_K8S_SECRET` | `k8s://<the pod's namespace>/db-creds#password` |
//! | `APP_LISTEN` | `0.0.0.0:8080`: `/healthz`, `/readyz`, `/metrics` (`examples/src/probes.rs`), served once both secrets are held; the Deployment's probes ask there |
#![allow(clippy::print_stdout)] // a program whose output is the point

use std::process::ExitCode;

use keyrack::k8s::{InCluster, Pod, source::KubernetesSecrets};
use keyrack::{Error, Secret, Secrets};

/// Registers both sources on one client.
fn client(vault: keyrack::vault::VaultSource, in_cluster: &InCluster) -> Result<Secrets, Error> {
    let k8s = KubernetesSecrets::builder()
        .in_cluster(in_cluster)
        .build()?;
    Secrets::builder()
        .source("vault", vault)
        .source("k8s", k8s)
        .build()
}

fn describe(secret: &Secret) -> String {
    let version = secret.version().map_or("none".into(), ToString::to_string);
    format!("{} bytes, version {version}", secret.value().len())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Vault: VAULT_ADDR, VAULT_K8S_ROLE, … and the projected token /var/run/secrets/tokens/vault.
    let vault = keyrack::k8s::vault::from_pod(&Pod::from_env()).and_then(|b| b.build());
    // The API server, CA and (default-audience) token under
    // /var/run/secrets/kubernetes.io/serviceaccount, for the `k8s://` source.
    let in_cluster = InCluster::detect();
    let built = match (vault, in_cluster) {
        (Ok(vault), Ok(in_cluster)) => client(vault, &in_cluster)
            .map(|s| (s, in_cluster))
            .map_err(|e| vec![e]),
        (vault, in_cluster) => Err(vault.err().into_iter().chain(in_cluster.err()).collect()),
    };
    // Outside a pod (or with a Deployment missing a piece) each error names what is missing.
    let (secrets, in_cluster) = match built {
        Ok(built) => built,
        Err(errors) => {
            errors.iter().for_each(|e| eprintln!("configuration: {e}"));
            return ExitCode::from(2);
        }
    };
    let var = |name: &str, default: String| std::env::var(name).unwrap_or(default);
    let vault_ref = var(
        "APP_VAULT_SECRET",
        "vault://secret/app/config#api_key".into(),
    );
    let k8s_ref = var(
        "APP_K8S_SECRET",
        format!("k8s://{}/db-creds#password", in_cluster.namespace()),
    );

    // Every event of every secret this client holds: Rotated, RefreshFailed, Recovered, …
    let mut events = secrets.events();
    // SIGTERM (the pod is being deleted) or Ctrl-C, heeded from here on, startup included.
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Live handles: the Vault secret is re-checked on the client's schedule (and its lease, if
    // any, renewed); the Kubernetes Secret is watched, so an edit arrives within seconds.
    let startup = async { tokio::try_join!(secrets.handle(&vault_ref), secrets.handle(&k8s_ref)) };
    let (api_key, db_password) = tokio::select! {
        handles = startup => match handles {
            Ok(handles) => handles,
            Err(e) => {
                eprintln!("startup read failed: {e}");
                secrets.shutdown().await;
                return ExitCode::FAILURE;
            }
        },
        signal = &mut shutdown => {
            println!("{signal} during startup: shutting down");
            secrets.shutdown().await;
            return ExitCode::SUCCESS;
        }
    };
    println!("startup: {vault_ref}: {}", describe(&api_key.current()));
    println!("startup: {k8s_ref}: {}", describe(&db_password.current()));

    // Probes and metrics, once the secrets are held (the Deployment's startup probe waits).
    let listen = var("APP_LISTEN", "0.0.0.0:8080".into());
    let server = match serve_probes(&secrets, &listen).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cannot serve probes on {listen}: {e}");
            secrets.shutdown().await;
            return ExitCode::FAILURE;
        }
    };

    // A real service would serve requests here, reading `api_key.current()` when it needs it.
    loop {
        tokio::select! {
            signal = &mut shutdown => {
                println!("{signal}: shutting down");
                break;
            }
            event = events.recv() => match event {
                // The event names the secret and its versions; the value is never in it.
                Some(event) => println!("event: {event}"),
                None => break,
            },
        }
    }
    server.abort();
    secrets.shutdown().await;
    ExitCode::SUCCESS
}

/// `/healthz`, `/readyz` and `/metrics` on `listen`, served by a task of their own.
async fn serve_probes(
    secrets: &Secrets,
    listen: &str,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Box<dyn std::error::Error>> {
    let prometheus = keyrack_examples::probes::install_prometheus()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = keyrack_examples::probes::router(secrets.clone(), prometheus);
    println!("probes: http://{listen}/healthz, /readyz, /metrics");
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

/// Ctrl-C, or SIGTERM (what the kubelet sends when the pod is deleted).
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        return tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
    }
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
