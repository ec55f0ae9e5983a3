//! The checks every request passes before a handler runs: the `Host` it was
//! sent to (DNS rebinding), the body's media type on writes, the caller's key
//! and its scope, the request id, and the overload and time limits.
//!
//! Keys: once any key exists, every route but the health checks needs
//! `Authorization: Bearer <key>` holding the route's scope; a missing or
//! unknown key is a 401 with `WWW-Authenticate`, a key without the scope a
//! 403. With no key ever stored, cedard answers only callers on loopback
//! (unless started with `--insecure-no-auth`). Once a key was stored,
//! revoking keys never reopens the daemon: the last live `admin` key cannot
//! be revoked, and a store whose every key is revoked (say by the CLI)
//! authenticates nobody. When the keys cannot be read (the data file is
//! damaged), every route but the health checks is a 503.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestId, RequestId};

use super::error::{error_response, ApiError};
use super::extract::CallerInfo;
use super::state::AppState;
use super::tokens;
use crate::code::Code;
use crate::config::ActorMode;
use crate::keys::Scope;

/// What a group of routes requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A key holding this scope.
    Scope(Scope),
    /// Any valid key (the API description).
    AnyKey,
    /// A key holding `manage`, or an end user's own token as the bearer
    /// (the routes an end user calls directly: sign-up, accepting an
    /// invite, their own user and memberships).
    ManageOrUser,
}

/// Whether a bearer credential is a JWT (three base64url parts) rather
/// than a caller key.
fn is_jwt(presented: &str) -> bool {
    !presented.starts_with(crate::keys::PREFIX)
        && presented.split('.').count() == 3
        && presented.len() > 16
}

/// Authenticates the caller and checks the route's scope, then attaches
/// [`CallerInfo`] for the handler and the decision log.
pub async fn authenticate(
    State((state, need)): State<(AppState, Need)>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if state.keys.is_unreadable() {
        // Fail closed: with the keys unknown, nobody is authenticated, and
        // nobody is served as if no key existed.
        return ApiError::new(
            Code::Unavailable,
            "the caller keys cannot be read: the data file is damaged",
        )
        .into_response();
    }
    if !state.accounts.keys_current() {
        // A replica cut off from the shared database cannot tell whether a
        // key was revoked (or created) through another: nobody is
        // authenticated from what it remembers.
        return ApiError::new(
            Code::StoreUnavailable,
            "the caller keys have not been confirmed with the store within the staleness bound",
        )
        .into_response();
    }
    let manages = matches!(need, Need::Scope(Scope::Manage) | Need::ManageOrUser);
    if manages
        && state.limits.actor == ActorMode::TokenOnly
        && request.headers().contains_key("x-actor")
    {
        metrics::counter!("cedard_auth_failures_total", "reason" => "x_actor_off").increment(1);
        return ApiError::new(
            Code::Unauthenticated,
            "`X-Actor` is turned off (`--actor token-only`): send the acting user's token in `X-Actor-Token`",
        )
        .into_response();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .and_then(|_| v.get(7..))
        })
        .map(str::trim)
        .map(str::to_owned);
    let user_bearer = need == Need::ManageOrUser && presented.as_deref().is_some_and(is_jwt);
    let (key, user) = if user_bearer {
        // An end user calling for themselves: the token is the credential
        // and the actor.
        let token = presented.as_deref().unwrap_or_default();
        match tokens::verify(&state, token, "the bearer token", true).await {
            Ok(user) => (None, Some(user)),
            Err(e) => {
                metrics::counter!("cedard_auth_failures_total", "reason" => "user_token")
                    .increment(1);
                return e.into_response();
            }
        }
    } else {
        let key = match caller_key(&state, &request, need, presented.as_deref()) {
            Ok(key) => key,
            Err(response) => return *response,
        };
        let user = match request
            .headers()
            .get(tokens::ACTOR_TOKEN)
            .filter(|_| manages)
        {
            None => None,
            Some(value) => {
                if request.headers().contains_key("x-actor") {
                    return ApiError::from(crate::authz::InputError::new(
                        "X-Actor-Token",
                        "send `X-Actor` or `X-Actor-Token`, not both",
                    ))
                    .into_response();
                }
                let Ok(token) = value.to_str() else {
                    return ApiError::from(crate::authz::InputError::new(
                        "X-Actor-Token",
                        "must be visible ASCII text",
                    ))
                    .into_response();
                };
                match tokens::verify(&state, token, "X-Actor-Token", false).await {
                    Ok(user) => Some(user),
                    Err(e) => {
                        metrics::counter!("cedard_auth_failures_total", "reason" => "actor_token")
                            .increment(1);
                        return e.into_response();
                    }
                }
            }
        };
        (key, user)
    };
    // One caller (a key, or a peer without one) holds at most its share of
    // the concurrent places, so that it cannot take them all.
    let caller = match (&key, &user) {
        (Some(info), _) => format!("key {}", info.id),
        (None, Some(user)) => format!("token {} {}", user.issuer, user.id),
        (None, None) => request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(
                || "peer unknown".to_owned(),
                |c| format!("peer {}", c.0.ip()),
            ),
    };
    let most = super::state::Shares::most(state.limits.max_concurrent);
    let Some(share) = state.limits.shares.take(&caller, most) else {
        metrics::counter!("cedard_overload_rejections_total").increment(1);
        return retry_shortly(
            Code::Overloaded,
            &format!(
                "this caller has {most} requests in progress, its share of cedard's limit of concurrent requests; retry shortly"
            ),
        );
    };
    let deadline = Instant::now() + state.limits.request_timeout * 3 / 4;
    request.extensions_mut().insert(CallerInfo {
        key,
        user,
        request_id,
        deadline: Some(deadline),
    });
    let response = next.run(request).await;
    drop(share);
    response
}

/// Reads a request's body whole, within `--body-timeout-ms` and the body
/// limit, before the request takes a place under `--max-concurrent` (this
/// layer is outside that cap): a client sending its body slowly holds no
/// place, and is answered 408 `body_timeout` once its time is up. A body
/// over the limit is a 413 without being read further.
pub async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let max = state.limits.max_body;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    let limited = http_body_util::Limited::new(body, max);
    let bytes = match tokio::time::timeout(state.limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(max),
        Ok(Err(e)) => {
            return error_response(
                Code::InvalidRequest,
                &format!("the request body could not be read: {e}"),
            )
        }
        Err(_) => {
            metrics::counter!("cedard_request_timeouts_total").increment(1);
            return error_response(
                Code::BodyTimeout,
                &format!(
                    "the request body did not arrive within {} ms (`--body-timeout-ms`)",
                    state.limits.body_timeout.as_millis()
                ),
            );
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    error_response(
        Code::TooLarge,
        &format!("the request body is over the {max}-byte limit (`--max-body-bytes`)"),
    )
}

/// Refuses requests whose `Host` is not one cedard serves, so that a web
/// page cannot reach a local cedard through DNS rebinding (a name the
/// attacker controls, resolving to 127.0.0.1), and writes whose body is not
/// JSON, so that a page cannot send one with a simple form post.
pub async fn screen(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !state.limits.hosts.allows(host) {
            return error_response(
                Code::InvalidHost,
                "the `Host` header names a host cedard does not serve; add it with `--allowed-host`",
            );
        }
    }
    let writes = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    // The console's forms post `application/x-www-form-urlencoded`; they are
    // protected by a session and a CSRF token instead (see `http::ui`).
    let console_form = request.uri().path().starts_with("/ui/") && is_form(&request);
    if writes && has_body(&request) && !is_json(&request) && !console_form {
        return ApiError::new(
            Code::UnsupportedMediaType,
            "the body must be JSON: send `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(request).await
}

fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

fn is_json(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

fn is_form(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Request ids for requests that arrive without one: a random prefix chosen
/// once per process and a counter, unique and cheap (no system call per
/// request).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

static PREFIX: LazyLock<String> = LazyLock::new(|| {
    let mut bytes = [0u8; 6];
    // Without the OS's randomness the ids are still unique within this
    // process, which is what they are for.
    let _ = crate::keys::os_random(&mut bytes);
    hex::encode(bytes)
});
static NEXT: AtomicU64 = AtomicU64::new(1);

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}{n:010x}", *PREFIX))
            .ok()
            .map(RequestId::new)
    }
}

/// Replaces an incoming `X-Request-ID` that is too long or not printable,
/// so that logs never carry a caller's megabyte or control characters.
pub async fn sane_request_id(mut request: Request, next: Next) -> Response {
    let bad = request
        .headers()
        .get("x-request-id")
        .is_some_and(|v| v.len() > 128 || !v.as_bytes().iter().all(|b| b.is_ascii_graphic()));
    if bad {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// The `method` label of a request: one of the methods cedard's routes
/// answer, or `other`. Every label value comes from a small fixed set, so
/// that a client inventing methods (any token is a valid one) cannot grow
/// the metrics, however many it sends and however long they are.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The metric handles of one route: its latency, and its request count by
/// method and status.
struct RouteMetrics {
    duration: metrics::Histogram,
    requests: Vec<(&'static str, u16, metrics::Counter)>,
}

thread_local! {
    /// Each thread's handles by route, registered on first use: the
    /// `metrics` macros build, hash and look up a key on every call. Bounded:
    /// routes are templates (and `unmatched`), methods a fixed set, statuses
    /// the few cedard answers.
    static HTTP_METRICS: std::cell::RefCell<std::collections::HashMap<String, RouteMetrics>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Counts requests by route (a route's template, or `unmatched`), method
/// ([`method_label`]) and status, with their latency.
pub async fn count(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let elapsed = started.elapsed().as_secs_f64();
    HTTP_METRICS.with_borrow_mut(|routes| {
        if !routes.contains_key(route) {
            let metrics = RouteMetrics {
                duration: metrics::histogram!("cedard_http_request_duration_seconds", "route" => route.to_owned()),
                requests: Vec::new(),
            };
            routes.insert(route.to_owned(), metrics);
        }
        let Some(metrics) = routes.get_mut(route) else {
            return;
        };
        metrics.duration.record(elapsed);
        match metrics
            .requests
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
        {
            Some((_, _, counter)) => counter.increment(1),
            None => {
                let counter = metrics::counter!("cedard_http_requests_total", "route" => route.to_owned(), "method" => method, "status" => status.to_string());
                counter.increment(1);
                metrics.requests.push((method, status, counter));
            }
        }
    });
    response
}

/// Turns the errors of the overload and timeout layers into answers: a
/// fast 503 with `Retry-After` instead of an unbounded queue, and a 503 for
/// a request that ran out of time. Neither is ever a decision.
pub async fn overloaded(error: tower::BoxError) -> Response {
    let (code, message) = if error.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("cedard_overload_rejections_total").increment(1);
        (
            Code::Overloaded,
            "cedard is at its limit of concurrent requests; retry shortly",
        )
    } else if error.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("cedard_request_timeouts_total").increment(1);
        (
            Code::Timeout,
            "the request took longer than cedard's time limit; no decision was made",
        )
    } else {
        tracing::error!("request failed in a middleware: {error}");
        (Code::Unavailable, "cedard cannot answer now")
    };
    retry_shortly(code, message)
}

/// A 503 that asks the caller to retry in a second (`Retry-After: 1`):
/// an overload or a time limit, never a decision.
fn retry_shortly(code: Code, message: &str) -> Response {
    let mut response = error_response(code, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The caller's key, checked for `need`'s scope: `None` when no key was
/// ever stored and the peer may be served without one; the answer to send
/// otherwise.
fn caller_key(
    state: &AppState,
    request: &Request,
    need: Need,
    presented: Option<&str>,
) -> Result<Option<crate::keys::KeyInfo>, Box<Response>> {
    Ok(if state.keys.never_keyed() {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        // No known peer counts as off loopback: fail closed. `to_canonical`
        // reads `::ffff:127.0.0.1` on a dual-stack listener as loopback.
        let loopback = peer.is_some_and(|ip| ip.to_canonical().is_loopback());
        if !loopback && !state.limits.insecure_no_auth {
            return Err(ApiError::no_key("no caller keys exist, so cedard answers only callers on loopback; create a key with `cedard keys create`")
            .into_response().into());
        }
        None
    } else {
        if state.keys.live_count() == 0 {
            return Err(ApiError::no_key(
                "every caller key is revoked, so nobody is authenticated: create one with `cedard keys create`",
            )
            .into_response().into());
        }
        let Some(presented) = presented else {
            return Err(ApiError::no_key(
                "a caller key is required: send `Authorization: Bearer <key>`",
            )
            .into_response()
            .into());
        };
        let info = match state.keys.verify(presented) {
            Ok(info) => info,
            Err(e) => {
                metrics::counter!("cedard_auth_failures_total", "reason" => "invalid_key")
                    .increment(1);
                let message = if is_jwt(presented) {
                    "the bearer is a token, not a caller key: a user's token alone is accepted only on the routes an end user calls (sign-up, accepting an invite, their own user); elsewhere send a caller key, with the user's token in `X-Actor-Token` or as `principal_token`".to_owned()
                } else {
                    e.to_string()
                };
                return Err(ApiError::no_key(message).into_response().into());
            }
        };
        let scope = match need {
            Need::Scope(scope) => Some(scope),
            Need::ManageOrUser => Some(Scope::Manage),
            Need::AnyKey => None,
        };
        if let Some(scope) = scope {
            if !info.allows(scope) {
                metrics::counter!("cedard_auth_failures_total", "reason" => "scope").increment(1);
                return Err(ApiError::denied(
                    format!(
                        "the key `{}` lacks the `{scope}` scope this route needs",
                        info.id
                    ),
                    Vec::new(),
                )
                .into_response()
                .into());
            }
        }
        Some(info)
    })
}
