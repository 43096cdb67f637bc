//! A test double of the Bedrock runtime's Converse and CountTokens APIs. No AWS emulator
//! implements them, so tests and benchmarks point `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` here.
//!
//! It bills as Bedrock does, at least as strictly: **every started generation is billed** the
//! moment it starts, whether the caller then times out, disconnects or gets a server error; only
//! refusals (validation, access, throttling, model not ready, unavailable) bill nothing.
//!
//! Usage is deterministic. Input tokens: the text's UTF-8 bytes / 4 (rounded up), plus 3 per
//! message and 1 per content block; tool definitions by their JSON bytes / 4 plus the hidden
//! tool-use prompt (Anthropic's published counts: 346 with `auto`, 313 with `any`/`tool`; 600 for
//! other families); images 1,600; text documents their decoded bytes / 4; PDF, Word and Excel
//! documents 3 tokens per decoded byte plus 1,000 (they expand past their bytes). Text before a
//! `cachePoint` block counts as cache-read tokens on even-length prompts and cache-write tokens on
//! odd ones. The output cap is the largest of `inferenceConfig.maxTokens` and any cap in
//! `additionalModelRequestFields` (`max_tokens`, `max_gen_len`, `max_new_tokens`, ...): a raised
//! cap is honoured, as the model's own field is. Output tokens are `min(cap, configured output)`.
//!
//! Faults by markers in any text block: refusals `[[stub:throttle]]` (429), `[[stub:invalid]]`
//! (400), `[[stub:denied]]` (403), `[[stub:notready]]` (429 ModelNotReadyException),
//! `[[stub:unavailable]]` (503); after the generation started `[[stub:error]]` (500),
//! `[[stub:modeltimeout]]` (408 ModelTimeoutException), `[[stub:nousage]]` (200 without `usage`);
//! `[[stub:sleep=MS]]` (latency after the generation started), `[[stub:output=N]]`.

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

/// What the stub billed for one model: every generation it started, answered or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billed {
    /// Generations started (and billed).
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

impl Billed {
    /// Every billed token of every kind.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
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

    /// Every token billed, over every model.
    pub fn billed_tokens(&self) -> u64 {
        self.billed().values().map(Billed::total_tokens).sum()
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
        .route("/model/{model_id}/count-tokens", post(count_tokens))
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
    let blocks = blocks(request);
    let cache_index = blocks.iter().rposition(|b| b.get("cachePoint").is_some());
    for (i, block) in blocks.iter().enumerate() {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            out.push((text.to_string(), cache_index.is_some_and(|c| i < c)));
        }
    }
    out
}

fn blocks(request: &Value) -> Vec<&Value> {
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
    blocks
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

/// Tokens of a document or image block, as the stub's model counts them.
fn media_tokens(block: &Value) -> u64 {
    if block.get("image").is_some() {
        return 1_600;
    }
    let Some(document) = block.get("document") else {
        return 0;
    };
    let bytes = document
        .pointer("/source/bytes")
        .and_then(Value::as_str)
        .map_or(0, |b64| (b64.len() as u64 / 4) * 3);
    let format = document.get("format").and_then(Value::as_str).unwrap_or("");
    if ["pdf", "doc", "docx", "xls", "xlsx"].contains(&format.to_ascii_lowercase().as_str()) {
        bytes * 3 + 1_000
    } else {
        bytes.div_ceil(4)
    }
}

/// The input the stub's model bills for a request: (fresh input, cache read, cache write).
fn input_usage(model_id: &str, request: &Value) -> (u64, u64, u64) {
    let texts = texts(request);
    let blocks = blocks(request);
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let mut fresh_bytes = 0u64;
    let mut cached_bytes = 0u64;
    for (text, cached) in &texts {
        if *cached {
            cached_bytes += text.len() as u64
        } else {
            fresh_bytes += text.len() as u64
        }
    }
    let mut input = fresh_bytes.div_ceil(4) + 3 * messages + blocks.len() as u64;
    for block in &blocks {
        input += media_tokens(block);
        if let Some(inner) = block
            .pointer("/toolResult/content")
            .and_then(Value::as_array)
        {
            input += inner.iter().map(media_tokens).sum::<u64>();
        }
    }
    if let Some(tools) = request.get("toolConfig") {
        input += (tools.to_string().len() as u64).div_ceil(4);
        let offered = tools
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t.get("toolSpec").is_some()));
        if offered {
            let forced = tools
                .get("toolChoice")
                .and_then(Value::as_object)
                .is_some_and(|c| c.contains_key("any") || c.contains_key("tool"));
            input += match (model_id.contains("anthropic"), forced) {
                (true, false) => 346,
                (true, true) => 313,
                (false, _) => 600,
            };
        }
    }
    let cached = cached_bytes.div_ceil(4);
    let (cache_read, cache_write) = if (cached_bytes + fresh_bytes).is_multiple_of(2) {
        (cached, 0)
    } else {
        (0, cached)
    };
    (input, cache_read, cache_write)
}

/// The output cap the model honours: the largest of Converse's `maxTokens` and any cap in the
/// model's own fields.
fn output_cap(request: &Value) -> u64 {
    fn walk(v: &Value, max: &mut Option<u64>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match v.as_u64() {
                        Some(n)
                            if [
                                "max_tokens",
                                "maxTokens",
                                "max_gen_len",
                                "max_new_tokens",
                                "maxTokenCount",
                                "max_completion_tokens",
                                "max_output_tokens",
                            ]
                            .contains(&k.as_str()) =>
                        {
                            *max = Some(max.map_or(n, |m: u64| m.max(n)))
                        }
                        _ => walk(v, max),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, max)),
            _ => {}
        }
    }
    let mut max = request
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64);
    if let Some(fields) = request.get("additionalModelRequestFields") {
        walk(fields, &mut max);
    }
    max.unwrap_or(4096)
}

async fn count_tokens(
    State((shared, _)): State<AppState>,
    Path(model_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    *shared.requests.lock().expect("stub lock") += 1;
    let Some(request) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/input/converse").cloned())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "input.converse is required",
        );
    };
    if !model_id.contains("anthropic") {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "The provided model doesn't support counting tokens.",
        );
    }
    let (input, cache_read, cache_write) = input_usage(&model_id, &request);
    (
        [
            ("content-type", "application/json".to_string()),
            ("x-amzn-requestid", request_id()),
        ],
        json!({ "inputTokens": input + cache_read + cache_write }).to_string(),
    )
        .into_response()
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
    if request.get("messages").and_then(Value::as_array).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "messages is required",
        );
    }
    let texts = texts(&request);
    // Refusals: Bedrock generated nothing and bills nothing.
    let refusals = [
        (
            "throttle",
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        (
            "notready",
            StatusCode::TOO_MANY_REQUESTS,
            "ModelNotReadyException",
            "stub: the model is not ready",
        ),
        (
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "stub: service unavailable",
        ),
        (
            "invalid",
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "stub: injected validation error",
        ),
        (
            "denied",
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "stub: access denied",
        ),
    ];
    for (name, status, kind, message) in refusals {
        if marker(&texts, name).is_some() {
            return error(status, kind, message);
        }
    }
    // The generation starts: it is billed now, whatever becomes of the answer.
    let (input, cache_read, cache_write) = input_usage(&model_id, &request);
    let cap = output_cap(&request);
    let wanted = marker(&texts, "output")
        .and_then(|v| v.parse().ok())
        .unwrap_or(config.output_tokens);
    let output = wanted.min(cap);
    let stop = if wanted > cap {
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
    let mut latency = config.latency;
    if let Some(ms) = marker(&texts, "sleep").and_then(|v| v.parse::<u64>().ok()) {
        latency += Duration::from_millis(ms);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if marker(&texts, "error").is_some() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "stub: injected server error",
        );
    }
    if marker(&texts, "modeltimeout").is_some() {
        return error(
            StatusCode::REQUEST_TIMEOUT,
            "ModelTimeoutException",
            "stub: the model timed out",
        );
    }
    let mut usage = json!({ "inputTokens": input, "outputTokens": output, "totalTokens": input + output + cache_read + cache_write });
    if cache_read > 0 {
        usage["cacheReadInputTokens"] = json!(cache_read);
    }
    if cache_write > 0 {
        usage["cacheWriteInputTokens"] = json!(cache_write);
    }
    let mut body = json!({
        "output": { "message": { "role": "assistant", "content": [{ "text": format!("stub reply from {model_id}: {output} tokens") }] } },
        "stopReason": stop,
        "usage": usage,
        "metrics": { "latencyMs": latency.as_millis() as u64 }
    });
    if marker(&texts, "nousage").is_some() {
        body.as_object_mut().expect("an object").remove("usage");
    }
    (
        [
            ("content-type", "application/json".to_string()),
            ("x-amzn-requestid", request_id()),
        ],
        body.to_string(),
    )
        .into_response()
}
