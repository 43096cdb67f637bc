//! A test double of the Bedrock runtime's Converse API. No AWS emulator implements Converse, so
//! tests and benchmarks point `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` here.
//!
//! Usage is deterministic: input tokens are the prompt's UTF-8 bytes / 4 (rounded up) plus 3 per
//! message; text before a `cachePoint` block counts as cache-read tokens on even-length prompts and
//! cache-write tokens on odd ones; output tokens are `min(maxTokens, configured output)`.
//! Faults are injected per request by markers in any text block:
//! `[[stub:throttle]]` (429 ThrottlingException), `[[stub:error]]` (500), `[[stub:invalid]]`
//! (400 ValidationException), `[[stub:sleep=MS]]` (extra latency), `[[stub:output=N]]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// How the stub behaves.
#[derive(Debug, Clone)]
pub struct StubConfig {
    /// Latency added to every Converse call.
    pub latency: Duration,
    /// Output tokens generated when `maxTokens` allows.
    pub output_tokens: u64,
}

impl Default for StubConfig {
    fn default() -> Self {
        StubConfig {
            latency: Duration::ZERO,
            output_tokens: 64,
        }
    }
}

/// What the stub billed for one model: the usage it reported on successful calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billed {
    /// Successful calls.
    pub calls: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// Cache-write tokens.
    pub cache_write_tokens: u64,
}

#[derive(Default)]
struct Shared {
    billed: Mutex<BTreeMap<String, Billed>>,
    requests: Mutex<u64>,
}

/// A running stub.
pub struct Stub {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Stub {
    /// The endpoint URL, for `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was billed, by the model ID in the request path.
    pub fn billed(&self) -> BTreeMap<String, Billed> {
        self.shared.billed.lock().expect("stub lock").clone()
    }

    /// Converse requests received, successful or not.
    pub fn requests(&self) -> u64 {
        *self.shared.requests.lock().expect("stub lock")
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a stub on `addr` (port 0 for any free port) in the current tokio runtime.
pub async fn start(addr: SocketAddr, config: StubConfig) -> std::io::Result<Stub> {
    let shared = Arc::new(Shared::default());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(Arc::clone(&shared), config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Stub {
        addr,
        shared,
        shutdown: Some(tx),
    })
}

fn router(shared: Arc<Shared>, config: StubConfig) -> Router {
    Router::new()
        .route("/model/{model_id}/converse", post(converse))
        .route("/_stub/billed", get(billed))
        .with_state((shared, Arc::new(config)))
}

type AppState = (Arc<Shared>, Arc<StubConfig>);

async fn billed(State((shared, _)): State<AppState>) -> Response {
    let billed = shared.billed.lock().expect("stub lock").clone();
    let body: serde_json::Map<String, Value> = billed
        .into_iter()
        .map(|(model, b)| {
            (model, json!({
                "calls": b.calls, "inputTokens": b.input_tokens, "outputTokens": b.output_tokens,
                "cacheReadInputTokens": b.cache_read_tokens, "cacheWriteInputTokens": b.cache_write_tokens
            }))
        })
        .collect();
    axum::Json(Value::Object(body)).into_response()
}

/// A fresh request ID, as Bedrock sends in `x-amzn-RequestId`.
fn request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "stub-{:016x}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_str(kind).expect("ascii"),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    // Bedrock answers every call with a request ID; clients (boto3's error path) read it.
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&request_id()).expect("ascii"),
    );
    (status, headers, json!({ "message": message }).to_string()).into_response()
}

fn texts(request: &Value) -> Vec<(String, bool)> {
    // (text, before-a-cache-point)
    let mut out = Vec::new();
    let mut blocks: Vec<&Value> = Vec::new();
    if let Some(system) = request.get("system").and_then(Value::as_array) {
        blocks.extend(system);
    }
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        for m in messages {
            if let Some(content) = m.get("content").and_then(Value::as_array) {
                blocks.extend(content);
            }
        }
    }
    let cache_index = blocks.iter().rposition(|b| b.get("cachePoint").is_some());
    for (i, block) in blocks.iter().enumerate() {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            out.push((text.to_string(), cache_index.is_some_and(|c| i < c)));
        }
    }
    out
}

fn marker(texts: &[(String, bool)], name: &str) -> Option<String> {
    let open = format!("[[stub:{name}");
    texts.iter().find_map(|(t, _)| {
        let start = t.find(&open)? + open.len();
        let rest = &t[start..];
        let end = rest.find("]]")?;
        Some(rest[..end].trim_start_matches('=').to_string())
    })
}

async fn converse(
    State((shared, config)): State<AppState>,
    Path(model_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    *shared.requests.lock().expect("stub lock") += 1;
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "malformed JSON",
        );
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "messages is required",
        );
    };
    let texts = texts(&request);
    let mut latency = config.latency;
    if let Some(ms) = marker(&texts, "sleep").and_then(|v| v.parse::<u64>().ok()) {
        latency += Duration::from_millis(ms);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if marker(&texts, "throttle").is_some() {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        );
    }
    if marker(&texts, "error").is_some() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "stub: injected server error",
        );
    }
    if marker(&texts, "invalid").is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "stub: injected validation error",
        );
    }
    let mut fresh_bytes = 0u64;
    let mut cached_bytes = 0u64;
    for (text, cached) in &texts {
        if *cached {
            cached_bytes += text.len() as u64
        } else {
            fresh_bytes += text.len() as u64
        }
    }
    let input = fresh_bytes.div_ceil(4) + 3 * messages.len() as u64;
    let cached = cached_bytes.div_ceil(4);
    let (cache_read, cache_write) = if (cached_bytes + fresh_bytes).is_multiple_of(2) {
        (cached, 0)
    } else {
        (0, cached)
    };
    let max_tokens = request
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64)
        .unwrap_or(4096);
    let wanted = marker(&texts, "output")
        .and_then(|v| v.parse().ok())
        .unwrap_or(config.output_tokens);
    let output = wanted.min(max_tokens);
    let stop = if wanted > max_tokens {
        "max_tokens"
    } else {
        "end_turn"
    };
    {
        let mut billed = shared.billed.lock().expect("stub lock");
        let b = billed.entry(model_id.clone()).or_default();
        b.calls += 1;
        b.input_tokens += input;
        b.output_tokens += output;
        b.cache_read_tokens += cache_read;
        b.cache_write_tokens += cache_write;
    }
    let mut usage = json!({ "inputTokens": input, "outputTokens": output, "totalTokens": input + output + cache_read + cache_write });
    if cache_read > 0 {
        usage["cacheReadInputTokens"] = json!(cache_read);
    }
    if cache_write > 0 {
        usage["cacheWriteInputTokens"] = json!(cache_write);
    }
    let body = json!({
        "output": { "message": { "role": "assistant", "content": [{ "text": format!("stub reply from {model_id}: {output} tokens") }] } },
        "stopReason": stop,
        "usage": usage,
        "metrics": { "latencyMs": latency.as_millis() as u64 }
    });
    (
        [
            ("content-type", "application/json".to_string()),
            ("x-amzn-requestid", request_id()),
        ],
        body.to_string(),
    )
        .into_response()
}
