//! `keyrack get|check|watch <reference>...`: reads secret references through the same sources
//! and the same environment and pod detection as the keyrack library, for a laptop, CI or
//! `kubectl debug`. Values are redacted unless `get --reveal` asks for them; no error prints one.
//! The crate's README describes the output and the exit codes.
// A command line's output is its purpose.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod kubeconfig;
mod output;
mod sources;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keyrack::{Clock, Error, ErrorKind, SecretRef, SystemClock};

use crate::output::{Shown, describe, event_line, kind_tag};
use crate::sources::{Client, Options};

const EXIT_CODES: &str = "\
Exit codes:
  0  every reference was read (get, check); watch ended by Ctrl-C
  1  at least one reference failed: one line each names it and the reason
     (denied, unauthenticated, not-found, unreachable, timeout, bad-reference, config, ...)
  2  bad usage (unknown option, missing argument)

Sources: vault:// (VAULT_K8S_ROLE: the pod's token, else VAULT_ADDR/VAULT_TOKEN), aws-sm://
(the AWS SDK's chain), azure-kv://, gcp-sm://, k8s:// (in a pod: its service account, else
$KUBECONFIG or ~/.kube/config with a token), env://, file://.";

/// Read secret references through keyrack's sources: metadata, redacted values, checks and
/// rotation events.
#[derive(Parser)]
#[command(name = "keyrack", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Bound on each backend call and each source's setup (e.g. 5s, 500ms).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The kubeconfig context for k8s:// references outside a cluster (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print each secret's metadata (source, version, lease, expiry, fields, size) and its
    /// value redacted. `REF#field` selects one field of a JSON object.
    Get {
        /// References, e.g. vault://secret/app#password.
        #[arg(required = true)]
        references: Vec<String>,
        /// Print the value itself (UTF-8 as is, other bytes as base64).
        #[arg(long)]
        reveal: bool,
    },
    /// Read each reference and print one line per reference: `ok` or `fail` with the reason.
    /// Proves identity, permission and reachability; exits 1 if any fails.
    Check {
        /// References, e.g. vault://secret/app aws-sm://prod/db k8s://apps/db-creds.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Hold a reference and print each rotation event (time, kind, versions, lease facts),
    /// redacted, until Ctrl-C.
    Watch {
        /// The reference to follow.
        reference: String,
        /// How often the secret is re-checked at the backend (sources with a change feed,
        /// such as k8s:// and file://, report changes sooner).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyrack: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// The references as typed, parsed; a bad one is named by its position, never quoted (a value
/// pasted by mistake must not be printed).
fn parse_all(args: &[String]) -> Vec<Result<SecretRef, String>> {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            SecretRef::parse(a).map_err(|e| format!("argument {}: bad-reference: {e}", i + 1))
        })
        .collect()
}

async fn run(cli: Cli) -> ExitCode {
    let mut options = Options {
        timeout: cli.timeout,
        interval: None,
        context: cli.context,
    };
    match cli.command {
        Command::Get { references, reveal } => get(&parse_all(&references), &options, reveal).await,
        Command::Check { references } => check(&parse_all(&references), &options).await,
        Command::Watch {
            reference,
            interval,
        } => {
            options.interval = Some(interval);
            watch(&parse_all(std::slice::from_ref(&reference)), &options).await
        }
    }
}

async fn connect(refs: &[Result<SecretRef, String>], options: &Options) -> Result<Client, Error> {
    let parsed: Vec<&SecretRef> = refs.iter().filter_map(|r| r.as_ref().ok()).collect();
    sources::client(&parsed, options).await
}

/// Reads one reference, bounded by the timeout, naming it in the error.
async fn read(client: &Client, r: &SecretRef, timeout: Duration) -> Result<keyrack::Secret, Error> {
    if let Some(e) = client.failed.get(r.source()) {
        return Err(e.clone().with_ref(r));
    }
    match tokio::time::timeout(timeout, client.secrets.get_secret(r)).await {
        Ok(result) => result.map_err(|e| match e.reference() {
            Some(_) => e,
            None => e.with_ref(r),
        }),
        Err(_) => Err(Error::new(ErrorKind::Timeout, "no answer in time")
            .with_ref(r)
            .with_source_name(r.source())),
    }
}

/// `fail  <ref>  <tag>: <error>` on one line (backends' messages may span several).
fn failure_line(r: &SecretRef, e: &Error) -> String {
    format!(
        "fail  {}  {}: {}",
        Shown(r.as_str()),
        kind_tag(e.kind()),
        one_line(e)
    )
}

fn one_line(e: &Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

async fn get(refs: &[Result<SecretRef, String>], options: &Options, reveal: bool) -> ExitCode {
    let client = match connect(refs, options).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyrack: {}: {}", kind_tag(e.kind()), one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    let mut first = true;
    for r in refs {
        let r = match r {
            Ok(r) => r,
            Err(line) => {
                eprintln!("fail  {line}");
                ok = false;
                continue;
            }
        };
        match read(&client, r, options.timeout).await {
            Ok(secret) => {
                if !first {
                    println!();
                }
                first = false;
                print!("{}", describe(r, &secret, SystemClock.wall(), reveal));
            }
            Err(e) => {
                eprintln!("{}", failure_line(r, &e));
                ok = false;
            }
        }
    }
    client.secrets.shutdown().await;
    exit(ok)
}

async fn check(refs: &[Result<SecretRef, String>], options: &Options) -> ExitCode {
    let client = match connect(refs, options).await {
        Ok(c) => c,
        Err(e) => {
            println!("fail  (client)  {}: {}", kind_tag(e.kind()), one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for r in refs {
        let r = match r {
            Ok(r) => r,
            Err(line) => {
                println!("fail  {line}");
                ok = false;
                continue;
            }
        };
        match read(&client, r, options.timeout).await {
            Ok(secret) => println!(
                "ok    {}  source {}, version {}, {} bytes",
                Shown(r.as_str()),
                r.source(),
                secret.version().map_or("-", |v| v.as_str()),
                secret.value().len()
            ),
            Err(e) => {
                println!("{}", failure_line(r, &e));
                ok = false;
            }
        }
    }
    client.secrets.shutdown().await;
    exit(ok)
}

async fn watch(refs: &[Result<SecretRef, String>], options: &Options) -> ExitCode {
    let Some(r) = refs.first() else {
        return ExitCode::FAILURE;
    };
    let r = match r {
        Ok(r) => r,
        Err(line) => {
            eprintln!("fail  {line}");
            return ExitCode::FAILURE;
        }
    };
    let client = match connect(refs, options).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyrack: {}: {}", kind_tag(e.kind()), one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    if let Some(e) = client.failed.get(r.source()) {
        eprintln!("{}", failure_line(r, &e.clone().with_ref(r)));
        return ExitCode::FAILURE;
    }
    let handle = match tokio::time::timeout(options.timeout, client.secrets.handle(r)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            eprintln!("{}", failure_line(r, &e));
            client.secrets.shutdown().await;
            return ExitCode::FAILURE;
        }
        Err(_) => {
            let e = Error::new(ErrorKind::Timeout, "no answer in time").with_ref(r);
            eprintln!("{}", failure_line(r, &e));
            client.secrets.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    let mut events = handle.subscribe();
    let current = handle.current();
    let now = SystemClock.wall();
    println!(
        "{} watching {} version {}; Ctrl-C to stop",
        humantime::format_rfc3339_seconds(now),
        Shown(r.as_str()),
        current.version().map_or("-", |v| v.as_str())
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let code = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => println!("{}", event_line(&event)),
                None => {
                    eprintln!("keyrack: the client stopped sending events");
                    break ExitCode::FAILURE;
                }
            },
            _ = &mut ctrl_c => break ExitCode::SUCCESS,
        }
    };
    drop(handle);
    client.secrets.shutdown().await;
    eprintln!("keyrack: stopped");
    code
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
