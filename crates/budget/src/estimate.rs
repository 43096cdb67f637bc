//! Conservative input-token estimation for Bedrock Converse requests.
//!
//! A reservation only guarantees a limit if the input estimate is an upper bound. Byte-level BPE
//! tokenizers emit at least one byte per token, so the UTF-8 length of the text bounds its token
//! count; characters / 4 would undercount CJK text and code by 3x or more. The bound over-reserves
//! English by about 4x, and settlement returns the difference right after the call.

use serde_json::Value;

/// Tokens a message costs beyond its text (role markers, separators).
pub const PER_MESSAGE_OVERHEAD: u64 = 8;
/// Tokens every request costs beyond its messages (BOS, system framing).
pub const PER_REQUEST_OVERHEAD: u64 = 16;
/// Upper bound for one image block. Bedrock's Anthropic and Nova models resize images so that an
/// image costs at most a few thousand tokens; 4,096 bounds both with margin.
pub const IMAGE_TOKENS: u64 = 4_096;
/// Lower bound charged for a document or video block whose own size is smaller.
pub const MEDIA_MIN_TOKENS: u64 = 4_096;

/// An upper bound of the input tokens of a Converse request body (`messages`, `system`,
/// `toolConfig`, ...). Unknown content block kinds count their JSON length, which bounds them too.
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

fn block_bound(block: &Value) -> u64 {
    let Some(obj) = block.as_object() else {
        return json_len(block);
    };
    let mut total = 0u64;
    for (kind, value) in obj {
        let n = match kind.as_str() {
            "text" => value
                .as_str()
                .map_or_else(|| json_len(value), |s| s.len() as u64),
            "image" => IMAGE_TOKENS,
            "document" | "video" => json_len(value).max(MEDIA_MIN_TOKENS),
            // Cache points and guard content markers are free or already counted by their text.
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
    fn bounds_text_by_utf8_bytes() {
        let req = json!({
            "system": [{"text": "be brief"}],
            "messages": [{"role": "user", "content": [{"text": "日本語"}]}]
        });
        // 16 + 8 (system) + 8 (message) + 9 bytes of three CJK characters.
        assert_eq!(input_token_bound(&req), 16 + 8 + 8 + 9);
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
        assert_eq!(input_token_bound(&req), 16 + 8 + IMAGE_TOKENS + 12);
    }
}
