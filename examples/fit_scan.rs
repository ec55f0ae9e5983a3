//! Times the reload guard's scan (`fit::check`) and the data file's check
//! (`store::check_file`, what `cedard store check` and every open run) over
//! a store of 100,000 users in 10,000 team accounts.
//!
//! `cargo run --release --example fit_scan [PATH]` builds the file at `PATH`
//! (kept, for `cedard store check --data PATH`) or in a temporary folder.

use std::path::PathBuf;
use std::time::Instant;

use cedard::policy::{load_files, Sources};
use cedard::store::Store;

mod common;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("big.redb"));
    let store = Store::open(&path).expect("open");
    common::populate(&store, 100_000, 10_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = Sources {
        policies: root.join("policies"),
        schema: root.join("schema"),
        ..Default::default()
    }
    .read()
    .expect("files");
    let snapshot = load_files(&files, 1).expect("load");
    let started = Instant::now();
    let out = cedard::fit::check(&store, &snapshot, 0);
    println!(
        "fit::check over 100,000 users: {:?} ({out:?})",
        started.elapsed()
    );
    drop(store);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let report = cedard::store::check_file(&path).expect("check");
    println!(
        "store::check_file over 100,000 users ({:.1} MB): {:?} (damage: {:?}, {:?})",
        size as f64 / 1e6,
        report.elapsed,
        report.damage,
        report.counts
    );
    let started = Instant::now();
    let store = Store::open(&path).expect("reopen");
    println!(
        "Store::open (the check included): {:?} (damage: {:?})",
        started.elapsed(),
        store.damage()
    );
}
