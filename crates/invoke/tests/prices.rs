//! Fields that change the price per token, under a USD limit: one-hour cache writes are priced
//! (Claude: 2 × input, every cache write of such a request at that price), on reservation and
//! settlement, and so are service tiers and latency-optimized inference where a price book lists
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

#[tokio::test]
async fn one_hour_cache_writes_are_priced_at_the_one_hour_rate() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let text = "a long system prompt worth caching for an hour, x";
    assert_eq!(
        text.len() % 2,
        1,
        "the stub reports an odd prompt as a cache write"
    );
    let (status, headers, body) = env
        .converse("key-priced", "sonnet", &cached(text, "1h"))
        .await;
    assert_eq!(status, 200, "{body}");
    let usage = Usage {
        input_tokens: body["usage"]["inputTokens"].as_u64().unwrap(),
        output_tokens: body["usage"]["outputTokens"].as_u64().unwrap(),
        cache_read_tokens: body["usage"]["cacheReadInputTokens"].as_u64().unwrap_or(0),
        cache_write_tokens: body["usage"]["cacheWriteInputTokens"].as_u64().unwrap(),
    };
    assert!(usage.cache_write_tokens > 0, "{body}");
    let book = PriceBook::lookup("anthropic.claude-sonnet-4-20250514-v1:0").unwrap();
    let one_hour = book.with_one_hour_writes().unwrap();
    assert_eq!(one_hour.cache_write, 2 * book.input);
    let spent = 10_000_000 - remaining_usd(&headers);
    assert_eq!(
        MicroUsd(spent),
        one_hour.cost(&usage),
        "settled at the one-hour price"
    );
    assert!(
        one_hour.cost(&usage) > book.cost(&usage),
        "dearer than five-minute writes"
    );

    // The same request with the default TTL is priced at the five-minute rate.
    let (status, headers, body) = env
        .converse("key-priced", "sonnet", &cached(text, "5m"))
        .await;
    assert_eq!(status, 200, "{body}");
    let spent_5m = 10_000_000 - spent - remaining_usd(&headers);
    assert_eq!(MicroUsd(spent_5m), book.cost(&usage));
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
        let b = env.stub.billed().get(sonnet).cloned().unwrap_or_default();
        Usage {
            input_tokens: b.input_tokens,
            output_tokens: b.output_tokens,
            cache_read_tokens: b.cache_read_tokens,
            cache_write_tokens: b.cache_write_tokens,
        }
    };
    let minus = |a: Usage, b: Usage| Usage {
        input_tokens: a.input_tokens - b.input_tokens,
        output_tokens: a.output_tokens - b.output_tokens,
        cache_read_tokens: a.cache_read_tokens - b.cache_read_tokens,
        cache_write_tokens: a.cache_write_tokens - b.cache_write_tokens,
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
