//! Every example in `examples/` is a valid spec and decodes to what it says.

use budget::{MicroUsd, Window};
use spec::{AlarmKind, Metric, Mode, OnExceed};

fn example(name: &str) -> String {
    let path = format!(
        "{}/../../examples/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn quickstart_decodes_to_its_meaning() {
    let spec = spec::parse("quickstart.yaml", &example("quickstart.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.name, "acme-genai");
    assert!(spec.access.rest && spec.access.queue);
    let sonnet = &spec.models["sonnet"];
    assert!(sonnet.price_from_spec);
    assert_eq!(sonnet.price.unwrap().cache_write, 3_750_000);
    assert!(!spec.models["haiku"].price_from_spec && spec.models["haiku"].price.is_some());
    let app = &spec.applications["support-bot"];
    assert_eq!(app.models, ["haiku", "nova-lite"]);
    assert_eq!(app.limit(Window::Minute).unwrap().tokens, Some(200_000));
    assert_eq!(
        app.limit(Window::Day).unwrap().usd,
        Some(MicroUsd::from_usd(40))
    );
    assert_eq!(
        app.on_exceed,
        OnExceed::Fallback {
            model: "nova-micro".into()
        }
    );
    assert_eq!(app.mode, Mode::Enforce);
    assert_eq!(app.alarms.len(), 3);
    assert_eq!(app.alarms[0].kind, AlarmKind::Threshold { percent: 80 });
    assert_eq!(app.alarms[0].metric, Metric::Usd);
    assert_eq!(
        (app.alarms[2].window, app.alarms[2].kind),
        (Window::Hour, AlarmKind::Anomaly)
    );
    assert_eq!(app.cost_budget.as_ref().unwrap().actual_percents, [80, 100]);
}

#[test]
fn multi_team_decodes() {
    let spec = spec::parse("multi-team.yaml", &example("multi-team.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.applications.len(), 4);
    assert_eq!(
        spec.applications["legal-review"]
            .limit(Window::Month)
            .unwrap()
            .usd,
        Some(MicroUsd(900_500_000))
    );
    assert_eq!(spec.applications["research-sandbox"].mode, Mode::Shadow);
    assert_eq!(
        spec.applications["research-sandbox"].models,
        ["llama-70b", "sonnet"]
    );
}

#[test]
fn defaults_apply_when_sections_are_left_out() {
    let src = "version: 1\nname: tiny\nmodels: { m: amazon.nova-micro-v1:0 }\napplications:\n  a:\n    limits: [{ window: day, tokens: 100000 }]\n";
    let spec = spec::parse("tiny.yaml", src).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.defaults.max_tokens, 1024);
    assert!(spec.access.rest && !spec.access.queue);
    assert_eq!(spec.applications["a"].models, ["m"]);
    assert_eq!(spec.applications["a"].on_exceed, OnExceed::Reject);
}

#[test]
fn seats_decode_to_their_meaning() {
    let spec = spec::parse("seats.yaml", &example("seats.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let app = &spec.applications["coding-agents"];
    let per_user = app.per_user.as_ref().unwrap();
    assert_eq!(
        per_user.limits[0].usd,
        Some(MicroUsd::from_usd(20)),
        "every developer's daily dollars"
    );
    assert_eq!(
        per_user.on_exceed,
        OnExceed::Fallback {
            model: "haiku".into()
        }
    );
    assert_eq!(
        app.users.keys().collect::<Vec<_>>(),
        ["lead@example.com", "trial-user"]
    );
    assert_eq!(app.users["trial-user"].mode, Mode::Shadow);
    assert_eq!(app.users["lead@example.com"].on_exceed, OnExceed::Reject);
    assert!(!app.user_metrics);
}

#[test]
fn a_price_book_of_ones_own_prices_models_as_the_spec_would() {
    let dir = std::env::temp_dir().join(format!("tokenfence-book-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("prices")).unwrap();
    std::fs::write(
        dir.join("prices/negotiated.json"),
        r#"{
  "recorded": "2026-12-01",
  "region": "eu-west-1",
  "tier": "standard (on-demand)",
  "unit": "USD per million tokens",
  "note": "our negotiated rates",
  "sources": { "contract": "enterprise agreement, schedule B" },
  "models": [
    { "model": "mistral.mistral-large-2407-v1:0", "input": "2.00", "output": "6.00", "source": "contract" },
    { "model": "amazon.nova-lite-v1:0", "input": "0.05", "output": "0.20", "source": "contract" }
  ]
}"#,
    )
    .unwrap();
    let spec_path = dir.join("spec.yaml");
    let source = "version: 1
name: acme
price_book: prices/negotiated.json
models:
  large: mistral.mistral-large-2407-v1:0
  lite: amazon.nova-lite-v1:0
  micro:
    id: amazon.nova-micro-v1:0
    price: { input: 0.01, output: 0.02 }
  haiku: anthropic.claude-3-haiku-20240307-v1:0
applications:
  team:
    limits: [{ window: day, usd: 10 }]
";
    let spec = spec::parse(spec_path.to_str().unwrap(), source).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        spec.price_book
            .as_ref()
            .map(|b| (b.file.as_str(), b.recorded.as_str())),
        Some(("prices/negotiated.json", "2026-12-01"))
    );
    // A model the built-in book does not know, priced by the spec's book: USD limits may use it.
    let large = &spec.models["large"];
    assert_eq!(large.price.unwrap().input, 2_000_000);
    assert!(large.price_from_spec, "rendered as an override");
    // The spec's book wins over the built-in one; a price in the spec wins over both.
    assert_eq!(spec.models["lite"].price.unwrap().output, 200_000);
    assert_eq!(spec.models["micro"].price.unwrap().input, 10_000);
    // What neither prices comes from the built-in book, as before.
    let haiku = &spec.models["haiku"];
    assert!(!haiku.price_from_spec && haiku.price.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tier_and_one_hour_prices_written_in_the_spec_win_over_its_books_tier_by_tier() {
    let dir = std::env::temp_dir().join(format!("tokenfence-tiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("book.json"),
        r#"{"recorded":"2026-12-04","region":"us-east-1","tier":"standard","unit":"USD per million tokens","note":"n","sources":{"s":"negotiated"},"models":[
  {"model":"anthropic.claude-haiku-4-5-20251001-v1:0","input":"1","output":"5","source":"s",
   "tiers":{"flex":{"input":"0.5","output":"2.5"},"priority":{"input":"1.75","output":"8.75"}}}]}"#,
    )
    .unwrap();
    let source = "version: 1
name: acme
price_book: book.json
models:
  haiku:
    id: anthropic.claude-haiku-4-5-20251001-v1:0
    price:
      input: 0.9
      output: 4.5
      tiers:
        priority: { input: 1.5, output: 7.5, cache_write_1h: 3.1 }
        latency-optimized: { input: 1.2, output: 6 }
  pro:
    id: amazon.nova-pro-v1:0
    price: { input: 0.8, output: 3.2, cache_write_1h: 1.6 }
applications:
  team:
    limits: [{ window: day, usd: 10 }]
";
    let spec = spec::parse(dir.join("spec.yaml").to_str().unwrap(), source)
        .unwrap_or_else(|e| panic!("{e}"));
    let haiku = &spec.models["haiku"];
    assert_eq!(haiku.price.map(|p| p.input), Some(900_000));
    let tiers: Vec<(&str, u64, Option<u64>)> = haiku
        .tiers
        .iter()
        .map(|(t, p)| (t.as_str(), p.input, p.cache_write_1h))
        .collect();
    assert_eq!(
        tiers,
        vec![
            // The book's flex price, which the spec does not restate (one-hour writes by family).
            ("flex", 500_000, Some(1_000_000)),
            // The spec's priority price replaces the book's, its one-hour write as written.
            ("priority", 1_500_000, Some(3_100_000)),
            // A tier only the spec prices.
            ("latency-optimized", 1_200_000, Some(2_400_000)),
        ]
    );
    // A one-hour write price makes one-hour cache points priceable on a family without one.
    let pro = spec.models["pro"].price.unwrap();
    let written = budget::Usage {
        cache_write_tokens: 1_000_000,
        ..budget::Usage::default()
    };
    assert_eq!(
        pro.with_one_hour_writes().map(|p| p.cost(&written)),
        Some(MicroUsd(1_600_000))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
