//! The baseline for `benches/load.sh`: an axum endpoint that parses the same
//! JSON body as `/v1/is_authorized` and answers a fixed deny, doing no policy
//! work. The ratio of cedard's rate to this one's is the cost of deciding.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

async fn check(body: Bytes) -> Result<Json<Value>, StatusCode> {
    let parsed: Value = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    if parsed.get("principal").is_none() {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(Json(
        json!({"decision": "deny", "reasons": [], "errors": []}),
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8181".into());
    let app = Router::new().route("/v1/is_authorized", post(check));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
