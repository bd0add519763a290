//! Metrics, through the [`metrics`] facade: the library emits, the application installs a
//! recorder (Prometheus, OpenTelemetry, ...). Without a recorder each call is a load of the
//! facade's global and nothing more.
//!
//! Labels are the source's registered name, the operation and the outcome: bounded sets, never a
//! reference or a value.

use std::time::Duration;

use crate::error::ErrorKind;

use super::events::RotationEvent;

/// Reads answered from the cache (`get_secret` and friends, handles excluded: a handle's
/// `current()` is not a cache lookup).
pub const CACHE_HITS: &str = "keyrack_cache_hits_total";
/// Reads that had to look further than the fresh cache (a fetch, a wait on another caller's
/// fetch, or a stale value).
pub const CACHE_MISSES: &str = "keyrack_cache_misses_total";
/// Backend calls, labelled `source`, `operation` (`fetch`, `fetch_many`, `version`, `renew`,
/// `revoke`) and `outcome` (`ok` or the error kind in snake case, e.g. `permission_denied`),
/// and `secret` when the application opts in
/// ([`metrics_secret_label`](crate::SecretsBuilder::metrics_secret_label)).
pub const BACKEND_REQUESTS: &str = "keyrack_backend_requests_total";
/// Duration of backend calls in seconds, labelled `source` and `operation` (and `secret`, as
/// [`BACKEND_REQUESTS`]).
pub const BACKEND_DURATION: &str = "keyrack_backend_request_duration_seconds";
/// Lifecycle events, labelled `kind` (`rotated`, `renewed`, `refresh_failed`, `recovered`,
/// `expired`, `deleted`).
pub const EVENTS: &str = "keyrack_events_total";
/// Events a subscriber missed because it fell behind.
pub const EVENTS_DROPPED: &str = "keyrack_events_dropped_total";
/// The request budget's current rate in calls per second, labelled `source` (below the
/// configured budget while cut after throttling).
pub const BUDGET_RATE: &str = "keyrack_request_budget_per_second";
/// The shortest routine check interval the source's refresh budget allows now, in seconds,
/// labelled `source` (0: no interval is stretched).
pub const REFRESH_FLOOR: &str = "keyrack_refresh_interval_floor_seconds";
/// Secrets held (cached or behind a handle), labelled `source`; set by
/// [`Secrets::record_gauges`](crate::Secrets::record_gauges), like the gauges below.
pub const SECRETS_HELD: &str = "keyrack_secrets_held";
/// Live handles, labelled `source`.
pub const HANDLES: &str = "keyrack_handles";
/// Seconds since the backend last answered for the secret that has gone longest without an
/// answer, labelled `source`: what an alert on stalled refreshes watches.
pub const OLDEST_SUCCESS_AGE: &str = "keyrack_oldest_success_age_seconds";
/// Seconds until the nearest lease end, labelled `source` (absent for a source without leases).
pub const NEAREST_LEASE_END: &str = "keyrack_nearest_lease_end_seconds";
/// How long calls waited for their source's request budget, in seconds, labelled `source`
/// (recorded only for calls that waited).
pub const BUDGET_WAIT: &str = "keyrack_request_budget_wait_seconds";
/// Refreshes (one per maintenance of a secret that asked the backend: a check, a renewal or a
/// re-issue, scheduled or forced), labelled `source` and `outcome` (`ok` or the error kind in
/// snake case): `outcome!="ok"` counts the refresh failures by error kind.
pub const REFRESHES: &str = "keyrack_refreshes_total";
/// Lease renewals asked of the backend, labelled `source` and `outcome`.
pub const RENEWALS: &str = "keyrack_lease_renewals_total";
/// Re-issues: a leased secret replaced by a new lease (after a capped or refused renewal, an
/// expiry, or a forced refresh), labelled `source` and `outcome`.
pub const REISSUES: &str = "keyrack_lease_reissues_total";
/// Lease revocations asked of the backend (replaced leases, leases let go, at shutdown),
/// labelled `source` and `outcome`.
pub const REVOCATIONS: &str = "keyrack_lease_revocations_total";
/// A backend's own logins (Vault auth methods, token exchanges), labelled `source` (the
/// backend, e.g. `vault`: a login serves the backend, not one registered name), `method` (e.g.
/// `approle`, `kubernetes`, `jwt`, `token`) and `outcome`. Emitted by backends through
/// [`login`].
pub const LOGINS: &str = "keyrack_logins_total";
/// Renewals of a backend's own token (Vault's `renew-self`), labelled `source` and `outcome`.
/// Emitted by backends through [`token_renewal`].
pub const TOKEN_RENEWALS: &str = "keyrack_token_renewals_total";

/// Describe every metric to the installed recorder (units and help text). Call it once after
/// installing a recorder; metrics are emitted whether or not it is called.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CACHE_HITS, "Secret reads answered from the fresh cache");
    describe_counter!(
        CACHE_MISSES,
        "Secret reads that needed a backend call, a wait or a stale value"
    );
    describe_counter!(
        BACKEND_REQUESTS,
        "Backend calls by source, operation and outcome"
    );
    describe_histogram!(
        BACKEND_DURATION,
        Unit::Seconds,
        "Duration of backend calls by source and operation"
    );
    describe_counter!(EVENTS, "Secret lifecycle events by kind");
    describe_counter!(
        EVENTS_DROPPED,
        "Rotation events dropped because a subscriber fell behind"
    );
    describe_gauge!(SECRETS_HELD, "Secrets held, cached or behind a handle");
    describe_gauge!(HANDLES, "Live handles");
    describe_gauge!(
        OLDEST_SUCCESS_AGE,
        Unit::Seconds,
        "Seconds since the backend last answered for the secret longest without an answer"
    );
    describe_gauge!(
        NEAREST_LEASE_END,
        Unit::Seconds,
        "Seconds until the nearest lease end"
    );
    describe_gauge!(
        BUDGET_RATE,
        "Calls per second the source's request budget allows now"
    );
    describe_gauge!(
        REFRESH_FLOOR,
        Unit::Seconds,
        "Shortest routine check interval the source's refresh budget allows now"
    );
    describe_histogram!(
        BUDGET_WAIT,
        Unit::Seconds,
        "Time calls waited for their source's request budget"
    );
    describe_counter!(REFRESHES, "Secret refreshes by source and outcome");
    describe_counter!(RENEWALS, "Lease renewals by source and outcome");
    describe_counter!(
        REISSUES,
        "Leased secrets replaced by a new lease, by source and outcome"
    );
    describe_counter!(REVOCATIONS, "Lease revocations by source and outcome");
    describe_counter!(LOGINS, "Backend logins by source, auth method and outcome");
    describe_counter!(
        TOKEN_RENEWALS,
        "Renewals of a backend's own token by source and outcome"
    );
}

/// Count a backend's login with `method` (a bounded name such as `approle` or `kubernetes`,
/// never a role, a path or a token). For backend crates: the engine counts its own calls.
pub fn login(source: &'static str, method: &'static str, outcome: Result<(), &ErrorKind>) {
    metrics::counter!(LOGINS, "source" => source, "method" => method,
        "outcome" => outcome_label(outcome))
    .increment(1);
}

/// Count a renewal of a backend's own token. For backend crates.
pub fn token_renewal(source: &'static str, outcome: Result<(), &ErrorKind>) {
    metrics::counter!(TOKEN_RENEWALS, "source" => source, "outcome" => outcome_label(outcome))
        .increment(1);
}

/// `ok`, or the error kind's label.
pub fn outcome_label(outcome: Result<(), &ErrorKind>) -> &'static str {
    match outcome {
        Ok(()) => "ok",
        Err(kind) => kind_label(kind),
    }
}

/// One of the lease and refresh counters ([`REFRESHES`], [`RENEWALS`], [`REISSUES`],
/// [`REVOCATIONS`]).
pub(crate) fn lifecycle(name: &'static str, source: &str, outcome: Result<(), &ErrorKind>) {
    metrics::counter!(name, "source" => source.to_owned(), "outcome" => outcome_label(outcome))
        .increment(1);
}

pub(crate) fn cache_hit() {
    metrics::counter!(CACHE_HITS).increment(1);
}

pub(crate) fn cache_miss() {
    metrics::counter!(CACHE_MISSES).increment(1);
}

/// One backend call; `secret` is the reference (or `N secrets` for a batch) when the
/// application asked for the label ([`SecretsBuilder::metrics_secret_label`]).
///
/// [`SecretsBuilder::metrics_secret_label`]: crate::SecretsBuilder::metrics_secret_label
pub(crate) fn backend_call(
    source: &str,
    operation: &'static str,
    secret: Option<String>,
    outcome: Result<(), &ErrorKind>,
    took: Duration,
) {
    let outcome = outcome_label(outcome);
    match secret {
        None => {
            metrics::counter!(BACKEND_REQUESTS, "source" => source.to_owned(),
                "operation" => operation, "outcome" => outcome)
            .increment(1);
            metrics::histogram!(BACKEND_DURATION, "source" => source.to_owned(),
                "operation" => operation)
            .record(took.as_secs_f64());
        }
        Some(secret) => {
            metrics::counter!(BACKEND_REQUESTS, "source" => source.to_owned(),
                "operation" => operation, "outcome" => outcome, "secret" => secret.clone())
            .increment(1);
            metrics::histogram!(BACKEND_DURATION, "source" => source.to_owned(),
                "operation" => operation, "secret" => secret)
            .record(took.as_secs_f64());
        }
    }
}

pub(crate) fn event(ev: &RotationEvent) {
    let kind = match ev {
        RotationEvent::Rotated { .. } => "rotated",
        RotationEvent::Renewed { .. } => "renewed",
        RotationEvent::RefreshFailed { .. } => "refresh_failed",
        RotationEvent::Recovered { .. } => "recovered",
        RotationEvent::Expired { .. } => "expired",
        RotationEvent::Deleted { .. } => "deleted",
        RotationEvent::Lagged { .. } => return,
    };
    metrics::counter!(EVENTS, "kind" => kind).increment(1);
}

/// The gauges of one source.
pub(crate) fn source_gauges(
    source: &str,
    held: usize,
    handles: usize,
    oldest: Duration,
    lease_end: Option<Duration>,
) {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let (held, handles) = (held as f64, handles as f64);
    metrics::gauge!(SECRETS_HELD, "source" => source.to_owned()).set(held);
    metrics::gauge!(HANDLES, "source" => source.to_owned()).set(handles);
    metrics::gauge!(OLDEST_SUCCESS_AGE, "source" => source.to_owned()).set(oldest.as_secs_f64());
    if let Some(end) = lease_end {
        metrics::gauge!(NEAREST_LEASE_END, "source" => source.to_owned()).set(end.as_secs_f64());
    }
}

pub(crate) fn budget_rate(source: &str, rate: f64) {
    metrics::gauge!(BUDGET_RATE, "source" => source.to_owned()).set(rate);
}

pub(crate) fn refresh_floor(source: &str, floor: Duration) {
    metrics::gauge!(REFRESH_FLOOR, "source" => source.to_owned()).set(floor.as_secs_f64());
}

pub(crate) fn budget_wait(source: &str, waited: Duration) {
    metrics::histogram!(BUDGET_WAIT, "source" => source.to_owned()).record(waited.as_secs_f64());
}

pub(crate) fn events_dropped(missed: u64) {
    metrics::counter!(EVENTS_DROPPED).increment(missed);
}

/// The label of an error kind: snake case, stable.
pub fn kind_label(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::Throttled => "throttled",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::InvalidRef => "invalid_ref",
        ErrorKind::InvalidValue => "invalid_value",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Expired => "expired",
        ErrorKind::Deleted => "deleted",
        ErrorKind::Disabled => "disabled",
        ErrorKind::Corrupted => "corrupted",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Config => "config",
        ErrorKind::Shutdown => "shutdown",
        ErrorKind::Backend => "backend",
    }
}
