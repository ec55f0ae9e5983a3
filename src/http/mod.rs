//! The HTTP API: routes, the checks every request passes, the wire shapes,
//! and the one error shape `{"error": {"code", "message"}}`.
//!
//! Handlers read their input and hand it to the decision pipeline
//! ([`crate::pdp`]) or the management operations ([`crate::accounts`]); this
//! module owns status codes, headers and JSON shapes, and makes no decision
//! itself. Every route is declared once, with its OpenAPI description
//! (utoipa), so `/openapi.json` cannot miss a route.
//!
//! Layers, outermost first: request id (accepted or made, echoed), metrics,
//! the error-shape fixer, a panic answered as a 503, `Host` and media-type
//! screening, the overload cap (a fast 503 + `Retry-After`) and the time
//! limit (not for `/healthz` and `/readyz`), the body limit, then per group
//! of routes the key check for its scope.

pub mod accounts;
pub mod admin;
pub mod authzen;
pub mod decisions;
pub mod error;
pub mod extract;
pub mod guard;
pub mod metrics;
pub mod state;
pub mod tokens;
pub mod ui;

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::{error_response, ApiError};
use guard::Need;
pub use state::{AppState, HttpLimits, Shared};

use crate::code::Code;
use crate::keys::Scope;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cedard",
        description = "Cedar policies from files, hot-reloaded, answered over HTTP; accounts, members and invites. Every route but /healthz, /readyz and the AuthZEN metadata document takes `Authorization: Bearer <key>` once any caller key exists; each route names the scope its key needs.",
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, crate::authz::Effect, OpenApiDocument)),
    modifiers(&BearerScheme),
    tags(
        (name = "decisions", description = "Allow or deny (`decide` scope)"),
        (name = "authzen", description = "The OpenID AuthZEN Authorization API 1.0: evaluation, evaluations, subject/resource/action search (`decide` scope); the metadata document needs no key"),
        (name = "management", description = "Accounts, members, invites (`manage` scope; the acting user in `X-Actor`)"),
        (name = "admin", description = "Policies, matrix, keys, metrics (`admin` scope)"),
        (name = "health", description = "Probes; no key needed"),
    )
)]
struct ApiDoc;

struct BearerScheme;

/// An OpenAPI 3.1 document, as `/openapi.json` answers (its parts are
/// OpenAPI's own; described here only as far as a client reads them).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct OpenApiDocument {
    /// The OpenAPI version, `3.1.x`.
    openapi: String,
    /// The API's title, version and description.
    info: std::collections::HashMap<String, serde_json::Value>,
    /// Where the API is served (`--public-url`).
    servers: Vec<std::collections::HashMap<String, serde_json::Value>>,
    /// Every route.
    paths: std::collections::HashMap<String, serde_json::Value>,
    /// Schemas and security schemes.
    components: std::collections::HashMap<String, serde_json::Value>,
}

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every route with its OpenAPI description, each group behind the key
/// check for its scope (no check when there is no state: the description
/// alone).
fn routes(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    let guarded = |router: OpenApiRouter<AppState>, need: Need| match state {
        Some(state) => router.route_layer(from_fn_with_state(
            (state.clone(), need),
            guard::authenticate,
        )),
        None => router,
    };
    let stamped = |router: OpenApiRouter<AppState>| match state {
        Some(state) => router.layer(from_fn_with_state(state.clone(), stamp_store_revision)),
        None => router,
    };
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(guarded(decisions::routes(), Need::Scope(Scope::Decide)))
        .merge(guarded(authzen::routes(), Need::Scope(Scope::Decide)))
        .merge(authzen::discovery())
        .merge(stamped(guarded(
            accounts::routes(),
            Need::Scope(Scope::Manage),
        )))
        .merge(stamped(guarded(
            accounts::user_routes(),
            Need::ManageOrUser,
        )))
        .merge(guarded(admin::routes(), Need::Scope(Scope::Admin)))
}

/// Gives every successful write of the management API the store revision
/// it committed (or a newer one): a `Cedard-Store-Revision` header and, in a
/// JSON object body, a `store_revision` field. A caller passes it back as
/// `"consistency": {"at_least": …}` so that a check on any replica sees the
/// write.
async fn stamp_store_revision(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let writes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let response = next.run(request).await;
    if !writes || !response.status().is_success() {
        return response;
    }
    // Read after the write returned: at least the revision it committed.
    let revision = state.pdp.store().revision();
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(
        "cedard-store-revision",
        axum::http::HeaderValue::from(revision),
    );
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return Response::from_parts(parts, body);
    }
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => return Response::from_parts(parts, axum::body::Body::empty()),
    };
    let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("store_revision".into(), revision.into());
            parts.headers.remove(header::CONTENT_LENGTH);
            axum::body::Body::from(serde_json::Value::Object(map).to_string())
        }
        _ => axum::body::Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// The API description: every route, body, answer and error shape, and the
/// bearer-key security scheme, as OpenAPI 3.1, served at `public_url` (the
/// document's one `servers` entry).
pub fn openapi(public_url: &str) -> OpenApiDoc {
    let (_, doc) = routes(None).split_for_parts();
    described(doc, public_url)
}

/// The description of the routes of `doc`, the probes and `/openapi.json`
/// itself, with the answers every route can give, a security requirement on
/// every operation (an empty list where no key is needed) and the server.
fn described(mut doc: OpenApiDoc, public_url: &str) -> OpenApiDoc {
    let (_, health) = admin::health().split_for_parts();
    doc.merge(health);
    let mut doc = with_common_responses(with_description_route(doc));
    doc.servers = Some(vec![utoipa::openapi::Server::new(
        public_url.trim_end_matches('/'),
    )]);
    with_actor_token(with_store_revision(doc))
}

/// Every operation that takes `X-Actor` also takes `X-Actor-Token` (the
/// acting user's verified token, beside a `manage` key), and needs only one
/// of the two: neither is required on its own.
fn with_actor_token(mut doc: OpenApiDoc) -> OpenApiDoc {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::Required;
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            let Some(params) = op.parameters.as_mut() else {
                continue;
            };
            let Some(actor) = params
                .iter_mut()
                .find(|p| p.name == "X-Actor" && p.parameter_in == ParameterIn::Header)
            else {
                continue;
            };
            actor.required = Required::False;
            let schema = actor.schema.clone();
            params.push(
                ParameterBuilder::new()
                    .name("X-Actor-Token")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some("The acting user's OpenID Connect / JWT token, verified against the trusted issuers (`--issuers`); instead of `X-Actor`, which `--actor token-only` turns off. A refused token is a 401 with a `reason`."))
                    .schema(schema)
                    .build(),
            );
        }
    }
    doc
}

/// Whether a security requirement list needs a key at all, and a scope.
fn security_needs(security: &[utoipa::openapi::security::SecurityRequirement]) -> (bool, bool) {
    let value = serde_json::to_value(security).unwrap_or_default();
    let requirements = value.as_array().cloned().unwrap_or_default();
    let keyed = requirements
        .iter()
        .any(|r| r.as_object().is_some_and(|r| !r.is_empty()));
    let scoped = requirements.iter().any(|r| {
        r.as_object().is_some_and(|r| {
            r.values()
                .any(|s| s.as_array().is_some_and(|s| !s.is_empty()))
        })
    });
    (keyed, scoped)
}

/// An error answer in the one error shape, as the description declares one.
fn error_response_doc(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// Declares what [`stamp_store_revision`] adds to every successful write of
/// the management API: the `Cedard-Store-Revision` header, and the
/// `store_revision` field of a JSON object answer.
fn with_store_revision(mut doc: OpenApiDoc) -> OpenApiDoc {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;
    let revision = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .description(Some("The store revision the write committed (or a newer one): pass it as `\"consistency\": {\"at_least\": …}` so that a check on any replica sees the write. Present on the answers of writes."))
            .build()
    };
    let mut stamped = std::collections::BTreeSet::new();
    for item in doc.paths.paths.values_mut() {
        let writes = [
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in writes.into_iter().flatten() {
            let management = op
                .tags
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == "management"));
            if !management {
                continue;
            }
            for (status, response) in op.responses.responses.iter_mut() {
                let (true, RefOr::T(response)) = (status.starts_with('2'), response) else {
                    continue;
                };
                response.headers.insert(
                    "Cedard-Store-Revision".into(),
                    HeaderBuilder::new()
                        .schema(revision())
                        .description(Some(
                            "The store revision the write committed (or a newer one)",
                        ))
                        .build(),
                );
                let schema = response
                    .content
                    .get("application/json")
                    .and_then(|c| c.schema.as_ref());
                if let Some(RefOr::Ref(r)) = schema {
                    if let Some(name) = r.ref_location.rsplit('/').next() {
                        stamped.insert(name.to_owned());
                    }
                }
            }
        }
    }
    if let Some(components) = doc.components.as_mut() {
        for name in stamped {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(&name) {
                object
                    .properties
                    .insert("store_revision".into(), revision().into());
            }
        }
    }
    doc
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    wired(state, Router::new())
}

/// The router with `extra` routes among the API's, under every layer the
/// daemon serves with (a test's handler meets the real wiring).
fn wired(state: AppState, extra: Router<AppState>) -> Router {
    let (router, doc) = routes(Some(&state)).split_for_parts();
    let router = router.merge(extra);
    let (health, _) = admin::health().split_for_parts();
    let doc = Arc::new(described(doc, state.accounts.public_url()));
    let described = Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(from_fn_with_state(
            (state.clone(), Need::AnyKey),
            guard::authenticate,
        ));
    let limits = state.limits.clone();
    let capped = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(guard::overloaded))
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::new(
            Semaphore::new(limits.max_concurrent),
        )))
        .timeout(limits.request_timeout);
    router
        .merge(described)
        // The console: HTML pages with their own session check, outside
        // the JSON API and its description.
        .merge(ui::router())
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint") })
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(capped)
        // Outside the cap: a body is read whole before its request takes a
        // place, so that a slow sender holds none.
        .layer(from_fn_with_state(state.clone(), guard::read_body))
        // The probes are outside the overload cap and the time limit: a
        // saturated daemon is alive and ready, not dead.
        .merge(health)
        .layer(from_fn_with_state(state.clone(), guard::screen))
        // A handler that panics is answered (a 503 in the error shape), so
        // that the connection and the other requests on it carry on.
        .layer(CatchPanicLayer::custom(error::panicked))
        .layer(map_response(move |r| json_errors(r, limits.max_body)))
        .layer(from_fn(guard::count))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(guard::MakeId))
        .layer(from_fn(guard::sane_request_id))
        .with_state(state)
}

/// The router of `--metrics-listen`: `/metrics` alone, without a key, for
/// a private monitoring network, behind the same `Host` screen as the main
/// listener.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<AppState>| async move {
                    match state.metrics.as_ref() {
                        Some(handle) => (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            metrics::render(handle, &state),
                        )
                            .into_response(),
                        None => ApiError::new(Code::NotFound, "metrics are not recorded")
                            .into_response(),
                    }
                },
            ),
        )
        .fallback(|| async { ApiError::new(Code::NotFound, "only /metrics is served here") })
        // The main listener's `Host` screen: a web page must not read the
        // metrics through DNS rebinding either.
        .layer(from_fn_with_state(state.clone(), guard::screen))
        .with_state(state)
}

/// Declares what every route has besides its own answers: a security
/// requirement (an empty list where no key is needed), and the answers a
/// `Host` cedard does not serve (400), a body over the limit (413), not
/// JSON (415) or not sent within `--body-timeout-ms` (408) where the route
/// takes one, a missing key (401) and a missing scope (403) where it needs
/// them, and an overload or timeout (503) except on the probes, which are
/// outside the cap.
fn with_common_responses(mut doc: OpenApiDoc) -> OpenApiDoc {
    let error = error_response_doc;
    for (path, item) in doc.paths.paths.iter_mut() {
        let probe = path == "/healthz" || path == "/readyz";
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let takes_body = op.request_body.is_some();
            let (keyed, scoped) = security_needs(op.security.get_or_insert_with(Vec::new));
            let responses = &mut op.responses.responses;
            if keyed {
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("No valid caller key (`unauthenticated`)"));
            }
            if scoped {
                responses.entry("403".into()).or_insert_with(|| {
                    error("The key lacks the scope the route needs, or the policies deny the acting user (`forbidden`)")
                });
            }
            responses.entry("400".into()).or_insert_with(|| {
                error("Bad input, or a `Host` cedard does not serve (`invalid_host`)")
            });
            if takes_body {
                responses
                    .entry("413".into())
                    .or_insert_with(|| error("The body is over `--max-body-bytes` (`too_large`)"));
                responses.entry("415".into()).or_insert_with(|| {
                    error("The body is not `application/json` (`unsupported_media_type`)")
                });
                responses.entry("408".into()).or_insert_with(|| {
                    error("The body did not arrive within `--body-timeout-ms` (`body_timeout`)")
                });
            }
            if !probe {
                responses.entry("503".into()).or_insert_with(|| {
                    error("Overloaded (`overloaded`, with `Retry-After`), out of time (`timeout`) or a store fault (`unavailable`); never a decision")
                });
            }
        }
    }
    doc
}

/// Adds `/openapi.json` itself to the description.
fn with_description_route(mut doc: OpenApiDoc) -> OpenApiDoc {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let json = |name: &str| {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(name)))
            .build()
    };
    let operation = OperationBuilder::new()
        .summary(Some("This document"))
        .description(Some("Any caller key may read it, whatever its scopes."))
        .operation_id(Some("openapi"))
        .tag("health")
        .response(
            "200",
            ResponseBuilder::new()
                .description("OpenAPI 3.1, as JSON")
                .content("application/json", json("OpenApiDocument")),
        )
        .response(
            "401",
            ResponseBuilder::new()
                .description("No valid caller key")
                .content("application/json", json("ErrorBody")),
        )
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
        .build();
    doc.paths.paths.insert(
        "/openapi.json".into(),
        PathItem::new(HttpMethod::Get, operation),
    );
    doc
}

/// Gives the errors axum answers by itself (a wrong method, a body over the
/// limit, a path that is not UTF-8) the one JSON error shape, so that
/// clients parse every error alike. A 4xx keeps axum's own explanation,
/// clipped (it may quote the request); a 5xx says nothing internal.
///
/// Requests hyper refuses before any route runs (a URI over 64 KiB: 414;
/// headers over its buffer: 431) are answered by hyper itself with an empty
/// body and the connection closed: hyper offers no hook to shape them.
async fn json_errors(response: Response, max_body: usize) -> Response {
    let status = response.status();
    // The console's pages answer errors as pages, already shaped.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let too_large =
        format!("the request body is over the {max_body}-byte limit (`--max-body-bytes`)");
    let (parts, body) = response.into_parts();
    let response = Response::from_parts(parts, axum::body::Body::empty());
    let said = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) if status.is_client_error() => {
            // Lowercase like every message, without touching what it quotes.
            let text = extract::clip(String::from_utf8_lossy(&bytes).trim());
            let mut chars = text.chars();
            chars
                .next()
                .map(|c| c.to_lowercase().chain(chars).collect())
                .unwrap_or_default()
        }
        _ => String::new(),
    };
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            Code::MethodNotAllowed,
            "this endpoint does not take that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (Code::TooLarge, too_large.as_str()),
        _ if status.is_client_error() && !said.is_empty() => (Code::InvalidRequest, said.as_str()),
        _ if status.is_client_error() => (
            Code::InvalidRequest,
            status.canonical_reason().unwrap_or("bad request"),
        ),
        _ => (Code::Internal, "internal error"),
    };
    // The status axum answered with is kept (it may be one the code
    // vocabulary has no word of its own for); the body takes the one shape.
    let mut fixed = error_response(code, message);
    *fixed.status_mut() = status;
    // Keep headers such as `Allow` that tell the client what would work.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    /// The daemon's state over the repository's pack and a data file in
    /// `dir`, as `server::run` builds it.
    fn state(dir: &std::path::Path) -> AppState {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let sources = crate::policy::Sources {
            policies: root.join("policies"),
            schema: root.join("schema"),
            ..Default::default()
        };
        let live = crate::policy::watch::LivePolicies::start(sources, std::time::Duration::ZERO)
            .unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(
            crate::store::Store::open(&dir.join("d.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        let pdp = Arc::new(crate::pdp::Pdp::new(
            live,
            store,
            crate::audit::DecisionLog::disabled(),
            crate::pdp::Limits::default(),
        ));
        let keys = Arc::new(crate::keys::KeyRing::default());
        let accounts = Arc::new(crate::accounts::Accounts::new(
            pdp.clone(),
            keys.clone(),
            crate::clock::Clock::system(),
            "http://127.0.0.1",
        ));
        AppState::new(Shared {
            pdp,
            accounts,
            keys,
            limits: Arc::new(HttpLimits::default()),
            metrics: None,
            console: Arc::new(ui::session::Console::new(false, None)),
            identity: Arc::new(crate::identity::Identity::new(0)),
        })
    }

    /// A handler that panics, under the daemon's real layers: a 503 in the
    /// one error shape, with the request's id, the panic's message kept out.
    #[tokio::test]
    async fn a_handler_that_panics_is_answered_503_in_the_error_shape() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let boom = Router::new().route(
            "/v1/boom",
            get(|| async {
                if true {
                    panic!("a page of garbage");
                }
                "unreachable"
            }),
        );
        let app = wired(state(dir.path()), boom);
        let request = Request::get("/v1/boom")
            .header("host", "127.0.0.1")
            .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                1,
            ))))
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let response = app.oneshot(request).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            response.headers().contains_key("x-request-id"),
            "{:?}",
            response.headers()
        );
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(
            !body.to_string().contains("garbage"),
            "the panic's message stays in the log: {body}"
        );
    }
}
