//! The fuzz targets, one function per untrusted input the product reads. Each must return for any
//! bytes without panicking (overflow checks are on under cargo-fuzz, so wrapping arithmetic is a
//! finding too) and checks what must hold of what it accepted.
//!
//! `fuzz/` runs them under libFuzzer (`benches/fuzz.sh`); `tests/corpus.rs` replays the committed
//! regression corpus (`fuzz/regressions/TARGET/`) through them in the test command.

use std::collections::HashMap;

use aws_lambda_events::cloudformation::CloudFormationCustomResourceRequest;
use aws_sdk_dynamodb::types::AttributeValue;
use budget::config::worst_case;
use budget::estimate::{PER_REQUEST_OVERHEAD, input_token_bound};
use serde_json::Value;

/// A fuzz target: any bytes in, a panic is a finding.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/regressions/NAME/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("provider_event", provider_event),
    ("converse", converse),
    ("ledger_item", ledger_item),
];

/// A spec file: parse and validate; a valid spec is rendered too. Errors must point inside the
/// file (line and column from 1) and render as `file:line:col`.
pub fn spec(data: &[u8]) {
    let source = String::from_utf8_lossy(data);
    match spec::parse("fuzz.yaml", &source) {
        Ok(spec) => {
            // Rendering may refuse a spec (e.g. too large for CloudFormation) but not panic.
            let _ = cfn::render(
                &spec,
                &cfn::RenderOptions {
                    code_dir: "artifacts".into(),
                },
            );
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "a failed parse names a problem");
            // YAML breaks lines at CRLF, CR and LF alike (a lone CR is a line break there too).
            let lines = source.replace("\r\n", "\n").matches(['\r', '\n']).count() + 1;
            for e in &errors.errors {
                assert!(
                    e.span.line >= 1 && e.span.col >= 1,
                    "1-based position: {e:?}"
                );
                assert!(
                    e.span.line <= lines,
                    "line {} of a {lines}-line file: {e:?}",
                    e.span.line
                );
                assert!(
                    e.span.offset <= source.len(),
                    "offset inside the file: {e:?}"
                );
            }
            assert!(errors.to_string().starts_with("fuzz.yaml:"));
        }
    }
}

/// A CloudFormation custom-resource event as the provider receives it: the event envelope, then
/// the properties of both resource types (a `Custom::TokenAlarm`'s properties may arrive under a
/// `Custom::TokenBudget` type and vice versa when a template is wrong). Rejections name a property.
pub fn provider_event(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let props = match serde_json::from_value::<CloudFormationCustomResourceRequest<Value, Value>>(
        value.clone(),
    ) {
        Ok(request) => match provider::handler::RequestView::of(&request) {
            Some(view) => view.props.clone(),
            None => return,
        },
        // Not an event: fuzz the value as the properties themselves.
        Err(_) => value,
    };
    if let Err(e) = provider::props::parse_budget(&props) {
        assert!(!e.message.is_empty(), "a reason: {e:?}");
    }
    if let Err(e) = provider::props::parse_alarm(&props) {
        assert!(!e.message.is_empty(), "a reason: {e:?}");
    }
}

/// A request body as a caller sends it, for every operation and body family: the gateway's
/// checks and output cap, then the input-token bound and the worst-case charge for a priced model.
pub fn converse(data: &[u8]) {
    use invoke::ops::{Operation, shape};
    for (operation, model) in [
        (
            Operation::Invoke,
            "anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        (Operation::InvokeStream, "amazon.nova-lite-v1:0"),
        (Operation::Invoke, "meta.llama3-8b-instruct-v1:0"),
    ] {
        if let Ok(s) = shape(operation, model, data, &[], 6 * 1024 * 1024, 1024) {
            assert!(s.max_tokens > 0 && s.content_bound > 0);
            let sent: serde_json::Value = serde_json::from_slice(&s.body).expect("JSON is sent");
            let cap = sent
                .pointer(s.family.cap_pointer())
                .and_then(|v| v.as_u64());
            assert!(
                cap.is_some_and(|c| c <= s.max_tokens),
                "the family's cap is held to the reservation"
            );
        }
    }
    let shaped = match shape(
        Operation::Converse,
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        data,
        &[],
        6 * 1024 * 1024,
        1024,
    ) {
        Ok(parsed) => parsed,
        Err(reply) => {
            assert!((400..500).contains(&reply.status), "a 4xx: {reply:?}");
            return;
        }
    };
    let (request, max_tokens) = (shaped.request, shaped.max_tokens);
    assert!(max_tokens > 0);
    // Bedrock is held to what was reserved: the cap in the body is at most the reserved output.
    assert!(
        request["inferenceConfig"]["maxTokens"]
            .as_u64()
            .is_some_and(|m| m <= max_tokens)
    );
    // Every output cap a model could honour in its own fields is covered.
    if let Some(fields) = request.get("additionalModelRequestFields") {
        assert!(
            largest_cap(fields) <= max_tokens,
            "a raised cap escapes the reservation"
        );
    }
    let bound = input_token_bound(&request);
    assert!(bound >= PER_REQUEST_OVERHEAD);
    // Independently of the estimator: every text byte and every block's framing is covered.
    let (text_bytes, blocks) = text_and_blocks(&request);
    assert!(
        bound >= text_bytes.saturating_add(blocks),
        "bound {bound} < {text_bytes} text bytes + {blocks} blocks"
    );
    let price = budget::PriceBook::lookup("anthropic.claude-3-5-haiku-20241022-v1:0");
    let charge = worst_case(price, bound, max_tokens);
    assert_eq!(charge.tokens, bound.saturating_add(max_tokens));
}

/// The largest integer under any key of `OUTPUT_CAP_KEYS`, at any depth (0 when none).
fn largest_cap(v: &Value) -> u64 {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let own = if budget::estimate::OUTPUT_CAP_KEYS.contains(&k.as_str()) {
                    v.as_u64().unwrap_or(0)
                } else {
                    0
                };
                own.max(largest_cap(v))
            })
            .max()
            .unwrap_or(0),
        Value::Array(items) => items.iter().map(largest_cap).max().unwrap_or(0),
        _ => 0,
    }
}

/// UTF-8 bytes of every `text` string in `system` and `messages[*].content`, and how many content
/// blocks they hold.
fn text_and_blocks(request: &Value) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut blocks = 0u64;
    let mut count = |list: Option<&Vec<Value>>| {
        for block in list.into_iter().flatten() {
            blocks += 1;
            if let Some(t) = block.get("text").and_then(Value::as_str) {
                bytes += t.len() as u64;
            }
        }
    };
    count(request.get("system").and_then(Value::as_array));
    for m in request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        count(m.get("content").and_then(Value::as_array));
    }
    (bytes, blocks * budget::estimate::PER_BLOCK_OVERHEAD)
}

/// A budget configuration item as DynamoDB returns it (DynamoDB JSON, e.g.
/// `{"config": {"S": "..."}}`; other bytes are taken as the `config` string itself), then the
/// arithmetic the gateway does with a decoded configuration.
pub fn ledger_item(data: &[u8]) {
    let item = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), attribute(v)?)))
            .collect(),
        _ => HashMap::from([(
            "config".to_string(),
            AttributeValue::S(String::from_utf8_lossy(data).into_owned()),
        )]),
    };
    let _ = ledger::decode_charge(&item, "app#fuzz/counter");
    let Ok(config) = ledger::decode_config("app#fuzz/config", &item) else {
        return;
    };
    for model in config.prices.iter().map(|p| p.model.as_str()) {
        let price = config.price_of(model);
        let charge = worst_case(price, u64::MAX / 2, u64::MAX / 2);
        let _ = budget::config::actual(price, &budget::Usage::new(u64::MAX, u64::MAX));
        for limit in &config.limits {
            let _ = limit.admits(charge, charge);
        }
    }
}

/// One DynamoDB JSON attribute value (`S`, `N`, `BOOL`, `NULL`, `L`, `M`, `SS`, `NS`).
fn attribute(v: &Value) -> Option<AttributeValue> {
    let (kind, inner) = v.as_object()?.iter().next()?;
    Some(match (kind.as_str(), inner) {
        ("S", Value::String(s)) => AttributeValue::S(s.clone()),
        ("N", Value::String(n)) => AttributeValue::N(n.clone()),
        ("BOOL", Value::Bool(b)) => AttributeValue::Bool(*b),
        ("NULL", Value::Bool(b)) => AttributeValue::Null(*b),
        ("L", Value::Array(items)) => {
            AttributeValue::L(items.iter().filter_map(attribute).collect())
        }
        ("M", Value::Object(map)) => AttributeValue::M(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), attribute(v)?)))
                .collect(),
        ),
        ("SS", Value::Array(items)) => AttributeValue::Ss(
            items
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
        ),
        ("NS", Value::Array(items)) => AttributeValue::Ns(
            items
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
        ),
        _ => return None,
    })
}
