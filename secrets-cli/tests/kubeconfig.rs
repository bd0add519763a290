//! `keyrack` with `k8s://` references outside a cluster: a kubeconfig written by each test points
//! at a loopback fake of the API server over HTTPS (`keyrack-fake-server`). Its answers are the
//! recorded/assembled bodies of `secrets-k8s/tests/fixtures/k8s/secret_api.samples.json`:
//! `secret_get_200_assembled` (Secret `apps/db-creds`), `status_403_observed` (a real
//! apiserver's Forbidden), `status_404_assembled`, `status_401_assembled`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use keyrack_fake_server::{FakeServer, Response};

const TOKEN: &str = "kubeconfig-bearer-token-s3cr3t";

fn fixtures() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../secrets-k8s/tests/fixtures/k8s/secret_api.samples.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The API server: `apps/db-creds` readable with [`TOKEN`], `apps/locked` forbidden, anything
/// else missing; a request without the token is refused (401).
async fn api_server() -> FakeServer {
    let f = fixtures();
    FakeServer::https(move |req| {
        let f = f.clone();
        async move {
            if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
                return Response::json(401, &f["status_401_assembled"]);
            }
            match req.path.as_str() {
                "/api/v1/namespaces/apps/secrets/db-creds" => {
                    Response::json(200, &f["secret_get_200_assembled"])
                }
                "/api/v1/namespaces/apps/secrets/locked" => {
                    Response::json(403, &f["status_403_observed"])
                }
                _ => Response::json(404, &f["status_404_assembled"]),
            }
        }
    })
    .await
}

fn kubeconfig(dir: &Path, server: &FakeServer, user: &str) -> std::path::PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(server.ca_pem().unwrap());
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: me\n    namespace: apps\nusers:\n- name: me\n  user:\n{user}",
        server.url()
    );
    let path = dir.join("config");
    std::fs::write(&path, text).unwrap();
    path
}

async fn keyrack(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyrack"));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The values stored in the fixture's Secret, decoded: none may be printed without --reveal.
fn fixture_values() -> Vec<String> {
    let f = fixtures();
    f["secret_get_200_assembled"]["data"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reads_through_the_kubeconfig_token_and_redacts() {
    let server = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server, &format!("    token: {TOKEN}\n"));
    let out = keyrack(&config, &["get", "k8s://apps/db-creds"]).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("source        k8s"), "{all}");
    assert!(all.contains("[REDACTED]"), "{all}");
    for value in fixture_values() {
        assert!(!all.contains(&value), "a value was printed: {all}");
    }
    assert!(!all.contains(TOKEN), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_prints_one_field() {
    let server = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server, &format!("    token: {TOKEN}\n"));
    let f = fixtures();
    let data = f["secret_get_200_assembled"]["data"].as_object().unwrap();
    let (key, encoded) = data.iter().next().unwrap();
    let value = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let reference = format!("k8s://apps/db-creds#{key}");
    let out = keyrack(&config, &["get", "--reveal", &reference]).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&format!("value         {value}")), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_forbidden_and_the_missing_reference() {
    let server = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    // The token from a file (tokenFile, relative to the kubeconfig's folder).
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let config = kubeconfig(dir.path(), &server, "    tokenFile: token\n");
    let out = keyrack(
        &config,
        &[
            "check",
            "k8s://apps/db-creds",
            "k8s://apps/locked",
            "k8s://apps/absent",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("ok    k8s://apps/db-creds"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("fail  k8s://apps/locked  denied: permission denied"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("fail  k8s://apps/absent  not-found:"),
        "{stdout}"
    );
    assert!(!text(&out).contains(TOKEN));
}

/// The kubeconfig forms keyrack does not support fail with `unsupported` naming what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_credentials_are_named() {
    let server = api_server().await;
    let cases = [
        (
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n",
            "exec credential plugin",
        ),
        (
            "    client-certificate-data: QUJD\n    client-key-data: QUJD\n",
            "client certificate",
        ),
        (
            "    username: admin\n    password: pw\n",
            "basic authentication",
        ),
    ];
    for (user, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = kubeconfig(dir.path(), &server, user);
        let out = keyrack(&config, &["check", "k8s://apps/db-creds"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            stdout.starts_with("fail  k8s://apps/db-creds  unsupported:"),
            "{stdout}"
        );
        assert!(stdout.contains(named), "{stdout}");
    }
    assert!(server.requests().is_empty(), "nothing was sent");
}

/// A kubeconfig that is not YAML: the error names the file, never its contents (a token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_kubeconfig_is_not_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!("users:\n- name: me\n  user: {{ token: {TOKEN}\n  [[[ :\n"),
    )
    .unwrap();
    let out = keyrack(&config, &["check", "k8s://apps/db-creds"]).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("config: "), "{all}");
    assert!(all.contains("is not a kubeconfig"), "{all}");
    assert!(!all.contains(TOKEN), "{all}");
}

/// A string that is not a reference (a value pasted by mistake) is named by position only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reference_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("absent");
    for pasted in [
        "hunter2 pasted-password",
        "k8s://apps/x#a#b pasted-password",
    ] {
        let out = keyrack(&config, &["check", pasted]).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(all.starts_with("fail  argument 1: bad-reference:"), "{all}");
        assert!(!all.contains("pasted-password"), "{all}");
    }
}

/// No kubeconfig at all: a typed configuration error naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kubeconfig_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("absent");
    let out = keyrack(&config, &["check", "k8s://apps/db-creds"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(
            "fail  k8s://apps/db-creds  config: invalid configuration: cannot read the kubeconfig"
        ),
        "{stdout}"
    );
}

/// Bad usage exits 2 (clap's usage error), as `--help` documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = keyrack(&dir.path().join("absent"), &["check"]).await;
    assert_eq!(out.status.code(), Some(2));
    let help = keyrack(&dir.path().join("absent"), &["--help"]).await;
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes:"));
}

/// `--context` picks a context other than the current one; a context that is not there is a
/// configuration error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_selects_another_user() {
    let server = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    // The current context's user has no credential keyrack supports; `other` has the token.
    let config = kubeconfig(
        dir.path(),
        &server,
        "    exec:\n      command: gke-gcloud-auth-plugin\n",
    );
    let mut text_ = std::fs::read_to_string(&config).unwrap();
    text_.push_str(&format!(
        "- name: other-user\n  user:\n    token: {TOKEN}\n"
    ));
    text_ = text_.replace(
        "contexts:\n",
        "contexts:\n- name: other\n  context:\n    cluster: fake\n    user: other-user\n",
    );
    std::fs::write(&config, text_).unwrap();
    let out = keyrack(&config, &["check", "k8s://apps/db-creds"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = keyrack(
        &config,
        &["check", "--context", "other", "k8s://apps/db-creds"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = keyrack(
        &config,
        &["check", "--context", "absent", "k8s://apps/db-creds"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("no context named `absent`"), "{stdout}");
}

/// `KUBECONFIG` listing several files: refused (kubectl merges them; keyrack reads one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_kubeconfig_files_are_unsupported() {
    let out = keyrack(
        Path::new("/tmp/a:/tmp/b"),
        &["check", "k8s://apps/db-creds"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.starts_with("fail  k8s://apps/db-creds  unsupported:"),
        "{stdout}"
    );
}
