//! The directory on a real PostgreSQL server over TLS, with a CA and a
//! server certificate (for `localhost` and `127.0.0.1`) made here: each
//! `sslmode` connects, or is refused with a message that says why, as a user
//! of `--store` sees it; and the server, asked on its own plain Unix-socket
//! connection, sees every cedard connection encrypted (`pg_stat_ssl`). The
//! server listens on 127.0.0.1 and 127.0.0.2, an address its certificate
//! does not name, and its `pg_hba.conf` lets TCP clients in only over TLS.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cedard::store::{Store, User};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use reqwest::Method;
use serde_json::json;
use tempfile::TempDir;

use super::pg::{Cluster, Setup};
use super::support::{repo_root, spawn_binary};

/// The CA files a client may be given.
struct Pki {
    dir: TempDir,
}

impl Pki {
    /// The CA that signed the server's certificate.
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing the server has.
    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A server with TLS on, for `test`, and the CA files; `None` where
/// PostgreSQL is not installed (see `pg.rs`).
fn tls_cluster(test: &str) -> Option<(Cluster, Pki)> {
    let authority = ca("cedard test CA");
    let server_key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    let server = params
        .signed_by(&server_key, &*authority)
        .expect("server certificate");
    let pki = Pki {
        dir: tempfile::tempdir().expect("temp dir"),
    };
    std::fs::write(pki.ca(), authority.pem()).expect("write the CA");
    std::fs::write(pki.other_ca(), ca("another CA").pem()).expect("write the other CA");
    let setup = Setup {
        files: vec![
            ("server.crt".into(), server.pem().into_bytes(), 0o644),
            (
                "server.key".into(),
                server_key.serialize_pem().into_bytes(),
                0o600,
            ),
        ],
        settings: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        hba: Some(
            "local all all trust\nhostssl all all 127.0.0.0/8 trust\nhostssl all all ::1/128 trust\n"
                .into(),
        ),
        listen: Some("127.0.0.1,127.0.0.2".into()),
    };
    let cluster = Cluster::start_with(test, setup)?;
    Some((cluster, pki))
}

/// The store URL for `host` with `params` (`key=value&…`).
fn url(pg: &Cluster, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?{params}", pg.port())
}

fn at(path: &Path) -> String {
    path.display().to_string()
}

/// The server's count of cedard's connections and of those encrypted,
/// asked on a plain connection of the test's own through the Unix socket.
fn cedard_connections(pg: &Cluster) -> (i64, i64) {
    let mut client =
        postgres::Client::connect(&pg.socket_url(), postgres::NoTls).expect("observer connects");
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'cedard'",
            &[],
        )
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1))
}

/// Waits until the server sees at least `at_least` cedard connections (the
/// pool's and the listener's, which starts on its own thread), then asserts
/// that every one is encrypted.
fn assert_all_encrypted(pg: &Cluster, at_least: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (total, encrypted) = cedard_connections(pg);
        if total >= at_least {
            assert_eq!(
                encrypted, total,
                "the server sees {total} cedard connections, {encrypted} encrypted"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server sees {total} cedard connections, wanted {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        email: format!("{id}@example.com"),
        email_verified: false,
        name: None,
        created_at: 100,
    }
}

/// Connects as `cedard serve --store` does.
fn connect(url: &str) -> Result<Store, String> {
    Store::connect(url, &Default::default()).map_err(|e| e.to_string())
}

/// A write, then a read of it, through `store`.
fn write_and_read(store: &Store, id: &str) {
    store
        .write(|w| w.sign_up(&user(id), "admin"))
        .expect("sign up");
    let view = store.read().expect("read");
    assert_eq!(
        view.user(id).expect("read").map(|u| u.email),
        Some(format!("{id}@example.com"))
    );
}

fn refused(url: &str) -> String {
    match connect(url) {
        Ok(_) => panic!("{url} connected"),
        Err(message) => message,
    }
}

#[test]
fn verify_full_with_the_ca_connects_encrypted_and_another_ca_is_refused() {
    let Some((pg, pki)) =
        tls_cluster("verify_full_with_the_ca_connects_encrypted_and_another_ca_is_refused")
    else {
        return;
    };
    let good = url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", at(&pki.ca())),
    );
    let store = connect(&good).expect("verify-full with the CA connects");
    write_and_read(&store, "olga");
    // The pool's connection and the listener's.
    assert_all_encrypted(&pg, 2);
    drop(store);

    let other = url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", at(&pki.other_ca())),
    );
    let message = refused(&other);
    assert!(
        message.contains(&format!(
            "the server's certificate is not signed by sslrootcert `{}`",
            at(&pki.other_ca())
        )),
        "{message}"
    );
}

#[test]
fn verify_full_refuses_a_host_the_certificate_does_not_name_and_verify_ca_connects() {
    let Some((pg, pki)) = tls_cluster(
        "verify_full_refuses_a_host_the_certificate_does_not_name_and_verify_ca_connects",
    ) else {
        return;
    };
    // The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    let full = url(
        &pg,
        "127.0.0.2",
        &format!("sslmode=verify-full&sslrootcert={}", at(&pki.ca())),
    );
    let message = refused(&full);
    assert!(
        message.contains("the server's certificate does not name the host"),
        "{message}"
    );
    assert!(message.contains("127.0.0.2"), "{message}");

    let ca_only = url(
        &pg,
        "127.0.0.2",
        &format!("sslmode=verify-ca&sslrootcert={}", at(&pki.ca())),
    );
    let store = connect(&ca_only).expect("verify-ca connects whatever the name");
    write_and_read(&store, "vera");
    assert_all_encrypted(&pg, 2);
    drop(store);

    // verify-ca still checks the chain.
    let other = url(
        &pg,
        "127.0.0.2",
        &format!("sslmode=verify-ca&sslrootcert={}", at(&pki.other_ca())),
    );
    let message = refused(&other);
    assert!(
        message.contains("is not signed by sslrootcert"),
        "{message}"
    );
}

#[test]
fn require_and_the_default_encrypt_and_disable_is_refused_by_a_tls_only_server() {
    let Some((pg, _pki)) =
        tls_cluster("require_and_the_default_encrypt_and_disable_is_refused_by_a_tls_only_server")
    else {
        return;
    };
    // require without a CA: encrypted, the certificate unchecked.
    let store = connect(&url(&pg, "127.0.0.1", "sslmode=require")).expect("require connects");
    write_and_read(&store, "rita");
    assert_all_encrypted(&pg, 2);
    drop(store);

    // No sslmode on loopback is prefer: encrypted where the server offers
    // TLS.
    let plain = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    let store = connect(&plain).expect("the default connects");
    write_and_read(&store, "dora");
    assert_all_encrypted(&pg, 2);
    drop(store);

    // Over the Unix socket, where PostgreSQL has no TLS, the default
    // (prefer) connects in clear.
    let store = connect(&pg.socket_url()).expect("the Unix socket connects");
    write_and_read(&store, "sonia");
    drop(store);

    let message = refused(&url(&pg, "127.0.0.1", "sslmode=disable"));
    assert!(
        message.contains("the server refuses connections in clear and sslmode=disable"),
        "{message}"
    );
}

#[test]
fn require_is_refused_by_a_server_without_tls() {
    let Some(pg) = Cluster::start("require_is_refused_by_a_server_without_tls") else {
        return;
    };
    let message = refused(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    ));
    assert!(
        message.contains("the server does not offer TLS and sslmode=require"),
        "{message}"
    );
    // prefer (the default on loopback) falls back to clear.
    let store = connect(&pg.url()).expect("prefer falls back");
    write_and_read(&store, "paula");
}

#[test]
fn bad_tls_settings_are_refused_naming_the_field_or_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let message = refused("postgres://postgres@127.0.0.1:1/postgres?sslmode=verify-everything");
    assert!(message.contains("sslmode `verify-everything`"), "{message}");
    assert!(
        message.contains("disable, prefer, require, verify-ca, verify-full"),
        "{message}"
    );

    let missing = dir.path().join("missing-ca.pem");
    let message = refused(&format!(
        "host=127.0.0.1 port=1 user=postgres sslmode=verify-full sslrootcert='{}'",
        at(&missing)
    ));
    assert!(
        message.contains(&format!("cannot read sslrootcert `{}`", at(&missing))),
        "{message}"
    );

    let message = refused("postgres://postgres@127.0.0.1:1/postgres?sslcert=/client.pem");
    assert!(message.contains("`sslcert`"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_its_directory_over_verify_full() {
    let Some((pg, pki)) = tls_cluster("the_binary_keeps_its_directory_over_verify_full") else {
        return;
    };
    let store = url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", at(&pki.ca())),
    );
    let bin = spawn_binary(&repo_root(), &["--store", &store]).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(bin.url("/v1/users"))
        .json(&json!({"id": "bina", "email": "bina@example.com"}))
        .send()
        .await
        .expect("sign up");
    assert_eq!(resp.status().as_u16(), 201);
    let resp = client
        .request(Method::GET, bin.url("/v1/users/bina"))
        .header("x-actor", "bina")
        .send()
        .await
        .expect("read");
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["user"]["email"], "bina@example.com", "{body}");
    // The sync client runs its own runtime, so off this one.
    tokio::task::spawn_blocking(move || assert_all_encrypted(&pg, 2))
        .await
        .expect("check");
}
