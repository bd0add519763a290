//! The operational endpoints of a service that keeps its configuration in keyrack handles, on
//! axum: `/healthz` (liveness), `/readyz` (readiness) and `/metrics` (Prometheus text, from
//! metrics-exporter-prometheus). The `service` and `k8s` examples serve them; the Deployment in
//! `examples/k8s/` points its probes at them.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use keyrack::Secrets;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// Install the Prometheus recorder for the process (an application's choice; a library never
/// does this) and describe keyrack's metrics to it.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    keyrack::telemetry::describe_metrics();
    Ok(handle)
}

#[derive(Clone)]
struct Probes {
    secrets: Secrets,
    prometheus: PrometheusHandle,
}

/// `/healthz`, `/readyz` and `/metrics` over `secrets`.
pub fn router(secrets: Secrets, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Probes {
            secrets,
            prometheus,
        })
}

/// Liveness: the process answers. It never fails because of secrets (see `keyrack::Health`): a
/// restart does not bring a backend back, and a fleet restarting together reads every secret at
/// once.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 503 once a secret behind a live handle has expired (`Verdict::Failing`), 200
/// while every value in use is valid (`Ready`, or `Degraded` while refreshes fail or lag). The
/// body names each secret and its state: references and states, never a value.
async fn readyz(State(probes): State<Probes>) -> (StatusCode, String) {
    let health = probes.secrets.health();
    let mut body = format!("{:?}\n", health.verdict);
    for secret in &health.secrets {
        body.push_str(&format!(
            "{} {} (handles: {})\n",
            secret.secret, secret.state, secret.handles
        ));
    }
    let status = if health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Prometheus text: the gauges that change with time are set now, then everything is rendered.
async fn metrics(State(probes): State<Probes>) -> String {
    probes.secrets.record_gauges();
    probes.prometheus.render()
}
