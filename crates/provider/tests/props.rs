//! Properties as CloudFormation sends them (every scalar a string), read into plans; and every
//! invalid property named in the error.

use budget::config::{EnforcementMode, ExceedAction};
use budget::{MicroUsd, Window};
use provider::plan::{plan_alarm, plan_budget};
use provider::props::{AlarmKind, AlarmMetric, CostBudgetProps, parse_alarm, parse_budget};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn budget_properties_arrive_as_strings_and_are_read_exactly() {
    let event = fixture("create-budget.json");
    let p = parse_budget(&event["ResourceProperties"]).unwrap();
    assert_eq!(p.application, "support-bot");
    assert_eq!(p.limits.len(), 3);
    assert_eq!(
        (p.limits[0].window, p.limits[0].tokens),
        (Window::Minute, Some(200_000))
    );
    assert_eq!(p.limits[1].usd, Some(MicroUsd::from_usd(40)));
    assert_eq!(
        p.on_exceed,
        ExceedAction::Fallback {
            model: "amazon.nova-micro-v1:0".into()
        }
    );
    assert_eq!(p.mode, EnforcementMode::Enforce);
    assert_eq!(p.prices[0].price.cache_write, 3_750_000);
    let cb = p.cost_budget.as_ref().unwrap();
    assert_eq!(
        (
            cb.monthly_usd,
            cb.forecast_percent,
            cb.actual_percents.clone()
        ),
        (MicroUsd::from_usd(1000), 100, vec![80, 100])
    );
    let plan = plan_budget(
        &p.application,
        "acme-genai-support-bot",
        cb,
        Some("arn:topic"),
    );
    assert_eq!(cb.budget_name.as_deref(), Some("acme-genai-support-bot"));
    assert_eq!(plan.name, "acme-genai-support-bot");
    assert_eq!(
        plan.topic_arn.as_deref(),
        Some("arn:aws:sns:us-east-1:123456789012:acme-genai-alerts"),
        "the given topic, not the default"
    );
    // No subscriber given: the stack's alert topic; emails alone: just the emails.
    let bare = CostBudgetProps {
        topic_arn: None,
        emails: vec![],
        ..cb.clone()
    };
    let defaulted = plan_budget("a", "n", &bare, Some("arn:topic"));
    assert_eq!(
        (defaulted.topic_arn.as_deref(), defaulted.emails.len()),
        (Some("arn:topic"), 0)
    );
    let mailed = CostBudgetProps {
        emails: vec!["ops@example.com".into()],
        ..bare
    };
    let emailed = plan_budget("a", "n", &mailed, Some("arn:topic"));
    assert_eq!(emailed.topic_arn, None);
    assert_eq!(emailed.emails, ["ops@example.com"]);
    assert_eq!(plan.limit_usd, "1000");
    assert_eq!(
        plan.notifications,
        vec![("ACTUAL", 80), ("ACTUAL", 100), ("FORECASTED", 100)]
    );
    assert_eq!(
        plan.tag,
        (
            "tokenfence:application".to_string(),
            "support-bot".to_string()
        )
    );
    // JSON numbers (hand-written events) read the same.
    let native =
        json!({ "Application": "a", "Limits": [{ "Window": "day", "Tokens": 5000, "Usd": 40.5 }] });
    let p = parse_budget(&native).unwrap();
    assert_eq!(
        (p.limits[0].tokens, p.limits[0].usd),
        (Some(5000), Some(MicroUsd(40_500_000)))
    );
}

#[test]
fn every_invalid_budget_property_is_named() {
    let base = fixture("create-budget.json")["ResourceProperties"].clone();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/ServiceTimeout",
            json!("3601"),
            "`ServiceTimeout`: `3601` is above CloudFormation's 3600 seconds",
        ),
        (
            "/ServiceTimeout",
            json!("soon"),
            "`ServiceTimeout`: `soon` is not a whole number",
        ),
        (
            "/Application",
            json!("bad name!"),
            "`Application`: `bad name!` is not 1 to 64 letters, digits, `-` and `_`",
        ),
        (
            "/Limits/1/Usd",
            json!("40.0000001"),
            "`Limits[1].Usd`: `40.0000001` has more than 6 decimal places; amounts are whole micro-dollars",
        ),
        (
            "/Limits/0/Tokens",
            json!("-5"),
            "`Limits[0].Tokens`: `-5` is not a whole number",
        ),
        (
            "/Limits/0/Window",
            json!("week"),
            "`Limits[0].Window`: `week` is not one of `minute`, `hour`, `day`, `month`",
        ),
        (
            "/Limits/2/Window",
            json!("day"),
            "`Limits[2].Window`: a `day` limit is already declared",
        ),
        (
            "/OnExceed",
            json!("explode"),
            "`OnExceed`: `explode` is not one of `reject`, `fallback`, `queue`",
        ),
        (
            "/Mode",
            json!("loud"),
            "`Mode`: `loud` is not one of `enforce`, `shadow`",
        ),
        (
            "/CostBudget/MonthlyUsd",
            json!("0"),
            "`CostBudget.MonthlyUsd`: must be positive",
        ),
        (
            "/CostBudget/ForecastPercent",
            json!("5000"),
            "`CostBudget.ForecastPercent`: `5000` is above 1000",
        ),
        (
            "/Prices/0/Input",
            json!({}),
            "`Prices[0].Input`: must be an amount in USD per million tokens",
        ),
        (
            "/Prices/0/Output",
            json!("fifteen"),
            "`Prices[0].Output`: `fifteen` is not a decimal amount (expected digits with an optional `.` fraction, e.g. `40.5`)",
        ),
        (
            "/Prices/0/CacheWrite1h",
            json!("6.0000001"),
            "`Prices[0].CacheWrite1h`: `6.0000001` has more than 6 decimal places; amounts are whole micro-dollars",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut props = base.clone();
        *props.pointer_mut(pointer).unwrap() = value;
        assert_eq!(
            parse_budget(&props).unwrap_err().to_string(),
            expected,
            "{pointer}"
        );
    }
    let mut props = base.clone();
    props["FallbackModel"] = Value::Null;
    assert_eq!(
        parse_budget(&props).unwrap_err().to_string(),
        "`FallbackModel`: is required with `OnExceed: fallback`"
    );
    let mut props = base.clone();
    props["Limitz"] = json!([]);
    assert!(
        parse_budget(&props)
            .unwrap_err()
            .to_string()
            .starts_with("`Limitz`: unknown property")
    );
    let mut props = base;
    props["Limits"] = json!([]);
    assert_eq!(
        parse_budget(&props).unwrap_err().to_string(),
        "`Limits`: is required and must list at least one limit"
    );
}

#[test]
fn seats_are_read_and_their_invalid_properties_named() {
    let mut base = fixture("create-budget.json")["ResourceProperties"].clone();
    base["PerUser"] = json!({ "Limits": [{ "Window": "day", "Usd": "20" }], "OnExceed": "fallback", "FallbackModel": "amazon.nova-micro-v1:0" });
    base["Users"] = json!([
        { "User": "lead@example.com", "Limits": [{ "Window": "day", "Usd": "60" }] },
        { "User": "trial", "Mode": "shadow", "Limits": [{ "Window": "hour", "Tokens": "5000" }] }
    ]);
    base["UserMetrics"] = json!("true");
    let p = parse_budget(&base).unwrap();
    let per_user = p.per_user.as_ref().unwrap();
    assert_eq!(per_user.limits[0].usd, Some(MicroUsd::from_usd(20)));
    assert_eq!(
        per_user.on_exceed,
        ExceedAction::Fallback {
            model: "amazon.nova-micro-v1:0".into()
        }
    );
    assert_eq!(
        p.users["lead@example.com"].limits[0].usd,
        Some(MicroUsd::from_usd(60))
    );
    assert_eq!(p.users["lead@example.com"].mode, EnforcementMode::Enforce);
    assert_eq!(p.users["trial"].mode, EnforcementMode::Shadow);
    assert!(p.user_metrics);

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/PerUser/Limits/0/Usd",
            json!("-1"),
            "`PerUser.Limits[0].Usd`: `-1` is not a decimal amount (expected digits with an optional `.` fraction, e.g. `40.5`)",
        ),
        (
            "/PerUser/FallbackModel",
            json!(null),
            "`PerUser.FallbackModel`: is required with `OnExceed: fallback`",
        ),
        (
            "/PerUser/Limits",
            json!([]),
            "`PerUser.Limits`: is required and must list at least one limit",
        ),
        (
            "/Users/0/User",
            json!("a/b"),
            "`Users[0].User`: user name `a/b` may hold only letters, digits and `._@+-`, not `/`",
        ),
        (
            "/Users/1/User",
            json!("lead@example.com"),
            "`Users[1].User`: user `lead@example.com` is already declared",
        ),
        (
            "/Users/1/Limits/0",
            json!({ "Window": "hour" }),
            "`Users[1].Limits[0]`: needs `Tokens`, `Usd` or both",
        ),
        (
            "/Users/1/Mode",
            json!("loud"),
            "`Users[1].Mode`: `loud` is not one of `enforce`, `shadow`",
        ),
        (
            "/UserMetrics",
            json!("maybe"),
            "`UserMetrics`: `maybe` is not `true` or `false`",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut props = base.clone();
        *props.pointer_mut(pointer).unwrap() = value;
        let got = parse_budget(&props).map(|_| ()).unwrap_err().to_string();
        assert_eq!(got, expected, "{pointer}");
    }
    let mut props = base;
    props["Users"][0].as_object_mut().unwrap().remove("User");
    assert_eq!(
        parse_budget(&props).unwrap_err().to_string(),
        "`Users[0].User`: is required"
    );
}

#[test]
fn alarms_watch_the_gateways_gauges_and_metric_math() {
    let budget = parse_budget(&fixture("create-budget.json")["ResourceProperties"]).unwrap();
    let cfg = budget::config::BudgetConfig {
        application: budget.application.clone(),
        limits: budget.limits.clone(),
        ..Default::default()
    };

    let threshold = parse_alarm(&fixture("create-alarm.json")["ResourceProperties"]).unwrap();
    assert_eq!(
        (threshold.kind, threshold.percent, threshold.metric),
        (AlarmKind::Threshold, 80, Some(AlarmMetric::Usd))
    );
    let plan = plan_alarm(&threshold, &cfg, "acme-genai").unwrap();
    assert_eq!(plan.name, "acme-genai-support-bot-day-usd-threshold-80");
    let metric = plan.metric.as_ref().unwrap();
    assert_eq!(metric.metric_name, "WindowUtilization");
    assert_eq!(
        metric.dimensions,
        vec![
            ("Application".into(), "support-bot".into()),
            ("Window".into(), "day".into()),
            ("Limit".into(), "usd".into())
        ]
    );
    assert_eq!(
        (
            plan.threshold,
            plan.comparison,
            plan.threshold_text.as_str()
        ),
        (Some(80.0), "GreaterThanOrEqualToThreshold", "80")
    );

    let forecast = parse_alarm(
        &json!({ "Application": "support-bot", "Window": "month", "Kind": "forecast" }),
    )
    .unwrap();
    let plan = plan_alarm(&forecast, &cfg, "acme-genai").unwrap();
    assert_eq!(plan.name, "acme-genai-support-bot-month-usd-forecast");
    assert_eq!(
        plan.queries[1].expression.as_deref(),
        Some("FILL(projected, 0)")
    );
    assert_eq!(
        plan.queries[0].metric.as_ref().unwrap().metric_name,
        "ProjectedUtilization"
    );
    assert_eq!(
        (plan.threshold, plan.comparison),
        (Some(100.0), "GreaterThanThreshold")
    );

    let anomaly = parse_alarm(
        &json!({ "Application": "support-bot", "Kind": "anomaly", "Metric": "tokens" }),
    )
    .unwrap();
    let plan = plan_alarm(&anomaly, &cfg, "acme-genai").unwrap();
    assert_eq!(anomaly.window, Window::Hour);
    assert_eq!(plan.threshold_metric_id.as_deref(), Some("band"));
    assert_eq!(
        plan.queries[1].expression.as_deref(),
        Some("ANOMALY_DETECTION_BAND(usage, 2)")
    );
    assert_eq!(
        plan.queries[0].metric.as_ref().unwrap().metric_name,
        "TotalTokens"
    );
    assert_eq!(plan.threshold, None);

    // A threshold on a window without that limit names the property.
    let wrong =
        parse_alarm(&json!({ "Application": "support-bot", "Window": "hour", "Percent": "50" }))
            .unwrap();
    assert_eq!(
        plan_alarm(&wrong, &cfg, "acme-genai")
            .unwrap_err()
            .to_string(),
        "`Window`: application `support-bot` has no `usd` limit on the `hour` window for a `threshold` alarm to watch"
    );
    for (props, expected) in [
        (
            json!({ "Application": "a", "Window": "day", "Percent": "0" }),
            "`Percent`: must be positive",
        ),
        (
            json!({ "Application": "a", "Window": "day", "Percent": "101" }),
            "`Percent`: `101` is above 100",
        ),
        (
            json!({ "Application": "a", "Window": "day", "Kind": "forecast", "Percent": "50" }),
            "`Percent`: only applies to `Kind: threshold`",
        ),
        (
            json!({ "Application": "a", "Kind": "threshold" }),
            "`Window`: is required",
        ),
        (json!({ "Window": "day" }), "`Application`: is required"),
    ] {
        assert_eq!(parse_alarm(&props).unwrap_err().to_string(), expected);
    }
}

#[test]
fn responses_fit_in_4096_bytes() {
    let event = fixture("create-budget.json");
    let request = serde_json::from_value(event).unwrap();
    let outcome = provider::Outcome {
        success: false,
        reason: Some("é".repeat(5_000)),
        physical_id: "tokenfence:failed:x".into(),
        data: (0..100)
            .map(|i| (format!("Key{i}"), "v".repeat(100)))
            .collect(),
    };
    let body = provider::respond::response_body(&request, &outcome);
    assert!(
        body.len() < provider::respond::MAX_RESPONSE_BYTES,
        "{} bytes",
        body.len()
    );
    let parsed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["Status"], "FAILED");
    assert_eq!(parsed["RequestId"], "8f6e5d2c-1b3a-4c5d-9e8f-0a1b2c3d4e5f");
    assert!(parsed["Reason"].as_str().unwrap().ends_with("[...]"));
}
