//! A test double of the Bedrock runtime: Converse, ConverseStream, InvokeModel (Anthropic
//! Messages, Amazon Nova and Meta Llama bodies), InvokeModelWithResponseStream and CountTokens.
//! No AWS emulator implements them, so tests and benchmarks point
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` here. Streams speak the event-stream framing
//! (`application/vnd.amazon.eventstream`, encoded by `aws-smithy-eventstream`) with Bedrock's
//! event shapes, so real SDKs parse them.
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
//! odd ones, written with the TTL of the cache point it precedes (`ttl: 1h`, else five minutes;
//! Anthropic `cache_control.ttl` alike) and reported by TTL as Bedrock does (`cacheDetails`,
//! Anthropic's `cache_creation`). The output cap is the largest of `inferenceConfig.maxTokens` and any cap in
//! `additionalModelRequestFields` (`max_tokens`, `max_gen_len`, `max_new_tokens`, ...): a raised
//! cap is honoured, as the model's own field is. Output tokens are `min(cap, configured output)`.
//!
//! Faults by markers in any text block: refusals `[[stub:throttle]]` (429), `[[stub:invalid]]`
//! (400), `[[stub:denied]]` (403), `[[stub:notready]]` (429 ModelNotReadyException),
//! `[[stub:unavailable]]` (503); after the generation started `[[stub:error]]` (500),
//! `[[stub:modeltimeout]]` (408 ModelTimeoutException), `[[stub:nousage]]` (200 without `usage`);
//! `[[stub:sleep=MS]]` (latency after the generation started), `[[stub:output=N]]`. Streams
//! also take `[[stub:streamerror]]` (a `modelStreamErrorException` event after the first
//! delta), `[[stub:streamcut]]` (the connection cut after the first delta) and
//! `[[stub:gap=MS]]` (a pause between events). A stream is billed in full when it starts, as a
//! started generation is, whoever reads it.
//!
//! Native bodies are counted as Converse's are: Anthropic `messages` (string or blocks),
//! `system`, `tools` (JSON bytes / 4 plus the tool prompt); Nova as Converse; Llama `prompt`
//! bytes / 4 plus 3. Output caps: Anthropic `max_tokens`, Nova `inferenceConfig.max_new_tokens`,
//! Llama `max_gen_len`.

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
    /// Cache-write tokens, whatever their TTL.
    pub cache_write_tokens: u64,
    /// Of the cache-write tokens, those written with a one-hour TTL.
    pub cache_write_1h_tokens: u64,
}

#[derive(Default)]
struct Shared {
    billed: Mutex<BTreeMap<String, Billed>>,
    /// By a Converse request's `requestMetadata` (`k=v` pairs in key order), as Bedrock's
    /// invocation logs let an account attribute its bill.
    by_metadata: Mutex<BTreeMap<String, Billed>>,
    requests: Mutex<u64>,
    last: Mutex<Option<(String, bytes::Bytes)>>,
}

/// A running stub.
pub struct Stub {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Billed {
    /// Adds another bill (one generation's, say) to this one.
    fn add(&mut self, other: &Billed) {
        self.calls += other.calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.cache_write_1h_tokens += other.cache_write_1h_tokens;
    }

    /// What was billed, as the gateway's usage: cache writes reported by TTL, as Bedrock does.
    pub fn usage(&self) -> budget::Usage {
        budget::Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            cache_write_5m_tokens: self.cache_write_tokens - self.cache_write_1h_tokens,
            cache_write_1h_tokens: self.cache_write_1h_tokens,
        }
    }

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

    /// What was billed, by the Converse requests' `requestMetadata` as `k=v` pairs in key order
    /// joined by `,` (`""` for requests without one).
    pub fn billed_by_metadata(&self) -> BTreeMap<String, Billed> {
        self.shared.by_metadata.lock().expect("stub lock").clone()
    }

    /// Converse requests received, successful or not.
    pub fn requests(&self) -> u64 {
        *self.shared.requests.lock().expect("stub lock")
    }

    /// The last request received: its path under `/model/` and its body, byte for byte.
    pub fn last_request(&self) -> Option<(String, bytes::Bytes)> {
        self.shared.last.lock().expect("stub lock").clone()
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
        .route("/model/{model_id}/{operation}", post(operation))
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
                "cacheReadInputTokens": b.cache_read_tokens, "cacheWriteInputTokens": b.cache_write_tokens,
                "cacheWrite1hInputTokens": b.cache_write_1h_tokens
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

/// A native InvokeModel body in Converse's shape, for counting: Anthropic's string contents and
/// typed blocks become `text` / `image` blocks, `tools` a `toolConfig`; Llama's prompt one
/// message.
fn as_converse(family: &str, body: &Value) -> Value {
    match family {
        "anthropic" => {
            let block = |b: &Value| -> Value {
                match b {
                    Value::String(t) => json!({ "text": t }),
                    _ => match b.get("type").and_then(Value::as_str) {
                        Some("text") => json!({ "text": b["text"] }),
                        Some("image") => json!({ "image": {} }),
                        Some("cache_control") => json!({ "cachePoint": {} }),
                        _ => json!({ "text": b.to_string() }),
                    },
                }
            };
            let blocks = |c: &Value| -> Vec<Value> {
                match c {
                    Value::Array(items) => {
                        let mut out = Vec::new();
                        for item in items {
                            out.push(block(item));
                            if let Some(control) = item.get("cache_control") {
                                out.push(json!({ "cachePoint": { "ttl": control.get("ttl").cloned().unwrap_or(json!("5m")) } }));
                            }
                        }
                        out
                    }
                    other => vec![block(other)],
                }
            };
            let messages: Vec<Value> = body["messages"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| json!({ "role": m["role"], "content": blocks(&m["content"]) }))
                        .collect()
                })
                .unwrap_or_default();
            let mut out = json!({ "messages": messages });
            if let Some(system) = body.get("system") {
                out["system"] = json!(blocks(system));
            }
            if let Some(tools) = body.get("tools").and_then(Value::as_array)
                && !tools.is_empty()
            {
                let forced = body
                    .pointer("/tool_choice/type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t == "any" || t == "tool");
                let mut config = json!({ "tools": tools.iter().map(|t| json!({ "toolSpec": t })).collect::<Vec<_>>() });
                if forced {
                    config["toolChoice"] = json!({ "any": {} });
                }
                out["toolConfig"] = config;
            }
            out
        }
        "llama" => {
            json!({ "messages": [{ "role": "user", "content": [{ "text": body["prompt"] }] }] })
        }
        _ => body.clone(),
    }
}

/// The text blocks of a request, where the fault markers are.
fn texts(request: &Value) -> Vec<String> {
    blocks(request)
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
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

fn marker(texts: &[String], name: &str) -> Option<String> {
    let open = format!("[[stub:{name}");
    texts.iter().find_map(|t| {
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

/// The input the stub's model bills for a request.
struct InputUsage {
    /// Fresh input tokens.
    input: u64,
    cache_read: u64,
    /// Cache writes, whatever their TTL.
    cache_write: u64,
    /// Of the cache writes, those with a one-hour TTL.
    cache_write_1h: u64,
}

/// Text up to each `cachePoint` is cached with that point's TTL (`5m` unless it says `1h`); text
/// after the last one is fresh.
fn input_usage(model_id: &str, request: &Value) -> InputUsage {
    let blocks = blocks(request);
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let (mut pending, mut cached_5m, mut cached_1h) = (0u64, 0u64, 0u64);
    for block in &blocks {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            pending += text.len() as u64;
        } else if let Some(point) = block.get("cachePoint") {
            if point.get("ttl").and_then(Value::as_str) == Some("1h") {
                cached_1h += pending;
            } else {
                cached_5m += pending;
            }
            pending = 0;
        }
    }
    let fresh_bytes = pending;
    let cached_bytes = cached_5m + cached_1h;
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
    let (written_5m, written_1h) = (cached_5m.div_ceil(4), cached_1h.div_ceil(4));
    let cached = written_5m + written_1h;
    let (cache_read, cache_write, cache_write_1h) =
        if (cached_bytes + fresh_bytes).is_multiple_of(2) {
            (cached, 0, 0)
        } else {
            (0, cached, written_1h)
        };
    InputUsage {
        input,
        cache_read,
        cache_write,
        cache_write_1h,
    }
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

/// The family of a model, by its ID; for an application inference profile ARN (which Bedrock
/// resolves to its model, and the stub cannot) by the body's shape.
fn family_of(model_id: &str, body: &Value) -> &'static str {
    let base = model_id.rsplit('/').next().unwrap_or(model_id);
    if model_id.contains(":application-inference-profile/") {
        return if body.get("anthropic_version").is_some() {
            "anthropic"
        } else if body.get("prompt").is_some() {
            "llama"
        } else {
            "nova"
        };
    }
    if base.contains("anthropic.") {
        "anthropic"
    } else if base.contains("amazon.nova") {
        "nova"
    } else if base.contains("meta.llama") {
        "llama"
    } else {
        "other"
    }
}

async fn operation(
    State(state): State<AppState>,
    Path((model_id, operation)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    *state.0.last.lock().expect("stub lock") =
        Some((format!("{model_id}/{operation}"), body.clone()));
    match operation.as_str() {
        "count-tokens" => count_tokens(state, model_id, body),
        "converse" | "converse-stream" | "invoke" | "invoke-with-response-stream" => {
            generate(state, model_id, &operation, body).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "stub: unknown operation",
        ),
    }
}

fn count_tokens((shared, _): AppState, model_id: String, body: axum::body::Bytes) -> Response {
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
    let InputUsage {
        input,
        cache_read,
        cache_write,
        ..
    } = input_usage(&model_id, &request);
    (
        [
            ("content-type", "application/json".to_string()),
            ("x-amzn-requestid", request_id()),
        ],
        json!({ "inputTokens": input + cache_read + cache_write }).to_string(),
    )
        .into_response()
}

/// The top-level fields of a Converse request.
const CONVERSE_FIELDS: &[&str] = &[
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "promptVariables",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
    "outputConfig",
];

/// One generation: what the model was asked and what it produced.
struct Generation {
    model_id: String,
    family: &'static str,
    input: u64,
    cache_read: u64,
    cache_write: u64,
    cache_write_1h: u64,
    output: u64,
    stop: &'static str,
    latency: Duration,
    texts: Vec<String>,
}

async fn generate(
    (shared, config): AppState,
    model_id: String,
    operation: &str,
    body: axum::body::Bytes,
) -> Response {
    *shared.requests.lock().expect("stub lock") += 1;
    let Ok(raw) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "malformed JSON",
        );
    };
    let native = operation.starts_with("invoke");
    let family = if native {
        family_of(&model_id, &raw)
    } else {
        "converse"
    };
    if native && family == "other" {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "stub: no native body format for this model",
        );
    }
    // Converse's schema: a top-level field Bedrock does not know is refused, as its native-body
    // validation refuses one ("extraneous key [...] is not permitted").
    if !native
        && let Some(unknown) = raw.as_object().and_then(|o| {
            o.keys()
                .find(|k| !CONVERSE_FIELDS.contains(&k.as_str()))
                .cloned()
        })
    {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &format!("Malformed input request: extraneous key [{unknown}] is not permitted"),
        );
    }
    let request = as_converse(family, &raw);
    let missing = match family {
        "llama" => !raw.get("prompt").is_some_and(Value::is_string),
        _ => request.get("messages").and_then(Value::as_array).is_none(),
    };
    if missing {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "messages is required",
        );
    }
    if family == "anthropic" && raw.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "max_tokens: field required",
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
    let InputUsage {
        mut input,
        cache_read,
        cache_write,
        cache_write_1h,
    } = input_usage(&model_id, &request);
    if family == "llama" {
        input = (raw["prompt"].as_str().unwrap_or("").len() as u64).div_ceil(4) + 3;
    }
    let cap = match family {
        "anthropic" => raw["max_tokens"].as_u64().unwrap_or(4096),
        "nova" => raw
            .pointer("/inferenceConfig/max_new_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(5000),
        "llama" => raw["max_gen_len"].as_u64().unwrap_or(512),
        _ => output_cap(&request),
    };
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
        let call = Billed {
            calls: 1,
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            cache_write_1h_tokens: cache_write_1h,
        };
        let mut billed = shared.billed.lock().expect("stub lock");
        billed.entry(model_id.clone()).or_default().add(&call);
        let tag = raw["requestMetadata"]
            .as_object()
            .map(|m| {
                let mut pairs: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                pairs.sort();
                pairs.join(",")
            })
            .unwrap_or_default();
        let mut by = shared.by_metadata.lock().expect("stub lock");
        by.entry(tag).or_default().add(&call);
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
    let g = Generation {
        model_id,
        family,
        input,
        cache_read,
        cache_write,
        cache_write_1h,
        output,
        stop,
        latency,
        texts,
    };
    match operation {
        "converse" => converse_answer(&g),
        "invoke" => invoke_answer(&g),
        _ => stream_answer(g, operation == "converse-stream"),
    }
}

fn reply_text(g: &Generation) -> String {
    format!("stub reply from {}: {} tokens", g.model_id, g.output)
}

fn converse_usage(g: &Generation) -> Value {
    let mut usage = json!({ "inputTokens": g.input, "outputTokens": g.output, "totalTokens": g.input + g.output + g.cache_read + g.cache_write });
    if g.cache_read > 0 {
        usage["cacheReadInputTokens"] = json!(g.cache_read);
    }
    if g.cache_write > 0 {
        usage["cacheWriteInputTokens"] = json!(g.cache_write);
        // By TTL, one-hour writes first, as Bedrock sorts them.
        let details: Vec<Value> = [
            ("1h", g.cache_write_1h),
            ("5m", g.cache_write - g.cache_write_1h),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(ttl, n)| json!({ "ttl": ttl, "inputTokens": n }))
        .collect();
        usage["cacheDetails"] = json!(details);
    }
    usage
}

/// Anthropic's usage of a message: its cache writes in total and by TTL.
fn anthropic_usage(g: &Generation, output: u64) -> Value {
    json!({ "input_tokens": g.input, "output_tokens": output,
            "cache_read_input_tokens": g.cache_read, "cache_creation_input_tokens": g.cache_write,
            "cache_creation": { "ephemeral_5m_input_tokens": g.cache_write - g.cache_write_1h,
                                "ephemeral_1h_input_tokens": g.cache_write_1h } })
}

fn converse_answer(g: &Generation) -> Response {
    let mut body = json!({
        "output": { "message": { "role": "assistant", "content": [{ "text": reply_text(g) }] } },
        "stopReason": g.stop,
        "usage": converse_usage(g),
        "metrics": { "latencyMs": g.latency.as_millis() as u64 }
    });
    if marker(&g.texts, "nousage").is_some() {
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

fn invoke_answer(g: &Generation) -> Response {
    let nousage = marker(&g.texts, "nousage").is_some();
    let text = reply_text(g);
    let body = match g.family {
        "anthropic" => {
            let mut b = json!({
                "id": format!("msg_{}", request_id()), "type": "message", "role": "assistant",
                "model": g.model_id, "content": [{ "type": "text", "text": text }],
                "stop_reason": g.stop, "stop_sequence": null,
                "usage": anthropic_usage(g, g.output)
            });
            if nousage {
                b.as_object_mut().expect("object").remove("usage");
            }
            b
        }
        "nova" => {
            let mut b = json!({
                "output": { "message": { "role": "assistant", "content": [{ "text": text }] } },
                "stopReason": g.stop,
                "usage": { "inputTokens": g.input, "outputTokens": g.output, "totalTokens": g.input + g.output,
                           "cacheReadInputTokenCount": g.cache_read, "cacheWriteInputTokenCount": g.cache_write }
            });
            if nousage {
                b.as_object_mut().expect("object").remove("usage");
            }
            b
        }
        _ => {
            let mut b = json!({
                "generation": text, "prompt_token_count": g.input, "generation_token_count": g.output,
                "stop_reason": if g.stop == "max_tokens" { "length" } else { "stop" }
            });
            if nousage {
                let o = b.as_object_mut().expect("object");
                o.remove("prompt_token_count");
                o.remove("generation_token_count");
            }
            b
        }
    };
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("x-amzn-requestid", request_id()),
    ];
    if !nousage {
        headers.extend([
            ("x-amzn-bedrock-input-token-count", g.input.to_string()),
            ("x-amzn-bedrock-output-token-count", g.output.to_string()),
            (
                "x-amzn-bedrock-invocation-latency",
                g.latency.as_millis().to_string(),
            ),
        ]);
        if g.cache_read > 0 {
            headers.push((
                "x-amzn-bedrock-cache-read-input-token-count",
                g.cache_read.to_string(),
            ));
        }
        if g.cache_write > 0 {
            headers.push((
                "x-amzn-bedrock-cache-write-input-token-count",
                g.cache_write.to_string(),
            ));
        }
    }
    let mut response = body.to_string().into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).expect("ascii"));
    }
    response
}

/// One event-stream frame (`:message-type`, `:event-type` or `:exception-type`, JSON payload).
fn frame(kind: &str, name: &str, payload: &Value) -> bytes::Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue as H, Message};
    let type_header = if kind == "exception" {
        ":exception-type"
    } else {
        ":event-type"
    };
    let message = Message::new(bytes::Bytes::from(payload.to_string()))
        .add_header(Header::new(
            ":message-type",
            H::String(kind.to_string().into()),
        ))
        .add_header(Header::new(type_header, H::String(name.to_string().into())))
        .add_header(Header::new(
            ":content-type",
            H::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out).expect("a frame");
    bytes::Bytes::from(out)
}

/// An InvokeModelWithResponseStream `chunk` event: the model's own event, base64 in `bytes`.
fn chunk(inner: &Value) -> bytes::Bytes {
    frame(
        "event",
        "chunk",
        &json!({ "bytes": aws_smithy_types::base64::encode(inner.to_string()) }),
    )
}

fn stream_events(g: &Generation, converse: bool) -> (Vec<bytes::Bytes>, Vec<bytes::Bytes>) {
    // (events up to and including the first delta, the rest)
    let text = reply_text(g);
    let (first, second) = text.split_at(text.len() / 2);
    let nousage = marker(&g.texts, "nousage").is_some();
    let metrics = json!({ "inputTokenCount": g.input, "outputTokenCount": g.output,
        "invocationLatency": g.latency.as_millis() as u64, "firstByteLatency": 1,
        "cacheReadInputTokenCount": g.cache_read, "cacheWriteInputTokenCount": g.cache_write });
    if converse {
        let head = vec![
            frame("event", "messageStart", &json!({ "role": "assistant" })),
            frame(
                "event",
                "contentBlockDelta",
                &json!({ "contentBlockIndex": 0, "delta": { "text": first } }),
            ),
        ];
        let mut tail = vec![
            frame(
                "event",
                "contentBlockDelta",
                &json!({ "contentBlockIndex": 0, "delta": { "text": second } }),
            ),
            frame(
                "event",
                "contentBlockStop",
                &json!({ "contentBlockIndex": 0 }),
            ),
            frame("event", "messageStop", &json!({ "stopReason": g.stop })),
        ];
        if !nousage {
            tail.push(frame("event", "metadata", &json!({ "usage": converse_usage(g), "metrics": { "latencyMs": g.latency.as_millis() as u64 } })));
        }
        return (head, tail);
    }
    match g.family {
        "anthropic" => {
            let head = vec![
                chunk(
                    &json!({ "type": "message_start", "message": { "id": format!("msg_{}", request_id()), "type": "message", "role": "assistant", "model": g.model_id, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": anthropic_usage(g, 1) } }),
                ),
                chunk(
                    &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
                ),
                chunk(
                    &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": first } }),
                ),
            ];
            let mut stop = json!({ "type": "message_stop" });
            if !nousage {
                stop["amazon-bedrock-invocationMetrics"] = metrics;
            }
            let mut tail = vec![
                chunk(
                    &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": second } }),
                ),
                chunk(&json!({ "type": "content_block_stop", "index": 0 })),
            ];
            if !nousage {
                tail.push(chunk(&json!({ "type": "message_delta", "delta": { "stop_reason": g.stop, "stop_sequence": null }, "usage": { "output_tokens": g.output } })));
            }
            tail.push(chunk(&stop));
            (head, tail)
        }
        "nova" => {
            let head = vec![
                chunk(&json!({ "messageStart": { "role": "assistant" } })),
                chunk(
                    &json!({ "contentBlockDelta": { "delta": { "text": first }, "contentBlockIndex": 0 } }),
                ),
            ];
            let mut last = json!({ "metadata": { "usage": { "inputTokens": g.input, "outputTokens": g.output } } });
            let mut tail = vec![
                chunk(
                    &json!({ "contentBlockDelta": { "delta": { "text": second }, "contentBlockIndex": 0 } }),
                ),
                chunk(&json!({ "contentBlockStop": { "contentBlockIndex": 0 } })),
                chunk(&json!({ "messageStop": { "stopReason": g.stop } })),
            ];
            if !nousage {
                last["amazon-bedrock-invocationMetrics"] = metrics;
                tail.push(chunk(&last));
            }
            (head, tail)
        }
        _ => {
            let head = vec![chunk(
                &json!({ "generation": first, "prompt_token_count": g.input, "generation_token_count": 1, "stop_reason": null }),
            )];
            let mut last = json!({ "generation": second, "prompt_token_count": null, "generation_token_count": g.output,
                "stop_reason": if g.stop == "max_tokens" { "length" } else { "stop" } });
            if nousage {
                last["generation_token_count"] = Value::Null;
            } else {
                last["amazon-bedrock-invocationMetrics"] = metrics;
            }
            (head, vec![chunk(&last)])
        }
    }
}

fn stream_answer(g: Generation, converse: bool) -> Response {
    let (head, tail) = stream_events(&g, converse);
    let gap = marker(&g.texts, "gap")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let cut = marker(&g.texts, "streamcut").is_some();
    let failing = marker(&g.texts, "streamerror").is_some();
    let mut events: Vec<Result<bytes::Bytes, std::io::Error>> = head.into_iter().map(Ok).collect();
    if failing {
        events.push(Ok(frame(
            "exception",
            "modelStreamErrorException",
            &json!({ "message": "stub: the model stream failed", "originalStatusCode": 500 }),
        )));
    } else if cut {
        // A pause first, so the head is on the wire before the connection breaks.
        events.push(Ok(bytes::Bytes::new()));
        events.push(Err(std::io::Error::other("stub: connection cut")));
    } else {
        events.extend(tail.into_iter().map(Ok));
    }
    let stream = futures_util::stream::unfold(events.into_iter(), move |mut it| async move {
        let next = it.next()?;
        match (&next, gap) {
            (Ok(b), _) if b.is_empty() => tokio::time::sleep(Duration::from_millis(50)).await,
            (_, Some(gap)) => tokio::time::sleep(gap).await,
            _ => {}
        }
        Some((next, it))
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&request_id()).expect("ascii"),
    );
    response
}
