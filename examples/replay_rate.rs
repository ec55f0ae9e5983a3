//! The replay rate of `cedard impact --log`: a generated decision log of
//! 100,000 decisions (by default; pass another count) over a store of
//! 100,000 users in 10,000 team accounts, replayed against the default pack
//! and a candidate that lets billing members use the account.
//!
//! `cargo run --release --example replay_rate [decisions] [folder]`: with a
//! folder, the log (`decisions.jsonl`), the data file (`cedard.redb`) and
//! the candidate (`candidate/`) are kept there, so the same replay can be
//! timed through the command line:
//! `cedard impact --candidate folder/candidate --log folder/decisions.jsonl --data folder/cedard.redb`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use cedard::impact;
use cedard::policy::{self, Sources};
use cedard::store::Store;

mod common;

const ACTIONS: [&str; 6] = [
    "useAccount",
    "viewMembers",
    "viewBilling",
    "manageBilling",
    "updateSettings",
    "createPod",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map(|n| n.parse().expect("a number of decisions"))
        .unwrap_or(100_000);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("folder");
    let data = dir.join("cedard.redb");
    let _ = std::fs::remove_file(&data);
    {
        let store = Store::open(&data).expect("open");
        common::populate(&store, 100_000, 10_000);
    }
    // The log: users asking about their own account (and, one in ten,
    // someone else's), in the exact line format of the decision log.
    let log = dir.join("decisions.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&log).expect("create log"));
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..count {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let user = (seed % 100_000) as usize;
            let account = if n % 10 == 0 {
                (seed >> 20) % 10_000
            } else {
                (user % 10_000) as u64
            };
            let action = ACTIONS[((seed >> 40) % ACTIONS.len() as u64) as usize];
            let line = serde_json::json!({
                "kind": "decision", "id": format!("{n:016x}"), "time": "2026-11-28T07:29:07.72Z",
                "endpoint": "/v1/is_authorized",
                "principal": format!("User::\"u{user}\""),
                "action": format!("Action::\"{action}\""),
                "resource": format!("Account::\"a{account}\""),
                "decision": "deny", "reasons": [], "errors": [],
                "policy_revision": 1, "policy_sha256": "00", "latency_us": 40
            });
            writeln!(out, "{line}").expect("write log");
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let live_sources = Sources {
        policies: root.join("policies"),
        schema: root.join("schema"),
        ..Default::default()
    };
    let candidate_dir = dir.join("candidate");
    std::fs::create_dir_all(&candidate_dir).expect("candidate folder");
    for entry in std::fs::read_dir(root.join("policies")).expect("policies") {
        let entry = entry.expect("entry");
        let text = std::fs::read_to_string(entry.path()).expect("read");
        let text = text.replace(
            r#"action in Action::"billing","#,
            r#"action in [Action::"billing", Action::"useAccount"],"#,
        );
        std::fs::write(candidate_dir.join(entry.file_name()), text).expect("write");
    }
    let live = policy::load(&live_sources, 1).expect("live set");
    let candidate = policy::load(
        &Sources {
            policies: candidate_dir,
            ..live_sources.clone()
        },
        2,
    )
    .expect("candidate set");

    let started = Instant::now();
    let read = impact::read_log(
        std::io::BufReader::new(std::fs::File::open(&log).expect("open log")),
        None,
    )
    .expect("read log");
    let reading = started.elapsed();
    let store = Store::open_read_only(&data).expect("open read-only");
    let replay = impact::replay(&read.decisions, &live, &candidate, Some(&store)).expect("replay");
    let total = started.elapsed();
    println!(
        "read {} decisions in {:.2} s; replayed them against both sets in {:.2} s: {:.0} decisions/s ({:.0}/s with reading); {} flip",
        read.decisions.len(),
        reading.as_secs_f64(),
        replay.elapsed.as_secs_f64(),
        replay.rate(),
        read.decisions.len() as f64 / total.as_secs_f64(),
        replay.flipped
    );
}
