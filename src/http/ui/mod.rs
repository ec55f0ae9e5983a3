//! The web console at `/ui/`: server-rendered pages for the admins who edit
//! policies (Policies, Matrix, Playground, Directory, Impact), and the
//! session that lets a browser use them.
//!
//! **Security model.** The console needs an `admin` caller key, pasted once
//! on the sign-in page; it then lives in a session: a 256-bit id from the
//! OS's random source, sent as an `HttpOnly; SameSite=Strict; Path=/ui`
//! cookie (`Secure` under TLS), kept in memory (by its SHA-256) for
//! [`SESSION_LIFETIME`] and tied to the key's id. Every request checks that
//! the key is still live and still holds `admin` through the [`KeyRing`]
//! (crate::keys::KeyRing), so revoking the key ends its sessions at once. A
//! key is required even when no key exists at all (loopback mode): the
//! sign-in page says how to create one. Every state-changing form carries a
//! CSRF token bound to the session, compared in constant time; a request
//! whose `Origin` is another site is refused too. Pages are sent with a
//! strict Content-Security-Policy (no inline script or style, nothing from
//! elsewhere), `no-store` and no framing. Neither the key nor the session
//! id is ever logged.
//!
//! The pages read the live snapshot on every request, so a reload shows on
//! the next refresh, and the playground decides through `state.pdp`, the
//! one pipeline. The routes are outside the JSON API and its OpenAPI
//! document. HTML, CSS and JS are embedded in the binary; nothing is loaded
//! from the network.

mod pages;
pub mod session;

use session::session_cookie;
pub use session::{Console, COOKIE, SESSION_LIFETIME};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;
use crate::code::Code;
use crate::keys::{KeyInfo, Scope};

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// A signed-in admin: the session of the request, checked against the live
/// keys.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The key the session was opened with (still live, still `admin`).
    pub key: KeyInfo,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
    /// The request's id, for the decision log.
    pub request_id: Option<String>,
}

impl SignedIn {
    /// Whether a form's token is the session's, compared in constant time.
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let back_to_sign_in = || Redirect::to("/ui/sign-in").into_response();
        let Some(id) = session_cookie(&parts.headers) else {
            return Err(back_to_sign_in());
        };
        let Some(session) = state.console.find(id) else {
            return Err(back_to_sign_in());
        };
        if !state.accounts.keys_current() {
            return Err(ApiError::new(
                Code::StoreUnavailable,
                "the caller keys have not been confirmed with the store within the staleness bound",
            )
            .into_response());
        }
        // The key must still be live and still hold `admin`: revoking it
        // ends the session.
        match state.keys.live(&session.key_id) {
            Some(key) if key.allows(Scope::Admin) => Ok(SignedIn {
                key,
                csrf: session.csrf,
                request_id: parts
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            }),
            _ => {
                state.console.close(id);
                Err(back_to_sign_in())
            }
        }
    }
}

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/policies") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/policies") }))
        .route("/ui/sign-in", get(pages::sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/policies", get(pages::policies))
        .route("/ui/matrix", get(pages::matrix))
        .route(
            "/ui/playground",
            get(pages::playground).post(pages::playground_decide),
        )
        .route("/ui/directory", get(pages::directory))
        .route("/ui/impact", get(pages::impact).post(pages::impact_run))
        .route(
            "/ui/assets/console.css",
            get(|| asset(CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/ui/assets/console.js",
            get(|| asset(JS, "text/javascript; charset=utf-8")),
        )
        .layer(from_fn(same_origin))
        .layer(from_fn(headers))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The headers every console answer carries.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'none'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Refuses a form posted from another site: its `Origin` (sent by browsers
/// on every POST) must name the host the request was sent to. The CSRF
/// token is checked as well; this is the second lock. (The pages' referrer
/// policy is `same-origin`: under `no-referrer` a browser sends
/// `Origin: null` even for the console's own forms.)
async fn same_origin(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, rest)| rest.trim_end_matches('/'));
            if host.is_none() || origin_host != host {
                return pages::refused(
                    StatusCode::FORBIDDEN,
                    "This form was sent from another site; cedard's console accepts its own forms only.",
                );
            }
        }
    }
    next.run(request).await
}

/// The sign-in form.
#[derive(Debug, serde::Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    key: String,
}

/// Checks the pasted key: live, and holding `admin`. Opens a session.
async fn sign_in(
    State(state): State<AppState>,
    form: Result<axum::Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return pages::sign_in_with(
            &state,
            StatusCode::BAD_REQUEST,
            Some("key: expected a form with the field `key`"),
        );
    };
    let key = form.key.trim();
    if key.is_empty() {
        return pages::sign_in_with(
            &state,
            StatusCode::BAD_REQUEST,
            Some("key: paste a caller key"),
        );
    }
    if !state.accounts.keys_current() {
        return pages::sign_in_with(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("cedard cannot confirm the caller keys with its store now; try again shortly"),
        );
    }
    let info = match state.keys.verify(key) {
        Ok(info) => info,
        Err(e) => {
            metrics::counter!("cedard_auth_failures_total", "reason" => "invalid_key").increment(1);
            return pages::sign_in_with(&state, StatusCode::UNAUTHORIZED, Some(&e.to_string()));
        }
    };
    if !info.allows(Scope::Admin) {
        metrics::counter!("cedard_auth_failures_total", "reason" => "scope").increment(1);
        return pages::sign_in_with(
            &state,
            StatusCode::FORBIDDEN,
            Some(&format!(
                "the key `{}` lacks the `admin` scope the console needs",
                info.id
            )),
        );
    }
    let id = match state.console.open(&info.id) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!("cannot open a console session: {e}");
            return pages::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "cedard cannot open a session now.",
            );
        }
    };
    tracing::info!(key = %info.id, "console session opened");
    let mut response = Redirect::to("/ui/policies").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        state.console.cookie(&id, SESSION_LIFETIME.as_secs()),
    );
    response
}

/// A form that carries only its CSRF token.
#[derive(Debug, serde::Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: Option<String>,
}

async fn sign_out(
    State(state): State<AppState>,
    signed: SignedIn,
    headers: HeaderMap,
    form: Result<axum::Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let token = form.ok().and_then(|f| f.0.csrf);
    if !signed.csrf_ok(token.as_deref()) {
        return pages::csrf_refused();
    }
    if let Some(id) = session_cookie(&headers) {
        state.console.close(id);
    }
    tracing::info!(key = %signed.key.id, "console session closed");
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.console.cookie("", 0));
    response
}
