//! Measures how long a saved policy edit takes to be served, for
//! `benches/load.sh`: it toggles `basic.cedar` in a running daemon's policy
//! folder between two versions and times, from the moment the file is saved,
//! until `/v1/is_authorized` answers with the new decision.
//!
//! Usage: `reload_latency <policies dir> <base url> [rounds]`

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
    let client = reqwest::Client::new();
    let body = body();
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (text, want) = if round % 2 == 0 {
            (BASIC_PLUS, "allow")
        } else {
            (BASIC, "deny")
        };
        let tmp = dir.join(".basic.cedar.tmp");
        std::fs::write(&tmp, text)?;
        let start = Instant::now();
        std::fs::rename(&tmp, dir.join("basic.cedar"))?;
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
        "reload latency over {rounds} saves: min {:.1} ms, median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        ms(samples[0]),
        ms(samples[rounds / 2]),
        ms(samples[(rounds * 95 / 100).min(rounds - 1)]),
        ms(samples[rounds - 1])
    );
    Ok(())
}
