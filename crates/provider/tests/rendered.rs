//! What `synth` renders is exactly what the provider reads: every `Custom::TokenBudget` and
//! `Custom::TokenAlarm` in every example's templates, with its properties turned into strings
//! the way CloudFormation sends them, parses, and its alarms plan against its budget. The
//! hand-written template in `templates/` passes cfn-lint and parses the same way.

use serde_json::Value;

/// CloudFormation sends every scalar as a string; intrinsic functions arrive resolved (here: a
/// placeholder ARN).
fn as_cloudformation_sends(v: &Value) -> Value {
    match v {
        Value::Object(m)
            if m.len() == 1
                && m.keys()
                    .next()
                    .is_some_and(|k| k == "Ref" || k.starts_with("Fn::")) =>
        {
            Value::String("arn:aws:sqs:us-east-1:123456789012:resolved".into())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), as_cloudformation_sends(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(as_cloudformation_sends).collect()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        other => other.clone(),
    }
}

fn check(resources: &serde_json::Map<String, Value>, prefix: &str) -> usize {
    let mut configs = std::collections::HashMap::new();
    let mut checked = 0;
    for (id, r) in resources {
        if r["Type"] == "Custom::TokenBudget" {
            let props = as_cloudformation_sends(&r["Properties"]);
            let b = provider::props::parse_budget(&props).unwrap_or_else(|e| panic!("{id}: {e}"));
            if let Some(cb) = &b.cost_budget {
                assert_eq!(
                    cb.budget_name.as_deref(),
                    Some(
                        spec::names::Names::new(prefix)
                            .budget(&b.application)
                            .as_str()
                    ),
                    "{id}: the provider's default budget name is the rendered one"
                );
            }
            configs.insert(
                b.application.clone(),
                budget::config::BudgetConfig {
                    application: b.application.clone(),
                    limits: b.limits.clone(),
                    ..Default::default()
                },
            );
            checked += 1;
        }
    }
    for (id, r) in resources {
        if r["Type"] == "Custom::TokenAlarm" {
            let props = as_cloudformation_sends(&r["Properties"]);
            let a = provider::props::parse_alarm(&props).unwrap_or_else(|e| panic!("{id}: {e}"));
            let plan = provider::plan::plan_alarm(&a, &configs[&a.application], prefix)
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            // The provider's default name is the one synth renders: one naming rule.
            let unnamed = provider::props::AlarmProps {
                alarm_name: None,
                ..a.clone()
            };
            let default = provider::plan::plan_alarm(&unnamed, &configs[&a.application], prefix)
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(default.name, plan.name, "{id}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_rendered_custom_resource_is_read_by_the_provider() {
    let mut checked = 0;
    for entry in std::fs::read_dir(harness::repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let spec = spec::parse("x", &std::fs::read_to_string(&path).unwrap()).unwrap();
        for stack in cfn::render(
            &spec,
            &cfn::RenderOptions {
                code_dir: ".".into(),
            },
        )
        .unwrap()
        .stacks
        {
            let t = serde_json::to_value(&stack.template).unwrap();
            checked += check(t["Resources"].as_object().unwrap(), &spec.name);
        }
    }
    assert!(checked > 1000, "checked {checked}");
}

#[test]
fn the_hand_written_template_passes_cfn_lint_and_is_read_by_the_provider() {
    let path = harness::repo().join("templates/budgets-by-hand.yaml");
    harness::cfn_lint(std::slice::from_ref(&path));
    // The template uses short-form tags; read it as CloudFormation would, with the tags resolved
    // (an import to the exported name, a `Ref` to the logical ID standing in for the key ID).
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("!ImportValue ", "")
        .replace("!Ref ", "");
    let value: Value =
        serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap())
            .unwrap();
    assert_eq!(
        check(value["Resources"].as_object().unwrap(), "acme-genai"),
        3
    );
}

/// The properties of resource `logical_id` in the first stack `spec` renders to.
fn rendered_properties(spec: &spec::Spec, logical_id: &str) -> Value {
    let rendering = cfn::render(
        spec,
        &cfn::RenderOptions {
            code_dir: ".".into(),
        },
    )
    .unwrap();
    let template = serde_json::to_value(&rendering.stacks[0].template).unwrap();
    template["Resources"][logical_id]["Properties"].clone()
}

#[test]
fn seats_rendered_from_a_spec_are_read_back_as_declared() {
    let path = harness::repo().join("examples/seats.yaml");
    let spec = spec::parse("seats.yaml", &std::fs::read_to_string(&path).unwrap()).unwrap();
    let declared = &spec.applications["coding-agents"];
    let props = rendered_properties(&spec, "CodingAgentsBudget");
    let read = provider::props::parse_budget(&as_cloudformation_sends(&props)).unwrap();
    let per_user = read.per_user.expect("PerUser rendered");
    assert_eq!(per_user.limits, declared.per_user.as_ref().unwrap().limits);
    assert_eq!(
        per_user.on_exceed,
        budget::config::ExceedAction::Fallback {
            model: spec.models["haiku"].id.clone()
        }
    );
    assert_eq!(
        read.users.keys().collect::<Vec<_>>(),
        ["lead@example.com", "trial-user"]
    );
    for (name, user) in &declared.users {
        assert_eq!(read.users[name].limits, user.limits, "{name}");
    }
    assert_eq!(
        read.users["trial-user"].mode,
        budget::config::EnforcementMode::Shadow
    );
    assert!(!read.user_metrics);
}

#[test]
fn tier_prices_from_a_spec_price_book_are_rendered_and_read_back() {
    let dir =
        std::env::temp_dir().join(format!("tokenfence-rendered-tiers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("book.json"),
        r#"{ "recorded": "2026-12-04", "region": "us-east-1", "tier": "standard (on-demand)",
  "unit": "USD per million tokens", "note": "tiers", "sources": { "contract": "schedule C" },
  "models": [{ "model": "amazon.nova-pro-v1:0", "input": "0.8", "output": "3.2",
    "tiers": { "flex": { "input": "0.4", "output": "1.6" }, "latency-optimized": { "input": "1", "output": "4", "cache_read": "0.25" } },
    "source": "contract" }] }"#,
    )
    .unwrap();
    let source = "version: 1\nname: tiers\nprice_book: book.json\nmodels:\n  pro: amazon.nova-pro-v1:0\n  haiku:\n    id: anthropic.claude-haiku-4-5-20251001-v1:0\n    price: { input: 1, output: 5, cache_write_1h: 2.5, tiers: { priority: { input: 1.75, output: 8.75 } } }\napplications:\n  team:\n    limits: [{ window: day, usd: 10 }]\n";
    let spec = spec::parse(dir.join("spec.yaml").to_str().unwrap(), source).unwrap();
    let declared = &spec.models["pro"].tiers;
    let flex = declared.get(&budget::PriceTier::Flex).copied();
    let latency_optimized = declared.get(&budget::PriceTier::LatencyOptimized).copied();
    assert_eq!(flex.map(|p| p.input), Some(400_000));
    let props = rendered_properties(&spec, "TeamBudget");
    assert_eq!(props["Prices"][0]["Tiers"][0]["Tier"], "flex", "{props}");
    let read = provider::props::parse_budget(&as_cloudformation_sends(&props)).unwrap();
    let tiers = &read.prices[0].tiers;
    assert_eq!(tiers.get(&budget::PriceTier::Flex).copied(), flex, "flex");
    assert_eq!(
        tiers.get(&budget::PriceTier::LatencyOptimized).copied(),
        latency_optimized
    );
    assert_eq!(tiers.len(), 2);
    // Prices written in the spec itself, one-hour writes and tiers included, arrive as written.
    let haiku = &spec.models["haiku"];
    assert_eq!(props["Prices"][1]["CacheWrite1h"], "2.5", "{props}");
    assert_eq!(
        props["Prices"][1]["Tiers"][0]["CacheWrite1h"], "3.5",
        "{props}"
    );
    assert_eq!(read.prices[1].price, haiku.price.unwrap());
    assert_eq!(read.prices[1].tiers, haiku.tiers);
    assert_eq!(
        read.prices[1].tiers[&budget::PriceTier::Priority].cache_write_1h,
        Some(3_500_000)
    );

    // A tier the provider does not know, or one listed twice, is named.
    for (tiers, expected) in [
        (
            serde_json::json!([{ "Tier": "reserved", "Input": "1", "Output": "1" }]),
            "`Prices[0].Tiers[0].Tier`: `reserved` is not a tier: `flex`, `priority` or `latency-optimized`",
        ),
        (
            serde_json::json!([{ "Tier": "flex", "Input": "1", "Output": "1" }, { "Tier": "flex", "Input": "2", "Output": "2" }]),
            "`Prices[0].Tiers[1].Tier`: tier `flex` is listed twice",
        ),
    ] {
        let mut bad = props.clone();
        bad["Prices"][0]["Tiers"] = tiers;
        assert_eq!(
            provider::props::parse_budget(&as_cloudformation_sends(&bad))
                .unwrap_err()
                .to_string(),
            expected
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
