//! Conservative input-token estimation and output caps for Bedrock Converse requests.
//!
//! A reservation only guarantees a limit if the input estimate is an upper bound and the output
//! cap is the one Bedrock will honour. Byte-level BPE tokenizers emit at least one byte per token,
//! so the UTF-8 length of the text bounds its token count; characters / 4 would undercount CJK
//! text and code by 3x or more. The bound over-reserves English by about 4x, and settlement returns
//! the difference right after the call.
//!
//! What the bytes of a request do not show is added by rule: framing per request, message and
//! content block; the tool-use system prompt a provider injects when tools are offered; images at a
//! fixed ceiling. Binary documents (PDF, Word, Excel) are not bounded by their bytes at all (a
//! compressed PDF expands into far more tokens than it has bytes): [`binary_document`] finds them
//! so the gateway can count them exactly or refuse them.

use serde_json::Value;

/// Tokens a message costs beyond its content (role markers, separators).
pub const PER_MESSAGE_OVERHEAD: u64 = 8;
/// Tokens every content block costs beyond its text (block separators): a request of many tiny
/// blocks costs more than its bytes.
pub const PER_BLOCK_OVERHEAD: u64 = 4;
/// Tokens every request costs beyond its messages (BOS, system framing).
pub const PER_REQUEST_OVERHEAD: u64 = 16;
/// Upper bound for one image block. Bedrock's Anthropic and Nova models resize images so that an
/// image costs at most a few thousand tokens; 4,096 bounds both with margin.
pub const IMAGE_TOKENS: u64 = 4_096;
/// Lower bound charged for a text document or video block whose own size is smaller.
pub const MEDIA_MIN_TOKENS: u64 = 4_096;
/// Tokens allowed for the hidden tool-use prompt of a model whose provider publishes no count
/// (Amazon Nova, Meta Llama, Mistral, ...): a stated rule, not a published figure.
pub const TOOL_PROMPT_ALLOWANCE: u64 = 1_024;

/// Document formats whose bytes do not bound their tokens (compressed or structured containers).
pub const BINARY_DOCUMENT_FORMATS: &[&str] = &["pdf", "doc", "docx", "xls", "xlsx"];

/// The value at a JSON pointer whose segments hold no `~` escapes (every path the gateway
/// reads). `Value::pointer` allocates two strings per segment to unescape them; this runs
/// several times on every request.
pub fn at<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    pointer
        .split('/')
        .skip(1)
        .try_fold(value, |v, key| match v {
            Value::Object(map) => map.get(key),
            // As RFC 6901 and `Value::pointer`: no sign, no leading zero.
            Value::Array(items)
                if !key.starts_with('+') && (key == "0" || !key.starts_with('0')) =>
            {
                key.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        })
}

/// An upper bound of the input tokens of a Converse request body for `model` (a model ID,
/// inference profile ID or ARN): the request's own content ([`input_token_bound`]) plus the
/// tool-use system prompt the model's provider adds when tools are offered ([`tool_prompt_tokens`]).
pub fn input_bound(model: &str, request: &Value) -> u64 {
    input_token_bound(request).saturating_add(tool_prompt_tokens(model, request))
}

/// An upper bound of the input tokens of a Converse request body's own content (`messages`,
/// `system`, `toolConfig`, ...). Unknown content block kinds count their JSON length, which bounds
/// them too. Binary documents are counted by their JSON length here; callers must not rely on
/// that (see [`binary_document`]).
pub fn input_token_bound(request: &Value) -> u64 {
    let mut total = PER_REQUEST_OVERHEAD;
    if let Some(system) = request.get("system").and_then(Value::as_array) {
        for block in system {
            total = total.saturating_add(block_bound(block));
        }
    }
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        for message in messages {
            total = total.saturating_add(PER_MESSAGE_OVERHEAD);
            if let Some(content) = message.get("content").and_then(Value::as_array) {
                for block in content {
                    total = total.saturating_add(block_bound(block));
                }
            }
        }
    }
    if let Some(tools) = request.get("toolConfig") {
        total = total.saturating_add(json_len(tools));
    }
    total
}

/// The hidden tool-use system prompt a model's provider adds to a request that offers tools.
///
/// Anthropic publishes these per model and `tool_choice` (Claude docs, "Tool use with Claude",
/// pricing): `auto`/`none` vs `any`/`tool` — Claude 4.x, 3.7 Sonnet and 3.5 Sonnet 346 / 313,
/// Claude 3.5 Haiku and 3 Haiku 264 / 340, Claude 3 Opus 530 / 281, Claude 3 Sonnet 159 / 235.
/// Other providers publish none: [`TOOL_PROMPT_ALLOWANCE`].
pub fn tool_prompt_tokens(model: &str, request: &Value) -> u64 {
    let offers_tools = at(request, "/toolConfig/tools")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|tool| tool.get("cachePoint").is_none()));
    let forced = at(request, "/toolConfig/toolChoice")
        .and_then(Value::as_object)
        .is_some_and(|c| c.contains_key("any") || c.contains_key("tool"));
    tool_prompt_for(model, offers_tools, forced)
}

/// [`tool_prompt_tokens`] for a model-native body: Anthropic Messages `tools` and
/// `tool_choice.type` (`any` / `tool` force a tool), Nova's `toolConfig` as Converse's.
pub fn native_tool_prompt_tokens(model: &str, body: &Value) -> u64 {
    if body.get("toolConfig").is_some() {
        return tool_prompt_tokens(model, body);
    }
    let offers = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let forced = at(body, "/tool_choice/type")
        .and_then(Value::as_str)
        .is_some_and(|t| t == "any" || t == "tool");
    tool_prompt_for(model, offers, forced)
}

/// The hidden tool prompt of `model` when a request offers tools (`forced`: it makes the model
/// use one).
pub fn tool_prompt_for(model: &str, offers_tools: bool, forced: bool) -> u64 {
    if !offers_tools {
        return 0;
    }
    let id = model.rsplit_once('/').map_or(model, |(_, id)| id);
    if !id.contains("anthropic.") && !id.contains("claude") {
        return TOOL_PROMPT_ALLOWANCE;
    }
    let (auto, any) = if id.contains("claude-3-opus") {
        (530, 281)
    } else if id.contains("claude-3-sonnet") {
        (159, 235)
    } else if id.contains("claude-3-haiku") || id.contains("claude-3-5-haiku") {
        (264, 340)
    } else {
        (346, 313)
    };
    if forced { any } else { auto }
}

/// The JSON path of the first document block whose format's bytes do not bound its tokens
/// ([`BINARY_DOCUMENT_FORMATS`]), in messages or tool results.
pub fn binary_document(request: &Value) -> Option<String> {
    let messages = request.get("messages")?.as_array()?;
    for (i, message) in messages.iter().enumerate() {
        let Some(content) = message.get("content").and_then(Value::as_array) else {
            continue;
        };
        // Paths are formatted only for the block found: this runs on every request.
        for (j, block) in content.iter().enumerate() {
            let here = || format!("messages[{i}].content[{j}]");
            if is_binary_document(block.get("document")) {
                return Some(format!("{}.document", here()));
            }
            if let Some(inner) = at(block, "/toolResult/content").and_then(Value::as_array) {
                for (k, b) in inner.iter().enumerate() {
                    if is_binary_document(b.get("document")) {
                        return Some(format!("{}.toolResult.content[{k}].document", here()));
                    }
                }
            }
        }
    }
    None
}

fn is_binary_document(document: Option<&Value>) -> bool {
    document
        .and_then(|d| d.get("format"))
        .and_then(Value::as_str)
        .is_some_and(|f| {
            BINARY_DOCUMENT_FORMATS
                .iter()
                .any(|b| b.eq_ignore_ascii_case(f))
        })
}

/// Keys of `additionalModelRequestFields` (at any depth) that set how many tokens a model may
/// generate, by family: Anthropic `max_tokens`, Meta `max_gen_len`, Amazon Nova and Titan
/// `max_new_tokens` / `maxTokenCount`, OpenAI-style `max_completion_tokens` and
/// `max_output_tokens`, Converse's own `maxTokens`, and Anthropic's thinking `budget_tokens`.
pub const OUTPUT_CAP_KEYS: &[&str] = &[
    "max_tokens",
    "maxTokens",
    "max_gen_len",
    "max_new_tokens",
    "maxTokenCount",
    "max_completion_tokens",
    "max_output_tokens",
    "budget_tokens",
];

/// A field that sets an output cap the gateway cannot read as a token count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapError {
    /// Its JSON path.
    pub field: String,
}

/// The largest output cap set anywhere in `additionalModelRequestFields` ([`OUTPUT_CAP_KEYS`]), so
/// the reservation covers what the model will really be allowed to generate; `None` when it sets
/// none. A cap that is not a non-negative integer is an error naming its field.
pub fn additional_output_cap(request: &Value) -> Result<Option<u64>, CapError> {
    let Some(fields) = request.get("additionalModelRequestFields") else {
        return Ok(None);
    };
    let mut max = None;
    walk_caps(fields, "additionalModelRequestFields", &mut max)?;
    Ok(max)
}

fn walk_caps(value: &Value, path: &str, max: &mut Option<u64>) -> Result<(), CapError> {
    // Child paths are formatted only below objects and arrays that may hold a cap.
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if OUTPUT_CAP_KEYS.contains(&k.as_str()) && !v.is_object() && !v.is_array() {
                    let n = v.as_u64().ok_or_else(|| CapError {
                        field: format!("{path}.{k}"),
                    })?;
                    *max = Some(max.map_or(n, |m: u64| m.max(n)));
                } else if v.is_object() || v.is_array() {
                    walk_caps(v, &format!("{path}.{k}"), max)?;
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                if v.is_object() || v.is_array() {
                    walk_caps(v, &format!("{path}[{i}]"), max)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why a request's input cannot be bounded from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbounded {
    /// JSON path of the field.
    pub field: String,
    /// Why.
    pub reason: &'static str,
}

/// An upper bound of the input tokens of a model-native InvokeModel body (Anthropic Messages,
/// Amazon Nova, Meta Llama): every string's UTF-8 bytes, every key, number and block framing,
/// images at [`IMAGE_TOKENS`] and per-message overhead; the hidden tool prompt is added by the
/// caller. Bodies whose tokens the bytes do not bound are refused naming the field: binary
/// documents (PDF, Word, Excel) and media the request only points at (`s3Location`, URLs of
/// documents).
pub fn native_input_bound(body: &Value) -> Result<u64, Unbounded> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let mut total =
        PER_REQUEST_OVERHEAD.saturating_add(PER_MESSAGE_OVERHEAD.saturating_mul(messages));
    if let Some(obj) = body.as_object() {
        for (k, v) in obj {
            total = total.saturating_add(native_bound(v, k, k)?);
        }
    }
    Ok(total)
}

fn native_bound(value: &Value, key: &str, path: &str) -> Result<u64, Unbounded> {
    Ok(match value {
        Value::String(s) => s.len() as u64,
        Value::Array(items) => {
            let mut total = 0u64;
            for (i, item) in items.iter().enumerate() {
                // Llama vision bodies carry images as a list of base64 strings.
                let n = if key == "images" && item.is_string() {
                    IMAGE_TOKENS
                } else {
                    native_bound(item, "", &format!("{path}[{i}]"))?
                };
                total = total.saturating_add(n).saturating_add(PER_BLOCK_OVERHEAD);
            }
            total
        }
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            if kind == Some("image") || key == "image" {
                return Ok(IMAGE_TOKENS);
            }
            if kind == Some("document") || key == "document" {
                let media = map
                    .get("source")
                    .and_then(|s| s.get("media_type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let format = map.get("format").and_then(Value::as_str).unwrap_or("");
                let binary = BINARY_DOCUMENT_FORMATS
                    .iter()
                    .any(|b| b.eq_ignore_ascii_case(format))
                    || (!media.is_empty() && !media.starts_with("text/"));
                if binary {
                    return Err(Unbounded {
                        field: path.to_string(),
                        reason: "a PDF, Word or Excel document's tokens are not bounded by its bytes; send its text instead",
                    });
                }
            }
            let mut total = PER_BLOCK_OVERHEAD;
            for (k, v) in map {
                let here = format!("{path}.{k}");
                if k == "s3Location" || (k == "url" && kind == Some("url")) {
                    return Err(Unbounded {
                        field: here,
                        reason: "the gateway cannot see the size of media the request only points at; send it inline",
                    });
                }
                total = total
                    .saturating_add(k.len() as u64)
                    .saturating_add(native_bound(v, k, &here)?);
            }
            total
        }
        other => json_len(other),
    })
}

fn block_bound(block: &Value) -> u64 {
    let Some(obj) = block.as_object() else {
        return json_len(block).saturating_add(PER_BLOCK_OVERHEAD);
    };
    let mut total = PER_BLOCK_OVERHEAD;
    for (kind, value) in obj {
        let n = match kind.as_str() {
            "text" => value
                .as_str()
                .map_or_else(|| json_len(value), |s| s.len() as u64),
            "image" => IMAGE_TOKENS,
            "document" | "video" => json_len(value).max(MEDIA_MIN_TOKENS),
            // Cache points are free; their framing is the block overhead.
            "cachePoint" => 0,
            _ => json_len(value),
        };
        total = total.saturating_add(n);
    }
    total
}

fn json_len(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.len() as u64,
        other => serde_json::to_string(other).map_or(u64::MAX, |s| s.len() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn at_reads_what_a_json_pointer_reads() {
        let v = json!({"a": {"b": [1, {"c": "x"}]}, "": {"": 2}, "n": null});
        for p in [
            "", "/a", "/a/b", "/a/b/0", "/a/b/1/c", "/a/b/2", "/a/b/x", "/a/x", "/n", "/n/x", "/",
            "//", "/a/b/01", "/a/b/+1", "/a/b/00", "/a/b/1/",
        ] {
            assert_eq!(at(&v, p), v.pointer(p), "{p}");
        }
    }

    #[test]
    fn bounds_text_by_utf8_bytes() {
        let req = json!({
            "system": [{"text": "be brief"}],
            "messages": [{"role": "user", "content": [{"text": "日本語"}]}]
        });
        // 16 + (4 + 8) system block + 8 message + (4 + 9) for three CJK characters.
        assert_eq!(input_token_bound(&req), 16 + 12 + 8 + 13);
    }

    #[test]
    fn media_and_tools_are_bounded_too() {
        let req = json!({
            "messages": [{"role": "user", "content": [
                {"image": {"format": "png", "source": {"bytes": "AAAA"}}},
                {"cachePoint": {"type": "default"}}
            ]}],
            "toolConfig": {"tools": []}
        });
        assert_eq!(
            input_token_bound(&req),
            16 + 8 + (4 + IMAGE_TOKENS) + 4 + 12
        );
    }

    #[test]
    fn many_tiny_blocks_cost_their_framing() {
        let blocks: Vec<Value> = (0..1000).map(|_| json!({"text": "a"})).collect();
        let req = json!({"messages": [{"role": "user", "content": blocks}]});
        assert_eq!(input_token_bound(&req), 16 + 8 + 1000 * 5);
    }

    #[test]
    fn tool_prompts_follow_the_published_counts() {
        let tools = |choice: Value| json!({"messages": [], "toolConfig": {"tools": [{"toolSpec": {"name": "f"}}], "toolChoice": choice}});
        let auto = tools(json!({"auto": {}}));
        let any = tools(json!({"any": {}}));
        let sonnet = "us.anthropic.claude-sonnet-4-20250514-v1:0";
        assert_eq!(tool_prompt_tokens(sonnet, &auto), 346);
        assert_eq!(tool_prompt_tokens(sonnet, &any), 313);
        let haiku = "anthropic.claude-3-5-haiku-20241022-v1:0";
        assert_eq!(tool_prompt_tokens(haiku, &auto), 264);
        assert_eq!(tool_prompt_tokens(haiku, &any), 340);
        assert_eq!(
            tool_prompt_tokens("anthropic.claude-3-opus-20240229-v1:0", &auto),
            530
        );
        assert_eq!(
            tool_prompt_tokens("amazon.nova-lite-v1:0", &auto),
            TOOL_PROMPT_ALLOWANCE
        );
        let none = json!({"messages": [], "toolConfig": {"tools": [{"cachePoint": {}}]}});
        assert_eq!(tool_prompt_tokens(sonnet, &none), 0);
        assert_eq!(input_bound(sonnet, &auto), input_token_bound(&auto) + 346);
    }

    #[test]
    fn finds_binary_documents_wherever_they_are() {
        let doc = |format: &str| json!({"document": {"format": format, "name": "d", "source": {"bytes": "AA=="}}});
        let req = json!({"messages": [{"role": "user", "content": [{"text": "x"}, doc("txt"), doc("PDF")]}]});
        assert_eq!(
            binary_document(&req).as_deref(),
            Some("messages[0].content[2].document")
        );
        let nested = json!({"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [doc("docx")]}}]}]});
        assert_eq!(
            binary_document(&nested).as_deref(),
            Some("messages[0].content[0].toolResult.content[0].document")
        );
        let text_only = json!({"messages": [{"role": "user", "content": [doc("md"), doc("csv")]}]});
        assert_eq!(binary_document(&text_only), None);
    }

    #[test]
    fn output_caps_in_additional_fields_are_found_at_any_depth() {
        let req = json!({"messages": [], "additionalModelRequestFields": {
            "max_tokens": 300, "inferenceConfig": {"max_new_tokens": 900}, "thinking": {"type": "enabled", "budget_tokens": 500}
        }});
        assert_eq!(additional_output_cap(&req), Ok(Some(900)));
        assert_eq!(additional_output_cap(&json!({"messages": []})), Ok(None));
        let bad = json!({"additionalModelRequestFields": {"max_gen_len": "lots"}});
        assert_eq!(
            additional_output_cap(&bad),
            Err(CapError {
                field: "additionalModelRequestFields.max_gen_len".into()
            })
        );
    }

    #[test]
    fn native_bodies_are_bounded_by_their_bytes_and_images_by_rule() {
        let anthropic = json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "日本語"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(100_000)}}
            ]}]
        });
        let bound = native_input_bound(&anthropic).unwrap();
        assert!(bound >= 9 + IMAGE_TOKENS, "{bound}");
        assert!(
            bound < 5_000,
            "the image's base64 is not counted as text: {bound}"
        );
        let llama = json!({"prompt": "x".repeat(1000), "images": ["QUFB", "QUFB"]});
        let bound = native_input_bound(&llama).unwrap();
        assert!(
            (1000 + 2 * IMAGE_TOKENS..1000 + 2 * IMAGE_TOKENS + 100).contains(&bound),
            "{bound}"
        );
    }

    #[test]
    fn native_bodies_that_bytes_cannot_bound_name_the_field() {
        let pdf = json!({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
        ]}]});
        assert_eq!(
            native_input_bound(&pdf).unwrap_err().field,
            "messages[0].content[0]"
        );
        let nova = json!({"messages": [{"role": "user", "content": [
            {"video": {"format": "mp4", "source": {"s3Location": {"uri": "s3://b/v.mp4"}}}}
        ]}]});
        assert_eq!(
            native_input_bound(&nova).unwrap_err().field,
            "messages[0].content[0].video.source.s3Location"
        );
        let text_doc = json!({"messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}}
        ]}]});
        assert!(native_input_bound(&text_doc).is_ok());
    }

    #[test]
    fn native_tool_prompts_follow_tool_choice() {
        let auto = json!({"tools": [{"name": "t", "input_schema": {}}]});
        let forced = json!({"tools": [{"name": "t"}], "tool_choice": {"type": "any"}});
        let m = "anthropic.claude-sonnet-4-5-20250929-v1:0";
        assert_eq!(native_tool_prompt_tokens(m, &auto), 346);
        assert_eq!(native_tool_prompt_tokens(m, &forced), 313);
        assert_eq!(
            native_tool_prompt_tokens("meta.llama3-70b-instruct-v1:0", &auto),
            TOOL_PROMPT_ALLOWANCE
        );
        assert_eq!(native_tool_prompt_tokens(m, &json!({})), 0);
    }
}
