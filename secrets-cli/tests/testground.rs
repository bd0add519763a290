//! `keyrack` against the real test ground: OpenBao (`scripts/testground/vault-up`: the root token
//! and `VAULT_RESTRICTED_TOKEN`, whose policy reads `secret/data/allowed/*` only) and moto
//! (`moto-up`). Run through `scripts/test`, or with both env files sourced.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the test ground; run them through scripts/test \
             (or start scripts/testground/vault-up and moto-up and source their env files)"
        )
    })
}

/// A path no other test writes.
fn uniq(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Writes a KV v2 secret with the root token through the `bao` CLI.
fn bao_put(path: &str, pairs: &[&str]) {
    let st = Command::new(env("TESTGROUND_BAO"))
        .args(["kv", "put", "-mount=secret", path])
        .args(pairs)
        .env("VAULT_TOKEN", env("VAULT_ROOT_TOKEN"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

fn keyrack(token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyrack"))
        .args(args)
        .env("VAULT_TOKEN", token)
        .env_remove("VAULT_K8S_ROLE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_names_the_refused_reference_and_never_the_value() {
    let allowed = uniq("allowed/cli");
    let refused = uniq("app/cli");
    bao_put(&allowed, &["password=allowed-value-1"]);
    bao_put(&refused, &["password=refused-value-2"]);
    let allowed_ref = format!("vault://secret/{allowed}");
    let refused_ref = format!("vault://secret/{refused}#password");
    let out = keyrack(
        &env("VAULT_RESTRICTED_TOKEN"),
        &["check", &allowed_ref, &refused_ref],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("ok    {allowed_ref}")),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!("fail  {refused_ref}  denied: permission denied")),
        "{stdout}"
    );
    let all = text(&out);
    for secret in [
        "allowed-value-1",
        "refused-value-2",
        &env("VAULT_RESTRICTED_TOKEN"),
    ] {
        assert!(!all.contains(secret), "{all}");
    }
}

#[test]
fn get_redacts_unless_revealed() {
    let path = uniq("cli/get");
    bao_put(&path, &["user=app", "password=get-value-3"]);
    let reference = format!("vault://secret/{path}");
    let out = keyrack(&env("VAULT_ROOT_TOKEN"), &["get", &reference]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("version       1"), "{all}");
    assert!(all.contains("fields        password, user"), "{all}");
    assert!(all.contains("[REDACTED]"), "{all}");
    assert!(!all.contains("get-value-3"), "{all}");

    let field = format!("{reference}#password");
    let out = keyrack(&env("VAULT_ROOT_TOKEN"), &["get", "--reveal", &field]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("value         get-value-3"));
}

/// A server that accepts and never answers: `check` gives up at `--timeout` with `timeout`.
#[test]
fn a_hanging_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_keyrack"))
        .args(["check", "--timeout", "1s", "vault://secret/x"])
        .env("VAULT_ADDR", &addr)
        .env("VAULT_TOKEN", "t")
        .env_remove("VAULT_K8S_ROLE")
        .output()
        .unwrap();
    drop(listener);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.starts_with("fail  vault://secret/x  timeout:"),
        "{stdout}"
    );
}

#[test]
fn aws_missing_secret_is_not_found() {
    env("AWS_ENDPOINT_URL");
    let name = uniq("cli/missing");
    let reference = format!("aws-sm://{name}");
    let out = Command::new(env!("CARGO_BIN_EXE_keyrack"))
        .args(["check", &reference])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.starts_with(&format!("fail  {reference}  not-found: not found")),
        "{stdout}"
    );
}

/// `watch` prints the rotation of a KV secret written meanwhile, then stops cleanly on SIGINT.
#[test]
fn watch_prints_a_rotation_and_stops_on_ctrl_c() {
    let path = uniq("cli/watch");
    bao_put(&path, &["password=watch-value-1"]);
    let reference = format!("vault://secret/{path}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyrack"))
        .args(["watch", "--interval", "1s", &reference])
        .env("VAULT_TOKEN", env("VAULT_ROOT_TOKEN"))
        .env_remove("VAULT_K8S_ROLE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("watching") && first.contains("version 1"),
        "{first}"
    );
    bao_put(&path, &["password=watch-value-2"]);
    let mut seen = Vec::new();
    let rotated = loop {
        let line = lines
            .next()
            .expect("watch ended before a rotation")
            .unwrap();
        seen.push(line.clone());
        if line.contains(" rotated ") {
            break line;
        }
        assert!(seen.len() < 50, "{seen:?}");
    };
    assert!(rotated.contains("version 1 -> 2"), "{rotated}");
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch did not stop after SIGINT");
    assert_eq!(out.status.code(), Some(0));
    let all = format!("{seen:?}{}", text(&out));
    assert!(all.contains("keyrack: stopped"), "{all}");
    assert!(!all.contains("watch-value"), "{all}");
}

/// moto enforcing IAM (its own server, started here with `INITIAL_NO_AUTH_ACTION_COUNT=3`: the
/// first three calls are let through to create a secret, an IAM user with no policy and its
/// access key, through boto3, which moto ships with): that user's read is refused, and `check`
/// names the reference and `denied`, never the value or the key.
#[test]
fn aws_refused_permission_is_denied() {
    env("AWS_ENDPOINT_URL"); // the test ground's moto is installed
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (installed by scripts/testground/moto-up)");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let seeded = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(_)) = server.try_wait() {
            panic!("moto_server exited");
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let _server = Stop(server);
    assert!(seeded.is_some(), "moto_server did not listen");
    let seed = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import sys, boto3
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
boto3.client("secretsmanager", **kw).create_secret(
    Name="prod/db", SecretString='{"password":"moto-refused-value"}')
iam = boto3.client("iam", **kw)
iam.create_user(UserName="ci")
k = iam.create_access_key(UserName="ci")["AccessKey"]
print(k["AccessKeyId"], k["SecretAccessKey"])
"#,
        )
        .arg(&endpoint)
        .output()
        .unwrap();
    assert!(seed.status.success(), "{}", text(&seed));
    let keys = String::from_utf8(seed.stdout).unwrap();
    let (id, key) = keys.trim().split_once(' ').unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyrack"))
        .args(["check", "aws-sm://prod/db#password"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", key)
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.starts_with("fail  aws-sm://prod/db#password  denied: permission denied"),
        "{stdout}"
    );
    let all = text(&out);
    assert!(
        !all.contains("moto-refused-value") && !all.contains(key),
        "{all}"
    );
}
