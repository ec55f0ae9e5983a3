//! Fills a new data file with a large directory, for the benchmarks that
//! run the real daemon on one (`benches/stored.sh`).
//!
//! `cargo run --release --example populate -- PATH [USERS] [ACCOUNTS]`
//! (default 100,000 users in 10,000 team accounts; see `common::populate`).

use std::path::PathBuf;
use std::time::Instant;

use cedard::store::Store;

mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .expect("usage: populate PATH [USERS] [ACCOUNTS]"),
    );
    let users: usize = args.next().map_or(100_000, |n| n.parse().expect("USERS"));
    let accounts: usize = args.next().map_or(10_000, |n| n.parse().expect("ACCOUNTS"));
    let started = Instant::now();
    let store = Store::open(&path).expect("open");
    common::populate(&store, users, accounts);
    let written = started.elapsed();
    // Closing checks the file and stamps it (as a daemon's clean stop does).
    drop(store);
    eprintln!(
        "{users} users in {accounts} accounts: written in {:.2} s, checked and stamped in {:.2} s ({} MB)",
        written.as_secs_f64(),
        (started.elapsed() - written).as_secs_f64(),
        std::fs::metadata(&path).map_or(0, |m| m.len() / 1_000_000)
    );
}
