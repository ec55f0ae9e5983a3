//! Measures how long a saved policy edit takes to be served, for
//! `benches/load.sh`: it toggles `basic.cedar` in a running daemon's policy
//! folder between two versions and times, from the moment the file is saved,
//! until `/v1/is_authorized` answers with the new decision.
//!
//! Usage: `reload_latency <policies dir> <base url> [rounds] [mode]`, where
//! `mode` is how the file is saved: `rename` (the default: written under
//! another name, then renamed over it, as editors save), `configmap` (the
//! folder laid out as a Kubernetes ConfigMap volume first, then each
//! version written to a folder of its own and `..data` swapped to it), or
//! `inplace` (written over the file where it is, which waits `--settle-ms`).

use std::time::{Duration, Instant};

#[allow(dead_code)]
mod common;

const BASIC: &str = "@id(\"basic\")\npermit (principal, action in Action::\"basic\", resource)\nwhen { principal in resource.account.roles.basic };\n";
const BASIC_PLUS: &str = "@id(\"basic\")\npermit (principal, action in [Action::\"basic\", Action::\"billing\"], resource)\nwhen { principal in resource.account.roles.basic };\n";

/// A basic member of acme asks to view its billing; the entities made by the
/// account model's builders with the schema's roles.
fn body() -> String {
    let roles = common::pack_roles();
    let entity = |e: Result<cedar_policy::Entity, cedard::model::ModelError>| {
        cedard::model::to_json(&e.expect("entity")).expect("json")
    };
    let basic = [("acme".to_owned(), "basic".to_owned())];
    serde_json::json!({
        "principal": {"type": "User", "id": "m"},
        "action": {"type": "Action", "id": "viewBilling"},
        "resource": {"type": "Account", "id": "acme"},
        "entities": [
            entity(cedard::model::person("m", "m@example.com", None, &basic)),
            entity(cedard::model::group("acme", "Acme", "team", "o", &roles)),
        ],
    })
    .to_string()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("policies dir")?);
    let url = format!("{}/v1/is_authorized", args.next().ok_or("base url")?);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let mode = args.next().unwrap_or_else(|| "rename".into());
    if mode == "configmap" {
        configmap_layout(&dir)?;
        // The layout holds the same files: nothing to reload, but let the
        // watcher's events pass.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let client = reqwest::Client::new();
    let body = body();
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (text, want) = if round % 2 == 0 {
            (BASIC_PLUS, "allow")
        } else {
            (BASIC, "deny")
        };
        let start = match mode.as_str() {
            "configmap" => configmap_swap(&dir, round, text)?,
            "inplace" => {
                let start = Instant::now();
                std::fs::write(dir.join("basic.cedar"), text)?;
                start
            }
            _ => {
                let tmp = dir.join(".basic.cedar.tmp");
                std::fs::write(&tmp, text)?;
                let start = Instant::now();
                std::fs::rename(&tmp, dir.join("basic.cedar"))?;
                start
            }
        };
        loop {
            let v: serde_json::Value = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await?
                .json()
                .await?;
            if v["decision"] == want {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("round {round}: not live after 10 s: {v}").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "reload latency over {rounds} saves ({mode}): min {:.1} ms, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        ms(samples[0]),
        ms(samples[rounds / 2]),
        ms(samples[(rounds * 95 / 100).min(rounds - 1)]),
        ms(samples[rounds - 1])
    );
    Ok(())
}

/// Lays the folder out as a ConfigMap volume: the files in `..v0000`,
/// `..data` a link to it, each file a link through `..data`.
fn configmap_layout(dir: &std::path::Path) -> std::io::Result<()> {
    let version = dir.join("..v0000");
    std::fs::create_dir(&version)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cedar") {
            let name = path.file_name().unwrap_or_default().to_owned();
            std::fs::rename(&path, version.join(&name))?;
            std::os::unix::fs::symlink(
                std::path::Path::new("..data").join(&name),
                dir.join(&name),
            )?;
        }
    }
    std::os::unix::fs::symlink("..v0000", dir.join("..data"))
}

/// Writes version `round + 1` with `basic.cedar` as `text` and swaps
/// `..data` to it, as the kubelet does; returns when the swap happened.
fn configmap_swap(dir: &std::path::Path, round: usize, text: &str) -> std::io::Result<Instant> {
    let old = std::fs::read_link(dir.join("..data"))?;
    let name = format!("..v{:04}", round + 1);
    let new = dir.join(&name);
    std::fs::create_dir(&new)?;
    for entry in std::fs::read_dir(dir.join(&old))? {
        let path = entry?.path();
        std::fs::copy(&path, new.join(path.file_name().unwrap_or_default()))?;
    }
    std::fs::write(new.join("basic.cedar"), text)?;
    std::os::unix::fs::symlink(&name, dir.join("..data_tmp"))?;
    let start = Instant::now();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    std::fs::remove_dir_all(dir.join(old))?;
    Ok(start)
}
