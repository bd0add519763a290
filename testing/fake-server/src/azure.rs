//! A loopback fake of Key Vault's secrets API and of Entra ID's token endpoint, both over TLS
//! (the SDK and `azure_identity` insist on https). Every answer is shaped after an entry of a
//! recording in `fixtures/azure/` of this crate (copied from the project's shared fixtures; see
//! its `README.md`), or, where no recording exists, after Azure's published REST reference
//! (Entra ID's throttling and outage answers: the documented error response with OAuth 2.0's
//! `temporarily_unavailable`); each answer below says which.
//!
//! keyrack-azure's tests and the `azure` example share this one copy; the glue that builds a
//! source pointed at it lives beside them (it needs keyrack-azure, which this crate does not
//! depend on).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::{FakeServer, Request, Response};

/// The vault name the tests use; mapped to the fake's URL with `with_vault_url`.
pub const VAULT: &str = "fakevault";
/// The tenant of the recorded challenge (rust/list_secrets_by_pages_verify_telemetry.excerpt.json,
/// entry 0, `WWW-Authenticate`).
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The client id of the documented federated-credential request
/// (entra_client_assertion_token_exchange.documented.json, `request.form_body_in_documented_order`).
pub const CLIENT_ID: &str = "97e0a5b7-d745-40b6-94fe-5f77d35c6e05";

/// A fixture file of `fixtures/azure/`, parsed.
pub fn fixture(name: &str) -> Value {
    let text = match name {
        "entra_client_assertion_token_exchange.documented.json" => {
            include_str!("../fixtures/azure/entra_client_assertion_token_exchange.documented.json")
        }
        "get_secret.excerpt.json" => include_str!("../fixtures/azure/get_secret.excerpt.json"),
        "instance_discovery_disabled.json" => {
            include_str!("../fixtures/azure/instance_discovery_disabled.json")
        }
        "list_secrets_by_pages_verify_telemetry.excerpt.json" => {
            include_str!("../fixtures/azure/list_secrets_by_pages_verify_telemetry.excerpt.json")
        }
        "python_crud_operations_7.3.json" => {
            include_str!("../fixtures/azure/python_crud_operations_7.3.json")
        }
        "secret_roundtrip.json" => include_str!("../fixtures/azure/secret_roundtrip.json"),
        other => panic!("no fixture {other} in testing/fake-server/fixtures/azure"),
    };
    serde_json::from_str(text).unwrap()
}

/// Entry `i` of a test-proxy recording.
pub fn entry(file: &str, i: usize) -> Value {
    fixture(file)["Entries"][i].clone()
}

/// One version of a secret the fake vault holds.
#[derive(Clone, Debug)]
pub struct StoredVersion {
    /// The version id: 32 lowercase hex digits, as in every recorded `id`.
    pub id: String,
    /// The value served.
    pub value: String,
    /// A disabled version is refused with 403 `SecretDisabled`.
    pub enabled: bool,
    /// `attributes.exp`, seconds since the epoch.
    pub exp: Option<i64>,
    /// `attributes.created` (and `updated`), seconds since the epoch.
    pub created: i64,
}

/// What the fake vault and token endpoint hold and how they are told to misbehave.
#[derive(Default)]
pub struct State {
    /// Versions by secret name, oldest first.
    pub secrets: HashMap<String, Vec<StoredVersion>>,
    counter: u64,
    /// Access tokens the token endpoint issued; the vault accepts only these (clear it to have
    /// the vault refuse the tokens issued so far).
    pub issued: Vec<String>,
    /// Tokens issued in all: numbers them, so a token issued after `issued` was cleared differs.
    tokens_issued: usize,
    /// The next `n` vault requests are answered 429 with `Retry-After: secs`.
    pub throttle: Option<(usize, u64)>,
    /// Replaces the challenge's `resource`.
    pub challenge_resource: Option<String>,
    /// `expires_in` of issued tokens (the recording's 86399 when `None`).
    pub token_expires_in: Option<i64>,
    /// The next token request is refused with the documented `error_response`.
    pub refuse_next_token: bool,
    /// Token requests are answered with this status and `Retry-After` (seconds) until cleared:
    /// Entra ID throttling (429) or an outage (503).
    pub token_failure: Option<(u16, u64)>,
    /// Answers for the next authorized vault requests, before anything else: each test says
    /// what each one is shaped after.
    pub canned: VecDeque<Canned>,
    /// Answers for the next requests without a valid token, in place of the challenge.
    pub challenge_faults: VecDeque<Canned>,
    /// Requests without a valid token are accepted and never answered while this is set (a
    /// vault, or the route to it, that hangs); requests with a token are answered.
    pub hang_unauthorized: bool,
    /// Requests without a valid token are answered after this long (a slow first round trip).
    pub unauthorized_delay: Option<std::time::Duration>,
}

/// An answer a test sets up for the vault.
#[derive(Clone, Debug)]
pub struct Canned {
    /// The HTTP status.
    pub status: u16,
    /// Headers added to the answer.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: CannedBody,
}

/// The body of a [`Canned`] answer.
#[derive(Clone, Debug)]
pub enum CannedBody {
    /// Key Vault's error JSON (`{"error":{"code","message","innererror":{"code"}}}`).
    Json(Value),
    /// A page of something in front of the vault (a gateway, a firewall).
    Html(String),
}

impl Canned {
    /// Key Vault's error body with `code`, `message` and the inner error's code, if any.
    pub fn key_vault(status: u16, code: &str, message: &str, inner: Option<&str>) -> Self {
        Canned {
            status,
            headers: Vec::new(),
            body: CannedBody::Json(error_body(code, message, inner)),
        }
    }

    /// An HTML page with `status`.
    pub fn html(status: u16, page: &str) -> Self {
        Canned {
            status,
            headers: Vec::new(),
            body: CannedBody::Html(page.to_owned()),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

impl State {
    /// Write a new version of `name` (what the service does on `PUT /secrets/{name}`); returns its id.
    pub fn put(&mut self, name: &str, value: &str) -> String {
        self.counter += 1;
        // Version ids are 32 lowercase hex digits, as in every recorded `id`.
        let id = format!("{:032x}", 0xa471_deac_0000_0000_u64 + self.counter);
        let version = StoredVersion {
            id: id.clone(),
            value: value.to_owned(),
            enabled: true,
            exp: None,
            // `created` of rust/get_secret.excerpt.json entry 1, advanced per write.
            created: 1_760_645_276 + self.counter as i64,
        };
        self.secrets
            .entry(name.to_owned())
            .or_default()
            .push(version);
        id
    }

    /// The newest version of `name` (panics when there is none).
    pub fn latest_mut(&mut self, name: &str) -> &mut StoredVersion {
        self.secrets.get_mut(name).unwrap().last_mut().unwrap()
    }
}

/// The fake vault and token endpoint, each on its own loopback HTTPS port with a CA of its own
/// ([`FakeServer::ca_pem`]); both stop when this is dropped.
pub struct Fake {
    /// Key Vault: `GET /secrets/{name}[/{version}]` after the 401 challenge.
    pub vault: FakeServer,
    /// Entra ID: `POST /{TENANT}/oauth2/v2.0/token`.
    pub entra: FakeServer,
    /// What both hold, and the faults set up.
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    /// Starts both servers, holding no secret.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let vault = FakeServer::https(move |req| {
            let s = s.clone();
            // The fake delays its answers in real time, as a slow server does.
            #[allow(clippy::disallowed_methods)]
            async move {
                match unauthorized_wait(&s, &req) {
                    Some(None) => std::future::pending::<()>().await,
                    Some(Some(delay)) => tokio::time::sleep(delay).await,
                    None => {}
                }
                vault_answer(&s, &req)
            }
        })
        .await;
        let s = state.clone();
        let entra = FakeServer::https(move |req| {
            let s = s.clone();
            async move { entra_answer(&s, &req) }
        })
        .await;
        Fake {
            vault,
            entra,
            state,
        }
    }

    /// Writes a new version of `name`; returns its id.
    pub fn put(&self, name: &str, value: &str) -> String {
        self.state.lock().unwrap().put(name, value)
    }

    /// Runs `f` on the state (to set up a fault, say).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The requests the token endpoint received.
    pub fn token_requests(&self) -> Vec<Request> {
        self.entra.requests()
    }

    /// The requests the vault received (paths under `/secrets`).
    pub fn vault_requests(&self) -> Vec<Request> {
        self.vault.requests_to("/secrets")
    }
}

/// The 401 challenge: rust/list_secrets_by_pages_verify_telemetry.excerpt.json, entry 0
/// (status, `WWW-Authenticate`, body).
fn challenge(resource: Option<&str>) -> Response {
    let e = entry("list_secrets_by_pages_verify_telemetry.excerpt.json", 0);
    let mut www = e["ResponseHeaders"]["WWW-Authenticate"]
        .as_str()
        .unwrap()
        .to_owned();
    if let Some(r) = resource {
        www = www.replace("https://vault.azure.net", r);
    }
    Response::json(e["StatusCode"].as_u64().unwrap() as u16, &e["ResponseBody"])
        .header("www-authenticate", www)
}

/// Headers of recorded entry `e` (a 200) that a client might read.
fn recorded_headers(mut r: Response, e: &Value) -> Response {
    for name in [
        "Cache-Control",
        "x-ms-keyvault-region",
        "x-ms-keyvault-service-version",
    ] {
        r = r.header(name, e["ResponseHeaders"][name].as_str().unwrap());
    }
    r
}

/// Replace the field at `path` of a recorded body; the field must be in the recording, so the
/// answer keeps the recording's shape.
fn substitute(body: &mut Value, path: &[&str], value: Value) {
    let mut at = &mut *body;
    for key in path {
        at = at
            .get_mut(*key)
            .unwrap_or_else(|| panic!("the recorded body has no `{}`", path.join(".")));
    }
    *at = value;
}

fn error_body(code: &str, message: &str, inner: Option<&str>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(inner) = inner {
        error["innererror"] = json!({ "code": inner });
    }
    json!({ "error": error })
}

fn is_authorized(st: &State, req: &Request) -> bool {
    req.header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| st.issued.iter().any(|i| i == t))
}

/// How long a request waits before its answer: `None` not at all, `Some(None)` forever (it
/// hangs), `Some(Some(d))` for `d`.
fn unauthorized_wait(state: &Mutex<State>, req: &Request) -> Option<Option<std::time::Duration>> {
    let st = state.lock().unwrap();
    if is_authorized(&st, req) {
        return None;
    }
    if st.hang_unauthorized {
        return Some(None);
    }
    st.unauthorized_delay.map(Some)
}

fn canned_answer(canned: Canned) -> Response {
    let mut r = match canned.body {
        CannedBody::Json(body) => Response::json(canned.status, &body),
        CannedBody::Html(page) => Response::text(canned.status, "text/html", page),
    };
    for (name, value) in canned.headers {
        r = r.header(name, value);
    }
    r
}

fn vault_answer(state: &Mutex<State>, req: &Request) -> Response {
    let mut st = state.lock().unwrap();
    if !is_authorized(&st, req) {
        if let Some(fault) = st.challenge_faults.pop_front() {
            return canned_answer(fault);
        }
        return challenge(st.challenge_resource.as_deref());
    }
    if let Some(canned) = st.canned.pop_front() {
        return canned_answer(canned);
    }
    if let Some((n, secs)) = st.throttle {
        st.throttle = (n > 1).then_some((n - 1, secs));
        // No recording has a 429: shaped after the Key Vault REST reference ("Azure Key Vault
        // throttling guidance": HTTP 429 with Retry-After, error code Throttled).
        return Response::json(
            429,
            &error_body(
                "Throttled",
                "Request was not processed because too many requests were received. Reason: A \
                 maximum of 4000 requests in 10 seconds is allowed per vault.",
                None,
            ),
        )
        .header("retry-after", secs.to_string());
    }
    if req.method != "GET" || req.query_param("api-version").is_none() {
        return Response::json(
            400,
            &error_body("BadParameter", "unsupported request", None),
        );
    }
    // GET /secrets/{name}/ (latest, rust/get_secret.excerpt.json entry 1) or
    // GET /secrets/{name}/{version} (rust/secret_roundtrip.json entry 1).
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let (name, version) = match parts.as_slice() {
        ["secrets", name, ""] | ["secrets", name] => (*name, None),
        ["secrets", name, version] => (*name, Some(*version)),
        _ => return Response::json(400, &error_body("BadParameter", "bad path", None)),
    };
    let found = st.secrets.get(name).and_then(|versions| match version {
        None => versions.last(),
        Some(v) => versions.iter().find(|s| s.id == v),
    });
    let Some(found) = found else {
        // Error code as in python_crud_operations_7.3.json entry 8 (404 SecretNotFound); the
        // message in the form the service uses for a live secret (REST reference).
        let what = match version {
            Some(v) => format!("{name}/{v}"),
            None => name.to_owned(),
        };
        return Response::json(
            404,
            &error_body(
                "SecretNotFound",
                &format!("A secret with (name/id) {what} was not found in this key vault."),
                None,
            ),
        );
    };
    if !found.enabled {
        // No recording of a disabled secret in the fixtures: shaped after the KeyVaultError schema
        // of the REST reference and the service's answer as quoted in Azure/azure-sdk-for-js#24756
        // and ansible-collections/azure#1989 (403, code Forbidden, "Operation get is not allowed
        // on a disabled secret.", inner error SecretDisabled).
        return Response::json(
            403,
            &error_body(
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
                Some("SecretDisabled"),
            ),
        );
    }
    // The recorded 200 of the same request, with this secret's fields substituted:
    // - GET /secrets/{name}/ : rust/get_secret.excerpt.json entry 1;
    // - GET /secrets/{name}/{version} : rust/secret_roundtrip.json entry 1;
    // - a version with `exp`: the same two requests in python_crud_operations_7.3.json,
    //   entries 4 (latest) and 5 (pinned), whose `attributes` carry `exp` (whole seconds).
    let (file, i) = match (version.is_some(), found.exp.is_some()) {
        (false, false) => ("get_secret.excerpt.json", 1),
        (true, false) => ("secret_roundtrip.json", 1),
        (false, true) => ("python_crud_operations_7.3.json", 4),
        (true, true) => ("python_crud_operations_7.3.json", 5),
    };
    let recorded = entry(file, i);
    assert_eq!(recorded["RequestMethod"], "GET", "{file} entry {i}");
    assert_eq!(recorded["StatusCode"], 200, "{file} entry {i}");
    let mut body = recorded["ResponseBody"].clone();
    substitute(&mut body, &["value"], json!(found.value));
    substitute(
        &mut body,
        &["id"],
        json!(format!(
            "https://{VAULT}.vault.azure.net/secrets/{name}/{}",
            found.id
        )),
    );
    substitute(&mut body, &["attributes", "created"], json!(found.created));
    substitute(&mut body, &["attributes", "updated"], json!(found.created));
    if let Some(exp) = found.exp {
        substitute(&mut body, &["attributes", "exp"], json!(exp));
    }
    recorded_headers(Response::json(200, &body), &recorded)
}

fn entra_answer(state: &Mutex<State>, req: &Request) -> Response {
    let mut st = state.lock().unwrap();
    // POST /{tenant}/oauth2/v2.0/token, as in entra/instance_discovery_disabled.json entry 1.
    if req.method != "POST" || req.path != format!("/{TENANT}/oauth2/v2.0/token") {
        return Response::status(404);
    }
    if let Some((status, retry_after)) = st.token_failure {
        // No recording or documented example of a throttled or unavailable token endpoint: the
        // documented `error_response` (entra_client_assertion_token_exchange.documented.json)
        // with OAuth 2.0's error for this case (RFC 6749 §4.1.2.1, `temporarily_unavailable`,
        // and its definition as the description's first line) in place of `invalid_scope` and
        // the AADSTS70011 line, and no `error_codes`. The `\r\n`-separated Trace ID /
        // Correlation ID / Timestamp lines are kept: they are what azure_identity 1.0 cannot
        // parse.
        let doc = fixture("entra_client_assertion_token_exchange.documented.json");
        let mut body = doc["error_response"]["body"].clone();
        let description = body["error_description"].as_str().unwrap().to_owned();
        let (_, trace) = description.split_once("\r\n").unwrap();
        body["error"] = json!("temporarily_unavailable");
        body["error_description"] = json!(format!(
            "The authorization server is currently unable to handle the request due to a \
             temporary overloading or maintenance of the server.\r\n{trace}"
        ));
        body.as_object_mut().unwrap().remove("error_codes");
        return Response::json(status, &body).header("retry-after", retry_after.to_string());
    }
    if st.refuse_next_token {
        st.refuse_next_token = false;
        // entra_client_assertion_token_exchange.documented.json, `error_response`.
        let doc = fixture("entra_client_assertion_token_exchange.documented.json");
        return Response::json(
            doc["error_response"]["status"].as_u64().unwrap() as u16,
            &doc["error_response"]["body"],
        );
    }
    st.tokens_issued += 1;
    let token = format!("fake-access-token-{}", st.tokens_issued);
    st.issued.push(token.clone());
    // The body of entra/instance_discovery_disabled.json entry 1, with a token of our own.
    let mut body = entry("instance_discovery_disabled.json", 1)["ResponseBody"].clone();
    body["access_token"] = json!(token);
    if let Some(expires_in) = st.token_expires_in {
        body["expires_in"] = json!(expires_in);
        body["ext_expires_in"] = json!(expires_in);
    }
    Response::json(200, &body)
}

/// A form body, sorted, for comparing field sets.
pub fn form_of(req: &Request) -> Vec<(String, String)> {
    let mut form = req.form();
    form.sort();
    form
}

/// The fields the documented federated-credential request sends
/// (`request.form_body_in_documented_order`), with Key Vault's scope (`request.notes`) and the
/// client assertion replaced by `assertion`.
pub fn documented_form(assertion: &str) -> Vec<(String, String)> {
    let doc = fixture("entra_client_assertion_token_exchange.documented.json");
    let mut form: Vec<(String, String)> = doc["request"]["form_body_in_documented_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let key = pair[0].as_str().unwrap().to_owned();
            let value = match key.as_str() {
                "client_assertion" => assertion.to_owned(),
                "scope" => "https://vault.azure.net/.default".to_owned(),
                _ => pair[1].as_str().unwrap().to_owned(),
            };
            (key, value)
        })
        .collect();
    form.sort();
    form
}
