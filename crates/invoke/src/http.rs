//! `invoke serve`: the gateway's HTTP API on axum, with API keys mapped to applications.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ledger::Ledger;

use crate::bedrock::Bedrock;
use crate::gateway::{Front, Gateway, Outcome, Reply};

struct Served<L, B> {
    gateway: Arc<Gateway<L, B>>,
    keys: HashMap<String, String>,
}

/// The HTTP API over `gateway`, authenticating callers by `x-api-key` against `keys` (key ->
/// application).
pub fn router<L: Ledger, B: Bedrock>(
    gateway: Arc<Gateway<L, B>>,
    keys: HashMap<String, String>,
) -> Router {
    let state = Arc::new(Served { gateway, keys });
    Router::new()
        .route("/model/{model_id}/converse", post(converse::<L, B>))
        .route("/usage", get(usage::<L, B>))
        .fallback(|| async {
            to_response(Reply::error(
                404,
                "NotFound",
                "routes: POST /model/{modelId}/converse, GET /usage",
            ))
        })
        .with_state(state)
}

/// A request ID unique across processes: process, clock and a counter.
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}-{:x}-{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The caller's key: `x-api-key`, or `Authorization: Bearer <key>` (the Bedrock API key
/// convention, which SDKs and coding agents in Bedrock mode send).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok();
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

fn authenticate<L, B>(state: &Served<L, B>, headers: &HeaderMap) -> Result<String, Reply> {
    let Some(key) = presented_key(headers) else {
        return Err(Reply::error(
            401,
            "MissingApiKey",
            "send the application's API key in the `x-api-key` header or as `Authorization: Bearer KEY`",
        ));
    };
    state
        .keys
        .get(key)
        .cloned()
        .ok_or_else(|| Reply::error(403, "InvalidApiKey", "the API key is not known"))
}

async fn converse<L: Ledger, B: Bedrock>(
    State(state): State<Arc<Served<L, B>>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let application = match authenticate(&state, &headers) {
        Ok(app) => app,
        Err(reply) => return to_response(reply),
    };
    let limit = state.gateway.settings().max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return to_response(Reply::error(
                413,
                "PayloadTooLarge",
                format!("the body is larger than {limit} bytes"),
            ));
        }
    };
    // Run the request to completion in its own task: a client that disconnects must not cancel
    // the settlement of a reservation.
    let gateway = Arc::clone(&state.gateway);
    let task = tokio::spawn(async move {
        gateway
            .converse(&application, &model, &bytes, Front::Sync, &new_request_id())
            .await
    });
    match task.await {
        Ok(Outcome::Reply(reply)) => to_response(reply),
        Ok(_) => to_response(Reply::error(
            500,
            "InternalError",
            "unexpected async outcome on the sync front",
        )),
        Err(_) => to_response(Reply::error(
            500,
            "InternalError",
            "the request failed; its reservation was refunded",
        )),
    }
}

async fn usage<L: Ledger, B: Bedrock>(
    State(state): State<Arc<Served<L, B>>>,
    headers: HeaderMap,
) -> Response {
    match authenticate(&state, &headers) {
        Ok(app) => to_response(state.gateway.usage(&app).await),
        Err(reply) => to_response(reply),
    }
}

/// A reply as an HTTP response.
pub fn to_response(reply: Reply) -> Response {
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(reply.body),
    )
        .into_response();
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}
