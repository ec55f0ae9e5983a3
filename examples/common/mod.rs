//! What the examples share: a large directory to measure against.

use cedard::model::ADMIN_ROLE;
use cedard::policy::{self, Sources};
use cedard::store::{Account, AccountKind, Store, User};

/// The role names of the repository's schema, as cedard reads them.
pub fn pack_roles() -> Vec<String> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let snapshot = policy::load(
        &Sources {
            policies: root.join("policies"),
            schema: root.join("schema"),
            ..Default::default()
        },
        1,
    )
    .expect("the default pack loads");
    cedard::model::RoleCatalog::default()
        .roles(&snapshot)
        .expect("roles")
        .to_vec()
}

/// Fills `store` in one write: every account `a<k>` (of `accounts`) is a
/// team owned by `u<k>`, its admin; every other user `u<i>` (of `users`) is
/// a member of `a<i % accounts>` with the schema's roles in turn.
pub fn populate(store: &Store, users: usize, accounts: usize) {
    let roles = pack_roles();
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
                let role = if i < accounts {
                    ADMIN_ROLE
                } else {
                    roles[i % roles.len()].as_str()
                };
                w.add_member(&format!("a{}", i % accounts), &format!("u{i}"), role, 0)?;
            }
            Ok(())
        })
        .expect("populate");
}
