//! `cedard keys`: create, list and revoke caller keys.
//!
//! With `--data` (the default) the command opens the data file itself, which
//! is how the first key is made before the daemon ever starts. redb admits one
//! process per file, so while a daemon runs on that file the command talks to
//! the daemon instead: `--url` names it, and `CEDARD_KEY` holds an `admin`
//! key (none is needed while no key exists and the daemon is on loopback).
//! Either way the secret is printed once, on standard output, and nowhere
//! else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::keys::{self, Scope};
use crate::store::{ApiKey, Fault, OpenError, Store, WriteError};

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once.
    Create(CreateArgs),
    /// List the keys (never their secrets).
    List(Target),
    /// Revoke a key: it stops working on a running daemon within a second.
    Revoke(RevokeArgs),
}

/// Where the keys are: the data file, or a running daemon.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The data file (when no daemon runs on it).
    #[arg(long, env = "CEDARD_DATA", default_value = "data/cedard.redb")]
    pub data: PathBuf,
    /// A running daemon's base URL (`http://127.0.0.1:8180`); its admin key
    /// in `CEDARD_KEY`.
    #[arg(long)]
    pub url: Option<String>,
}

/// Options of `cedard keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Who holds the key (for people and logs), e.g. `billing-svc`.
    #[arg(long)]
    pub name: String,
    /// What it may do: `decide`, `manage`, `admin` (repeat or separate with
    /// commas).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// Where the keys are.
    #[command(flatten)]
    pub target: Target,
}

/// Options of `cedard keys revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's id (the part after `cdk_`, before the next `_`).
    pub id: String,
    /// Where the keys are.
    #[command(flatten)]
    pub target: Target,
}

/// Why a keys command failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Fault(#[from] Fault),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}")]
    Remote(String),
}

/// Runs a keys command.
pub fn run(command: KeysCommand) -> ExitCode {
    let out = match command {
        KeysCommand::Create(args) => create(&args),
        KeysCommand::List(target) => list(&target),
        KeysCommand::Revoke(args) => revoke(&args),
    };
    match out {
        Ok(text) => {
            crate::cli::print_out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(target: &Target) -> Result<Store, Failure> {
    Store::open(&target.data).map_err(|e| match e {
        OpenError::Locked(path) => Failure::Input(format!(
            "the data file `{}` is in use by a running cedard; manage keys through it: \
             `cedard keys … --url http://<its address>` with an admin key in CEDARD_KEY",
            path.display()
        )),
        other => Failure::Open(other),
    })
}

/// One listing line, the same from the data file and from a daemon:
/// id, name, scopes, and `live` or when it was revoked (RFC 3339).
fn line(id: &str, name: &str, scopes: &[&str], revoked_at: Option<&str>) -> String {
    let state = match revoked_at {
        Some(at) => format!("revoked at {at}"),
        None => "live".to_owned(),
    };
    format!("{id}\t{name}\t{}\t{state}\n", scopes.join(","))
}

fn describe(k: &ApiKey) -> String {
    let scopes: Vec<&str> = k.scopes.iter().map(String::as_str).collect();
    let revoked = k.revoked_at.map(crate::clock::rfc3339);
    line(&k.id, &k.name, &scopes, revoked.as_deref())
}

fn create(args: &CreateArgs) -> Result<String, Failure> {
    let scopes: Vec<Scope> = keys::parse_scopes(&args.scopes).map_err(Failure::Input)?;
    if let Some(url) = &args.target.url {
        let body = json!({"name": args.name, "scopes": scopes});
        let created = remote(url, reqwest::Method::POST, "/v1/keys", Some(body))?;
        let secret = created["secret"].as_str().unwrap_or_default();
        let id = created["id"].as_str().unwrap_or_default();
        return Ok(shown_once(id, secret));
    }
    if args.name.trim().is_empty() || args.name.chars().count() > 100 {
        return Err(Failure::Input("--name must be 1 to 100 characters".into()));
    }
    let store = open(&args.target)?;
    let key = keys::generate(&args.name, &scopes, Clock::system().now_secs())
        .map_err(|e| Failure::Input(e.to_string()))?;
    store.write(|w| w.create_key(&key.record))?;
    Ok(shown_once(&key.record.id, &key.secret))
}

fn shown_once(id: &str, secret: &str) -> String {
    eprintln!("key `{id}` created; it is shown once, below. Store it in your secret manager.");
    format!("{secret}\n")
}

fn list(target: &Target) -> Result<String, Failure> {
    if let Some(url) = &target.url {
        let listed = remote(url, reqwest::Method::GET, "/v1/keys", None)?;
        let records: Vec<Value> = listed.as_array().cloned().unwrap_or_default();
        let mut out = String::new();
        for k in records {
            let scopes: Vec<&str> = k["scopes"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push_str(&line(
                k["id"].as_str().unwrap_or_default(),
                k["name"].as_str().unwrap_or_default(),
                &scopes,
                k["revoked_at"].as_str(),
            ));
        }
        return Ok(out);
    }
    let store = open(target)?;
    let keys = store.read()?.keys()?;
    Ok(keys.iter().map(describe).collect())
}

fn revoke(args: &RevokeArgs) -> Result<String, Failure> {
    if let Some(url) = &args.target.url {
        remote(
            url,
            reqwest::Method::DELETE,
            &format!("/v1/keys/{}", args.id),
            None,
        )?;
        return Ok(format!("revoked {}\n", args.id));
    }
    let store = open(&args.target)?;
    let now = Clock::system().now_secs();
    let key = store.write(|w| w.revoke_key(&args.id, now))?;
    Ok(format!("revoked {}\n", key.id))
}

/// Calls a running daemon's key API with the admin key in `CEDARD_KEY`.
fn remote(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Remote(e.to_string()))?;
    runtime.block_on(async move {
        let client = reqwest::Client::new();
        let mut request = client.request(method, format!("{}{path}", base.trim_end_matches('/')));
        if let Ok(key) = std::env::var("CEDARD_KEY") {
            request = request.bearer_auth(key.trim());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Remote(format!("cannot reach `{base}`: {e}")))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(Failure::Remote(format!(
                "{base} answered {status}: {}",
                value["error"]["message"].as_str().unwrap_or("no message")
            )))
        }
    })
}
