//! What the examples share: a large directory to measure against.

use cedard::store::{Account, AccountKind, Store, User};

/// Fills `store` in one write: every account `a<k>` (of `accounts`) is a
/// team owned by `u<k>`, its admin; every other user `u<i>` (of `users`) is
/// a member of `a<i % accounts>` with a role by `i % 4`.
pub fn populate(store: &Store, users: usize, accounts: usize) {
    let roles = ["basic", "billing", "dev", "admin"];
    store
        .write(|w| {
            for k in 0..accounts {
                w.import_account(&Account {
                    id: format!("a{k}"),
                    name: format!("Account {k}"),
                    kind: AccountKind::Team,
                    owner: format!("u{k}"),
                    created_at: 0,
                })?;
            }
            for i in 0..users {
                w.import_user(&User {
                    id: format!("u{i}"),
                    email: format!("u{i}@example.com"),
                    email_verified: false,
                    name: None,
                    created_at: 0,
                })?;
                let role = if i < accounts { "admin" } else { roles[i % 4] };
                w.add_member(&format!("a{}", i % accounts), &format!("u{i}"), role, 0)?;
            }
            Ok(())
        })
        .expect("populate");
}
