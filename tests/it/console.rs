//! The web console at `/ui/`: its session and CSRF rules over plain HTTP,
//! and its pages in a real browser (headless Chromium through WebDriver).
//!
//! Browser tests need Debian's `chromium` and `chromium-driver`. Without
//! them a test prints "browser tests not run: chromium/chromedriver not
//! found" and returns, unless `CI` is set, where it fails (`.ci/run`
//! installs them). One screenshot per page is kept under
//! `target/ui-screenshots/` (or `$CARGO_TARGET_DIR/ui-screenshots/`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cedard::keys::{NewKey, Scope};
use cedard::store::{Invite, InviteState, Store, User};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{copy_pack, free_port, spawn_app_in, team_table, wait_until, TestApp};

/// A daemon with an admin and a decide key, users alice (owner of the team
/// account `alice`), bob (basic) and carol (billing), a pending invite, and
/// a decision log.
struct Console {
    app: TestApp,
    keys: HashMap<&'static str, NewKey>,
}

const INVITE_TOKEN_SHA: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

async fn console() -> Console {
    let dir = copy_pack();
    let data = dir.path().join("data").join("cedard.redb");
    std::fs::create_dir_all(data.parent().expect("folder")).expect("data folder");
    let store = Store::open(&data).expect("open store");
    let mut keys = HashMap::new();
    for (name, scope) in [("admin", Scope::Admin), ("decide", Scope::Decide)] {
        let key = cedard::keys::generate(name, &[scope], 1_700_000_000).expect("random");
        store
            .write(|w| w.create_key(&key.record))
            .expect("store key");
        keys.insert(name, key);
    }
    let user = |id: &str| User {
        id: id.into(),
        email: format!("{id}@example.com"),
        email_verified: true,
        name: None,
        created_at: 1_700_000_000,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    store
        .write(|w| {
            w.sign_up(&user("alice"), "admin")?;
            w.convert("alice", "Acme")?;
            for (id, role) in [("bob", "basic"), ("carol", "billing")] {
                w.sign_up(&user(id), "admin")?;
                w.add_member("alice", id, role, 1_700_000_000)?;
            }
            w.create_invite(&Invite {
                id: "inv_pending".into(),
                account: "alice".into(),
                role: "dev".into(),
                email: None,
                token_sha256: INVITE_TOKEN_SHA.into(),
                created_by: "alice".into(),
                created_at: now,
                expires_at: now + 3600,
                state: InviteState::Pending,
            })
        })
        .expect("seed the store");
    drop(store);
    let log = dir.path().join("decisions.jsonl");
    let app = spawn_app_in(dir, |c| c.options.decision_log = Some(log)).await;
    Console { app, keys }
}

impl Console {
    fn key(&self, name: &str) -> &str {
        &self.keys[name].secret
    }

    /// `POST /v1/is_authorized` with the decide key.
    async fn is_authorized(&self, question: &Value) -> Value {
        let resp = self
            .app
            .client
            .post(self.app.url("/v1/is_authorized"))
            .bearer_auth(self.key("decide"))
            .json(question)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("json")
    }

    /// `GET /v1/policies` with the admin key.
    async fn policies(&self) -> Value {
        self.app
            .client
            .get(self.app.url("/v1/policies"))
            .bearer_auth(self.key("admin"))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }
}

// ---------------------------------------------------------------- over HTTP

/// A client that keeps no cookies and follows no redirects.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in over HTTP; returns the session cookie (`name=value`) and the
/// whole `Set-Cookie` header.
async fn sign_in_http(c: &Console, key: &str) -> (reqwest::StatusCode, Option<String>, String) {
    let resp = raw_client()
        .post(c.app.url("/ui/sign-in"))
        .form(&[("key", key)])
        .send()
        .await
        .expect("sign in");
    let status = resp.status();
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let cookie = set_cookie
        .split(';')
        .next()
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    (status, cookie, set_cookie)
}

/// Signs in with the admin key and loads `path`: the session cookie and
/// the page.
async fn admin_page(c: &Console, path: &str) -> (String, String) {
    let (_, cookie, _) = sign_in_http(c, c.key("admin")).await;
    let cookie = cookie.expect("a session");
    let page = raw_client()
        .get(c.app.url(path))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("page");
    (cookie, page)
}

/// Makes one more `admin` key through the API; its secret.
async fn another_admin_key(c: &Console, name: &str) -> String {
    let created = c
        .app
        .client
        .post(c.app.url("/v1/keys"))
        .bearer_auth(c.key("admin"))
        .json(&json!({"name": name, "scopes": ["admin"]}))
        .send()
        .await
        .expect("create a key");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("JSON");
    created["secret"].as_str().expect("secret").to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().expect("token").to_owned()
}

#[tokio::test]
async fn console_sessions_need_an_admin_key_and_forms_need_their_csrf_token() {
    let c = console().await;
    let http = raw_client();

    // No session: every page sends the browser to sign in.
    let resp = http.get(c.app.url("/ui/matrix")).send().await.expect("get");
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/ui/sign-in");

    // A decide key is refused; an admin key opens a session.
    let (status, cookie, _) = sign_in_http(&c, c.key("decide")).await;
    assert_eq!(status, 403);
    assert!(cookie.is_none());
    let (status, cookie, set_cookie) = sign_in_http(&c, c.key("admin")).await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(c.key("admin")),
        "the key is not the cookie"
    );

    let page = http
        .get(c.app.url("/ui/playground"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let token = csrf_of(&page.text().await.expect("body"));

    let question = |csrf: Option<&str>| {
        let mut form: Vec<(&str, String)> = vec![
            ("principal_type", "User".into()),
            ("principal_id", "carol".into()),
            ("action", "Action::\"viewBilling\"".into()),
            ("resource_type", "Account".into()),
            ("resource_id", "alice".into()),
        ];
        if let Some(t) = csrf {
            form.push(("csrf", t.to_owned()));
        }
        form
    };
    // Without the token, or with another, the form is refused.
    for form in [question(None), question(Some("00"))] {
        let resp = http
            .post(c.app.url("/ui/playground"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 403);
        let body = resp.text().await.expect("body");
        assert!(
            body.contains("security token is missing or does not match"),
            "{body}"
        );
        assert!(!body.contains("id=\"decision\""), "no decision was made");
    }
    // From another site, even with the token.
    let resp = http
        .post(c.app.url("/ui/playground"))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&question(Some(&token)))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    // With it, the question is answered.
    let resp = http
        .post(c.app.url("/ui/playground"))
        .header("cookie", &cookie)
        .form(&question(Some(&token)))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .expect("body")
        .contains("data-decision=\"allow\""));

    // The JSON API still refuses a form body.
    let resp = http
        .post(c.app.url("/v1/is_authorized"))
        .bearer_auth(c.key("decide"))
        .form(&[("principal", "x")])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 415);

    // Revoking the key ends its sessions at once (after another admin key
    // is made: the last live one cannot be revoked).
    another_admin_key(&c, "spare admin").await;
    let admin_id = c.keys["admin"].record.id.clone();
    let resp = c
        .app
        .client
        .delete(c.app.url(&format!("/v1/keys/{admin_id}")))
        .bearer_auth(c.key("admin"))
        .send()
        .await
        .expect("revoke");
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = http
        .get(c.app.url("/ui/policies"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 303, "a revoked key's session is over");
    c.app.stop().await;
}

#[tokio::test]
async fn sign_out_needs_the_token_and_ends_the_session() {
    let c = console().await;
    let http = raw_client();
    let (cookie, page) = admin_page(&c, "/ui/policies").await;
    let token = csrf_of(&page);
    let resp = http
        .post(c.app.url("/ui/sign-out"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403, "no token, no sign-out");
    let resp = http
        .post(c.app.url("/ui/sign-out"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 303);
    let resp = http
        .get(c.app.url("/ui/policies"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 303);
    c.app.stop().await;
}

// ------------------------------------------------------------ in a browser

/// A headless Chromium driven through chromedriver.
struct Browser {
    client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Drop for Browser {
    /// Stops chromedriver and the browser it started, even when a test
    /// failed before closing its session: the browser's processes are the
    /// ones whose command line names this browser's own profile folder.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = self._profile.path().display().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&profile) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Starts chromedriver and a browser, or says why the tests cannot run:
/// under CI that is a failure; elsewhere the test is skipped, saying so.
async fn browser() -> Option<Browser> {
    let (Some(chromium), Some(driver)) = (
        find_program(&["chromium", "chromium-browser"]),
        find_program(&["chromedriver"]),
    ) else {
        crate::support::not_run(
            "browser tests",
            "chromium and chromedriver were not found (.ci/run installs them: apt-get install chromium chromium-driver)",
        );
        return None;
    };
    let port = free_port();
    let driver = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().expect("profile dir");
    let status = format!("http://127.0.0.1:{port}/status");
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(20), || {
        let http = http.clone();
        let status = status.clone();
        async move { http.get(status).send().await.is_ok() }
    })
    .await;
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}

/// Where screenshots go: `$CARGO_TARGET_DIR` or `target/`, then
/// `ui-screenshots/`.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn screenshot(b: &Browser, name: &str) {
    let png = b.client.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Scrolls the element with this id into view, for a screenshot of it.
async fn scroll_to(b: &Browser, id: &str) {
    b.client
        .execute(
            "document.getElementById(arguments[0]).scrollIntoView();",
            vec![json!(id)],
        )
        .await
        .expect("scroll");
}

/// The text of the element `css` selects, waiting (up to 10 s) for it to
/// appear: a form's answer may still be loading when this is called.
async fn text(b: &Browser, css: &str) -> String {
    b.client
        .wait()
        .at_most(std::time::Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
        .text()
        .await
        .expect("text")
}

/// Signs in through the form with `key`.
async fn sign_in(b: &Browser, c: &Console, key: &str) {
    b.client
        .goto(&c.app.url("/ui/sign-in"))
        .await
        .expect("goto");
    b.client
        .find(Locator::Id("key"))
        .await
        .expect("key field")
        .send_keys(key)
        .await
        .expect("type");
    b.client
        .find(Locator::Css("form.card button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
}

/// The team table as the Matrix page shows it: action → cell words.
async fn team_cells(b: &Browser) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for row in b
        .client
        .find_all(Locator::Css("#matrix-team tbody tr"))
        .await
        .expect("rows")
    {
        let action = row
            .attr("data-action")
            .await
            .expect("attr")
            .expect("action");
        let mut cells = Vec::new();
        for td in row.find_all(Locator::Css("td")).await.expect("cells") {
            cells.push(td.text().await.expect("text"));
        }
        out.insert(action, cells);
    }
    out
}

fn words(row: &[bool]) -> Vec<String> {
    row.iter()
        .map(|a| if *a { "allow" } else { "deny" }.to_owned())
        .collect()
}

#[tokio::test]
async fn in_a_browser_sign_in_matrix_and_a_saved_edit() {
    let Some(b) = browser().await else { return };
    let c = console().await;

    // A decide key is refused on the sign-in page.
    b.client
        .goto(&c.app.url("/ui/sign-in"))
        .await
        .expect("goto");
    screenshot(&b, "sign-in").await;
    sign_in(&b, &c, c.key("decide")).await;
    let error = text(&b, "#sign-in-error").await;
    assert!(error.contains("lacks the `admin` scope"), "{error}");
    assert!(b
        .client
        .current_url()
        .await
        .expect("url")
        .path()
        .ends_with("/ui/sign-in"));

    // An admin key lands on the Policies page.
    sign_in(&b, &c, c.key("admin")).await;
    b.client
        .wait()
        .for_element(Locator::Css("#policies"))
        .await
        .expect("the policies page");
    let ids: BTreeSet<String> = {
        let mut ids = BTreeSet::new();
        for a in b
            .client
            .find_all(Locator::Css("article.policy"))
            .await
            .expect("policies")
        {
            ids.insert(a.attr("data-policy").await.expect("attr").expect("id"));
        }
        ids
    };
    assert!(
        ids.contains("dev") && ids.contains("role-ceiling"),
        "{ids:?}"
    );
    assert_eq!(
        b.client
            .find(Locator::Css("#reload"))
            .await
            .expect("reload")
            .attr("data-ok")
            .await
            .expect("attr")
            .as_deref(),
        Some("true")
    );
    screenshot(&b, "policies").await;

    // The Matrix page shows the seed's table.
    b.client.goto(&c.app.url("/ui/matrix")).await.expect("goto");
    let header: Vec<String> = {
        let mut h = Vec::new();
        for th in b
            .client
            .find_all(Locator::Css("#matrix-team thead th"))
            .await
            .expect("header")
        {
            h.push(th.text().await.expect("text"));
        }
        h
    };
    let mut expected_header = vec!["action".to_owned()];
    expected_header.extend(crate::support::TEAM.columns.iter().cloned());
    assert_eq!(header, expected_header);
    let cells = team_cells(&b).await;
    assert_eq!(cells.len(), team_table().len());
    for (action, row) in team_table() {
        assert_eq!(cells[*action], words(row), "{action}");
    }
    screenshot(&b, "matrix").await;

    // Billing may now use the account: after the save, a refresh shows it.
    let billing = c.app.policies().join("billing.cedar");
    let text_now = std::fs::read_to_string(&billing).expect("read");
    std::fs::write(
        &billing,
        text_now.replace(
            r#"action in Action::"billing","#,
            r#"action in [Action::"billing", Action::"useAccount"],"#,
        ),
    )
    .expect("save");
    let billing_column = crate::support::TEAM
        .columns
        .iter()
        .position(|c| c == "billing")
        .expect("a billing column");
    // Refresh until the reload shows (a deadline, not a fixed sleep).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let seen = loop {
        b.client.refresh().await.expect("refresh");
        let row = team_cells(&b)
            .await
            .remove("useAccount")
            .unwrap_or_default();
        if row.get(billing_column).map(String::as_str) == Some("allow") {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the matrix page never showed the edit: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected: Vec<bool> = crate::support::TEAM
        .columns
        .iter()
        .map(|c| c == "billing" || crate::support::TEAM.allows("useAccount", c))
        .collect();
    assert_eq!(seen, words(&expected));
    c.app.stop().await;
    b.client.clone().close().await.expect("close");
}

/// Fills the playground and returns the decision and the policy ids shown.
async fn ask_playground(
    b: &Browser,
    c: &Console,
    principal: &str,
    action: &str,
    resource: &str,
) -> (String, Vec<String>) {
    b.client
        .goto(&c.app.url("/ui/playground"))
        .await
        .expect("goto");
    let find = |id: &'static str| b.client.find(Locator::Id(id));
    find("principal_type")
        .await
        .expect("type")
        .select_by_value("User")
        .await
        .expect("select");
    find("principal_id")
        .await
        .expect("id")
        .send_keys(principal)
        .await
        .expect("type");
    find("action")
        .await
        .expect("action")
        .select_by_value(&format!("Action::\"{action}\""))
        .await
        .expect("select");
    find("resource_type")
        .await
        .expect("type")
        .select_by_value("Account")
        .await
        .expect("select");
    find("resource_id")
        .await
        .expect("id")
        .send_keys(resource)
        .await
        .expect("type");
    b.client
        .find(Locator::Css("form.question button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    let decision = b
        .client
        .wait()
        .for_element(Locator::Id("decision"))
        .await
        .expect("a decision")
        .text()
        .await
        .expect("text");
    let mut reasons = Vec::new();
    for li in b
        .client
        .find_all(Locator::Css("ul#reasons li"))
        .await
        .expect("reasons")
    {
        reasons.push(li.attr("data-policy").await.expect("attr").expect("id"));
    }
    (decision, reasons)
}

#[tokio::test]
async fn in_a_browser_the_playground_answers_as_the_api_and_the_directory_reads_the_store() {
    let Some(b) = browser().await else { return };
    let c = console().await;
    sign_in(&b, &c, c.key("admin")).await;
    b.client
        .wait()
        .for_element(Locator::Css("#policies"))
        .await
        .expect("signed in");

    for (principal, action, resource) in [
        ("carol", "viewBilling", "alice"),
        ("bob", "viewBilling", "alice"),
        ("alice", "convertToTeam", "alice"),
    ] {
        let (decision, reasons) = ask_playground(&b, &c, principal, action, resource).await;
        let api = c
            .is_authorized(&json!({
                "principal": {"type": "User", "id": principal},
                "action": {"type": "Action", "id": action},
                "resource": {"type": "Account", "id": resource},
            }))
            .await;
        assert_eq!(
            decision,
            api["decision"].as_str().expect("decision"),
            "{principal} {action}"
        );
        let api_reasons: Vec<String> = api["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(|r| r["policy_id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(reasons, api_reasons, "{principal} {action}");
    }
    scroll_to(&b, "answer").await;
    screenshot(&b, "playground").await;
    // A deciding policy links to its source on the Policies page.
    let (_, reasons) = ask_playground(&b, &c, "carol", "viewBilling", "alice").await;
    assert_eq!(reasons, ["billing"]);
    b.client
        .find(Locator::Css("ul#reasons li a"))
        .await
        .expect("link")
        .click()
        .await
        .expect("follow");
    let url = b.client.current_url().await.expect("url");
    assert_eq!(url.path(), "/ui/policies");
    let target = url.fragment().expect("an anchor").to_owned();
    let article = b
        .client
        .find(Locator::Id(&target))
        .await
        .expect("the policy");
    assert_eq!(
        article.attr("data-policy").await.expect("attr").as_deref(),
        Some("billing")
    );

    // The directory: a user's memberships, an account's members and invite.
    b.client
        .goto(&c.app.url("/ui/directory?user=carol&account=alice"))
        .await
        .expect("goto");
    let memberships = text(&b, "#memberships").await;
    assert!(memberships.contains("alice billing"), "{memberships}");
    let members = text(&b, "#members").await;
    for line in ["alice admin", "bob basic", "carol billing"] {
        assert!(members.contains(line), "{members}");
    }
    let invites = text(&b, "#invites").await;
    assert!(invites.contains("inv_pending dev any alice"), "{invites}");
    let source = b.client.source().await.expect("source");
    assert!(
        !source.contains(INVITE_TOKEN_SHA),
        "no token hash on the page"
    );
    screenshot(&b, "directory").await;
    c.app.stop().await;
    b.client.clone().close().await.expect("close");
}

#[tokio::test]
async fn in_a_browser_a_broken_save_shows_its_file_and_line() {
    let Some(b) = browser().await else { return };
    let c = console().await;
    sign_in(&b, &c, c.key("admin")).await;
    b.client
        .wait()
        .for_element(Locator::Css("#policies"))
        .await
        .expect("signed in");
    std::fs::write(
        c.app.policies().join("dev.cedar"),
        "// Dev role, broken.\n@id(\"dev\")\npermit (principal, action, resource) when { principal.nickname == \"x\" };\n",
    )
    .expect("save");
    wait_until(Duration::from_secs(20), || async {
        c.policies().await["last_reload"]["ok"] == json!(false)
    })
    .await;
    b.client
        .goto(&c.app.url("/ui/policies"))
        .await
        .expect("goto");
    let reload = b
        .client
        .find(Locator::Css("#reload"))
        .await
        .expect("reload");
    assert_eq!(
        reload.attr("data-ok").await.expect("attr").as_deref(),
        Some("false")
    );
    let errors = text(&b, "#reload-errors").await;
    assert!(errors.contains("dev.cedar:3:"), "{errors}");
    assert!(
        errors
            .contains("permit (principal, action, resource) when { principal.nickname == \"x\" };"),
        "the offending line is shown: {errors}"
    );
    // The last good set keeps serving and is still listed.
    assert!(b
        .client
        .find(Locator::Css("article[data-policy=\"dev\"]"))
        .await
        .is_ok());
    c.app.stop().await;
    b.client.clone().close().await.expect("close");
}

const NO_STOP: &str = "// Devs may no longer stop Pods.\n@id(\"devs-no-stop\")\nforbid (principal, action == Action::\"stopPod\", resource)\nwhen { principal in resource.account.roles.dev };\n";

#[tokio::test]
async fn in_a_browser_the_impact_page_lists_exactly_the_flipped_cells() {
    let Some(b) = browser().await else { return };
    let c = console().await;
    // A few recorded decisions for the replay.
    for principal in ["carol", "bob"] {
        c.is_authorized(&json!({
            "principal": {"type": "User", "id": principal},
            "action": {"type": "Action", "id": "useAccount"},
            "resource": {"type": "Account", "id": "alice"},
        }))
        .await;
    }
    sign_in(&b, &c, c.key("admin")).await;
    b.client
        .wait()
        .for_element(Locator::Css("#policies"))
        .await
        .expect("signed in");
    b.client.goto(&c.app.url("/ui/impact")).await.expect("goto");
    b.client
        .find(Locator::Id("file"))
        .await
        .expect("file")
        .send_keys("no-stop.cedar")
        .await
        .expect("type");
    b.client
        .find(Locator::Id("text"))
        .await
        .expect("text")
        .send_keys(NO_STOP)
        .await
        .expect("type");
    b.client
        .find(Locator::Css("form.candidate button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.client
        .wait()
        .for_element(Locator::Id("impact-result"))
        .await
        .expect("a result");
    let mut flipped = BTreeSet::new();
    for row in b
        .client
        .find_all(Locator::Css("#matrix-flips tbody tr"))
        .await
        .expect("rows")
    {
        flipped.insert(row.attr("data-cell").await.expect("attr").expect("cell"));
    }
    assert_eq!(
        flipped,
        BTreeSet::from([
            "team dev stopPod".to_owned(),
            "personal dev stopPod".to_owned()
        ])
    );
    let rows = text(&b, "#matrix-flips tbody").await;
    assert!(
        rows.contains("allow [dev]") && rows.contains("deny [devs-no-stop]"),
        "{rows}"
    );
    let summary = text(&b, "#log-summary").await;
    assert!(
        summary.starts_with("0 of 2 replayed decision(s) flip"),
        "{summary}"
    );
    scroll_to(&b, "impact-result").await;
    screenshot(&b, "impact").await;
    // Nothing was saved.
    assert!(!c.app.policies().join("no-stop.cedar").exists());
    c.app.stop().await;
    b.client.clone().close().await.expect("close");
}

/// The Impact page proves what a pasted file can change (cvc5), with the
/// counterexample and both answers; the Policies page proves the live
/// set's health.
#[tokio::test]
async fn in_a_browser_the_impact_page_proves_a_widening_and_the_policies_page_its_health() {
    if let Err(e) = cedard::prove::Prover::default().solver_path() {
        crate::support::not_run(
            "in_a_browser_the_impact_page_proves_a_widening",
            &e.to_string(),
        );
        return;
    }
    let Some(b) = browser().await else { return };
    let c = console().await;
    sign_in(&b, &c, c.key("admin")).await;
    b.client
        .wait()
        .for_element(Locator::Css("#policies"))
        .await
        .expect("signed in");
    b.client.goto(&c.app.url("/ui/impact")).await.expect("goto");
    let widened = std::fs::read_to_string(c.app.policies().join("billing.cedar"))
        .expect("billing.cedar")
        .replace(
            r#"action in Action::"billing","#,
            r#"action in [Action::"billing", Action::"useAccount"],"#,
        );
    for (id, keys) in [("file", "billing.cedar"), ("text", widened.as_str())] {
        b.client
            .find(Locator::Id(id))
            .await
            .expect(id)
            .send_keys(keys)
            .await
            .expect("type");
    }
    b.client
        .find(Locator::Id("prove"))
        .await
        .expect("the prove box")
        .click()
        .await
        .expect("tick");
    b.client
        .find(Locator::Css("form.candidate button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    let proof = b
        .client
        .wait()
        .for_element(Locator::Id("proof"))
        .await
        .expect("a proof");
    assert_eq!(
        proof.attr("data-verdict").await.expect("attr").as_deref(),
        Some("wider")
    );
    let mut changed = BTreeSet::new();
    for row in b
        .client
        .find_all(Locator::Css(
            "#proof-environments tbody tr:not([data-change=equivalent])",
        ))
        .await
        .expect("rows")
    {
        changed.insert((
            row.attr("data-action")
                .await
                .expect("attr")
                .expect("action"),
            row.attr("data-change")
                .await
                .expect("attr")
                .expect("change"),
        ));
    }
    assert_eq!(
        changed,
        BTreeSet::from([(r#"Action::"useAccount""#.to_owned(), "wider".to_owned())])
    );
    let row = r#"#proof-environments tr[data-change=wider] details.wider"#;
    b.client
        .find(Locator::Css(&format!("{row} summary")))
        .await
        .expect("the counterexample")
        .click()
        .await
        .expect("open it");
    let shown = text(&b, row).await;
    assert!(
        shown.contains("wider: principal User::")
            && shown.contains("now: deny (no policy)")
            && shown.contains("with the candidate: allow [billing]"),
        "{shown}"
    );
    scroll_to(&b, "proof").await;
    screenshot(&b, "impact-proof").await;
    // The live set's health, proved on the Policies page.
    b.client
        .goto(&c.app.url("/ui/policies"))
        .await
        .expect("goto");
    b.client
        .find(Locator::Css("#prove-health button"))
        .await
        .expect("the prove button")
        .click()
        .await
        .expect("click");
    b.client
        .wait()
        .for_element(Locator::Id("health"))
        .await
        .expect("health");
    let summary = text(&b, "#health-summary").await;
    assert!(
        summary.starts_with("0 dead, 0 can error, of 9 policies; 14 environment(s)"),
        "{summary}"
    );
    // Nothing was saved.
    assert!(
        !std::fs::read_to_string(c.app.policies().join("billing.cedar"))
            .expect("billing.cedar")
            .contains("useAccount")
    );
    c.app.stop().await;
    b.client.clone().close().await.expect("close");
}

/// One admin key signing in over and over ends only its own oldest
/// sessions: another admin's session stays, and the key's newest do too.
#[tokio::test]
async fn one_key_signing_in_over_and_over_signs_nobody_else_out() {
    let c = console().await;
    let other = another_admin_key(&c, "other admin").await;
    let (status, kept, _) = sign_in_http(&c, &other).await;
    assert_eq!(status, 303);
    let kept = kept.expect("a session");

    let mut mine = Vec::new();
    for _ in 0..1100 {
        let (status, cookie, _) = sign_in_http(&c, c.key("admin")).await;
        assert_eq!(status, 303);
        mine.push(cookie.expect("a session"));
    }
    let page = |cookie: String| {
        let url = c.app.url("/ui/policies");
        async move {
            raw_client()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .expect("get")
                .status()
        }
    };
    assert_eq!(page(kept).await, 200, "the other admin is still signed in");
    let newest = mine.last().expect("signed in").clone();
    assert_eq!(page(newest).await, 200, "the newest session works");
    assert_eq!(
        page(mine[0].clone()).await,
        303,
        "the key's first session was ended by its own sign-ins"
    );
}

/// The Impact page's candidate folder is read only under
/// `--candidates-root`: without it (the default) no server folder is
/// read, and a path outside the root is refused the same whether it exists
/// or not.
#[tokio::test]
async fn the_impact_page_reads_no_folder_outside_the_candidates_root() {
    let c = console().await;
    let (cookie, page) = admin_page(&c, "/ui/impact").await;
    assert!(
        !page.contains("name=\"folder\""),
        "no folder field by default"
    );
    let token = csrf_of(&page);
    let ask = |folder: &'static str| {
        let (url, cookie, token) = (c.app.url("/ui/impact"), cookie.clone(), token.clone());
        async move {
            let resp = raw_client()
                .post(url)
                .header("cookie", cookie)
                .form(&[
                    ("csrf", token.as_str()),
                    ("file", ""),
                    ("text", ""),
                    ("folder", folder),
                ])
                .send()
                .await
                .expect("post");
            (resp.status().as_u16(), resp.text().await.expect("page"))
        }
    };
    let (status, etc) = ask("/etc").await;
    assert_eq!(status, 400);
    assert!(etc.contains("reads no folder on the server"), "{etc}");
    let (status, missing) = ask("/no/such/folder").await;
    assert_eq!(status, 400);
    let error = |page: &str| {
        let at = page.find("id=\"impact-error\"").expect("an error");
        page[at..]
            .split("</section>")
            .next()
            .expect("section")
            .to_owned()
    };
    assert_eq!(error(&etc), error(&missing), "no hint which folders exist");
}

/// The playground's JSON boxes are held to the API's rule: a key given
/// twice is refused naming its path, never decided on.
#[tokio::test]
async fn the_playground_refuses_a_key_given_twice() {
    let c = console().await;
    let (cookie, page) = admin_page(&c, "/ui/playground").await;
    let token = csrf_of(&page);
    let resp = raw_client()
        .post(c.app.url("/ui/playground"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("principal_type", "User"),
            ("principal_id", "carol"),
            ("action", "Action::\"viewBilling\""),
            ("resource_type", "Account"),
            ("resource_id", "alice"),
            ("context", r#"{"ip": "10.0.0.1", "ip": "192.0.2.1"}"#),
        ])
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("page");
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("context.ip: this key is given twice"),
        "{text}"
    );
    assert!(!text.contains("data-decision="), "no decision was shown");
}
