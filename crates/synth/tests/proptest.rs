//! Property test: rendering never panics on a valid spec, and every stack stays within quotas.

use cfn::template::quotas;
use proptest::prelude::*;

fn app_yaml() -> impl Strategy<Value = String> {
    (
        prop::sample::subsequence(vec!["micro", "lite", "haiku", "priced"], 1..=4),
        prop::option::of(1_100u64..5_000_000),
        prop::option::of(1u64..100_000),
        0usize..3,
        any::<bool>(),
        prop::collection::vec(1u32..=100, 0..3),
        prop::option::of(1u64..10_000),
    )
        .prop_map(
            |(models, minute_tokens, month_usd_cents, on_exceed, shadow, percents, budget)| {
                let mut s = format!("    models: [{}]\n    limits:\n", models.join(", "));
                s.push_str(&format!(
                    "      - {{ window: minute, tokens: {} }}\n",
                    minute_tokens.unwrap_or(2_000)
                ));
                let has_usd = month_usd_cents.is_some();
                if let Some(c) = month_usd_cents {
                    s.push_str(&format!(
                        "      - {{ window: month, usd: {}.{:02} }}\n",
                        c / 100,
                        c % 100
                    ));
                }
                match on_exceed {
                    1 => s.push_str("    on_exceed: { action: fallback, model: micro }\n"),
                    2 => s.push_str("    on_exceed: queue\n"),
                    _ => {}
                }
                if shadow {
                    s.push_str("    mode: shadow\n");
                }
                let mut percents = percents;
                percents.sort();
                percents.dedup();
                s.push_str("    alarms:\n      - { anomaly: true }\n");
                for p in percents {
                    s.push_str(&format!(
                        "      - {{ window: minute, metric: tokens, percent: {p} }}\n"
                    ));
                }
                if has_usd {
                    s.push_str("      - { window: month, forecast: true }\n");
                }
                if let Some(b) = budget {
                    s.push_str(&format!("    cost_budget: {{ monthly_usd: {b} }}\n"));
                }
                s
            },
        )
}

fn spec_yaml() -> impl Strategy<Value = String> {
    (prop::collection::vec(app_yaml(), 1..60), prop::sample::select(vec!["[rest]", "[queue]", "[rest, queue]"]), prop::collection::vec("[a-z]{1,8}@[a-z]{1,8}\\.com", 0..3))
        .prop_map(|(apps, access, emails)| {
            let mut emails = emails;
            emails.sort();
            emails.dedup();
            let mut s = format!(
                "version: 1\nname: prop\naccess: {access}\nalerts: {{ emails: [{}] }}\nmodels:\n  micro: amazon.nova-micro-v1:0\n  lite: amazon.nova-lite-v1:0\n  haiku: anthropic.claude-3-5-haiku-20241022-v1:0\n  priced: {{ id: acme.custom-v1, price: {{ input: 0.5, output: 1.5 }} }}\napplications:\n",
                emails.join(", ")
            );
            for (i, app) in apps.iter().enumerate() {
                s.push_str(&format!("  app-{i}:\n{app}"));
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn render_never_panics_and_respects_quotas(source in spec_yaml()) {
        let parsed = spec::parse("prop.yaml", &source);
        // Queue actions without the queue front are rejected by design; everything else is valid.
        let spec = match parsed {
            Ok(spec) => spec,
            Err(e) => {
                prop_assume!(!source.contains("access: [rest]\n") || !source.contains("on_exceed: queue"));
                return Err(TestCaseError::fail(format!("generated spec rejected: {e}")));
            }
        };
        let rendering = cfn::render(&spec, &cfn::RenderOptions { code_dir: "../lambda".into() }).expect("renders");
        let mut apps = 0;
        for stack in &rendering.stacks {
            prop_assert!(stack.template.resources.len() <= quotas::MAX_RESOURCES);
            prop_assert!(stack.template.outputs.len() <= quotas::MAX_OUTPUTS);
            prop_assert!(stack.yaml.len() <= quotas::MAX_TEMPLATE_BYTES);
            apps += stack.applications.len();
        }
        prop_assert_eq!(apps, spec.applications.len());
    }
}
