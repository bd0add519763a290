//! The test ground: moto in server mode, started by `scripts/testground/moto-up` and described
//! by the environment it exports (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of this

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::{BoxError, ProvideErrorMetadata};
use aws_sdk_secretsmanager::primitives::Blob;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use keyrack_aws::{AwsBuilder, AwsSource};
use keyrack_core::testkit::Seeder;
use keyrack_core::{Error, ErrorKind, Result, SecretRef, SecretSource, async_trait};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need moto (AWS Secrets Manager + STS); run them \
             through scripts/test, or start scripts/testground/moto-up and source its env file"
        )
    })
}

/// A builder pointed at moto with the test ground's static keys.
pub fn builder() -> AwsBuilder {
    AwsBuilder::new()
        .with_region(env("AWS_REGION"))
        .with_endpoint_url(env("AWS_ENDPOINT_URL"))
        .with_static_credentials(env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"), None)
}

pub async fn source() -> AwsSource {
    builder().build().await.unwrap()
}

pub fn uniq(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand_u64())
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap())
}

/// A client request token (32-64 characters), which becomes the VersionId.
pub fn version_token() -> String {
    format!("{:016x}{:016x}", rand_u64(), rand_u64())
}

/// Create `name` with `value` (SecretString if UTF-8, else SecretBinary), or put a new
/// AWSCURRENT version. Returns the new VersionId.
pub async fn put(source: &AwsSource, name: &str, value: &[u8]) -> Result<String> {
    let client = source.client();
    let text = std::str::from_utf8(value).ok();
    let create = client.create_secret().name(name);
    let create = match text {
        Some(t) => create.secret_string(t),
        None => create.secret_binary(Blob::new(value)),
    };
    match create.send().await {
        Ok(out) => return Ok(out.version_id.unwrap()),
        Err(e) if e.code() == Some("ResourceExistsException") => {}
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Backend,
                format!("CreateSecret: {:?}", e.code()),
            ));
        }
    }
    let put = client.put_secret_value().secret_id(name);
    let put = match text {
        Some(t) => put.secret_string(t),
        None => put.secret_binary(Blob::new(value)),
    };
    let out = put.send().await.map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("PutSecretValue: {:?}", e.code()),
        )
    })?;
    Ok(out.version_id.unwrap())
}

pub fn aws_ref(name: &str) -> SecretRef {
    SecretRef::new("aws-sm", name).unwrap()
}

/// The conformance suite's view of moto.
pub struct AwsSeeder {
    pub source: Arc<AwsSource>,
}

#[async_trait]
impl Seeder for AwsSeeder {
    fn source(&self) -> Arc<dyn SecretSource> {
        self.source.clone()
    }

    fn reference(&self, name: &str) -> SecretRef {
        aws_ref(name)
    }

    async fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        put(&self.source, name, value).await.map(|_| ())
    }
}

fn operation(ctx: &BeforeTransmitInterceptorContextRef<'_>) -> String {
    ctx.request()
        .headers()
        .get("x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("?")
        .to_owned()
}

/// Counts the requests a client sends, by operation (`X-Amz-Target`).
#[derive(Clone, Debug, Default)]
pub struct RequestLog(pub Arc<Mutex<Vec<String>>>);

impl RequestLog {
    pub fn operations(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, op: &str) -> usize {
        self.operations().iter().filter(|o| *o == op).count()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        self.0.lock().unwrap().push(operation(ctx));
        Ok(())
    }
}

/// The operation of the request in flight, kept in its config bag.
#[derive(Clone, Debug)]
struct SentOperation(String);

impl Storable for SentOperation {
    type Storer = StoreReplace<Self>;
}

/// Replaces the response of the next `armed` requests of operation `op` (any when empty) with
/// a ThrottlingException, as Secrets Manager sends it (or, with [`Throttler::answer`], another
/// status, code and `Retry-After`).
#[derive(Clone, Debug, Default)]
pub struct Throttler {
    pub op: Arc<Mutex<String>>,
    pub armed: Arc<AtomicUsize>,
    pub throttled: Arc<AtomicUsize>,
    /// The replacement (default: 400, ThrottlingException, no `Retry-After`).
    pub reply: Arc<Mutex<Option<Reply>>>,
}

/// What [`Throttler`] answers instead.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub code: String,
    pub retry_after: Option<String>,
}

impl Throttler {
    pub fn arm(&self, op: &str, n: usize) {
        *self.op.lock().unwrap() = op.to_owned();
        self.armed.store(n, Ordering::SeqCst);
    }

    pub fn throttled(&self) -> usize {
        self.throttled.load(Ordering::SeqCst)
    }

    /// Replace with this status, error code and `Retry-After` from now on.
    pub fn answer(&self, status: u16, code: &str, retry_after: Option<String>) {
        *self.reply.lock().unwrap() = Some(Reply {
            status,
            code: code.to_owned(),
            retry_after,
        });
    }
}

impl Intercept for Throttler {
    fn name(&self) -> &'static str {
        "Throttler"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(SentOperation(operation(ctx)));
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        let op = self.op.lock().unwrap().clone();
        let sent = cfg.load::<SentOperation>().map(|o| o.0.clone());
        if !op.is_empty() && sent.as_deref() != Some(op.as_str()) {
            return Ok(());
        }
        let take = self
            .armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if take {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            let Reply {
                status,
                code,
                retry_after,
            } = self.reply.lock().unwrap().clone().unwrap_or(Reply {
                status: 400,
                code: "ThrottlingException".into(),
                retry_after: None,
            });
            let mut response = HttpResponse::new(
                status.try_into().unwrap(),
                SdkBody::from(format!(
                    r#"{{"__type":"{code}","message":"Rate exceeded"}}"#
                )),
            );
            response
                .headers_mut()
                .insert("content-type", "application/x-amz-json-1.1");
            if let Some(wait) = retry_after {
                response.headers_mut().insert("retry-after", wait);
            }
            *ctx.response_mut() = response;
        }
        Ok(())
    }
}

/// The tests' setup client: rustls on an explicit ring provider, nothing installed
/// process-wide.
pub use keyrack_fake_server::test_client;

/// moto's request recorder (`/moto-api/recorder/...`): what clients actually sent.
pub async fn recorder(action: &str) -> String {
    let url = format!("{}/moto-api/recorder/{action}", env("AWS_ENDPOINT_URL"));
    let client = test_client();
    let response = if action == "download-recording" {
        client.get(url).send().await.unwrap()
    } else {
        client.post(url).send().await.unwrap()
    };
    response.text().await.unwrap()
}
