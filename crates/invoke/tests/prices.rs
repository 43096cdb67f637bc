//! Fields that change the price per token, under a USD limit: one-hour cache writes are priced
//! (Claude: 2 × input) on reservation and settlement, each write at the price of the TTL Bedrock
//! reports for it, and so are service tiers and latency-optimized inference where a price book lists
//! the model's price in them; a model without a one-hour price, or a tier without a price, is
//! refused with a 400 naming the field, before Bedrock is called.

mod common;

use std::sync::Arc;

use budget::{MicroUsd, PriceBook, Usage};
use common::start;
use ledger::MemoryLedger;
use serde_json::{Value, json};

const SPEC: &str = r#"
version: 1
name: prices
models:
  sonnet: anthropic.claude-sonnet-4-20250514-v1:0
  nova: amazon.nova-lite-v1:0
defaults: { max_tokens: 100 }
applications:
  priced:
    limits: [{ window: day, usd: 10 }]
  tokens:
    limits: [{ window: day, tokens: 100000 }]
"#;

/// A Converse body whose text is cached with `ttl`; `text` of odd length makes the stub report
/// the cached part as a cache write.
fn cached(text: &str, ttl: &str) -> Value {
    json!({
        "messages": [{ "role": "user", "content": [{ "text": text }, { "cachePoint": { "type": "default", "ttl": ttl } }] }],
        "inferenceConfig": { "maxTokens": 50 }
    })
}

fn remaining_usd(headers: &reqwest::header::HeaderMap) -> u64 {
    let text = headers["x-tokenfence-remaining-day-usd"].to_str().unwrap();
    MicroUsd::parse_usd(text).unwrap().0
}

/// Claude Sonnet 4's bill by hand, from the book's USD per million tokens (input 3, output 15,
/// five-minute cache writes 3.75 = 1.25 × input, one-hour writes 6 = 2 × input), rounded up to
/// the micro-dollar.
fn sonnet_bill(input: u64, output: u64, writes_5m: u64, writes_1h: u64) -> MicroUsd {
    MicroUsd(
        (input * 3_000_000 + output * 15_000_000 + writes_5m * 3_750_000 + writes_1h * 6_000_000)
            .div_ceil(1_000_000),
    )
}

/// A Converse answer's usage: (input, output, five-minute writes, one-hour writes), the writes
/// from `cacheDetails`, which must add up to `cacheWriteInputTokens`.
fn converse_writes(body: &Value) -> (u64, u64, u64, u64) {
    let u = &body["usage"];
    let by = |ttl: &str| {
        u["cacheDetails"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["ttl"] == ttl)
            .map(|d| d["inputTokens"].as_u64().unwrap())
            .sum::<u64>()
    };
    let (five, one) = (by("5m"), by("1h"));
    assert_eq!(
        five + one,
        u["cacheWriteInputTokens"].as_u64().unwrap_or(0),
        "{body}"
    );
    assert_eq!(u["cacheReadInputTokens"].as_u64().unwrap_or(0), 0, "{body}");
    (
        u["inputTokens"].as_u64().unwrap(),
        u["outputTokens"].as_u64().unwrap(),
        five,
        one,
    )
}

#[tokio::test]
async fn one_hour_cache_writes_are_priced_at_the_one_hour_rate() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let text = "a long system prompt worth caching for an hour, x";
    assert_eq!(
        text.len() % 2,
        1,
        "the stub reports an odd prompt as a cache write"
    );
    let mut spent = 0;
    let mut spend = |headers: &reqwest::header::HeaderMap| {
        let now = 10_000_000 - remaining_usd(headers);
        let step = now - spent;
        spent = now;
        MicroUsd(step)
    };
    let (status, headers, body) = env
        .converse("key-priced", "sonnet", &cached(text, "1h"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (input, output, five, one) = converse_writes(&body);
    assert!(one > 0 && five == 0, "{body}");
    assert_eq!(
        spend(&headers),
        sonnet_bill(input, output, 0, one),
        "settled at the one-hour price"
    );

    // The same request with the default TTL is priced at the five-minute rate.
    let (status, headers, body) = env
        .converse("key-priced", "sonnet", &cached(text, "5m"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (input, output, five, one) = converse_writes(&body);
    assert!(five > 0 && one == 0, "{body}");
    assert_eq!(spend(&headers), sonnet_bill(input, output, five, 0));

    // Both TTLs in one request: Bedrock's `cacheDetails` says which writes had which, and each
    // is settled at its own price, not every write at the one-hour price.
    let mixed = json!({
        "system": [{ "text": "house rules, cached for an hour" }, { "cachePoint": { "type": "default", "ttl": "1h" } }],
        "messages": [{ "role": "user", "content": [
            { "text": "this week's context, cached for five minutes, x" },
            { "cachePoint": { "type": "default" } },
            { "text": "the question?" }
        ] }],
        "inferenceConfig": { "maxTokens": 50 }
    });
    let (status, headers, body) = env.converse("key-priced", "sonnet", &mixed).await;
    assert_eq!(status, 200, "{body}");
    let (input, output, five, one) = converse_writes(&body);
    assert!(five > 0 && one > 0, "both TTLs written: {body}");
    let mixed_cost = spend(&headers);
    assert_eq!(mixed_cost, sonnet_bill(input, output, five, one));
    assert!(
        mixed_cost < sonnet_bill(input, output, 0, five + one),
        "cheaper than every write at the one-hour price"
    );

    // The same on InvokeModel with an Anthropic body: `cache_control.ttl`, and the usage's
    // `cache_creation` by TTL.
    let anthropic = json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 40,
        "system": [{ "type": "text", "text": "house rules, cached for an hour", "cache_control": { "type": "ephemeral", "ttl": "1h" } }],
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "this week's context, five minutes, x", "cache_control": { "type": "ephemeral" } },
            { "type": "text", "text": "the question" }
        ] }]
    });
    let response = env
        .http
        .post(format!("{}/model/sonnet/invoke", env.base))
        .header("x-api-key", "key-priced")
        .header("content-type", "application/json")
        .body(anthropic.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let answer: Value = response.json().await.unwrap();
    let u = &answer["usage"];
    let (five, one) = (
        u["cache_creation"]["ephemeral_5m_input_tokens"]
            .as_u64()
            .unwrap(),
        u["cache_creation"]["ephemeral_1h_input_tokens"]
            .as_u64()
            .unwrap(),
    );
    assert!(five > 0 && one > 0, "{answer}");
    assert_eq!(
        spend(&headers),
        sonnet_bill(
            u["input_tokens"].as_u64().unwrap(),
            u["output_tokens"].as_u64().unwrap(),
            five,
            one
        )
    );
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
}

#[tokio::test]
async fn prices_the_book_does_not_have_are_refused_naming_the_field() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let mut tier = cached("x", "5m");
    tier["serviceTier"] = json!({ "type": "flex" });
    let mut latency = cached("x", "5m");
    latency["performanceConfig"] = json!({ "latency": "optimized" });
    for (model, body, field) in [
        (
            "nova",
            cached("x", "1h"),
            "messages[0].content[1].cachePoint.ttl",
        ),
        (
            "sonnet",
            cached("x", "2h"),
            "messages[0].content[1].cachePoint.ttl",
        ),
        ("sonnet", tier, "serviceTier.type"),
        ("sonnet", latency, "performanceConfig.latency"),
    ] {
        let (status, _, answer) = env.converse("key-priced", model, &body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
    }
    // Token limits do not depend on the price: the same fields pass.
    let (status, _, answer) = env.converse("key-tokens", "nova", &cached("x", "1h")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        env.stub.requests(),
        1,
        "only the token-limited request reached Bedrock"
    );
}

#[tokio::test]
async fn a_spec_price_book_prices_what_the_gateway_charges() {
    let dir = std::env::temp_dir().join(format!("tokenfence-serve-book-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let book = dir.join("negotiated.json");
    std::fs::write(
        &book,
        r#"{ "recorded": "2026-12-01", "region": "us-east-1", "tier": "standard (on-demand)",
  "unit": "USD per million tokens", "note": "negotiated", "sources": { "contract": "schedule B" },
  "models": [{ "model": "mistral.mistral-large-2407-v1:0", "input": "2.00", "output": "6.00", "source": "contract" }] }"#,
    )
    .unwrap();
    let spec = format!(
        "version: 1\nname: book\nprice_book: {}\nmodels: {{ large: mistral.mistral-large-2407-v1:0 }}\ndefaults: {{ max_tokens: 100 }}\napplications:\n  priced:\n    limits: [{{ window: day, usd: 10 }}]\n",
        book.display()
    );
    let env = start(Arc::new(MemoryLedger::new()), &spec, |_| {}).await;
    let (status, headers, answer) = env
        .converse(
            "key-priced",
            "large",
            &common::prompt("priced by our own book"),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let billed = env.stub.billed()["mistral.mistral-large-2407-v1:0"];
    // 2.00 and 6.00 USD per million: 2 and 6 micro-dollars a token, as the book says.
    let cost = billed.input_tokens * 2 + billed.output_tokens * 6;
    assert!(cost > 0);
    assert_eq!(remaining_usd(&headers), 10_000_000 - cost);
    assert!(PriceBook::lookup("mistral.mistral-large-2407-v1:0").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Tier prices from the spec's price book: a flex Converse request and a latency-optimized
/// InvokeModel request are each charged at that tier's price (to the stub's bill); a tier the
/// book does not price, or two tiers at once, is a 400 naming the field, under USD limits only.
#[tokio::test]
async fn tiers_a_price_book_lists_are_charged_at_their_price() {
    let dir = std::env::temp_dir().join(format!("tokenfence-tier-book-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiers.json");
    let text = r#"{ "recorded": "2026-12-04", "region": "us-east-1", "tier": "standard (on-demand)",
  "unit": "USD per million tokens", "note": "tiers", "sources": { "contract": "schedule C" },
  "models": [{ "model": "anthropic.claude-sonnet-4-20250514-v1:0", "input": "3", "output": "15",
    "tiers": { "flex": { "input": "1.5", "output": "7.5" }, "latency-optimized": { "input": "3.75", "output": "18.75" } },
    "source": "contract" }] }"#;
    std::fs::write(&path, text).unwrap();
    let book = budget::price::CustomBook::parse(text).unwrap();
    let sonnet = "anthropic.claude-sonnet-4-20250514-v1:0";
    let tiers = book.lookup_tiers(sonnet);
    let spec = format!(
        "version: 1\nname: tiers\nprice_book: {}\nmodels: {{ sonnet: {sonnet} }}\ndefaults: {{ max_tokens: 100 }}\napplications:\n  priced:\n    limits: [{{ window: day, usd: 10 }}]\n  tokens:\n    limits: [{{ window: day, tokens: 100000 }}]\n",
        path.display()
    );
    let env = start(Arc::new(MemoryLedger::new()), &spec, |_| {}).await;
    let billed = |env: &common::Env<MemoryLedger>| {
        env.stub
            .billed()
            .get(sonnet)
            .cloned()
            .unwrap_or_default()
            .usage()
    };
    let minus = |a: Usage, b: Usage| Usage {
        input_tokens: a.input_tokens - b.input_tokens,
        output_tokens: a.output_tokens - b.output_tokens,
        cache_read_tokens: a.cache_read_tokens - b.cache_read_tokens,
        cache_write_tokens: a.cache_write_tokens - b.cache_write_tokens,
        cache_write_5m_tokens: a.cache_write_5m_tokens - b.cache_write_5m_tokens,
        cache_write_1h_tokens: a.cache_write_1h_tokens - b.cache_write_1h_tokens,
    };

    // Converse on the flex tier: settled at the flex price.
    let mut flex = common::prompt("summarise the quarter on the flex tier");
    flex["serviceTier"] = json!({ "type": "flex" });
    let (status, headers, answer) = env.converse("key-priced", "sonnet", &flex).await;
    assert_eq!(status, 200, "{answer}");
    let used = billed(&env);
    let flex_cost = tiers[&budget::PriceTier::Flex].cost(&used);
    assert_eq!(MicroUsd(10_000_000 - remaining_usd(&headers)), flex_cost);
    assert!(
        flex_cost < book.lookup(sonnet).unwrap().cost(&used),
        "cheaper than standard"
    );

    // InvokeModel asking for latency-optimized inference by header: its own price.
    let before = billed(&env);
    let response = env
        .http
        .post(format!("{}/model/sonnet/invoke", env.base))
        .header("x-api-key", "key-priced")
        .header("content-type", "application/json")
        .header("X-Amzn-Bedrock-PerformanceConfig-Latency", "optimized")
        .body(
            json!({
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 40,
                "messages": [{ "role": "user", "content": "fast, please" }]
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spent_before = flex_cost.0;
    let remaining = remaining_usd(response.headers());
    let used = minus(billed(&env), before);
    assert!(used.output_tokens > 0);
    assert_eq!(
        MicroUsd(10_000_000 - spent_before - remaining),
        tiers[&budget::PriceTier::LatencyOptimized].cost(&used)
    );

    // Refused under the USD limit: a tier the book does not price, and two tiers at once.
    let requests = env.stub.requests();
    let mut priority = common::prompt("x");
    priority["serviceTier"] = json!({ "type": "priority" });
    let mut both = flex.clone();
    both["performanceConfig"] = json!({ "latency": "optimized" });
    let mut reserved = common::prompt("x");
    reserved["serviceTier"] = json!({ "type": "reserved" });
    for (body, field, says) in [
        (
            &priority,
            "serviceTier.type",
            "asks for the `priority` tier",
        ),
        (
            &both,
            "performanceConfig.latency",
            "changes the price per token",
        ),
        (&reserved, "serviceTier.type", "changes the price per token"),
    ] {
        let (status, _, answer) = env.converse("key-priced", "sonnet", body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{answer}"
        );
    }
    assert_eq!(env.stub.requests(), requests, "refused before Bedrock");
    // Token limits do not depend on the price: the same requests pass.
    let (status, _, answer) = env.converse("key-tokens", "sonnet", &priority).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
