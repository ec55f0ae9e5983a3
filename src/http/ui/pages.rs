//! The console's pages, rendered on the server with `maud` (which escapes
//! every interpolated value: policy text, ids and messages are never sent
//! as markup). Each page reads the live snapshot when it is requested.

use std::collections::BTreeMap;

use axum::extract::{Query as UrlQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use serde_json::{json, Value};

use super::SignedIn;
use crate::clock::rfc3339;
use crate::facts::Inline;
use crate::http::state::AppState;
use crate::impact::{self, CellFlip, Outcome};
use crate::matrix::{self, Matrix};
use crate::pdp::{ActionRef, Caller, PdpError, Principal, Query};
use crate::policy::{LoadError, PolicySnapshot};

/// The most decisions of the daemon's log the Impact page replays (the
/// most recent ones).
const REPLAY_LIMIT: usize = 100_000;

/// The pages, in navigation order: (path, title).
const NAV: [(&str, &str); 5] = [
    ("/ui/policies", "Policies"),
    ("/ui/matrix", "Matrix"),
    ("/ui/playground", "Playground"),
    ("/ui/directory", "Directory"),
    ("/ui/impact", "Impact"),
];

/// A whole page: the navigation (when signed in), then `body`.
fn layout(title: &str, signed: Option<&SignedIn>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cedard" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "cedard" }
                    @if let Some(signed) = signed {
                        nav aria-label="Console" {
                            ul {
                                @for (path, name) in NAV {
                                    li {
                                        a href=(path) aria-current=[(name == title).then_some("page")] { (name) }
                                    }
                                }
                            }
                        }
                        form.sign-out method="post" action="/ui/sign-out" {
                            input type="hidden" name="csrf" value=(signed.csrf);
                            span.who { "key " code { (signed.key.id) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that only says why a request was refused.
pub(super) fn refused(status: StatusCode, message: &str) -> Response {
    page(
        status,
        layout(
            "Refused",
            None,
            html! { p.error role="alert" { (message) } p { a href="/ui/policies" { "Back to the console" } } },
        ),
    )
}

/// The answer to a form without its session's CSRF token.
pub(super) fn csrf_refused() -> Response {
    refused(
        StatusCode::FORBIDDEN,
        "The form's security token is missing or does not match your session; reload the page and send it again.",
    )
}

/// An error on a page of the console, as a 4xx or 503 page.
fn problem(status: StatusCode, title: &str, signed: &SignedIn, message: &str) -> Response {
    page(
        status,
        layout(
            title,
            Some(signed),
            html! { p.error role="alert" { (message) } },
        ),
    )
}

/// `GET /ui/sign-in`.
pub(super) async fn sign_in_page(State(state): State<AppState>) -> Response {
    sign_in_with(&state, StatusCode::OK, None)
}

/// The sign-in page, with an error when a key was refused.
pub(super) fn sign_in_with(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let no_keys = state.keys.never_keyed();
    page(
        status,
        layout(
            "Sign in",
            None,
            html! {
                p { "The console needs a caller key with the " code { "admin" } " scope. It is kept in a session cookie for 8 hours, or until you sign out or the key is revoked." }
                @if no_keys {
                    p.note #no-keys {
                        "No caller key exists yet. Create one on the daemon's host, before the daemon starts (it holds the data file while it runs): "
                        code { "cedard keys create --name console --scope admin --data data/cedard.redb" }
                        ", or while it runs with an admin key: "
                        code { "cedard keys create --name console --scope admin --url http://127.0.0.1:8180" }
                        ". The console asks for a key even on loopback."
                    }
                }
                @if let Some(error) = error {
                    p.error #sign-in-error role="alert" { (error) }
                }
                form.card method="post" action="/ui/sign-in" {
                    label for="key" { "Admin key" }
                    input #key type="password" name="key" autocomplete="off" required placeholder="cdk_…";
                    button type="submit" { "Sign in" }
                }
            },
        ),
    )
}

/// An anchor for a policy id (any text) on the Policies page.
fn anchor(id: &str) -> String {
    format!("policy-{}", hex::encode(id.as_bytes()))
}

fn location(e: &LoadError) -> String {
    match (e.line, e.column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", e.file),
        (Some(l), None) => format!("{}:{l}", e.file),
        _ => e.file.clone(),
    }
}

/// A list of load errors, each with the line it points at.
fn errors_list(id: &str, errors: &[LoadError], lines: &[Option<String>]) -> Markup {
    html! {
        ul.errors id=(id) {
            @for (i, e) in errors.iter().enumerate() {
                li {
                    code.where { (location(e)) }
                    ": " (e.message)
                    @if let Some(Some(line)) = lines.get(i) {
                        pre.offending { code { (line) } }
                    }
                }
            }
        }
    }
}

/// The source text of a policy, as written in its file.
fn source(snapshot: &PolicySnapshot, id: &str) -> String {
    let pid = cedar_policy::PolicyId::new(id);
    snapshot
        .policies
        .policy(&pid)
        .map(ToString::to_string)
        .or_else(|| snapshot.policies.template(&pid).map(ToString::to_string))
        .unwrap_or_default()
}

/// What `GET /ui/policies` may be asked.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct PoliciesQuery {
    /// Prove the live set's health (`?prove=1`).
    #[serde(default)]
    prove: Option<String>,
}

/// `GET /ui/policies`: the live set, its last reload, its policies; with
/// `?prove=1`, its proved health first.
pub(super) async fn policies(
    State(state): State<AppState>,
    signed: SignedIn,
    query: Result<UrlQuery<PoliciesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let published = state.pdp.live().published();
    let prove = query.map(|q| q.0.prove.is_some()).unwrap_or(false);
    let health = if prove {
        let snapshot = published.snapshot.clone();
        let prover = state.console.prover.clone();
        Some(
            tokio::task::spawn_blocking(move || crate::prove::health(&prover, &snapshot))
                .await
                .map_err(|e| format!("the proof stopped: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string())),
        )
    } else {
        None
    };
    let snapshot = &published.snapshot;
    let last = &published.last_reload;
    let body = html! {
        @match &health {
            None => {
                form.card #prove-health method="get" action="/ui/policies" {
                    input type="hidden" name="prove" value="1";
                    button type="submit" { "Prove the set's health" }
                    " dead policies, policies that can error, requests always allowed or denied (cvc5)"
                }
            }
            Some(Err(e)) => { section.card.failed #health-error role="alert" { h2 { "Health" } p.error { (e) } } }
            Some(Ok(h)) => { (health_view(h)) }
        }
        section.card #revision {
            h2 { "Live set" }
            dl {
                dt { "Revision" } dd { "generation " (snapshot.revision.generation) ", sha256 " code { (snapshot.revision.sha256.get(..16).unwrap_or_default()) "…" } }
                dt { "Loaded" } dd { (rfc3339(snapshot.loaded_at.unix_timestamp())) }
                dt { "Policies" } dd { (snapshot.meta.len()) " in " (state.pdp.live().sources().policies.display().to_string()) }
            }
        }
        @if last.ok {
            section.card.ok #reload data-ok="true" {
                h2 { "Last reload: ok" }
                p { "The last reload attempt (" (format!("{:?}", last.trigger).to_lowercase()) ", " (rfc3339(last.at.unix_timestamp())) ") produced the set now serving." }
            }
        } @else {
            section.card.failed #reload data-ok="false" role="alert" {
                h2 { "Last reload: refused" }
                p { "The attempt of " (rfc3339(last.at.unix_timestamp())) " was refused; generation " (snapshot.revision.generation) " keeps serving. Fix these and save again:" }
                (errors_list("reload-errors", &last.errors, &last.lines))
            }
        }
        @if !snapshot.warnings.is_empty() {
            section.card #warnings {
                h2 { "Validator warnings" }
                (errors_list("warning-list", &snapshot.warnings, &[]))
            }
        }
        section #policies {
            h2 { "Policies" }
            @for m in &snapshot.meta {
                article.policy id=(anchor(&m.id)) data-policy=(m.id) {
                    h3 { code { (m.id) } " " span class=(format!("effect {}", m.effect)) { (m.effect) } }
                    p.meta { code { (m.file) ":" (m.line) } @if m.template { " (template)" } }
                    @if !m.annotations.is_empty() {
                        dl.annotations {
                            @for (k, v) in &m.annotations {
                                dt { "@" (k) } dd { (v) }
                            }
                        }
                    }
                    pre { code { (source(snapshot, &m.id)) } }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Policies", Some(&signed), body))
}

/// One matrix table: a row per action, a cell per column.
fn matrix_table(matrix: &Matrix, kind: &str) -> Markup {
    let table = matrix.tables.iter().find(|t| t.kind == kind);
    html! {
        table.matrix id=(format!("matrix-{kind}")) {
            caption { (if kind == "team" { "Team account" } else { "Personal account (the owner holds admin)" }) }
            thead { tr { th scope="col" { "action" } @for c in &matrix.columns { th scope="col" { (c) } } } }
            tbody {
                @if let Some(table) = table {
                    @for (action, row) in &table.decisions {
                        tr data-action=(action) {
                            th scope="row" { (action) }
                            @for (i, allow) in row.iter().enumerate() {
                                @let word = if *allow { "allow" } else { "deny" };
                                @let why = table.reasons.get(action).and_then(|r| r.get(i)).map(|r| r.join(", ")).unwrap_or_default();
                                td class=(word) data-column=(matrix.columns.get(i).map(String::as_str).unwrap_or_default()) title=(why) { (word) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/matrix`: the live role × action tables.
pub(super) async fn matrix(State(state): State<AppState>, signed: SignedIn) -> Response {
    let snapshot = state.pdp.live().snapshot();
    let pdp = state.pdp.clone();
    let computed = tokio::task::spawn_blocking(move || {
        let roles = pdp.roles(&snapshot).map_err(|e| e.to_string())?;
        let m = matrix::compute(&snapshot, &roles).map_err(|e| e.to_string())?;
        Ok::<_, String>((m, snapshot.revision.generation))
    })
    .await;
    let (m, generation) = match computed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return problem(StatusCode::SERVICE_UNAVAILABLE, "Matrix", &signed, &e),
        Err(_) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Matrix",
                &signed,
                "the matrix could not be computed",
            )
        }
    };
    let body = html! {
        p { "What a member holding each role may do, computed from the live policies (generation " span #generation { (generation) } "). Hover a cell for the deciding policies." }
        (matrix_table(&m, "team"))
        (matrix_table(&m, "personal"))
    };
    page(StatusCode::OK, layout("Matrix", Some(&signed), body))
}

/// The playground's form, as sent.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Question {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    principal_type: String,
    #[serde(default)]
    principal_id: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    resource_type: String,
    #[serde(default)]
    resource_id: String,
    #[serde(default)]
    context: String,
    #[serde(default)]
    entities: String,
}

/// The choices the playground offers: entity types and actions of the
/// schema, stored users and accounts.
struct Choices {
    types: Vec<String>,
    actions: Vec<String>,
    ids: Vec<String>,
}

fn choices(state: &AppState, snapshot: &PolicySnapshot) -> Choices {
    let schema = &snapshot.schema;
    let mut actions: Vec<String> = schema
        .actions()
        .filter(|a| {
            schema
                .principals_for_action(a)
                .is_some_and(|mut p| p.next().is_some())
        })
        .map(ToString::to_string)
        .collect();
    actions.sort();
    let action_types: Vec<String> = schema
        .actions()
        .map(|a| a.type_name().to_string())
        .collect();
    let mut types: Vec<String> = snapshot
        .type_names
        .keys()
        .filter(|t| !action_types.contains(t))
        .cloned()
        .collect();
    types.sort();
    let mut ids = Vec::new();
    // Two short range reads of one transaction (MVCC: never waits on a
    // writer), bounded to 200 ids each.
    if let Ok(view) = state.accounts.directory() {
        ids.extend(view.user_ids_after(None, 200).unwrap_or_default());
        ids.extend(view.account_ids_after(None, 200).unwrap_or_default());
    }
    ids.sort();
    ids.dedup();
    Choices {
        types,
        actions,
        ids,
    }
}

fn select(name: &str, label: &str, options: &[String], chosen: &str) -> Markup {
    html! {
        label for=(name) { (label) }
        select id=(name) name=(name) required {
            @for o in options {
                option value=(o) selected[o == chosen] { (o) }
            }
        }
    }
}

fn playground_page(
    state: &AppState,
    signed: &SignedIn,
    q: &Question,
    answer: Option<Markup>,
    status: StatusCode,
) -> Response {
    let snapshot = state.pdp.live().snapshot();
    let c = choices(state, &snapshot);
    let pick = |given: &str, fallback: &str| {
        if given.is_empty() {
            fallback.to_owned()
        } else {
            given.to_owned()
        }
    };
    let body = html! {
        p { "Ask the live policies a question, exactly as " code { "POST /v1/is_authorized" } " would be asked: stored users and accounts are added by cedard, other entities go in the entities box (Cedar's JSON entity format)." }
        form.card.question method="post" action="/ui/playground" {
            input type="hidden" name="csrf" value=(signed.csrf);
            datalist #stored-ids { @for id in &c.ids { option value=(id) {} } }
            fieldset {
                legend { "Principal" }
                (select("principal_type", "Type", &c.types, &pick(&q.principal_type, "User")))
                label for="principal_id" { "Id" }
                input #principal_id name="principal_id" list="stored-ids" required value=(q.principal_id);
            }
            fieldset {
                legend { "Action" }
                (select("action", "Action", &c.actions, &q.action))
            }
            fieldset {
                legend { "Resource" }
                (select("resource_type", "Type", &c.types, &pick(&q.resource_type, "Account")))
                label for="resource_id" { "Id" }
                input #resource_id name="resource_id" list="stored-ids" required value=(q.resource_id);
            }
            label for="context" { "Context (JSON object, optional)" }
            textarea #context name="context" rows="3" spellcheck="false" { (q.context) }
            label for="entities" { "Entities (JSON array, optional)" }
            textarea #entities name="entities" rows="6" spellcheck="false" { (q.entities) }
            button type="submit" { "Decide" }
        }
        @if let Some(answer) = answer { (answer) }
    };
    page(status, layout("Playground", Some(signed), body))
}

/// `GET /ui/playground`.
pub(super) async fn playground(State(state): State<AppState>, signed: SignedIn) -> Response {
    tokio::task::spawn_blocking(move || {
        playground_page(&state, &signed, &Question::default(), None, StatusCode::OK)
    })
    .await
    .unwrap_or_else(|_| refused(StatusCode::SERVICE_UNAVAILABLE, "cedard cannot answer now."))
}

/// Reads an optional JSON box of the form.
fn json_box(field: &str, text: &str) -> Result<Option<Value>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    if let Err(e) = crate::http::extract::refuse_repeated_keys(text.as_bytes()) {
        return Err(format!("{field}.{e}"));
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("{field}: not valid JSON: {e}"))
}

/// `POST /ui/playground`: decides through the pipeline, like
/// `/v1/is_authorized`, and shows the answer.
pub(super) async fn playground_decide(
    State(state): State<AppState>,
    signed: SignedIn,
    form: Result<axum::Form<Question>, axum::extract::rejection::FormRejection>,
) -> Response {
    let q = match form {
        Ok(axum::Form(q)) => q,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Playground",
                &signed,
                &format!("the form could not be read: {e}"),
            )
        }
    };
    if !signed.csrf_ok(q.csrf.as_deref()) {
        return csrf_refused();
    }
    tokio::task::spawn_blocking(move || {
        let (answer, status) = match decide(&state, &signed, &q) {
            Ok(answer) => (answer, StatusCode::OK),
            Err((status, message)) => (
                html! { section.card.failed #answer role="alert" { h2 { "Not decided" } p.error #answer-error { (message) } } },
                status,
            ),
        };
        playground_page(&state, &signed, &q, Some(answer), status)
    })
    .await
    .unwrap_or_else(|_| refused(StatusCode::SERVICE_UNAVAILABLE, "cedard cannot answer now."))
}

fn decide(
    state: &AppState,
    signed: &SignedIn,
    q: &Question,
) -> Result<Markup, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let context = json_box("context", &q.context).map_err(bad)?;
    let entities = json_box("entities", &q.entities).map_err(bad)?;
    let principal = json!({"type": q.principal_type, "id": q.principal_id});
    let action = Value::String(q.action.clone());
    let resource = json!({"type": q.resource_type, "id": q.resource_id});
    let query = Query {
        principal: Principal::Ref(&principal),
        action: ActionRef::Uid(&action),
        resource: &resource,
        context: context.as_ref(),
    };
    // The pipeline reads inline entities as text, as every door sends them.
    let entities = entities
        .as_ref()
        .map(serde_json::value::to_raw_value)
        .transpose()
        .map_err(|e| bad(format!("entities: {e}")))?;
    let inline = Inline::raw(entities.as_deref());
    let caller = Caller {
        key: Some(signed.key.id.clone()),
        request_id: signed.request_id.clone(),
        endpoint: "/ui/playground",
        ..Caller::default()
    };
    let checked = state
        .pdp
        .check(&caller, &[query], inline, false)
        .map_err(|e: PdpError| (crate::http::error::status(e.code()), e.to_string()))?;
    let Some(d) = checked.decisions.first() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "no decision was made".into(),
        ));
    };
    let word = if d.allow { "allow" } else { "deny" };
    Ok(html! {
        section.card #answer class=(word) {
            h2 { "Decision: " span #decision data-decision=(word) { (word) } }
            p { "Revision: generation " (checked.revision.generation) "." }
            h3 { "Deciding policies" }
            @if d.reasons.is_empty() {
                p #reasons data-none="true" { "None: nothing permits this, so it is denied by default." }
            } @else {
                ul #reasons {
                    @for r in &d.reasons {
                        li data-policy=(r.policy_id) {
                            a href=(format!("/ui/policies#{}", anchor(&r.policy_id))) { code { (r.policy_id) } }
                            " (" (r.file) ":" (r.line) ")"
                        }
                    }
                }
            }
            h3 { "Errors" }
            @if d.errors.is_empty() {
                p #eval-errors data-none="true" { "None." }
            } @else {
                ul #eval-errors {
                    @for e in &d.errors { li { code { (e.policy_id) } ": " (e.message) } }
                }
            }
        }
    })
}

/// `?user=…&account=…` of the directory.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Lookup {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    account: Option<String>,
}

/// `GET /ui/directory`: a user's memberships, an account's members and
/// pending invites. Never a token or its hash.
pub(super) async fn directory(
    State(state): State<AppState>,
    signed: SignedIn,
    lookup: Result<UrlQuery<Lookup>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lookup = lookup.map(|q| q.0).unwrap_or_default();
    tokio::task::spawn_blocking(move || directory_page(&state, &signed, &lookup))
        .await
        .unwrap_or_else(|_| refused(StatusCode::SERVICE_UNAVAILABLE, "cedard cannot answer now."))
}

fn directory_page(state: &AppState, signed: &SignedIn, lookup: &Lookup) -> Response {
    let user = lookup
        .user
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let account = lookup
        .account
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let now = state.accounts.clock().now_secs();
    // One read transaction (MVCC), a few point lookups and two short ranges.
    let view = match state.accounts.directory() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("console directory: {e}");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Directory",
                signed,
                "the store cannot be read now",
            );
        }
    };
    let user_section = user.map(|id| match (view.user(id), view.roles_of(id)) {
        (Ok(Some(u)), Ok(roles)) => html! {
            section.card #user-result {
                h2 { "User " code { (u.id) } }
                dl {
                    dt { "Email" } dd { (u.email) @if u.email_verified { " (verified)" } @else { " (not verified)" } }
                    @if let Some(name) = &u.name { dt { "Name" } dd { (name) } }
                    dt { "Signed up" } dd { (rfc3339(u.created_at)) }
                }
                h3 { "Memberships" }
                table #memberships {
                    thead { tr { th scope="col" { "account" } th scope="col" { "role" } } }
                    tbody {
                        @for (a, r) in &roles {
                            tr { td { a href=(format!("/ui/directory?account={}", urlencode(a))) { (a) } } td { (r) } }
                        }
                    }
                }
            }
        },
        (Ok(None), _) => html! { section.card #user-result { p.error { "No user " code { (id) } "." } } },
        _ => html! { section.card #user-result { p.error { "The store cannot be read now." } } },
    });
    let account_section = account.map(|id| match (view.account(id), view.members(id), view.invites(id)) {
        (Ok(Some(a)), Ok(members), Ok(invites)) => {
            let pending: Vec<_> = invites.into_iter().filter(|i| i.is_pending(now)).collect();
            html! {
                section.card #account-result {
                    h2 { "Account " code { (a.id) } }
                    dl {
                        dt { "Name" } dd { (a.name) }
                        dt { "Kind" } dd { (a.kind.as_str()) }
                        dt { "Owner" } dd { a href=(format!("/ui/directory?user={}", urlencode(&a.owner))) { (a.owner) } }
                    }
                    h3 { "Members" }
                    table #members {
                        thead { tr { th scope="col" { "user" } th scope="col" { "role" } th scope="col" { "since" } } }
                        tbody {
                            @for (u, m) in &members {
                                tr { td { a href=(format!("/ui/directory?user={}", urlencode(u))) { (u) } } td { (m.role) } td { (rfc3339(m.since)) } }
                            }
                        }
                    }
                    h3 { "Pending invites" }
                    @if pending.is_empty() { p { "None." } } @else {
                        table #invites {
                            thead { tr { th scope="col" { "invite" } th scope="col" { "role" } th scope="col" { "email" } th scope="col" { "created by" } th scope="col" { "expires" } } }
                            tbody {
                                @for i in &pending {
                                    tr { td { code { (i.id) } } td { (i.role) } td { (i.email.as_deref().unwrap_or("any")) } td { (i.created_by) } td { (rfc3339(i.expires_at)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        (Ok(None), _, _) => html! { section.card #account-result { p.error { "No account " code { (id) } "." } } },
        _ => html! { section.card #account-result { p.error { "The store cannot be read now." } } },
    });
    let body = html! {
        form.card.lookup method="get" action="/ui/directory" {
            label for="user" { "User id" }
            input #user name="user" value=(user.unwrap_or_default());
            label for="account" { "Account id" }
            input #account name="account" value=(account.unwrap_or_default());
            button type="submit" { "Look up" }
        }
        @if let Some(s) = user_section { (s) }
        @if let Some(s) = account_section { (s) }
    };
    page(StatusCode::OK, layout("Directory", Some(signed), body))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The Impact page's form.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Candidate {
    #[serde(default)]
    csrf: Option<String>,
    /// The policy file's name, relative to the policy folder.
    #[serde(default)]
    file: String,
    /// Its new text.
    #[serde(default)]
    text: String,
    /// Or: a candidate policy folder on the server.
    #[serde(default)]
    folder: String,
    /// Whether to prove what can change (a checkbox: present when ticked).
    #[serde(default)]
    prove: Option<String>,
}

fn impact_page(
    signed: &SignedIn,
    c: &Candidate,
    result: Option<Markup>,
    status: StatusCode,
    logged: bool,
    candidates_root: Option<&std::path::Path>,
) -> Response {
    let body = html! {
        p { "See what a changed policy file would change before saving it: the role-matrix cells that flip"
            @if logged { ", and the decisions of the daemon's decision log (the last " (REPLAY_LIMIT) ") replayed against it" }
            ". Nothing is saved." }
        form.card.candidate method="post" action="/ui/impact" {
            input type="hidden" name="csrf" value=(signed.csrf);
            label for="file" { "Policy file (relative to the policy folder)" }
            input #file name="file" placeholder="dev.cedar" value=(c.file);
            label for="upload" { "Upload a file (fills the boxes)" }
            input #upload type="file" accept=".cedar,text/plain";
            label for="text" { "Its new text" }
            textarea #text name="text" rows="12" spellcheck="false" { (c.text) }
            @if let Some(root) = candidates_root {
                label for="folder" { "Or a candidate policy folder on the server, under " code { (root.display()) } }
                input #folder name="folder" value=(c.folder);
            }
            label.check {
                input #prove type="checkbox" name="prove" value="on" checked[c.prove.is_some()];
                " Prove what can change, for every request of the schema (cvc5)"
            }
            button type="submit" { "Show the impact" }
        }
        @if let Some(result) = result { (result) }
    };
    page(status, layout("Impact", Some(signed), body))
}

/// `GET /ui/impact`.
pub(super) async fn impact(State(state): State<AppState>, signed: SignedIn) -> Response {
    impact_page(
        &signed,
        &Candidate::default(),
        None,
        StatusCode::OK,
        state.console.decision_log.is_some(),
        state.console.candidates_root.as_deref(),
    )
}

fn outcome(o: &Outcome) -> Markup {
    html! {
        span class=(o.outcome) { (o.outcome) }
        @if !o.policies.is_empty() { " [" (o.policies.join(", ")) "]" }
        @if let Some(note) = &o.note { " " small { "(" (note) ")" } }
    }
}

fn flips_table(flips: &[CellFlip]) -> Markup {
    html! {
        table #matrix-flips {
            thead { tr { th scope="col" { "account" } th scope="col" { "role" } th scope="col" { "action" } th scope="col" { "now" } th scope="col" { "with the candidate" } } }
            tbody {
                @for f in flips {
                    tr data-cell=(format!("{} {} {}", f.account, f.column, f.action)) {
                        td { (f.account) } td { (f.column) } td { (f.action) }
                        td { (outcome(&f.before)) } td { (outcome(&f.after)) }
                    }
                }
            }
        }
    }
}

/// `POST /ui/impact`: builds the candidate, compares it.
pub(super) async fn impact_run(
    State(state): State<AppState>,
    signed: SignedIn,
    form: Result<axum::Form<Candidate>, axum::extract::rejection::FormRejection>,
) -> Response {
    let c = match form {
        Ok(axum::Form(c)) => c,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Impact",
                &signed,
                &format!("the form could not be read: {e}"),
            )
        }
    };
    if !signed.csrf_ok(c.csrf.as_deref()) {
        return csrf_refused();
    }
    let logged = state.console.decision_log.is_some();
    tokio::task::spawn_blocking(move || {
        let (result, status) = match compare(&state, &c) {
            Ok(m) => (m, StatusCode::OK),
            Err((status, m)) => (m, status),
        };
        let root = state.console.candidates_root.clone();
        impact_page(&signed, &c, Some(result), status, logged, root.as_deref())
    })
    .await
    .unwrap_or_else(|_| refused(StatusCode::SERVICE_UNAVAILABLE, "cedard cannot answer now."))
}

/// The candidate folder `asked` (relative to `root`, or absolute), once
/// it is found to lie under `root` with every link followed. Without a
/// root no folder on the server is read, and the answer says neither
/// whether the folder exists nor anything of its content.
fn candidate_folder(
    root: Option<&std::path::Path>,
    asked: &str,
) -> Result<std::path::PathBuf, String> {
    let Some(root) = root else {
        return Err("folder: this daemon reads no folder on the server (start it with `--candidates-root DIR` to allow folders under DIR); edit or upload a file instead".into());
    };
    let outside = || {
        format!(
            "folder: name a folder under `{}`, the candidates root",
            root.display()
        )
    };
    let root = root.canonicalize().map_err(|_| outside())?;
    let folder = root.join(asked).canonicalize().map_err(|_| outside())?;
    if folder.starts_with(&root) && folder.is_dir() {
        Ok(folder)
    } else {
        Err(outside())
    }
}

fn compare(state: &AppState, c: &Candidate) -> Result<Markup, (StatusCode, Markup)> {
    let fail = |status: StatusCode, message: String| {
        (
            status,
            html! { section.card.failed #impact-error role="alert" { p.error { (message) } } },
        )
    };
    let live_sources = state.pdp.live().sources().clone();
    let candidate = if !c.folder.trim().is_empty() {
        let folder = candidate_folder(state.console.candidates_root.as_deref(), c.folder.trim())
            .map_err(|message| fail(StatusCode::BAD_REQUEST, message))?;
        let sources = crate::policy::Sources {
            policies: folder,
            ..live_sources.clone()
        };
        crate::policy::load(&sources, 0)
    } else {
        let name = c.file.trim();
        let safe = name.ends_with(".cedar")
            && !name.starts_with('/')
            && !name
                .split(['/', '\\'])
                .any(|part| part == ".." || part.is_empty());
        if !safe {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "file: name a `.cedar` file relative to the policy folder, like `dev.cedar` (or give a folder)".into(),
            ));
        }
        impact::with_file(&live_sources, name, &c.text)
    };
    let candidate = match candidate {
        Ok(s) => s,
        Err(e) => {
            let lines: Vec<Option<String>> =
                e.0.iter()
                    .map(|err| {
                        let line = err.line?;
                        (err.file == c.file.trim())
                            .then(|| c.text.lines().nth(line.checked_sub(1)?).map(str::to_owned))
                            .flatten()
                    })
                    .collect();
            return Err((
                StatusCode::BAD_REQUEST,
                html! {
                    section.card.failed #impact-error role="alert" {
                        h2 { "The candidate does not validate" }
                        (errors_list("candidate-errors", &e.0, &lines))
                    }
                },
            ));
        }
    };
    let live = state.pdp.live().snapshot();
    let log = state.console.decision_log.as_deref();
    let compared = impact::compare(
        &live,
        &candidate,
        &impact::Inputs {
            store: Some(state.pdp.store()),
            log: log.map(|path| (path, Some(REPLAY_LIMIT))),
            suites: None,
            now: state.accounts.clock().now_secs(),
        },
    );
    if let Some(e) = &compared.impact.matrix_not_compared {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("the role matrix cannot be computed: {e}"),
        ));
    }
    let proof = c
        .prove
        .is_some()
        .then(|| crate::prove::compare(&state.console.prover, &live, &candidate));
    let fit = compared.unfit;
    let flips = compared.impact.matrix;
    let replay = log.map(|_| match (compared.log_error, compared.impact.log) {
        (Some(e), _) => Err(e),
        (None, Some(r)) => Ok(r),
        (None, None) => Err("the log was not replayed".to_owned()),
    });
    Ok(html! {
        section.card #impact-result {
            @if let Some(errors) = &fit {
                div.failed role="alert" {
                    h2 { "The daemon would refuse this set" }
                    (errors_list("fit-errors", errors, &[]))
                }
            }
            @match &proof {
                None => {}
                Some(Err(e)) => { section.failed #proof-error role="alert" { h2 { "Proof" } p.error { (e.to_string()) } } }
                Some(Ok(p)) => { (proof_view(p)) }
            }
            h2 { "Role matrix" }
            @if flips.is_empty() {
                p #no-matrix-flips { "No cell flips." }
            } @else {
                p { span #matrix-flip-count { (flips.len()) } " cell(s) flip:" }
                (flips_table(&flips))
            }
            @match &replay {
                None => { p.note { "The daemon has no decision log (" code { "--decision-log" } "), so no recorded decisions are replayed." } }
                Some(Err(e)) => { p.error { "The decision log could not be replayed: " (e) } }
                Some(Ok(r)) => {
                    h2 { "Recorded decisions" }
                    p #log-summary { (r.flipped) " of " (r.replayed) " replayed decision(s) flip (" (format!("{:.0}", r.rate())) " decisions/s)." }
                    @if r.flipped > 0 {
                        (counts_table("log-by-action", "action", &r.by_action))
                        (counts_table("log-by-policy", "deciding policies: now → with the candidate", &r.by_policy))
                        h3 { "Examples" }
                        ul #log-examples {
                            @for e in &r.examples {
                                li { "line " (e.line) ": " code { (e.principal) " " (e.action) " " (e.resource) } ": " (outcome(&e.before)) " → " (outcome(&e.after)) }
                            }
                        }
                    }
                    @if r.incomplete > 0 {
                        p.note { (r.incomplete) " decision(s) name an entity neither the store nor the entity data hold (sent inline, which the log does not record); they are replayed without it." }
                    }
                }
            }
        }
    })
}

/// A proof: its verdict, then every environment that is not equivalent,
/// with its counterexamples and both sets' answers.
fn proof_view(p: &crate::prove::Proof) -> Markup {
    let verdict = p.verdict();
    let class = if verdict == crate::prove::Verdict::NeverWider {
        "ok"
    } else {
        "failed"
    };
    html! {
        section #proof data-verdict=(verdict.as_str()) {
            h2 { "Proof" }
            p class=(class) #proof-verdict { (verdict.sentence()) " (" (p.environments.len()) " environment(s), " (p.millis) " ms)" }
            table #proof-environments {
                thead { tr { th scope="col" { "principal" } th scope="col" { "action" } th scope="col" { "resource" } th scope="col" { "change" } th scope="col" { "counterexample" } } }
                tbody {
                    @for e in &p.environments {
                        tr data-change=(e.change.as_str()) data-action=(e.env.action) {
                            td { (e.env.principal) } td { code { (e.env.action) } } td { (e.env.resource) }
                            td class=(e.change.as_str()) {
                                (e.change.as_str())
                                @if let Some(n) = &e.note { " " small { "(" (n) ")" } }
                                @if !e.not_analyzed.is_empty() { " " small.note { "(not analyzed: template(s) " (e.not_analyzed.join(", ")) ", unlinked, they decide nothing)" } }
                            }
                            td {
                                @for (word, d) in [("wider", &e.wider), ("narrower", &e.narrower)] {
                                    @if let Some(d) = d {
                                        details class=(word) {
                                            summary { (word) ": " code { (d.witness.request_line()) } }
                                            p { "now: " (d.live.describe()) }
                                            p { "with the candidate: " (d.candidate.describe()) }
                                            pre { code { (serde_json::to_string_pretty(&d.witness.entities).unwrap_or_default()) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @for u in &p.unconfirmed { p.error role="alert" { "A counterexample the decision path does not confirm (a bug, not a finding): " (u) } }
        }
    }
}

/// A set's proved health: dead policies, policies that can error, and
/// environments always allowed or denied.
fn health_view(h: &crate::prove::Health) -> Markup {
    html! {
        section.card #health {
            h2 { "Health (proved)" }
            p #health-summary {
                (h.dead()) " dead, "
                (h.erring()) " can error, of "
                (h.policies.len()) " policies; " (h.environments.len()) " environment(s) (" (h.millis) " ms)."
            }
            ul #health-findings {
                @for p in &h.policies {
                    @if p.status != crate::prove::PolicyStatus::Live {
                        li data-policy=(p.id) data-status=(p.status.as_str()) { code { (p.file) ":" (p.line) } " " code { (p.id) } ": " (p.status.as_str()) @for n in &p.notes { " (" (n) ")" } }
                    }
                    @for e in &p.errors {
                        li data-policy=(p.id) data-status="can-error" {
                            code { (p.file) ":" (p.line) } " " code { (p.id) } " can error in " (e.env.to_string()) ": " (e.message)
                            details { summary { "the request" } p { code { (e.witness.request_line()) } } pre { code { (serde_json::to_string_pretty(&e.witness.entities).unwrap_or_default()) } } }
                        }
                    }
                }
                @for e in &h.environments {
                    @if let Some(effect) = e.always {
                        li data-env=(e.env.to_string()) data-always=(effect.as_str()) { (e.env.to_string()) " always " (effect.as_str()) }
                    }
                    @if let Some(n) = &e.note { li data-env=(e.env.to_string()) data-status="undecided" { (e.env.to_string()) " undecided: " (n) } }
                }
                @for u in &h.unconfirmed { li.error { "A counterexample the decision path does not confirm (a bug, not a finding): " (u) } }
            }
        }
    }
}

fn counts_table(id: &str, what: &str, counts: &BTreeMap<String, usize>) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th scope="col" { (what) } th scope="col" { "flips" } } }
            tbody { @for (k, n) in counts { tr { td { (k) } td { (n) } } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::candidate_folder;

    #[test]
    fn a_candidate_folder_must_lie_under_the_root_with_links_followed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("next")).expect("folders");
        std::fs::create_dir_all(dir.path().join("outside")).expect("folders");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("escape")).expect("link");
        let inside = candidate_folder(Some(&root), "next").expect("under the root");
        assert!(inside.ends_with("root/next"), "{}", inside.display());
        let absolute = root.join("next").display().to_string();
        assert!(candidate_folder(Some(&root), &absolute).is_ok());
        for outside in ["..", "../outside", "escape", "/etc", "missing"] {
            let refused = candidate_folder(Some(&root), outside).expect_err(outside);
            assert!(refused.contains("candidates root"), "{outside}: {refused}");
        }
        let off = candidate_folder(None, "next").expect_err("no root");
        assert!(off.contains("--candidates-root"), "{off}");
    }
}
