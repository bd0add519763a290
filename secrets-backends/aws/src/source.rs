//! [`AwsSource`]: the [`SecretSource`] over Secrets Manager.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::primitives::{Blob, DateTime};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use keyrack_core::budget::CallRequests;

use crate::batch_share::BatchShare;
use keyrack_core::{
    Capabilities, Clock, Error, ErrorKind, Lease, Result, Secret, SecretRef, SecretSource,
    SecretValue, Selector, SourceEvent, Version, async_trait, timed_request,
};
use tokio::sync::Semaphore;

use crate::errors::{batch_entry_error, from_sdk};

/// The staging label read when a reference names none.
pub const AWSCURRENT: &str = "AWSCURRENT";

/// BatchGetSecretValue takes at most 20 ids per request.
const BATCH_SIZE: usize = 20;
/// Batches of one `fetch_many` in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// The longest secret name Secrets Manager accepts, in characters (CreateSecret `Name`).
const MAX_NAME: usize = 256;
/// The longest secret id it accepts, an ARN (GetSecretValue `SecretId`).
const MAX_ARN: usize = 2048;

/// How long a version probe's `NextRotationDate` serves the read that follows it.
const DESCRIBED_FRESH: Duration = Duration::from_secs(10);

/// The shortest wait before the client asks again after a failure: the base delay of the AWS
/// SDKs' standard retry mode (1 s, `RetryConfig::standard()` in aws-smithy-types; the AWS SDKs
/// and Tools reference guide, "Retry behavior").
const RETRY_FLOOR: Duration = Duration::from_secs(1);

/// Settings of [`AwsSource`] that [`AwsBuilder`](crate::AwsBuilder) exposes.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    pub(crate) rotation_schedule: bool,
    pub(crate) fallback_concurrency: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            rotation_schedule: true,
            fallback_concurrency: 8,
        }
    }
}

/// AWS Secrets Manager as a [`SecretSource`].
///
/// References: `aws-sm://<name-or-arn>[?version=<id>|stage=<label>][#field]`.
/// - No selector reads the `AWSCURRENT` stage; the stage is always sent explicitly.
/// - `?stage=AWSPREVIOUS` reads the value before the last rotation (for the alternating-users
///   strategy, or while a new password has not reached every server yet); `?stage=AWSPENDING`
///   the one a rotation is preparing.
/// - `?version=<VersionId>` pins a version.
///
/// `SecretString` is returned as its UTF-8 bytes, `SecretBinary` as the raw bytes. The version
/// is the `VersionId`, `created_at` the version's `CreatedDate`.
///
/// **Rotation schedule.** `fetch` also learns `NextRotationDate` from DescribeSecret and sets
/// [`Metadata::next_rotation`](keyrack_core::Metadata), so the engine checks right after a
/// planned rotation. The engine's checks probe with DescribeSecret first (below) and read only
/// when the version moved: that read takes the date from the probe's answer, so a check costs
/// one DescribeSecret. A read without a probe just before (the first read, a forced refresh)
/// calls DescribeSecret concurrently with GetSecretValue (not for `?version=` references). A
/// failing DescribeSecret (e.g. not allowed by the policy) only loses the hint. Turn it off with
/// [`AwsBuilder::with_rotation_schedule`](crate::AwsBuilder::with_rotation_schedule). Secrets
/// read through `fetch_many` carry no rotation date (the batch API does not return it).
///
/// **Version probe.** `version` calls DescribeSecret and answers the `VersionId` that carries
/// the requested stage (or the pinned id, `NotFound` once it is gone), so the engine reads the
/// value again only when `AWSCURRENT` moved. During a rotation (`AWSPENDING` present) this is
/// still the old `AWSCURRENT`.
///
/// **Batches.** `fetch_many` reads `AWSCURRENT` references with BatchGetSecretValue, 20 ids per
/// request, keeping each secret's own error; other references are read one by one. A batch
/// that is throttled (its quota is 100 requests/s, GetSecretValue's 10,000/s) or refused is
/// replaced by single GetSecretValue calls, at most 8 at a time
/// ([`AwsBuilder::with_batch_fallback`](crate::AwsBuilder::with_batch_fallback)). Once a
/// single read is throttled too, the fallback stops: no single read is tried again or started,
/// and every secret left answers `Throttled` with the service's `Retry-After`, for the client's
/// backoff to handle. A throttled account costs the batches plus the single reads in flight.
/// Every request counts against the client's [request budget](keyrack_core::budget): a batch
/// and each single read that replaces it, and the DescribeSecret beside a read. A budget that
/// is a small share of the read quota (a fleet's pods, each given its share) gets the same share
/// of the batch quota, 100 times smaller: ids are batched only while that share has room for a
/// whole batch, and read one by one otherwise (the default budget, the whole read quota, allows
/// 100 batches at once).
///
/// **References.** Only the `?version=` and `?stage=` selectors are taken: any other parameter
/// (`?Stage=`, `?versionId=`) is refused as `InvalidRef` rather than ignored. Names longer than
/// 256 characters and ARNs longer than 2,048 (the service's limits) are refused the same way,
/// without a request.
///
/// **Errors.** ResourceNotFoundException → `NotFound`; AccessDeniedException →
/// `PermissionDenied`; ThrottlingException / HTTP 429 → `Throttled` (retryable); a secret
/// scheduled for deletion → `Deleted`; DecryptionFailure → `Corrupted`; InternalServiceError,
/// 5xx and failures to send → `Unavailable` (retryable); bad credentials → `Unauthenticated`.
///
/// The SDK's response buffers are not zeroized; only the value handed to the engine is.
#[derive(Clone)]
pub struct AwsSource {
    client: Client,
    tuning: Tuning,
    clock: Arc<dyn Clock>,
    fallback_permits: Arc<Semaphore>,
    /// `NextRotationDate` from recent version probes, per secret id, for the read that follows.
    described: Arc<Mutex<Described>>,
    /// This process's share of the batch quota.
    batch_share: Arc<BatchShare>,
}

/// Per secret id: when a probe described it, and the `NextRotationDate` it saw.
type Described = HashMap<String, (Instant, Option<SystemTime>)>;

impl fmt::Debug for AwsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSource")
            .field("region", &self.client.config().region())
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// The first throttled answer of a `fetch_many`'s fallback reads: once set, no more are made.
#[derive(Default)]
struct FallbackStop(Mutex<Option<Error>>);

impl FallbackStop {
    fn get(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, e: Error) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }
}

/// Which version a reference selects.
#[derive(Debug)]
pub(crate) enum Pick<'a> {
    Version(&'a str),
    Stage(&'a str),
}

pub(crate) fn pick(r: &SecretRef) -> Result<Pick<'_>> {
    match r.selector() {
        None => Ok(Pick::Stage(AWSCURRENT)),
        Some(Selector::Version(v)) => Ok(Pick::Version(v)),
        Some(Selector::Stage(s)) => Ok(Pick::Stage(s)),
        Some(other) => Err(Error::unsupported(format!(
            "Secrets Manager cannot select {other:?}"
        ))),
    }
}

/// The secret id of `r`, after refusing what Secrets Manager would not take: parameters other
/// than the selectors, an empty id, names and ARNs over the service's limits. Errors do not
/// quote the id (it may be a value passed by mistake).
pub(crate) fn secret_id(r: &SecretRef) -> Result<&str> {
    r.expect_params(&[])?;
    let id = r.path();
    let invalid = |m: String| Error::new(ErrorKind::InvalidRef, m);
    if id.is_empty() {
        return Err(invalid(
            "an aws-sm reference needs a secret name or ARN".into(),
        ));
    }
    let (what, max) = if id.starts_with("arn:") {
        ("ARN", MAX_ARN)
    } else {
        ("name", MAX_NAME)
    };
    let len = id.chars().count();
    if len > max {
        return Err(invalid(format!(
            "the secret {what} is {len} characters long; Secrets Manager takes at most {max}"
        )));
    }
    Ok(id)
}

fn wall(t: &DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

/// A secret from the parts GetSecretValue and BatchGetSecretValue both return.
pub(crate) fn secret_from(
    string: Option<String>,
    binary: Option<Blob>,
    version: Option<String>,
    created: Option<&DateTime>,
) -> Result<Secret> {
    let value = match (string, binary) {
        (Some(s), _) => SecretValue::from_string(s),
        (None, Some(b)) => SecretValue::from_bytes(b.into_inner()),
        (None, None) => {
            return Err(Error::invalid_value(
                "the version has neither SecretString nor SecretBinary",
            ));
        }
    };
    let mut secret = Secret::new(value);
    if let Some(v) = version {
        secret = secret.versioned(v);
    }
    if let Some(at) = created.and_then(wall) {
        secret = secret.created_at(at);
    }
    Ok(secret)
}

impl AwsSource {
    pub(crate) fn new(client: Client, tuning: Tuning, clock: Arc<dyn Clock>) -> Self {
        AwsSource {
            fallback_permits: Arc::new(Semaphore::new(tuning.fallback_concurrency)),
            client,
            tuning,
            clock,
            described: Arc::default(),
            batch_share: Arc::default(),
        }
    }

    /// The SDK client this source uses (to write secrets, or for calls this crate does not make).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// GetSecretValue, with the stage always explicit (moto, and some proxies, answer a stale
    /// version when it is left out after a stage move).
    async fn get_value(&self, id: &str, pick: &Pick<'_>) -> Result<Secret> {
        let request = self.client.get_secret_value().secret_id(id);
        let request = match pick {
            Pick::Version(v) => request.version_id(*v),
            Pick::Stage(s) => request.version_stage(*s),
        };
        // One of the call's requests: a prefetch's single reads keep its timeout moving.
        let out = timed_request(async {
            request
                .send()
                .await
                .map_err(|e| from_sdk("GetSecretValue", e, self.clock.wall()))
        })
        .await?;
        secret_from(
            out.secret_string,
            out.secret_binary,
            out.version_id,
            out.created_date.as_ref(),
        )
    }

    /// GetSecretValue of `AWSCURRENT` for the batch fallback: bounded concurrency, and none at
    /// all once a fallback read of this `fetch_many` was throttled.
    async fn fallback_read(
        &self,
        id: &str,
        stop: &FallbackStop,
        requests: &CallRequests,
    ) -> Result<Secret> {
        if let Some(e) = stop.get() {
            return Err(e);
        }
        // Each single read counts against the budget: a refused batch must not turn one call's
        // place into twenty requests. Its place is taken before a permit, so a read waiting
        // for the budget holds no permit other calls' reads could use.
        requests.before_request().await?;
        let _permit = self
            .fallback_permits
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorKind::Shutdown, "source closed"))?;
        if let Some(e) = stop.get() {
            return Err(e);
        }
        let result = self.get_value(id, &Pick::Stage(AWSCURRENT)).await;
        if let Err(e) = &result
            && e.kind() == &ErrorKind::Throttled
        {
            tracing::debug!(error = %e, "GetSecretValue throttled too; the batch fallback stops");
            stop.set(e.clone());
        }
        result
    }

    /// One reference's value, and its rotation schedule unless a probe just read it; every
    /// request counted in `requests`.
    async fn fetch_with(&self, r: &SecretRef, requests: &CallRequests) -> Result<Secret> {
        let id = secret_id(r)?;
        let pick = pick(r)?;
        requests.before_request().await?;
        if !self.tuning.rotation_schedule || matches!(pick, Pick::Version(_)) {
            return self.get_value(id, &pick).await;
        }
        // The probe just before this read (a routine check) described the secret already.
        if let Some(next_rotation) = self.take_described(id) {
            let secret = self.get_value(id, &pick).await?;
            return Ok(match next_rotation {
                Some(at) => secret.next_rotation(at),
                None => secret,
            });
        }
        // The rotation schedule is worth a request only while the budget has room now: a read
        // does not wait for it. Without it, a rotation is seen at the next routine check
        // rather than at its scheduled time.
        if !requests.try_before_request() {
            tracing::debug!(
                secret = id,
                "no room in the budget to describe the secret now"
            );
            return self.get_value(id, &pick).await;
        }
        let describe = timed_request(async {
            self.client
                .describe_secret()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeSecret", e, self.clock.wall()))
        });
        let (value, described) = tokio::join!(self.get_value(id, &pick), describe);
        let secret = value?;
        match described {
            Ok(d) => match d.next_rotation_date().and_then(wall) {
                Some(at) => Ok(secret.next_rotation(at)),
                None => Ok(secret),
            },
            Err(e) => {
                tracing::debug!(secret = id, error = %e, "no rotation schedule");
                Ok(secret)
            }
        }
    }

    fn lock_described(&self) -> MutexGuard<'_, Described> {
        self.described.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember what a probe's DescribeSecret said about `id`'s rotation schedule.
    fn note_described(&self, id: &str, next_rotation: Option<SystemTime>) {
        let now = self.clock.now();
        let mut described = self.lock_described();
        described.retain(|_, (at, _)| now < *at + DESCRIBED_FRESH);
        described.insert(id.to_owned(), (now, next_rotation));
    }

    /// The rotation schedule a probe just read for `id`, if it is fresh (taken: used once).
    fn take_described(&self, id: &str) -> Option<Option<SystemTime>> {
        let now = self.clock.now();
        self.lock_described()
            .remove(id)
            .filter(|(at, _)| now < *at + DESCRIBED_FRESH)
            .map(|(_, next)| next)
    }

    /// `ids` read with one BatchGetSecretValue (`batch`) or one by one.
    async fn batch_or_singles(
        &self,
        ids: &[String],
        batch: bool,
        stop: &FallbackStop,
        requests: &CallRequests,
    ) -> Vec<Result<Secret>> {
        if batch {
            return self.batch(ids, stop, requests).await;
        }
        let reads: Vec<_> = ids
            .iter()
            .map(|id| self.fallback_read(id, stop, requests))
            .collect();
        futures_util::future::join_all(reads).await
    }

    /// One BatchGetSecretValue of up to 20 distinct ids; one result per id, in order.
    async fn batch(
        &self,
        ids: &[String],
        stop: &FallbackStop,
        requests: &CallRequests,
    ) -> Vec<Result<Secret>> {
        if let Err(e) = requests.before_request().await {
            return vec![Err(e); ids.len()];
        }
        let response = timed_request(async {
            self.client
                .batch_get_secret_value()
                .set_secret_id_list(Some(ids.to_vec()))
                .send()
                .await
                .map_err(|e| from_sdk("BatchGetSecretValue", e, self.clock.wall()))
        })
        .await;
        let mut slots: Vec<Option<Result<Secret>>> = vec![None; ids.len()];
        match response {
            Ok(out) => {
                let position = |name: Option<&str>, arn: Option<&str>| {
                    ids.iter()
                        .position(|id| Some(id.as_str()) == name || Some(id.as_str()) == arn)
                };
                for entry in out.secret_values.unwrap_or_default() {
                    let Some(i) = position(entry.name.as_deref(), entry.arn.as_deref()) else {
                        continue;
                    };
                    slots[i] = Some(secret_from(
                        entry.secret_string,
                        entry.secret_binary,
                        entry.version_id,
                        entry.created_date.as_ref(),
                    ));
                }
                for error in out.errors.unwrap_or_default() {
                    let Some(i) = position(error.secret_id.as_deref(), None) else {
                        continue;
                    };
                    let e =
                        batch_entry_error(error.error_code.as_deref(), error.message.as_deref());
                    // A throttled entry is read again below, like any entry left unanswered.
                    if !matches!(e.kind(), ErrorKind::Throttled) {
                        slots[i] = Some(Err(e));
                    }
                }
            }
            Err(e) => match e.kind() {
                // Throttled: GetSecretValue has a 100× larger quota. Refused: the policy may
                // allow GetSecretValue but not BatchGetSecretValue.
                // Not found: some implementations (moto among them) fail the whole batch for
                // one missing id instead of listing it in `Errors`.
                ErrorKind::Throttled | ErrorKind::PermissionDenied | ErrorKind::NotFound => {
                    tracing::debug!(error = %e, "BatchGetSecretValue failed; reading one by one");
                }
                _ => return vec![Err(e); ids.len()],
            },
        }
        // Unanswered ids (throttled, a partial ARN the answer names differently, a NextToken)
        // are read one by one.
        let rest: Vec<_> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| async move { (i, self.fallback_read(&ids[i], stop, requests).await) })
            .collect();
        for (i, result) in futures_util::future::join_all(rest).await {
            slots[i] = Some(result);
        }
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(Error::new(ErrorKind::Backend, "no answer"))))
            .collect()
    }
}

#[async_trait]
impl SecretSource for AwsSource {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.version_probe = true;
        caps.batch = true;
        caps.versions = true;
        caps.stages = true;
        caps.binary = true;
        caps.retry_floor = RETRY_FLOOR;
        // "AWS Secrets Manager quotas": the combined rate of GetSecretValue and DescribeSecret
        // is 10,000 per second per account and Region; one process alone never exceeds it.
        caps.request_budget = Some(keyrack_core::RequestBudget::new(
            10_000,
            std::time::Duration::from_secs(1),
        ));
        caps
    }

    async fn fetch(&self, r: &SecretRef) -> Result<Secret> {
        self.fetch_with(r, &CallRequests::new()).await
    }

    async fn fetch_many(&self, refs: &[SecretRef]) -> Vec<Result<Secret>> {
        // AWSCURRENT references go through the batch API, each distinct id once.
        let mut ids: Vec<String> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut batched: Vec<Option<usize>> = Vec::with_capacity(refs.len());
        for r in refs {
            let current = matches!(pick(r), Ok(Pick::Stage(AWSCURRENT)));
            match secret_id(r) {
                Ok(id) if current => {
                    let n = *index.entry(id).or_insert_with(|| {
                        ids.push(id.to_owned());
                        ids.len() - 1
                    });
                    batched.push(Some(n));
                }
                _ => batched.push(None),
            }
        }
        // Collected first: a lazily mapped iterator in the stream makes the future's `Send`-ness
        // unprovable inside `#[async_trait]`.
        let stop = FallbackStop::default();
        let requests = CallRequests::new();
        // Batched while the budget's share of the batch quota has room; read one by one else.
        let budget = keyrack_core::budget::current();
        let rate_now = keyrack_core::budget::current_rate();
        let now = self.clock.now();
        let batch_calls: Vec<_> = ids
            .chunks(BATCH_SIZE)
            .map(|c| {
                let batch = c.len() > 1 && self.batch_share.take(budget, rate_now, now);
                self.batch_or_singles(c, batch, &stop, &requests)
            })
            .collect();
        let batches = futures_util::stream::iter(batch_calls)
            .buffered(BATCHES_IN_FLIGHT)
            .collect::<Vec<_>>();
        let singles = futures_util::stream::iter(
            refs.iter()
                .zip(&batched)
                .filter(|(_, b)| b.is_none())
                .map(|(r, _)| self.fetch_with(r, &requests))
                .collect::<Vec<_>>(),
        )
        .buffered(self.tuning.fallback_concurrency)
        .collect::<Vec<_>>();
        let (batch_results, single_results) = tokio::join!(batches, singles);
        let batch_results: Vec<Result<Secret>> = batch_results.into_iter().flatten().collect();
        let mut singles = single_results.into_iter();
        batched
            .into_iter()
            .map(|b| match b {
                Some(n) => batch_results[n].clone(),
                None => singles
                    .next()
                    .unwrap_or_else(|| Err(Error::new(ErrorKind::Backend, "no answer"))),
            })
            .collect()
    }

    async fn version(&self, r: &SecretRef) -> Result<Option<Version>> {
        let id = secret_id(r)?;
        let pick = pick(r)?;
        let d = self
            .client
            .describe_secret()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeSecret", e, self.clock.wall()))?;
        if d.deleted_date().is_some() {
            return Err(Error::new(
                ErrorKind::Deleted,
                "the secret is scheduled for deletion: restore it with RestoreSecret or stop \
                 referring to it",
            ));
        }
        if self.tuning.rotation_schedule {
            self.note_described(id, d.next_rotation_date().and_then(wall));
        }
        let versions = d.version_ids_to_stages();
        let found = match pick {
            Pick::Version(v) => versions
                .and_then(|m| m.get_key_value(v))
                .map(|(k, _)| k.as_str()),
            Pick::Stage(s) => versions.and_then(|m| {
                m.iter()
                    .find(|(_, stages)| stages.iter().any(|l| l == s))
                    .map(|(k, _)| k.as_str())
            }),
        };
        match found {
            Some(id) => Ok(Some(Version::new(id))),
            None => Err(Error::not_found(match pick {
                Pick::Version(_) => "the pinned version no longer exists",
                Pick::Stage(_) => "no version carries the requested stage",
            })),
        }
    }

    async fn renew(&self, _lease: &Lease, _increment: Option<Duration>) -> Result<Lease> {
        Err(Error::unsupported("Secrets Manager values have no leases"))
    }

    async fn revoke(&self, _lease: &Lease) -> Result<()> {
        Err(Error::unsupported("Secrets Manager values have no leases"))
    }

    fn watch(&self, _r: &SecretRef) -> Option<BoxStream<'static, Result<SourceEvent>>> {
        None
    }

    /// The SDK client keeps no task of its own running.
    async fn shutdown(&self) {}
}
