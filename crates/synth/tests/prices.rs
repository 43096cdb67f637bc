//! `synth prices`: the built-in book as a golden table and as JSON, one model by ID, profile or
//! ARN, and a clear error with a suggestion for a model the book does not know.

mod common;

use budget::PriceBook;
use common::synth;
use serde_json::{Value, json};

fn json(args: &[&str]) -> Value {
    let out = synth(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn the_table_shows_every_model_with_its_date_and_sources() {
    let out = synth(&["prices"]);
    assert!(out.status.success());
    insta::assert_snapshot!("prices-table", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_json_is_the_book_the_gateway_prices_with() {
    let book = json(&["prices", "--json"]);
    assert_eq!(book["recorded"], PriceBook::recorded());
    assert_eq!(book["unit"], "USD per million tokens");
    let models = book["models"].as_array().unwrap();
    assert_eq!(models.len(), PriceBook::entries().len());
    for m in models {
        let id = m["model"].as_str().unwrap();
        let price = PriceBook::lookup(id).unwrap();
        assert_eq!(m["input"], price.input_usd(), "{id}");
        assert_eq!(m["output"], price.output_usd(), "{id}");
        assert_eq!(m["cacheRead"], price.cache_read_usd(), "{id}");
        assert_eq!(m["cacheWrite"], price.cache_write_usd(), "{id}");
        assert_eq!(m["cacheWrite1h"], json!(price.cache_write_1h_usd()), "{id}");
        let source = m["source"].as_str().unwrap();
        assert!(book["sources"][source].is_string(), "{id}'s source");
    }
}

#[test]
fn one_model_by_profile_or_arn() {
    // A geographic profile of Claude Haiku 4.5 costs 10% more than the model in-region.
    let regional = json(&[
        "prices",
        "--model",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "--json",
    ]);
    let row = &regional["models"][0];
    assert_eq!(row["baseModel"], "anthropic.claude-haiku-4-5-20251001-v1:0");
    assert_eq!(
        (&row["input"], &row["output"]),
        (&"1.1".into(), &"5.5".into())
    );
    assert_eq!(row["regionalPremiumPercent"], 10);
    let arn = json(&[
        "prices",
        "--model",
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0",
        "--json",
    ]);
    assert_eq!(arn["models"][0]["input"], "0.035");
    assert_eq!(arn["models"][0]["cacheRead"], "0.00875");
}

#[test]
fn an_unknown_model_is_an_error_with_the_closest_id() {
    let out = synth(&["prices", "--model", "anthropic.claude-3-haiku-20240307-v1"]);
    assert_eq!(out.status.code(), Some(2), "bad input exits 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not know `anthropic.claude-3-haiku-20240307-v1`; did you mean `anthropic.claude-3-haiku-20240307-v1:0`?"),
        "{stderr}"
    );
    let out = synth(&["prices", "--model", "acme.unknown-v1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a spec can set a price for any model"));
}

#[test]
fn a_book_of_ones_own_is_shown_with_its_tiers() {
    let dir = std::env::temp_dir().join(format!("tokenfence-prices-book-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("negotiated.json");
    std::fs::write(
        &path,
        r#"{ "recorded": "2026-12-04", "region": "eu-west-1", "tier": "standard (on-demand)",
  "unit": "USD per million tokens", "note": "our rates", "sources": { "contract": "schedule C" },
  "models": [{ "model": "anthropic.claude-haiku-4-5-20251001-v1:0", "input": "0.9", "output": "4.5",
    "cache_write_1h": "1.9", "regional_premium_percent": 10, "tiers": { "flex": { "input": "0.45", "output": "2.25" } },
    "source": "contract" }] }"#,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let book = json(&["prices", "--book", file, "--json"]);
    assert_eq!(
        (&book["recorded"], &book["region"], &book["note"]),
        (
            &json!("2026-12-04"),
            &json!("eu-west-1"),
            &json!("our rates")
        )
    );
    let row = &book["models"][0];
    assert_eq!(
        (&row["input"], &row["source"]),
        (&json!("0.9"), &json!("contract"))
    );
    assert_eq!(row["tiers"]["flex"]["input"], "0.45");
    // One-hour writes as the book writes them, else by the family (Claude: 2 × input).
    assert_eq!(row["cacheWrite1h"], "1.9");
    assert_eq!(row["tiers"]["flex"]["cacheWrite1h"], "0.9");
    // A geographic profile: the premium in every tier.
    let us = json(&[
        "prices",
        "--book",
        file,
        "--model",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "--json",
    ]);
    assert_eq!(us["models"][0]["tiers"]["flex"]["output"], "2.475");
    // The built-in book lists no tiers; its rows say so.
    let builtin = json(&["prices", "--json"]);
    assert!(
        builtin["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["tiers"] == json!({}))
    );

    let out = synth(&["prices", "--book", file]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with(&format!("Price book `{file}`: Amazon Bedrock standard (on-demand), eu-west-1, recorded 2026-12-04")), "{table}");
    assert!(
        table.contains("    flex: 0.45 / 2.25 / 0.045 / 0.5625 / 0.9\n"),
        "{table}"
    );

    // A model the book lacks, and a book that is not one, exit 2 saying why.
    let out = synth(&[
        "prices",
        "--book",
        file,
        "--model",
        "amazon.nova-micro-v1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the price book does not know `amazon.nova-micro-v1:0`")
    );
    std::fs::write(&path, r#"{"recorded": "x"}"#).unwrap();
    let out = synth(&["prices", "--book", file]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(file) && stderr.contains("missing field"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
