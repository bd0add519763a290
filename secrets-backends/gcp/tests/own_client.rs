//! `GcpBuilder::with_client`: the application's SDK client carries every request, whatever the
//! reference's location; the options that belong to the client are refused beside it; a client
//! that never answers is bounded by the source's timeout; its errors map as the source's own
//! do. The client here is `SecretManagerService::from_stub` on a stub that answers in process
//! (the SDK's own seam for tests), so these answers are the SDK's parsed values, not HTTP: the
//! throttling one is the status of `google_rpc_status_errors.assembled.json`'s recorded 429
//! (`RESOURCE_EXHAUSTED`, "Quota exceeded"), the refusal that of a least-privilege identity
//! without `secretmanager.versions.access` (the PERMISSION_DENIED message of the same file).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyrack_core::{ErrorKind, SecretRef, SecretSource};
use keyrack_gcp::GcpBuilder;
use keyrack_gcp::google_cloud_gax::error::Error as GaxError;
use keyrack_gcp::google_cloud_gax::error::rpc::{Code, Status};
use keyrack_gcp::google_cloud_gax::options::RequestOptions;
use keyrack_gcp::google_cloud_gax::response::Response;
use keyrack_gcp::google_cloud_secretmanager_v1 as sm;
use sm::client::SecretManagerService;
use sm::model::{AccessSecretVersionRequest, AccessSecretVersionResponse, SecretPayload};

const VALUE: &str = "own-client-s3cret-value";

#[derive(Clone, Copy, Debug)]
enum Answer {
    Value,
    Throttled,
    Denied,
    Never,
}

#[derive(Debug, Clone)]
struct Stub {
    answer: Answer,
    names: Arc<Mutex<Vec<String>>>,
}

impl sm::stub::SecretManagerService for Stub {
    async fn access_secret_version(
        &self,
        req: AccessSecretVersionRequest,
        _options: RequestOptions,
    ) -> sm::Result<Response<AccessSecretVersionResponse>> {
        self.names.lock().unwrap().push(req.name.clone());
        let status = |code, message: &str| {
            Err(GaxError::service(
                Status::default().set_code(code).set_message(message),
            ))
        };
        match self.answer {
            Answer::Value => {
                // The service names the version it read: `latest` resolved.
                Ok(Response::from(
                    AccessSecretVersionResponse::new()
                        .set_name(req.name.replace("/versions/latest", "/versions/7"))
                        .set_payload(SecretPayload::new().set_data(VALUE.as_bytes().to_vec())),
                ))
            }
            Answer::Throttled => status(Code::ResourceExhausted, "Quota exceeded"),
            Answer::Denied => status(
                Code::PermissionDenied,
                "Permission 'secretmanager.versions.access' denied on resource (or it may not \
                 exist).",
            ),
            Answer::Never => std::future::pending().await,
        }
    }
}

fn stub(answer: Answer) -> (SecretManagerService, Arc<Mutex<Vec<String>>>) {
    let names = Arc::new(Mutex::new(Vec::new()));
    let stub = Stub {
        answer,
        names: names.clone(),
    };
    (SecretManagerService::from_stub(stub), names)
}

/// A builder on `client`, with a default project.
fn on(client: SecretManagerService) -> GcpBuilder {
    GcpBuilder::new().with_project("p1").with_client(client)
}

fn r(s: &str) -> SecretRef {
    SecretRef::parse(s).unwrap()
}

#[tokio::test]
async fn the_given_client_carries_every_read_whatever_its_location() {
    let (client, names) = stub(Answer::Value);
    let gcp = on(client).build().await.unwrap();
    let secret = gcp.fetch(&r("gcp-sm://db")).await.unwrap();
    assert_eq!(secret.value().expose_str().unwrap(), VALUE);
    assert_eq!(secret.version().map(|v| v.as_str()), Some("7"));
    gcp.fetch(&r("gcp-sm://projects/p2/locations/europe-west1/secrets/db"))
        .await
        .unwrap();
    assert_eq!(
        *names.lock().unwrap(),
        [
            "projects/p1/secrets/db/versions/latest",
            "projects/p2/locations/europe-west1/secrets/db/versions/latest",
        ]
    );
    assert!(format!("{gcp:?}").contains("own_client: true"), "{gcp:?}");
}

#[tokio::test]
async fn its_errors_map_as_the_sources_own_and_quote_no_value() {
    for (answer, kind) in [
        (Answer::Throttled, ErrorKind::Throttled),
        (Answer::Denied, ErrorKind::PermissionDenied),
    ] {
        let (client, _) = stub(answer);
        let gcp = on(client).build().await.unwrap();
        let e = gcp.fetch(&r("gcp-sm://db")).await.unwrap_err();
        assert_eq!(e.kind(), &kind, "{answer:?}: {e}");
        assert!(!format!("{e} {e:?}").contains(VALUE));
    }
}

#[tokio::test]
async fn a_client_that_never_answers_is_bounded_by_the_timeout() {
    let (client, names) = stub(Answer::Never);
    let gcp = on(client)
        .with_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    // The stub never answers: only the source's timeout ends this read.
    let e = gcp.fetch(&r("gcp-sm://db")).await.unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert_eq!(names.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_clients_own_options_are_refused_beside_it() {
    let with = |b: GcpBuilder| b.with_client(stub(Answer::Value).0);
    let cases: [(&str, GcpBuilder); 5] = [
        (
            "with_endpoint",
            GcpBuilder::new().with_endpoint("https://sm.example"),
        ),
        (
            "with_regional_endpoint",
            GcpBuilder::new().with_regional_endpoint("l", "https://sm.example"),
        ),
        (
            "credentials",
            GcpBuilder::new().with_anonymous_credentials(),
        ),
        ("credentials", GcpBuilder::from_env()),
        (
            "with_crypto_provider",
            GcpBuilder::new().with_crypto_provider(Arc::new(
                keyrack_core::tls::rustls::crypto::ring::default_provider(),
            )),
        ),
    ];
    for (option, builder) in cases {
        let e = with(builder).build().await.unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Config, "{option}");
        assert!(e.to_string().contains(option), "{option}: {e}");
    }
}
