//! The operations the gateway passes through, one small adapter per body family: check the body,
//! bound its input, read or insert its output cap, name the fields that change its price, and
//! read its usage from the body, the headers or the event stream. Pure, so it can be fuzzed; the
//! budget decision itself is [`crate::gateway::Gateway::admit`]'s alone.

use budget::estimate::{
    additional_output_cap, at, input_token_bound, native_input_bound, native_tool_prompt_tokens,
    tool_prompt_tokens,
};
use budget::{PriceTier, Usage};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::gateway::{Reply, field, invalid};

/// A Bedrock runtime operation, by its path under `/model/{modelId}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    /// `converse`
    Converse,
    /// `converse-stream`
    ConverseStream,
    /// `invoke`
    Invoke,
    /// `invoke-with-response-stream`
    InvokeStream,
    /// `count-tokens` (free: passed through, never charged)
    CountTokens,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 5] = [
        Operation::Converse,
        Operation::ConverseStream,
        Operation::Invoke,
        Operation::InvokeStream,
        Operation::CountTokens,
    ];

    /// Its path segment.
    pub fn path(self) -> &'static str {
        match self {
            Operation::Converse => "converse",
            Operation::ConverseStream => "converse-stream",
            Operation::Invoke => "invoke",
            Operation::InvokeStream => "invoke-with-response-stream",
            Operation::CountTokens => "count-tokens",
        }
    }

    /// The operation of a path segment.
    pub fn from_path(segment: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.path() == segment)
    }

    /// Whether Bedrock answers it with an event stream.
    pub fn streams(self) -> bool {
        matches!(self, Operation::ConverseStream | Operation::InvokeStream)
    }
}

/// The shape of a body: Converse's, or a model family's own (InvokeModel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// Converse and ConverseStream, for every model.
    Converse,
    /// Anthropic Messages (`anthropic.*`).
    Anthropic,
    /// Amazon Nova (`amazon.nova-*`), `messages-v1`.
    Nova,
    /// Meta Llama (`meta.llama*`), prompt completion.
    Llama,
}

impl Family {
    /// The family of an operation's body for `model` (a model ID or system inference profile),
    /// or the 400 naming the family the gateway cannot bound.
    pub fn of(operation: Operation, model: &str) -> Result<Family, Reply> {
        if matches!(operation, Operation::Converse | Operation::ConverseStream) {
            return Ok(Family::Converse);
        }
        let base = foundation_model(model);
        if base.starts_with("anthropic.") {
            Ok(Family::Anthropic)
        } else if base.starts_with("amazon.nova") {
            Ok(Family::Nova)
        } else if base.starts_with("meta.llama") {
            Ok(Family::Llama)
        } else {
            let family = base.split(['.', '-']).next().unwrap_or(base);
            Err(field(
                400,
                "modelId",
                &format!(
                    "InvokeModel bodies of the `{family}` family cannot be bounded by the gateway (it bounds Anthropic, Amazon Nova and Meta Llama bodies); call Converse for model `{model}`"
                ),
            ))
        }
    }

    /// The field that holds its output cap, as a JSON pointer.
    pub fn cap_pointer(self) -> &'static str {
        match self {
            Family::Converse => "/inferenceConfig/maxTokens",
            Family::Anthropic => "/max_tokens",
            Family::Nova => "/inferenceConfig/max_new_tokens",
            Family::Llama => "/max_gen_len",
        }
    }
}

/// The foundation model of a model or system inference profile ID (`us.anthropic.x` →
/// `anthropic.x`).
pub fn foundation_model(model: &str) -> &str {
    let id = model.rsplit_once('/').map_or(model, |(_, id)| id);
    match id.split_once('.') {
        Some((prefix, rest))
            if ["us", "eu", "apac", "jp", "au", "ca", "us-gov", "global"].contains(&prefix) =>
        {
            rest
        }
        _ => id,
    }
}

/// A request checked and ready to send: the bytes for Bedrock, and what its reservation needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Shaped {
    /// The operation.
    pub operation: Operation,
    /// Its body's family.
    pub family: Family,
    /// The body as JSON (with the inserted output cap, if any).
    pub request: Value,
    /// The bytes sent to Bedrock: the caller's, unchanged, unless an output cap was inserted.
    #[serde(skip)]
    pub body: Bytes,
    /// Headers passed on.
    pub headers: Vec<(String, String)>,
    /// The largest output the request allows.
    pub max_tokens: u64,
    /// An upper bound of its input tokens, without the tool prompt (added per model).
    pub content_bound: u64,
    /// Fields that change the price per token (service tier, latency-optimized inference, cache
    /// TTLs other than five minutes): under USD limits, one-hour cache points are priced where
    /// the price book has a one-hour write price ([`is_one_hour_cache`]), one tier where it has
    /// the model's price in that tier ([`Shaped::price_tier`]); the others are refused.
    pub price_fields: Vec<(String, String)>,
}

/// Whether a price field is a one-hour cache point (`...cachePoint.ttl` / `...cache_control.ttl`
/// `1h`), which models with a one-hour cache-write price can be held to a USD limit for.
pub fn is_one_hour_cache(path: &str, value: &str) -> bool {
    value == "1h" && path.ends_with(".ttl")
}

impl Shaped {
    /// The field of the first one-hour cache point the request asks for, if any.
    pub fn one_hour_cache(&self) -> Option<&str> {
        self.price_fields
            .iter()
            .find(|(path, value)| is_one_hour_cache(path, value))
            .map(|(path, _)| path.as_str())
    }

    /// The priced tier the request asks for (`None`: the standard one), with the field that asks
    /// for it; or the first price field that no price can be looked up for: a tier not priced
    /// per token (`reserved`), a second tier, a cache TTL other than five minutes or one hour.
    pub fn price_tier(&self) -> Result<Option<(PriceTier, &str)>, (&str, &str)> {
        let mut tier = None;
        for (path, value) in &self.price_fields {
            if is_one_hour_cache(path, value) {
                continue;
            }
            let this = match path.as_str() {
                "serviceTier.type" | "X-Amzn-Bedrock-Service-Tier" => {
                    PriceTier::from_service_tier(value)
                }
                "performanceConfig.latency" | "X-Amzn-Bedrock-PerformanceConfig-Latency" => {
                    (value == "optimized").then_some(PriceTier::LatencyOptimized)
                }
                _ => None,
            };
            match (this, tier) {
                (Some(t), None) => tier = Some((t, path.as_str())),
                _ => return Err((path.as_str(), value.as_str())),
            }
        }
        Ok(tier)
    }

    /// The hidden tool-use prompt for `model`.
    pub fn tool_prompt(&self, model: &str) -> u64 {
        match self.family {
            Family::Converse => tool_prompt_tokens(model, &self.request),
            _ => native_tool_prompt_tokens(model, &self.request),
        }
    }

    /// The body to send, serializing `request` if no bytes were kept (a ticket carried through
    /// Step Functions).
    pub fn bytes(&self) -> Bytes {
        if self.body.is_empty() {
            Bytes::from(self.request.to_string())
        } else {
            self.body.clone()
        }
    }
}

/// Client headers passed on to Bedrock: the body's type, the answer's, and Bedrock's own.
fn passed_headers(client: &[(String, String)], operation: Operation) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = client
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            n == "content-type" || n == "accept" || n.starts_with("x-amzn-bedrock-")
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    if !out.iter().any(|(n, _)| n == "content-type") {
        out.push(("content-type".into(), "application/json".into()));
    }
    if operation == Operation::Invoke && !out.iter().any(|(n, _)| n == "accept") {
        out.push(("accept".into(), "application/json".into()));
    }
    out
}

/// Checks a body for `operation` on `model` and bounds it: size, JSON object, the family's
/// required fields, output caps that are token counts, and what the estimate cannot see. An
/// output cap is inserted, in the family's own field, only when the body sets none; otherwise the
/// bytes go to Bedrock as sent. Returns the 4xx reply naming the field otherwise.
pub fn shape(
    operation: Operation,
    model: &str,
    body: &[u8],
    client_headers: &[(String, String)],
    max_body_bytes: usize,
    default_max_tokens: u32,
) -> Result<Shaped, Reply> {
    if body.len() > max_body_bytes {
        return Err(Reply::error(
            413,
            "PayloadTooLarge",
            format!(
                "the body has {} bytes; the limit is {max_body_bytes}",
                body.len()
            ),
        ));
    }
    let family = Family::of(operation, model)?;
    let mut request: Value =
        serde_json::from_slice(body).map_err(|e| invalid(&format!("the body is not JSON: {e}")))?;
    if !request.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    let headers = passed_headers(client_headers, operation);
    let mut price_fields = price_headers(&headers);
    let (content_bound, caps) = match family {
        Family::Converse => converse_bounds(&request, &mut price_fields)?,
        Family::Anthropic | Family::Nova => native_bounds(&request, family, &mut price_fields)?,
        Family::Llama => llama_bounds(&request)?,
    };
    let (set, extra) = caps;
    let max_tokens = set
        .unwrap_or(u64::from(default_max_tokens))
        .max(extra.unwrap_or(0));
    if max_tokens > i32::MAX as u64 {
        return Err(field(
            400,
            &family
                .cap_pointer()
                .trim_start_matches('/')
                .replace('/', "."),
            "an output cap is larger than any model generates",
        ));
    }
    // The reservation covers `max_tokens` of output only if Bedrock is held to it: a body with
    // no cap of its own gets one, in the family's field; a body with one goes out as sent.
    let body = if set.is_none() {
        insert_cap(&mut request, family, max_tokens)?;
        Bytes::from(request.to_string())
    } else {
        Bytes::copy_from_slice(body)
    };
    Ok(Shaped {
        operation,
        family,
        request,
        body,
        headers,
        max_tokens,
        content_bound,
        price_fields,
    })
}

/// (output cap the body sets in its family's field, largest other cap it sets)
type Caps = (Option<u64>, Option<u64>);

fn positive_cap(request: &Value, pointer: &str) -> Result<Option<u64>, Reply> {
    match at(request, pointer) {
        None => Ok(None),
        Some(v) => match v.as_u64().filter(|n| *n > 0 && *n <= i32::MAX as u64) {
            Some(n) => Ok(Some(n)),
            None => {
                let path = pointer.trim_start_matches('/').replace('/', ".");
                let name = pointer.rsplit('/').next().unwrap_or(pointer);
                Err(field(
                    400,
                    &path,
                    &format!("`{name}` must be a positive integer"),
                ))
            }
        },
    }
}

fn non_empty_messages(request: &Value) -> Result<&Vec<Value>, Reply> {
    match request.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => Ok(m),
        Some(_) => Err(field(
            400,
            "messages",
            "`messages` must be a non-empty list",
        )),
        None => Err(field(400, "messages", "`messages` is required")),
    }
}

fn converse_bounds(
    request: &Value,
    price_fields: &mut Vec<(String, String)>,
) -> Result<(u64, Caps), Reply> {
    non_empty_messages(request)?;
    if let Some(ic) = request.get("inferenceConfig")
        && !ic.is_object()
    {
        return Err(field(
            400,
            "inferenceConfig",
            "`inferenceConfig` must be an object",
        ));
    }
    let set = positive_cap(request, "/inferenceConfig/maxTokens")?;
    // A cap raised in the model's own fields (`additionalModelRequestFields.max_tokens`, Llama's
    // `max_gen_len`, Nova's `max_new_tokens`, a thinking budget) is what the model will really be
    // allowed to generate: the reservation covers the largest cap the body sets.
    let extra = additional_output_cap(request).map_err(|e| {
        field(
            400,
            &e.field,
            &format!("`{}` must be a non-negative integer token count", e.field),
        )
    })?;
    // A managed prompt's text is not in the body: nothing bounds it.
    if request.get("promptVariables").is_some() {
        return Err(field(
            400,
            "promptVariables",
            "a managed prompt's text is not in the request, so its tokens cannot be reserved; send the prompt itself",
        ));
    }
    unseen_media(request)?;
    if let Some(tier) = at(request, "/serviceTier/type").and_then(Value::as_str)
        && tier != "default"
    {
        price_fields.push(("serviceTier.type".into(), tier.into()));
    }
    if let Some(latency) = at(request, "/performanceConfig/latency").and_then(Value::as_str)
        && latency != "standard"
    {
        price_fields.push(("performanceConfig.latency".into(), latency.into()));
    }
    one_hour_cache(request, price_fields);
    Ok((input_token_bound(request), (set, extra)))
}

/// Media the request only points at (S3), whose size the gateway cannot see. Images are bounded
/// by rule whatever their size (the models resize them).
fn unseen_media(request: &Value) -> Result<(), Reply> {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, m) in messages.iter().enumerate() {
        let Some(content) = m.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, block) in content.iter().enumerate() {
            for kind in ["document", "video", "audio"] {
                let source = block.get(kind).and_then(|b| b.get("source"));
                if source.and_then(|s| s.get("s3Location")).is_some() {
                    return Err(field(
                        400,
                        &format!("messages[{i}].content[{j}].{kind}.source.s3Location"),
                        "the gateway cannot see the size of media the request only points at, so its tokens cannot be reserved; send it inline",
                    ));
                }
            }
            if block.get("audio").is_some() {
                return Err(field(
                    400,
                    &format!("messages[{i}].content[{j}].audio"),
                    "an audio block's tokens are not bounded by its bytes, so they cannot be reserved",
                ));
            }
        }
    }
    Ok(())
}

/// Records every one-hour cache point (`cachePoint.ttl` / Anthropic `cache_control.ttl`).
fn one_hour_cache(value: &Value, out: &mut Vec<(String, String)>) {
    // The walk keeps the path as segments and writes it out only for a match: every request's
    // whole body is walked, and formatting a path per key cost more than the walk itself.
    walk_cache_points(value, &mut Vec::new(), out);
}

/// One step of a path into a JSON body.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn walk_cache_points<'a>(
    value: &'a Value,
    steps: &mut Vec<Step<'a>>,
    out: &mut Vec<(String, String)>,
) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if (k == "cachePoint" || k == "cache_control")
                    && let Some(ttl) = v.get("ttl").and_then(Value::as_str)
                    && ttl != "5m"
                {
                    let mut here = String::new();
                    for step in steps.iter().chain(std::iter::once(&Step::Key(k))) {
                        match step {
                            Step::Key(key) => {
                                if !here.is_empty() {
                                    here.push('.');
                                }
                                here.push_str(key);
                            }
                            Step::Index(i) => here.push_str(&format!("[{i}]")),
                        }
                    }
                    out.push((format!("{here}.ttl"), ttl.to_string()));
                } else if v.is_object() || v.is_array() {
                    steps.push(Step::Key(k));
                    walk_cache_points(v, steps, out);
                    steps.pop();
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                if v.is_object() || v.is_array() {
                    steps.push(Step::Index(i));
                    walk_cache_points(v, steps, out);
                    steps.pop();
                }
            }
        }
        _ => {}
    }
}

/// Headers that change the price: InvokeModel's service tier and latency setting.
fn price_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (n, v) in headers {
        if n == "x-amzn-bedrock-service-tier" && v != "default" {
            out.push(("X-Amzn-Bedrock-Service-Tier".into(), v.clone()));
        }
        if n == "x-amzn-bedrock-performanceconfig-latency" && v != "standard" {
            out.push(("X-Amzn-Bedrock-PerformanceConfig-Latency".into(), v.clone()));
        }
    }
    out
}

fn native_bounds(
    request: &Value,
    family: Family,
    price_fields: &mut Vec<(String, String)>,
) -> Result<(u64, Caps), Reply> {
    non_empty_messages(request)?;
    let set = positive_cap(request, family.cap_pointer())?;
    // Anthropic's thinking budget counts within `max_tokens`; taking the larger is safe either way.
    let thinking = match at(request, "/thinking/budget_tokens") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            field(
                400,
                "thinking.budget_tokens",
                "`budget_tokens` must be a non-negative integer",
            )
        })?),
    };
    if family == Family::Nova
        && let Some(ic) = request.get("inferenceConfig")
        && !ic.is_object()
    {
        return Err(field(
            400,
            "inferenceConfig",
            "`inferenceConfig` must be an object",
        ));
    }
    one_hour_cache(request, price_fields);
    let bound = native_input_bound(request).map_err(|e| field(400, &e.field, e.reason))?;
    Ok((bound, (set, thinking)))
}

fn llama_bounds(request: &Value) -> Result<(u64, Caps), Reply> {
    match request.get("prompt") {
        Some(Value::String(p)) if !p.is_empty() => {}
        Some(_) => return Err(field(400, "prompt", "`prompt` must be a non-empty string")),
        None => return Err(field(400, "prompt", "`prompt` is required")),
    }
    let set = positive_cap(request, "/max_gen_len")?;
    let bound = native_input_bound(request).map_err(|e| field(400, &e.field, e.reason))?;
    Ok((bound, (set, None)))
}

fn insert_cap(request: &mut Value, family: Family, max_tokens: u64) -> Result<(), Reply> {
    let obj = request.as_object_mut().expect("checked to be an object");
    match family {
        Family::Converse | Family::Nova => {
            let (parent, key) = match family {
                Family::Converse => ("inferenceConfig", "maxTokens"),
                _ => ("inferenceConfig", "max_new_tokens"),
            };
            let ic = obj.entry(parent).or_insert_with(|| json!({}));
            let Some(ic) = ic.as_object_mut() else {
                return Err(field(400, parent, &format!("`{parent}` must be an object")));
            };
            ic.insert(key.into(), json!(max_tokens));
        }
        Family::Anthropic => {
            obj.insert("max_tokens".into(), json!(max_tokens));
        }
        Family::Llama => {
            obj.insert("max_gen_len".into(), json!(max_tokens));
        }
    }
    Ok(())
}

fn count(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// Usage as Converse reports it (`usage`, or a ConverseStream `metadata` event's `usage`).
/// `None` when absent or zero: no generation has zero input tokens.
pub fn converse_usage(body: &Value) -> Option<Usage> {
    let u = body.get("usage").filter(|u| u.is_object())?;
    let (cache_write_5m_tokens, cache_write_1h_tokens) = by_ttl(u.get("cacheDetails"));
    let usage = Usage {
        input_tokens: count(u.get("inputTokens")),
        output_tokens: count(u.get("outputTokens")),
        cache_read_tokens: count(u.get("cacheReadInputTokens")),
        cache_write_tokens: count(u.get("cacheWriteInputTokens")),
        cache_write_5m_tokens,
        cache_write_1h_tokens,
    };
    nonzero(usage)
}

/// Converse's `cacheDetails` (`[{ttl: 5m|1h, inputTokens}]`): the cache writes of each TTL, as
/// (five-minute, one-hour). Writes of a TTL not listed here stay unreported, so they are priced
/// at the TTL the request asked for.
fn by_ttl(details: Option<&Value>) -> (u64, u64) {
    let (mut five_minutes, mut one_hour) = (0u64, 0u64);
    for detail in details.and_then(Value::as_array).into_iter().flatten() {
        let n = count(detail.get("inputTokens"));
        match detail.get("ttl").and_then(Value::as_str) {
            Some("5m") => five_minutes = five_minutes.saturating_add(n),
            Some("1h") => one_hour = one_hour.saturating_add(n),
            _ => {}
        }
    }
    (five_minutes, one_hour)
}

fn nonzero(u: Usage) -> Option<Usage> {
    (u.input_tokens + u.cache_read_tokens + u.cache_write_tokens > 0).then_some(u)
}

/// The larger of two reports of the same generation, kind by kind (when in doubt, the dearer).
fn larger(a: Option<Usage>, b: Option<Usage>) -> Option<Usage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            input_tokens: a.input_tokens.max(b.input_tokens),
            output_tokens: a.output_tokens.max(b.output_tokens),
            cache_read_tokens: a.cache_read_tokens.max(b.cache_read_tokens),
            cache_write_tokens: a.cache_write_tokens.max(b.cache_write_tokens),
            cache_write_5m_tokens: a.cache_write_5m_tokens.max(b.cache_write_5m_tokens),
            cache_write_1h_tokens: a.cache_write_1h_tokens.max(b.cache_write_1h_tokens),
        }),
        (a, b) => a.or(b),
    }
}

/// Usage of an InvokeModel answer: Bedrock's `X-Amzn-Bedrock-*-Token-Count` headers and the
/// family's own usage in the body, the larger where both report.
pub fn invoke_usage(family: Family, headers: &[(String, String)], body: &[u8]) -> Option<Usage> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    let from_headers = header("x-amzn-bedrock-input-token-count").map(|input| Usage {
        input_tokens: input,
        output_tokens: header("x-amzn-bedrock-output-token-count").unwrap_or(0),
        cache_read_tokens: header("x-amzn-bedrock-cache-read-input-token-count").unwrap_or(0),
        cache_write_tokens: header("x-amzn-bedrock-cache-write-input-token-count").unwrap_or(0),
        ..Usage::default()
    });
    let body: Option<Value> = serde_json::from_slice(body).ok();
    let from_body = body.as_ref().and_then(|b| native_usage(family, b));
    larger(from_headers.and_then(nonzero), from_body)
}

/// A family's own usage in an answer body or stream event.
fn native_usage(family: Family, b: &Value) -> Option<Usage> {
    let usage = match family {
        Family::Anthropic => {
            let u = b.get("usage")?;
            Usage {
                input_tokens: count(u.get("input_tokens")),
                output_tokens: count(u.get("output_tokens")),
                cache_read_tokens: count(u.get("cache_read_input_tokens")),
                cache_write_tokens: count(u.get("cache_creation_input_tokens")),
                cache_write_5m_tokens: count(at(u, "/cache_creation/ephemeral_5m_input_tokens")),
                cache_write_1h_tokens: count(at(u, "/cache_creation/ephemeral_1h_input_tokens")),
            }
        }
        Family::Nova | Family::Converse => {
            let u = b.get("usage")?;
            Usage {
                input_tokens: count(u.get("inputTokens")),
                output_tokens: count(u.get("outputTokens")),
                cache_read_tokens: count(
                    u.get("cacheReadInputTokenCount")
                        .or(u.get("cacheReadInputTokens")),
                ),
                cache_write_tokens: count(
                    u.get("cacheWriteInputTokenCount")
                        .or(u.get("cacheWriteInputTokens")),
                ),
                ..Usage::default()
            }
        }
        Family::Llama => Usage {
            input_tokens: count(b.get("prompt_token_count")),
            output_tokens: count(b.get("generation_token_count")),
            ..Usage::default()
        },
    };
    nonzero(usage)
}

/// Usage from `amazon-bedrock-invocationMetrics`, which Bedrock adds to a stream's last chunk.
fn invocation_metrics(b: &Value) -> Option<Usage> {
    let m = b.get("amazon-bedrock-invocationMetrics")?;
    nonzero(Usage {
        input_tokens: count(m.get("inputTokenCount")),
        output_tokens: count(m.get("outputTokenCount")),
        cache_read_tokens: count(m.get("cacheReadInputTokenCount")),
        cache_write_tokens: count(m.get("cacheWriteInputTokenCount")),
        ..Usage::default()
    })
}

/// Reads usage out of a Bedrock event stream as its bytes pass through, without holding them:
/// ConverseStream's `metadata` event; InvokeModelWithResponseStream's `chunk` events (their
/// `amazon-bedrock-invocationMetrics`, or Anthropic's `message_start` and final
/// `message_delta` usage). A stream error event (`:message-type: exception`) is recorded.
#[derive(Debug)]
pub struct StreamUsage {
    family: Family,
    decoder: aws_smithy_eventstream::frame::MessageFrameDecoder,
    buffer: bytes::BytesMut,
    usage: Option<Usage>,
    anthropic_input: Option<Usage>,
    anthropic_output: Option<u64>,
    anthropic_stopped: bool,
    error: Option<String>,
}

impl StreamUsage {
    /// A reader for a stream of `operation` with bodies of `family`.
    pub fn new(family: Family) -> StreamUsage {
        StreamUsage {
            family,
            decoder: Default::default(),
            buffer: bytes::BytesMut::new(),
            usage: None,
            anthropic_input: None,
            anthropic_output: None,
            anthropic_stopped: false,
            error: None,
        }
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        use aws_smithy_eventstream::frame::DecodedFrame;
        if self.error.is_some() {
            return;
        }
        self.buffer.extend_from_slice(chunk);
        loop {
            match self.decoder.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => self.event(&message),
                Ok(DecodedFrame::Incomplete) => return,
                Err(e) => {
                    self.error = Some(format!("the event stream could not be read: {e}"));
                    return;
                }
            }
        }
    }

    fn event(&mut self, message: &aws_smithy_types::event_stream::Message) {
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str().to_string())
        };
        let payload: Option<Value> = serde_json::from_slice(message.payload()).ok();
        if header(":message-type").as_deref() == Some("exception") {
            let kind = header(":exception-type").unwrap_or_else(|| "exception".into());
            let text = payload
                .as_ref()
                .and_then(|p| p.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            self.error = Some(format!("{kind}: {text}"));
            return;
        }
        let Some(payload) = payload else { return };
        match header(":event-type").as_deref() {
            Some("metadata") => self.usage = larger(self.usage, converse_usage(&payload)),
            Some("chunk") => {
                let Some(inner) = payload
                    .get("bytes")
                    .and_then(Value::as_str)
                    .and_then(|b| aws_smithy_types::base64::decode(b).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                else {
                    return;
                };
                self.usage = larger(self.usage, invocation_metrics(&inner));
                match inner.get("type").and_then(Value::as_str) {
                    Some("message_start") if self.family == Family::Anthropic => {
                        self.anthropic_input = inner
                            .get("message")
                            .and_then(|m| native_usage(Family::Anthropic, m));
                    }
                    Some("message_delta") if self.family == Family::Anthropic => {
                        if let Some(n) = at(&inner, "/usage/output_tokens").and_then(Value::as_u64)
                        {
                            self.anthropic_output = Some(n);
                        }
                    }
                    Some("message_stop") => self.anthropic_stopped = true,
                    _ => {}
                }
                if self.family == Family::Llama
                    && inner.get("stop_reason").is_some_and(|s| !s.is_null())
                {
                    self.usage = larger(self.usage, native_usage(Family::Llama, &inner));
                }
                if self.family == Family::Nova
                    && let Some(meta) = inner.get("metadata")
                {
                    self.usage = larger(self.usage, native_usage(Family::Nova, meta));
                }
            }
            _ => {}
        }
    }

    /// The stream's usage, once it ended: `None` when it reported none, or broke off with an error
    /// (settled at the worst case, never at zero); and the error, if any.
    pub fn finish(self) -> (Option<Usage>, Option<String>) {
        if self.error.is_some() {
            return (None, self.error);
        }
        let anthropic = match (self.anthropic_input, self.anthropic_output) {
            (Some(input), Some(output)) if self.anthropic_stopped => Some(Usage {
                output_tokens: output,
                ..input
            }),
            _ => None,
        };
        (larger(self.usage, anthropic), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaped(op: Operation, model: &str, body: Value) -> Result<Shaped, Reply> {
        shape(op, model, body.to_string().as_bytes(), &[], 1 << 20, 1024)
    }

    #[test]
    fn bodies_with_a_cap_go_out_byte_for_byte() {
        let raw = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":50},"requestMetadata":{"team":"a"},"zzNewField":{"x":1}}"#;
        let s = shape(
            Operation::Converse,
            "amazon.nova-lite-v1:0",
            raw,
            &[],
            1 << 20,
            1024,
        )
        .unwrap();
        assert_eq!(&s.body[..], &raw[..]);
        assert_eq!(s.max_tokens, 50);
    }

    #[test]
    fn a_cap_is_inserted_in_the_familys_own_field() {
        let m = json!([{"role": "user", "content": [{"text": "hi"}]}]);
        for (op, model, body, pointer) in [
            (
                Operation::Converse,
                "amazon.nova-lite-v1:0",
                json!({"messages": m}),
                "/inferenceConfig/maxTokens",
            ),
            (
                Operation::Invoke,
                "anthropic.claude-3-haiku-20240307-v1:0",
                json!({"messages": m, "anthropic_version": "bedrock-2023-05-31"}),
                "/max_tokens",
            ),
            (
                Operation::InvokeStream,
                "us.amazon.nova-pro-v1:0",
                json!({"messages": m, "schemaVersion": "messages-v1"}),
                "/inferenceConfig/max_new_tokens",
            ),
            (
                Operation::Invoke,
                "meta.llama3-8b-instruct-v1:0",
                json!({"prompt": "hi"}),
                "/max_gen_len",
            ),
        ] {
            let s = shaped(op, model, body).unwrap();
            let sent: Value = serde_json::from_slice(&s.body).unwrap();
            assert_eq!(at(&sent, pointer), Some(&json!(1024)), "{model}");
            assert_eq!(s.max_tokens, 1024);
        }
    }

    #[test]
    fn raised_caps_and_thinking_budgets_are_reserved() {
        let s = shaped(
            Operation::Invoke,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 10000}}),
        )
        .unwrap();
        assert_eq!(s.max_tokens, 32000);
        let s = shaped(
            Operation::Converse,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 10}, "additionalModelRequestFields": {"max_tokens": 9000}}),
        )
        .unwrap();
        assert_eq!(s.max_tokens, 9000);
    }

    #[test]
    fn what_cannot_be_bounded_is_refused_naming_the_field() {
        let cases = [
            (
                Operation::Invoke,
                "mistral.mistral-large-2407-v1:0",
                json!({"prompt": "x"}),
                "modelId",
            ),
            (
                Operation::Invoke,
                "anthropic.claude-3-haiku-20240307-v1:0",
                json!({"messages": [], "max_tokens": 5}),
                "messages",
            ),
            (
                Operation::Invoke,
                "anthropic.claude-3-haiku-20240307-v1:0",
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                Operation::Invoke,
                "meta.llama3-8b-instruct-v1:0",
                json!({"max_gen_len": 5}),
                "prompt",
            ),
            (
                Operation::Converse,
                "amazon.nova-lite-v1:0",
                json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "promptVariables": {"a": {"text": "b"}}}),
                "promptVariables",
            ),
            (
                Operation::Converse,
                "amazon.nova-lite-v1:0",
                json!({"messages": [{"role": "user", "content": [{"video": {"format": "mp4", "source": {"s3Location": {"uri": "s3://b/k"}}}}]}]}),
                "messages[0].content[0].video.source.s3Location",
            ),
        ];
        for (op, model, body, name) in cases {
            let err = shaped(op, model, body).unwrap_err();
            assert_eq!(
                (err.status, err.body["field"].as_str()),
                (400, Some(name)),
                "{err:?}"
            );
        }
    }

    #[test]
    fn fields_that_change_the_price_are_named() {
        let s = shaped(
            Operation::Converse,
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            json!({"messages": [{"role": "user", "content": [{"text": "x"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]}], "serviceTier": {"type": "flex"}, "performanceConfig": {"latency": "optimized"}}),
        )
        .unwrap();
        let named: Vec<(&str, &str)> = s
            .price_fields
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("serviceTier.type", "flex"),
                ("performanceConfig.latency", "optimized"),
                ("messages[0].content[1].cachePoint.ttl", "1h")
            ]
        );
        let plain = shaped(
            Operation::Converse,
            "amazon.nova-lite-v1:0",
            json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "serviceTier": {"type": "default"}}),
        )
        .unwrap();
        assert!(plain.price_fields.is_empty());
        assert_eq!(
            s.one_hour_cache(),
            Some("messages[0].content[1].cachePoint.ttl")
        );
        assert!(plain.one_hour_cache().is_none());
        assert!(!is_one_hour_cache("serviceTier.type", "1h"));
        assert!(!is_one_hour_cache("system[0].cachePoint.ttl", "2h"));
    }

    #[test]
    fn invoke_usage_takes_the_larger_report() {
        let headers = vec![
            (
                "x-amzn-bedrock-input-token-count".to_string(),
                "10".to_string(),
            ),
            (
                "x-amzn-bedrock-output-token-count".to_string(),
                "5".to_string(),
            ),
        ];
        let body = br#"{"usage":{"input_tokens":10,"output_tokens":7,"cache_read_input_tokens":3,"cache_creation_input_tokens":9,"cache_creation":{"ephemeral_5m_input_tokens":2,"ephemeral_1h_input_tokens":7}}}"#;
        assert_eq!(
            invoke_usage(Family::Anthropic, &headers, body),
            Some(Usage {
                input_tokens: 10,
                output_tokens: 7,
                cache_read_tokens: 3,
                cache_write_tokens: 9,
                cache_write_5m_tokens: 2,
                cache_write_1h_tokens: 7,
            })
        );
        assert_eq!(invoke_usage(Family::Anthropic, &[], b"{}"), None);
    }

    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
        let mut m = Message::new(Bytes::copy_from_slice(payload));
        for (n, v) in headers {
            m = m.add_header(Header::new(
                n.to_string(),
                HeaderValue::String(v.to_string().into()),
            ));
        }
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&m, &mut out).unwrap();
        out
    }

    fn chunk(inner: Value) -> Vec<u8> {
        let b64 = aws_smithy_types::base64::encode(inner.to_string());
        frame(
            &[(":message-type", "event"), (":event-type", "chunk")],
            json!({ "bytes": b64 }).to_string().as_bytes(),
        )
    }

    #[test]
    fn stream_usage_is_read_from_split_frames() {
        let mut bytes = frame(
            &[
                (":message-type", "event"),
                (":event-type", "contentBlockDelta"),
            ],
            br#"{"delta":{"text":"hi"}}"#,
        );
        bytes.extend(frame(
            &[(":message-type", "event"), (":event-type", "metadata")],
            br#"{"usage":{"inputTokens":12,"outputTokens":3,"totalTokens":25,"cacheWriteInputTokens":10,"cacheDetails":[{"ttl":"1h","inputTokens":6},{"ttl":"5m","inputTokens":4}]}}"#,
        ));
        let mut reader = StreamUsage::new(Family::Converse);
        for piece in bytes.chunks(7) {
            reader.feed(piece);
        }
        assert_eq!(
            reader.finish(),
            (
                Some(Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                    cache_write_tokens: 10,
                    cache_write_5m_tokens: 4,
                    cache_write_1h_tokens: 6,
                    ..Usage::default()
                }),
                None
            )
        );
    }

    #[test]
    fn anthropic_streams_report_usage_only_when_they_finish() {
        let start = chunk(
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 20, "output_tokens": 1}}}),
        );
        let delta = chunk(json!({"type": "message_delta", "usage": {"output_tokens": 40}}));
        let stop = chunk(
            json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 20, "outputTokenCount": 40}}),
        );
        let mut full = StreamUsage::new(Family::Anthropic);
        for part in [&start, &delta, &stop] {
            full.feed(part);
        }
        assert_eq!(
            full.finish().0,
            Some(Usage {
                input_tokens: 20,
                output_tokens: 40,
                ..Usage::default()
            })
        );
        let mut cut = StreamUsage::new(Family::Anthropic);
        cut.feed(&start);
        cut.feed(&delta);
        assert_eq!(cut.finish().0, None, "no stop: the worst case");
        let mut failed = StreamUsage::new(Family::Anthropic);
        failed.feed(&start);
        failed.feed(&frame(
            &[
                (":message-type", "exception"),
                (":exception-type", "modelStreamErrorException"),
            ],
            br#"{"message":"boom"}"#,
        ));
        let (usage, error) = failed.finish();
        assert_eq!(usage, None);
        assert!(error.unwrap().contains("modelStreamErrorException"));
    }

    #[test]
    fn every_operation_has_its_path() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_path(op.path()), Some(op));
        }
        assert_eq!(
            foundation_model("us.anthropic.claude-x"),
            "anthropic.claude-x"
        );
    }
}
