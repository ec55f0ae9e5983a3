//! The directory's contract, one suite run against both backends (the
//! embedded redb file and a real PostgreSQL server): what each operation
//! stores, the rules it refuses with (a taken id or email, one accept per
//! invite, the last admin, …), that a refused write leaves nothing, the
//! listings and scans, and that every committed write — and nothing else —
//! advances the store revision.

use cedard::store::{
    Account, AccountKind, ApiKey, Invite, InviteState, Refusal, Store, User, WriteError,
};

use super::pg::Cluster;

const ADMIN: &str = "admin";

fn user(id: &str, email: &str) -> User {
    User {
        id: id.into(),
        email: email.into(),
        email_verified: false,
        name: None,
        created_at: 100,
    }
}

fn invite(id: &str, account: &str, role: &str, token: &str, email: Option<&str>) -> Invite {
    Invite {
        id: id.into(),
        account: account.into(),
        role: role.into(),
        email: email.map(Into::into),
        token_sha256: token.into(),
        created_by: account.into(),
        created_at: 100,
        expires_at: 1_000,
        state: InviteState::Pending,
    }
}

fn key(id: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: format!("{id} service"),
        scopes: vec!["decide".into()],
        secret_sha256: "ab".repeat(32),
        created_at: 100,
        revoked_at: None,
    }
}

/// A hex SHA-256-like token for tests.
fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Asserts that `result` is the refusal `pred` describes, and that it is a
/// refusal, not a fault.
fn refused<T: std::fmt::Debug>(result: Result<T, WriteError>, pred: impl Fn(&Refusal) -> bool) {
    match result {
        Err(WriteError::Refused(r)) if pred(&r) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The whole contract, on one store.
fn contract(store: &Store) {
    let start = store.revision();
    // Sign-up: the user, their personal account, the admin membership.
    let acme = store
        .write(|w| w.sign_up(&user("olga", "olga@example.com"), ADMIN))
        .expect("sign up");
    assert_eq!(acme.kind, AccountKind::Personal);
    assert_eq!(store.revision(), start + 1, "one write, one revision");
    let view = store.read().expect("read");
    assert_eq!(
        view.user("olga").expect("read").map(|u| u.email),
        Some("olga@example.com".into())
    );
    assert_eq!(
        view.roles_of("olga").expect("roles"),
        vec![("olga".into(), ADMIN.into())]
    );
    assert!(view.has_account("olga").expect("read"));
    drop(view);

    // A taken id, a taken email: refused, and nothing advances.
    refused(
        store.write(|w| w.sign_up(&user("olga", "other@example.com"), ADMIN)),
        |e| matches!(e, Refusal::IdTaken(_)),
    );
    refused(
        store.write(|w| w.sign_up(&user("olga2", "olga@example.com"), ADMIN)),
        |e| matches!(e, Refusal::EmailTaken(_)),
    );
    assert_eq!(
        store.revision(),
        start + 1,
        "refused writes advance nothing"
    );

    // A write that fails after writing leaves nothing behind.
    let failed: Result<(), WriteError> = store.write(|w| {
        w.sign_up(&user("ghost", "ghost@example.com"), ADMIN)?;
        Err(Refusal::NoUser("on purpose".into()).into())
    });
    assert!(failed.is_err());
    let view = store.read().expect("read");
    assert!(
        !view.has_user("ghost").expect("read"),
        "a failed write left a user"
    );
    assert!(!view.has_account("ghost").expect("read"));
    drop(view);
    store
        .write(|w| w.sign_up(&user("ghost", "ghost@example.com"), ADMIN))
        .expect("the id and email are still free");

    // Convert; invites need a team account.
    refused(
        store.write(|w| w.create_invite(&invite("i0", "ghost", "dev", &token(0), None))),
        |e| matches!(e, Refusal::NotTeam(_)),
    );
    let team = store.write(|w| w.convert("olga", "Acme")).expect("convert");
    assert_eq!((team.kind, team.name.as_str()), (AccountKind::Team, "Acme"));
    refused(store.write(|w| w.convert("olga", "Again")), |e| {
        matches!(e, Refusal::NotPersonal(_))
    });
    refused(store.write(|w| w.convert("nobody", "X")), |e| {
        matches!(e, Refusal::NoAccount(_))
    });

    // Invites: accepted once; relinked and revoked tokens stop working.
    for id in ["dana", "erin", "finn"] {
        store
            .write(|w| w.sign_up(&user(id, &format!("{id}@example.com")), ADMIN))
            .expect("sign up");
    }
    store
        .write(|w| w.create_invite(&invite("i1", "olga", "dev", &token(1), None)))
        .expect("invite");
    let joined = store
        .write(|w| w.accept(&token(1), "dana", 200))
        .expect("accept");
    assert!(matches!(joined.state, InviteState::Used { ref by, at: 200 } if by == "dana"));
    refused(store.write(|w| w.accept(&token(1), "erin", 201)), |e| {
        matches!(e, Refusal::InviteGone(_))
    });
    store
        .write(|w| w.create_invite(&invite("i2", "olga", "billing", &token(2), None)))
        .expect("invite");
    store
        .write(|w| w.relink("olga", "i2", &token(3), 200).map(|_| ()))
        .expect("relink");
    refused(store.write(|w| w.accept(&token(2), "erin", 201)), |e| {
        matches!(e, Refusal::InviteGone(_))
    });
    store
        .write(|w| w.revoke("olga", "i2", 202).map(|_| ()))
        .expect("revoke");
    refused(store.write(|w| w.accept(&token(3), "erin", 203)), |e| {
        matches!(e, Refusal::InviteGone(_))
    });
    refused(store.write(|w| w.revoke("olga", "i2", 204)), |e| {
        matches!(e, Refusal::NoInvite { .. })
    });
    // Expired.
    store
        .write(|w| w.create_invite(&invite("i3", "olga", "basic", &token(4), None)))
        .expect("invite");
    refused(store.write(|w| w.accept(&token(4), "erin", 5_000)), |e| {
        matches!(e, Refusal::InviteGone(cedard::store::GoneReason::Expired))
    });
    // Bound to an email: another address, then the address unverified.
    store
        .write(|w| {
            w.create_invite(&invite(
                "i4",
                "olga",
                "basic",
                &token(5),
                Some("erin@example.com"),
            ))
        })
        .expect("invite");
    refused(store.write(|w| w.accept(&token(5), "finn", 300)), |e| {
        matches!(e, Refusal::EmailMismatch)
    });
    refused(store.write(|w| w.accept(&token(5), "erin", 300)), |e| {
        matches!(e, Refusal::EmailUnverified)
    });
    store
        .write(|w| w.set_email_verified("erin", true).map(|_| ()))
        .expect("verify");
    store
        .write(|w| w.accept(&token(5), "erin", 301))
        .expect("accept");
    refused(
        {
            store
                .write(|w| w.create_invite(&invite("i5", "olga", "dev", &token(6), None)))
                .expect("invite");
            store.write(|w| w.accept(&token(6), "erin", 302))
        },
        |e| matches!(e, Refusal::AlreadyMember { .. }),
    );

    // Roles and the last admin.
    store
        .write(|w| w.set_role("olga", "dana", "billing", ADMIN).map(|_| ()))
        .expect("set role");
    refused(
        store.write(|w| w.set_role("olga", "olga", "dev", ADMIN)),
        |e| matches!(e, Refusal::LastAdmin { .. }),
    );
    refused(
        store.write(|w| w.remove_member("olga", "olga", ADMIN)),
        |e| matches!(e, Refusal::LastAdmin { .. }),
    );
    store
        .write(|w| w.set_role("olga", "dana", ADMIN, ADMIN).map(|_| ()))
        .expect("second admin");
    store
        .write(|w| w.set_role("olga", "olga", "dev", ADMIN).map(|_| ()))
        .expect("no longer the last");
    store
        .write(|w| w.remove_member("olga", "erin", ADMIN))
        .expect("remove");
    refused(
        store.write(|w| w.remove_member("olga", "erin", ADMIN)),
        |e| matches!(e, Refusal::NotMember { .. }),
    );
    assert_eq!(
        store
            .write(|w| w.role_in("olga", "dana"))
            .expect("read in a write"),
        Some(ADMIN.into())
    );

    // Keys.
    store.write(|w| w.create_key(&key("k2"))).expect("key");
    store.write(|w| w.create_key(&key("k1"))).expect("key");
    refused(store.write(|w| w.create_key(&key("k1"))), |e| {
        matches!(e, Refusal::IdTaken(_))
    });
    let revoked = store.write(|w| w.revoke_key("k1", 500)).expect("revoke");
    assert_eq!(revoked.revoked_at, Some(500));
    let again = store
        .write(|w| w.revoke_key("k1", 600))
        .expect("revoke again");
    assert_eq!(
        again.revoked_at,
        Some(500),
        "the first revocation time is kept"
    );
    refused(store.write(|w| w.revoke_key("k9", 600)), |e| {
        matches!(e, Refusal::NoKey(_))
    });
    // The last live admin key is kept; once another exists it may go.
    let admin = |id: &str| ApiKey {
        scopes: vec!["admin".into()],
        ..key(id)
    };
    store.write(|w| w.create_key(&admin("a1"))).expect("key");
    refused(
        store.write(|w| w.revoke_key("a1", 700)),
        |e| matches!(e, Refusal::LastAdminKey(id) if id == "a1"),
    );
    store.write(|w| w.create_key(&admin("a2"))).expect("key");
    let gone = store.write(|w| w.revoke_key("a1", 700)).expect("revoke");
    assert_eq!(gone.revoked_at, Some(700));
    refused(
        store.write(|w| w.revoke_key("a2", 800)),
        |e| matches!(e, Refusal::LastAdminKey(id) if id == "a2"),
    );

    // Listings and scans, in id order.
    let view = store.read().expect("read");
    let members: Vec<(String, String)> = view
        .members("olga")
        .expect("members")
        .into_iter()
        .map(|(u, m)| (u, m.role))
        .collect();
    assert_eq!(
        members,
        vec![("dana".into(), ADMIN.into()), ("olga".into(), "dev".into())]
    );
    let invites: Vec<String> = view
        .invites("olga")
        .expect("invites")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(invites, vec!["i1", "i2", "i3", "i4", "i5"]);
    assert_eq!(
        view.invite_by_token(&token(6))
            .expect("by token")
            .map(|i| i.id),
        Some("i5".into())
    );
    assert!(
        view.invite_by_token(&token(1)).expect("by token").is_none(),
        "a used token is dead"
    );
    let keys: Vec<(String, Option<i64>)> = view
        .keys()
        .expect("keys")
        .into_iter()
        .map(|k| (k.id, k.revoked_at))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a1".into(), Some(700)),
            ("a2".into(), None),
            ("k1".into(), Some(500)),
            ("k2".into(), None)
        ]
    );
    let mut users = Vec::new();
    view.each_user(&mut |u, roles| users.push((u.id, roles.len())))
        .expect("each user");
    assert_eq!(
        users,
        vec![
            ("dana".into(), 2),
            ("erin".into(), 1),
            ("finn".into(), 1),
            ("ghost".into(), 1),
            ("olga".into(), 1)
        ]
    );
    let mut accounts: Vec<Account> = Vec::new();
    view.each_account(&mut |a| accounts.push(a))
        .expect("each account");
    assert_eq!(accounts.len(), 5);
    assert_eq!(
        view.user_ids_after(None, 2).expect("page"),
        vec!["dana", "erin"]
    );
    assert_eq!(
        view.user_ids_after(Some("erin"), 10).expect("page"),
        vec!["finn", "ghost", "olga"]
    );
    assert_eq!(
        view.account_ids_after(Some("olga"), 10).expect("page"),
        Vec::<String>::new()
    );
    let census = view.role_census(250).expect("census");
    assert_eq!(census.get(ADMIN), Some(&(5, 0)), "{census:?}");
    assert_eq!(census.get("dev"), Some(&(1, 1)), "{census:?}");
    assert_eq!(
        view.user("erin").expect("read").map(|u| u.email_verified),
        Some(true)
    );
    drop(view);

    // Every committed write advanced the revision by exactly one.
    assert_eq!(
        store.revision(),
        start + COMMITTED,
        "revisions: one per committed write"
    );
}

/// The writes [`contract`] commits (refused ones commit nothing).
const COMMITTED: u64 = 28;

#[test]
fn the_contract_holds_on_redb() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("contract.redb");
    {
        let store = Store::open(&path).expect("open");
        contract(&store);
    }
    // The revision survives a restart, so tokens stay meaningful.
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.revision(), COMMITTED);
}

#[test]
fn the_contract_holds_on_postgres() {
    let Some(pg) = Cluster::start("the_contract_holds_on_postgres") else {
        return;
    };
    {
        let store = Store::connect(&pg.url(), &Default::default()).expect("connect");
        contract(&store);
    }
    let store = Store::connect(&pg.url(), &Default::default()).expect("reconnect");
    assert_eq!(store.revision(), COMMITTED);
}
