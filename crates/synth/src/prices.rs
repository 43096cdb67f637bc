//! `synth prices`: the built-in price book, or one of one's own (`--book FILE`), with its date
//! and sources, as a table or JSON.

use std::fmt::Write as _;

use budget::price::{BookEntry, CustomBook, base_model};
use serde_json::{Value, json};

/// One model as `synth prices` shows it: the book's entry, or a profile or ARN resolved to it,
/// with its prices in other tiers where the book lists them.
fn row(book: &CustomBook, model: &str, entry: &BookEntry) -> Value {
    let price = book.lookup(model).expect("an entry of the book is priced");
    let tiers: serde_json::Map<String, Value> = book
        .lookup_tiers(model)
        .iter()
        .map(|(tier, p)| {
            (
                tier.as_str().to_string(),
                json!({
                    "input": p.input_usd(),
                    "output": p.output_usd(),
                    "cacheRead": p.cache_read_usd(),
                    "cacheWrite": p.cache_write_usd(),
                    "cacheWrite1h": p.cache_write_1h_usd(),
                }),
            )
        })
        .collect();
    json!({
        "model": model,
        "baseModel": entry.model,
        "input": price.input_usd(),
        "output": price.output_usd(),
        "cacheRead": price.cache_read_usd(),
        "cacheWrite": price.cache_write_usd(),
        "cacheWrite1h": price.cache_write_1h_usd(),
        "regionalPremiumPercent": entry.regional_premium_percent,
        "tiers": tiers,
        "source": entry.source,
    })
}

/// The book, or the one model `model` (an ID, inference profile ID or ARN), as JSON values.
/// An unknown model is an error; for the `builtin` book it names the closest ID the book has.
pub fn rows(book: &CustomBook, builtin: bool, model: Option<&str>) -> Result<Vec<Value>, String> {
    let Some(model) = model else {
        return Ok(book
            .entries()
            .iter()
            .map(|e| row(book, &e.model, e))
            .collect());
    };
    let (base, _) = base_model(model);
    if let Some(entry) = book.entries().iter().find(|e| e.model == base) {
        return Ok(vec![row(book, model, entry)]);
    }
    if !builtin {
        return Err(format!("the price book does not know `{model}`"));
    }
    Err(match spec::suggest_model(base) {
        Some(close) => {
            format!("the built-in price book does not know `{model}`; did you mean `{close}`?")
        }
        None => format!(
            "the built-in price book does not know `{model}`; `synth prices` lists the models it knows, and a spec can set a price for any model"
        ),
    })
}

/// `synth prices --json`: the book's date, scope and sources with the rows.
pub fn json(book: &CustomBook, rows: Vec<Value>) -> Value {
    let (region, tier, unit) = book.scope();
    json!({
        "recorded": book.recorded(),
        "region": region,
        "tier": tier,
        "unit": unit,
        "note": book.note(),
        "sources": book.sources().iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "models": rows,
    })
}

/// `synth prices`: a table of the rows, headed by the book's name (`Built-in price book`, or the
/// file's), date and scope, then each model's tier prices, the note and the sources.
pub fn table(name: &str, book: &CustomBook, rows: &[Value]) -> String {
    let (region, tier, unit) = book.scope();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{name}: Amazon Bedrock {tier}, {region}, recorded {}; {unit}.",
        book.recorded()
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
    let tiered: Vec<&Value> = rows
        .iter()
        .filter(|r| r["tiers"].as_object().is_some_and(|t| !t.is_empty()))
        .collect();
    if !tiered.is_empty() {
        let _ = writeln!(
            out,
            "\nOther tiers (input / output / cache read / cache write / one-hour cache write):"
        );
        for r in tiered {
            let _ = writeln!(out, "  {}", r["model"].as_str().unwrap_or_default());
            for (tier, p) in r["tiers"].as_object().into_iter().flatten() {
                let s = |k: &str| p[k].as_str().unwrap_or("-").to_string();
                let _ = writeln!(
                    out,
                    "    {tier}: {} / {} / {} / {} / {}",
                    s("input"),
                    s("output"),
                    s("cacheRead"),
                    s("cacheWrite"),
                    s("cacheWrite1h")
                );
            }
        }
    }
    let _ = writeln!(out, "\n{}", book.note());
    let _ = writeln!(out, "\nSources:");
    for (key, text) in book.sources() {
        let _ = writeln!(out, "  {key}: {text}");
    }
    out
}
