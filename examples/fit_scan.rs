//! Times the reload guard's scan (`fit::check`) and redb's integrity check
//! over a store of 100,000 users in 10,000 team accounts.

use std::time::Instant;

use cedard::policy::{load_files, Sources};
use cedard::store::{Account, AccountKind, Store, User};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.redb");
    let store = Store::open(&path).expect("open");
    let roles = ["basic", "billing", "dev", "admin"];
    store
        .write(|w| {
            for k in 0..10_000 {
                w.import_account(&Account {
                    id: format!("a{k}"),
                    name: format!("Account {k}"),
                    kind: AccountKind::Team,
                    owner: format!("u{k}"),
                    created_at: 0,
                })?;
            }
            for i in 0..100_000 {
                w.import_user(&User {
                    id: format!("u{i}"),
                    email: format!("u{i}@example.com"),
                    email_verified: false,
                    name: Some(format!("User {i}")),
                    created_at: 0,
                })?;
                let role = if i < 10_000 { "admin" } else { roles[i % 4] };
                w.add_member(&format!("a{}", i % 10_000), &format!("u{i}"), role, 0)?;
            }
            Ok(())
        })
        .expect("populate");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
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
    let started = Instant::now();
    let mut db = redb::Database::open(&path).expect("reopen");
    let clean = db.check_integrity();
    println!(
        "check_integrity over 100,000 users: {:?} ({clean:?})",
        started.elapsed()
    );
}
