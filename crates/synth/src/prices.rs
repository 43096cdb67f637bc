//! `synth prices`: the built-in price book, with its date and sources, as a table or JSON.

use std::fmt::Write as _;

use budget::PriceBook;
use budget::price::{BookEntry, base_model};
use serde_json::{Value, json};

/// One model as `synth prices` shows it: the book's entry, or a profile or ARN resolved to it.
fn row(model: &str, entry: &BookEntry) -> Value {
    let price = PriceBook::lookup(model).expect("an entry of the book is priced");
    json!({
        "model": model,
        "baseModel": entry.model,
        "input": price.input_usd(),
        "output": price.output_usd(),
        "cacheRead": price.cache_read_usd(),
        "cacheWrite": price.cache_write_usd(),
        "cacheWrite1h": price.cache_write_1h_usd(),
        "regionalPremiumPercent": entry.regional_premium_percent,
        "source": entry.source,
    })
}

/// The book, or the one model `model` (an ID, inference profile ID or ARN), as JSON values.
/// An unknown model is an error naming the closest ID the book has.
pub fn rows(model: Option<&str>) -> Result<Vec<Value>, String> {
    let Some(model) = model else {
        return Ok(PriceBook::entries()
            .iter()
            .map(|e| row(&e.model, e))
            .collect());
    };
    let (base, _) = base_model(model);
    match PriceBook::entries().iter().find(|e| e.model == base) {
        Some(entry) => Ok(vec![row(model, entry)]),
        None => Err(match spec::suggest_model(base) {
            Some(close) => {
                format!("the built-in price book does not know `{model}`; did you mean `{close}`?")
            }
            None => format!(
                "the built-in price book does not know `{model}`; `synth prices` lists the models it knows, and a spec can set a price for any model"
            ),
        }),
    }
}

/// `synth prices --json`: the book's date, scope and sources with the rows.
pub fn json(rows: Vec<Value>) -> Value {
    let (region, tier, unit) = PriceBook::scope();
    json!({
        "recorded": PriceBook::recorded(),
        "region": region,
        "tier": tier,
        "unit": unit,
        "note": PriceBook::note(),
        "sources": PriceBook::sources().iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "models": rows,
    })
}

/// `synth prices`: a table of the rows, headed by the book's date and scope, followed by its
/// sources.
pub fn table(rows: &[Value]) -> String {
    let (region, tier, unit) = PriceBook::scope();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Built-in price book: Amazon Bedrock {tier}, {region}, recorded {}; {unit}.",
        PriceBook::recorded()
    );
    let headers = [
        "MODEL",
        "INPUT",
        "OUTPUT",
        "CACHE READ",
        "CACHE WRITE",
        "1H WRITE",
        "GEO PROFILE",
        "SOURCE",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            let premium = r["regionalPremiumPercent"].as_u64().unwrap_or(0);
            [
                s("model"),
                s("input"),
                s("output"),
                s("cacheRead"),
                s("cacheWrite"),
                r["cacheWrite1h"].as_str().unwrap_or("-").to_string(),
                if premium == 0 {
                    "same".to_string()
                } else {
                    format!("+{premium}%")
                },
                s("source"),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = |fields: Vec<&str>| {
        let text: Vec<String> = fields
            .iter()
            .zip(&widths)
            .map(|(f, w)| format!("{f:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for c in &cells {
        line(c.iter().map(String::as_str).collect());
    }
    let _ = writeln!(out, "\n{}", PriceBook::note());
    let _ = writeln!(out, "\nSources:");
    for (key, text) in PriceBook::sources() {
        let _ = writeln!(out, "  {key}: {text}");
    }
    out
}
