//! The README documents every property of the one definition synth renders and the provider
//! reads (`cfn::custom`): a property added to the types and not to the README fails here.

use budget::MicroUsd;
use cfn::custom::*;
use serde_json::Value;

fn keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_readme_names_every_custom_resource_property() {
    let s = || Some("x".to_string());
    let budget = TokenBudgetProperties::<String> {
        service_token: s(),
        service_timeout: Some(Count(900)),
        application: "app".into(),
        cost_center: s(),
        models: vec!["m".into()],
        limits: vec![LimitProperties {
            window: WindowName::Day,
            tokens: Some(Count(1)),
            usd: Some(Usd(MicroUsd::from_usd(1))),
        }],
        on_exceed: Some(OnExceedName::Fallback),
        fallback_model: s(),
        mode: Some(ModeName::Shadow),
        prices: vec![PriceProperties {
            model: "m".into(),
            input: PerMillion("1".into()),
            output: PerMillion("1".into()),
            cache_read: Some(PerMillion("1".into())),
            cache_write: Some(PerMillion("1".into())),
            cache_write_1h: Some(PerMillion("1".into())),
            tiers: vec![TierPriceProperties {
                tier: "flex".into(),
                input: PerMillion("1".into()),
                output: PerMillion("1".into()),
                cache_read: Some(PerMillion("1".into())),
                cache_write: Some(PerMillion("1".into())),
                cache_write_1h: Some(PerMillion("1".into())),
            }],
        }],
        cost_budget: Some(CostBudgetProperties {
            budget_name: s(),
            monthly_usd: Usd(MicroUsd::from_usd(1)),
            forecast_percent: Some(Count(1)),
            actual_percents: Some(vec![Count(1)]),
            topic_arn: s(),
            emails: vec!["e".into()],
        }),
        api_key_ids: vec!["k".into()],
        request_queue_arns: vec!["q".into()],
        results_queue_url: s(),
        inference_profiles: vec![ProfileProperties {
            model: "m".into(),
            arn: "a".into(),
        }],
        per_user: Some(UserProperties {
            user: None,
            limits: vec![],
            on_exceed: None,
            fallback_model: None,
            mode: None,
        }),
        users: vec![UserProperties {
            user: s(),
            limits: vec![],
            on_exceed: Some(OnExceedName::Fallback),
            fallback_model: s(),
            mode: Some(ModeName::Enforce),
        }],
        user_metrics: Some(Flag(true)),
    };
    let alarm = TokenAlarmProperties::<String> {
        service_token: s(),
        service_timeout: Some(Count(900)),
        application: "app".into(),
        alarm_name: s(),
        window: Some(WindowName::Day),
        metric: Some(AlarmMetric::Usd),
        kind: Some(AlarmKind::Threshold),
        percent: Some(Count(80)),
        alarm_actions: vec!["t".into()],
    };
    let mut names = Vec::new();
    keys(&serde_json::to_value(&budget).unwrap(), &mut names);
    keys(&serde_json::to_value(&alarm).unwrap(), &mut names);
    // Every field is set above (a struct literal must name them all), so these are all the
    // properties there are.

    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Declaring budgets in your own templates")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's section on custom resources");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !section.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the README does not document {missing:?}"
    );
}
