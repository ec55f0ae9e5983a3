//! A damaged data file (issue 12, finding 5): one 4 KiB page of a real file
//! overwritten with garbage. cedard must notice at start (or when it meets
//! the damage later), answer 503 in the one JSON error shape rather than
//! drop a connection or answer from garbage, never write into the file
//! again, and `cedard store check` must say what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{copy_pack, spawn_app_in, spawn_binary, wait_until, Api, Binary};

/// How many users the test file holds.
const USERS: usize = 3_000;
/// The user whose record lies on the page the tests overwrite.
const VICTIM: &str = "u01500";
/// A user far from the victim (another page), to show that the damaged mode
/// refuses every stored fact, not only those on the bad page.
const BYSTANDER: &str = "u00001";

fn user_id(i: usize) -> String {
    format!("u{i:05}")
}

/// Builds a data file of [`USERS`] signed-up users (each with a personal
/// account whose admin they are) through the store API, and closes it.
fn build_file(path: &Path) {
    let store = cedard::store::Store::open(path).expect("open");
    store
        .write(|w| {
            for i in 0..USERS {
                let id = user_id(i);
                w.sign_up(
                    &cedard::store::User {
                        email: format!("{id}@example.com"),
                        id,
                        email_verified: false,
                        name: Some(format!("User {i}")),
                        created_at: 0,
                    },
                    "admin",
                )?;
            }
            Ok(())
        })
        .expect("populate");
}

/// The offset of the 4 KiB page holding `user`'s stored record (its email
/// is in the user record alone; the email index stores the bare address).
fn page_of(path: &Path, user: &str) -> u64 {
    let bytes = std::fs::read(path).expect("read");
    let needle = format!("\"email\":\"{user}@example.com\"");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the user's record is in the file");
    assert!(
        bytes[at + 1..]
            .windows(needle.len())
            .all(|w| w != needle.as_bytes()),
        "the record is stored once, so the page found is the live one"
    );
    (at as u64 / 4096) * 4096
}

/// Overwrites the 4 KiB page at `offset` with fixed garbage (xorshift64 from
/// a fixed seed), as a failing disk or a stray write would.
fn overwrite_page(path: &Path, offset: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut garbage = Vec::with_capacity(4096);
    while garbage.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        garbage.extend_from_slice(&x.to_le_bytes());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for damage");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&garbage).expect("write garbage");
    file.sync_all().expect("sync");
}

/// A pack folder with a clean data file of [`USERS`] users in `data/`.
fn pack_with_file() -> (TempDir, PathBuf) {
    let dir = copy_pack();
    let data = dir.path().join("data").join("cedard.redb");
    build_file(&data);
    (dir, data)
}

/// The stamp a clean close leaves beside a data file it found sound.
fn stamp_of(data: &Path) -> PathBuf {
    let mut name = data.file_name().expect("a file name").to_os_string();
    name.push(".checked");
    data.with_file_name(name)
}

/// A clean close checks the file and stamps it; the next open trusts
/// exactly those bytes (no second check, everything still there) and no
/// others: one page changed, and the open checks in full and finds it.
#[test]
fn a_stamp_spares_the_check_for_exactly_the_bytes_it_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("cedard.redb");
    build_file(&data);
    let stamp = stamp_of(&data);
    let first = std::fs::read_to_string(&stamp).expect("a clean close stamps the file");
    assert!(first.starts_with("cedard-checked 1 len="), "{first}");

    let store = cedard::store::Store::open(&data).expect("open");
    assert!(
        !store.checked_at_open(),
        "an unchanged file is not checked again"
    );
    assert!(store.damage().is_none());
    let view = store.read().expect("read");
    for id in [VICTIM, BYSTANDER] {
        assert!(view.user(id).expect("read").is_some(), "{id} is there");
    }
    drop(view);
    drop(store);
    assert!(stamp.exists(), "closed cleanly again, stamped again");

    overwrite_page(&data, page_of(&data, VICTIM));
    for _ in 0..2 {
        let store = cedard::store::Store::open(&data).expect("open");
        assert!(store.checked_at_open(), "changed bytes are checked in full");
        assert!(
            store.damage().is_some_and(|d| !d.is_empty()),
            "and the damage is found"
        );
    }
    // A damaged file is never stamped: whatever stamp is there names other
    // bytes than the file's.
    use sha2::Digest;
    let now = std::fs::read(&data).expect("read");
    let vouching = format!(
        "cedard-checked 1 len={} sha256={}",
        now.len(),
        hex::encode(sha2::Sha256::digest(&now))
    );
    let stale = std::fs::read_to_string(&stamp).unwrap_or_default();
    assert_ne!(stale.trim_end(), vouching);
}

/// Runs `cedard store check --data <data>`.
fn store_check(data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cedard"))
        .args(["store", "check", "--data"])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("run cedard store check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends one request and returns the status and JSON body. A dropped
/// connection fails the test here: every question gets an answer.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    actor: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let req = Api::at(client, "").request(method, &url, actor, body.as_ref());
    let resp = req
        .send()
        .await
        .expect("an answer, not a dropped connection");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.expect("a whole body");
    if status >= 400 {
        assert!(
            content_type.starts_with("application/json"),
            "{status} {content_type}: {text}"
        );
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The question "may `user` use their personal account?" (allowed on a
/// sound file: they are its admin).
fn own_account(user: &str) -> Value {
    json!({
        "principal": {"type": "User", "id": user},
        "action": {"type": "Action", "id": "useAccount"},
        "resource": {"type": "Account", "id": user},
    })
}

/// Asserts a 503 in the one error shape, with no decision in it.
fn assert_unavailable(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert!(body["error"]["code"].is_string(), "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
    assert!(body.get("decision").is_none(), "{what}: {body}");
}

fn serve_args(dir: &Path, data: &Path) -> Vec<String> {
    vec![
        "--data".into(),
        data.display().to_string(),
        "--policies".into(),
        dir.join("policies").display().to_string(),
        "--schema".into(),
        dir.join("schema").display().to_string(),
    ]
}

/// Stops the daemon with SIGTERM (a graceful shutdown, which is when redb
/// would write the file's header) and waits for it to exit.
fn terminate(mut bin: Binary) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(i32::try_from(bin.child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bin.child.try_wait().expect("wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "cedard did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_damaged_file_is_detected_at_start_and_never_written() {
    let (dir, data) = pack_with_file();
    // The clean close stamped the file; the damage below makes the stamp
    // stale, so the start checks in full.
    assert!(stamp_of(&data).exists());
    // The clean file checks sound, with what it holds.
    let clean = store_check(&data);
    assert!(clean.status.success(), "{}", text(&clean.stderr));
    let report = text(&clean.stdout);
    assert!(report.contains(&format!("{USERS} users")), "{report}");
    assert!(report.contains(&format!("{USERS} accounts")), "{report}");
    assert!(report.contains(&format!("{USERS} memberships")), "{report}");

    overwrite_page(&data, page_of(&data, VICTIM));
    let damaged = std::fs::read(&data).expect("read");

    let args = serve_args(dir.path(), &data);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let bin = spawn_binary(dir.path(), &refs).await;
    let client = reqwest::Client::new();

    // Not ready, and the probe says why.
    let (status, body) = send(
        &client,
        reqwest::Method::GET,
        bin.url("/readyz"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the data file is damaged")),
        "{body}"
    );

    // A decision about the user on the bad page, then one about a user on a
    // good page: both 503 (nothing stored is trusted), and the connection
    // carries both answers and one more.
    for user in [VICTIM, BYSTANDER, VICTIM] {
        let (status, body) = send(
            &client,
            reqwest::Method::POST,
            bin.url("/v1/is_authorized"),
            None,
            Some(own_account(user)),
        )
        .await;
        assert_unavailable(status, &body, &format!("decision for {user}"));
    }
    let (status, _) = send(
        &client,
        reqwest::Method::GET,
        bin.url("/healthz"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "the daemon is alive");

    // Writes are refused.
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        bin.url("/v1/users"),
        None,
        Some(json!({"id": "newcomer", "email": "newcomer@example.com"})),
    )
    .await;
    assert_unavailable(status, &body, "sign-up");
    let (status, body) = send(
        &client,
        reqwest::Method::PUT,
        bin.url(&format!("/v1/users/{BYSTANDER}/email_verified")),
        None,
        Some(json!({"email_verified": true})),
    )
    .await;
    assert_unavailable(status, &body, "email_verified");
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        bin.url(&format!("/v1/accounts/{BYSTANDER}/convert")),
        Some(BYSTANDER),
        Some(json!({"name": "Team"})),
    )
    .await;
    assert_unavailable(status, &body, "convert");

    // While the daemon holds the file, the check says so instead of reading
    // a file another process owns.
    let busy = store_check(&data);
    assert_eq!(busy.status.code(), Some(2), "{}", text(&busy.stderr));
    assert!(
        text(&busy.stderr).contains("in use by a running cedard"),
        "{}",
        text(&busy.stderr)
    );

    terminate(bin);
    assert!(
        std::fs::read(&data).expect("read") == damaged,
        "the damaged file was written to"
    );

    // The check names the damage and fails.
    let out = store_check(&data);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = text(&out.stderr);
    assert!(said.contains("damaged"), "{said}");
    assert!(said.contains("cedard.redb"), "{said}");
    assert!(
        std::fs::read(&data).expect("read") == damaged,
        "the check wrote to the file"
    );
}

#[tokio::test]
async fn damage_met_while_serving_stops_the_writes() {
    // The file lives apart from the app's folder, which goes when it stops.
    let keep = tempfile::tempdir().expect("temp dir");
    let data = keep.path().join("cedard.redb");
    build_file(&data);
    let victim_page = page_of(&data, VICTIM);
    let data_for_app = data.clone();
    let app = spawn_app_in(copy_pack(), move |config| {
        config.options.data = data_for_app;
    })
    .await;
    let client = app.client.clone();

    // A sound file: ready, and a stored user is answered.
    let (status, body) = send(
        &client,
        reqwest::Method::GET,
        app.url("/readyz"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        app.url("/v1/is_authorized"),
        None,
        Some(own_account(BYSTANDER)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "allow", "{body}");

    // The page under the victim's record goes bad while cedard serves (it
    // has not read that page yet, so it is not in redb's cache).
    overwrite_page(&data, victim_page);
    let damaged = std::fs::read(&data).expect("read");

    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        app.url("/v1/is_authorized"),
        None,
        Some(own_account(VICTIM)),
    )
    .await;
    assert_unavailable(status, &body, "decision on the bad page");

    // From then on the file is known damaged: not ready, stored facts are
    // not used (not even the remembered ones), writes are refused.
    let url = app.url("/readyz");
    wait_until(Duration::from_secs(5), || {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 503)
        }
    })
    .await;
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        app.url("/v1/is_authorized"),
        None,
        Some(own_account(BYSTANDER)),
    )
    .await;
    assert_unavailable(status, &body, "decision after the damage");
    let (status, body) = send(
        &client,
        reqwest::Method::POST,
        app.url("/v1/users"),
        None,
        Some(json!({"id": "newcomer", "email": "newcomer@example.com"})),
    )
    .await;
    assert_unavailable(status, &body, "sign-up after the damage");

    app.stop().await;
    assert!(
        std::fs::read(&data).expect("read") == damaged,
        "the damaged file was written to"
    );
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data file holds emails and names: cedard creates it `0600` and its
/// folders `0700` even under a umask that lets everyone read everything,
/// and says at start when an existing file is readable by others.
#[tokio::test]
async fn the_data_file_and_its_folders_are_private_whatever_the_umask() {
    use nix::sys::stat::{umask, Mode};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("new").join("data").join("cedard.redb");
    let old = umask(Mode::empty());
    let opened = cedard::store::Store::open(&data);
    umask(old);
    let store = opened.expect("open");
    store
        .write(|w| {
            w.sign_up(
                &cedard::store::User {
                    id: "ana".into(),
                    email: "ana@example.com".into(),
                    email_verified: false,
                    name: None,
                    created_at: 0,
                },
                "admin",
            )
        })
        .expect("sign up");
    drop(store);
    assert_eq!(mode_of(&data), 0o600, "the data file");
    assert_eq!(mode_of(&stamp_of(&data)), 0o600, "its stamp");
    for folder in [dir.path().join("new"), dir.path().join("new").join("data")] {
        assert_eq!(mode_of(&folder), 0o700, "{}", folder.display());
    }

    // A file made readable by others is left as it is, and warned about.
    let pack = copy_pack();
    let file = pack.path().join("data").join("cedard.redb");
    std::fs::create_dir_all(file.parent().expect("folder")).expect("folder");
    std::fs::copy(&data, &file).expect("copy");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let log = pack.path().join("daemon.log");
    let bin = crate::support::spawn_binary_logging(pack.path(), &[], &log).await;
    drop(bin);
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(
        said.contains("can be read by users other than its owner (mode 644)"),
        "{said}"
    );
    assert_eq!(mode_of(&file), 0o644, "an existing file keeps its mode");
}
