//! `templates/budgets-by-hand.yaml` end to end: budgets declared directly as
//! `Custom::TokenBudget` / `Custom::TokenAlarm` in a user's own stack, served by the provider of
//! a deployed platform stack, then used, changed and deleted.

use std::collections::BTreeSet;

use budget::config::ExceedAction;
use budget::{MicroUsd, Window};
use e2e::{LocalAws, api_event, converse};
use ledger::{DynamoLedger, Identity, Ledger};

const APP: &str = "reporting";
const NOVA_LITE: &str = "amazon.nova-lite-v1:0";
const NOVA_MICRO: &str = "amazon.nova-micro-v1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hand_written_budgets_deploy_enforce_update_and_delete() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("by-hand").await;

    // The platform: the rendered quickstart (ledger, provider, invoke, REST API, exports).
    let out = local.dir.join("platform");
    harness::synth_render(
        &harness::repo().join("examples/quickstart.yaml"),
        &out,
        &artifacts,
    );
    local.deploy(&out.join("acme-genai.yaml"), "acme-genai");

    // The user's own stack.
    let by_hand = harness::repo().join("templates/budgets-by-hand.yaml");
    harness::cfn_lint(std::slice::from_ref(&by_hand));
    let outputs = local.deploy(&by_hand, "reporting-budgets");
    assert_eq!(
        outputs.get("ReportingConfigVersion").map(String::as_str),
        Some("1"),
        "{outputs:?}"
    );
    assert!(
        outputs["ReportingThresholdAlarm"]
            .ends_with(":alarm:acme-genai-reporting-day-usd-threshold-75"),
        "{outputs:?}"
    );

    let dynamo = aws_sdk_dynamodb::Client::new(&local.sdk);
    let ledger = DynamoLedger::new(dynamo, "acme-genai-ledger");
    let config = ledger
        .budget(APP)
        .await
        .unwrap()
        .expect("the hand-written budget is in the ledger");
    let limits: Vec<_> = config
        .limits
        .iter()
        .map(|l| (l.window, l.tokens, l.usd))
        .collect();
    assert_eq!(
        limits,
        vec![
            (Window::Hour, Some(2_000_000), None),
            (Window::Day, None, Some(MicroUsd::from_usd(15))),
            (Window::Month, None, Some(MicroUsd::from_usd(300))),
        ]
    );
    assert_eq!(
        config.on_exceed,
        ExceedAction::Fallback {
            model: NOVA_MICRO.into()
        }
    );
    assert_eq!(config.models, [NOVA_LITE, NOVA_MICRO]);
    let key = local.api_key("acme-genai-reporting");
    assert_eq!(outputs["ReportingApiKeyId"], key.0);
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId(key.0.clone()))
            .await
            .unwrap()
            .as_deref(),
        Some(APP)
    );

    let cloudwatch = aws_sdk_cloudwatch::Client::new(&local.sdk);
    let alarms = cloudwatch
        .describe_alarms()
        .alarm_name_prefix("acme-genai-reporting")
        .send()
        .await
        .unwrap();
    let thresholds: BTreeSet<(String, u64)> = alarms
        .metric_alarms()
        .iter()
        .map(|a| {
            (
                a.alarm_name().unwrap().to_string(),
                a.threshold().unwrap() as u64,
            )
        })
        .collect();
    assert_eq!(
        thresholds,
        BTreeSet::from([
            ("acme-genai-reporting-day-usd-threshold-75".into(), 75),
            ("acme-genai-reporting-month-usd-forecast".into(), 100),
        ])
    );

    let budgets = aws_sdk_budgets::Client::new(&local.sdk);
    let budget = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-reporting")
        .send()
        .await
        .unwrap();
    assert_eq!(
        budget
            .budget()
            .and_then(|b| b.budget_limit())
            .map(|l| l.amount()),
        Some("350")
    );
    let kinds = e2e::budget_notifications(&budgets, "acme-genai-reporting").await;
    assert_eq!(
        kinds,
        BTreeSet::from([
            ("ACTUAL".into(), 50),
            ("ACTUAL".into(), 100),
            ("FORECASTED".into(), 90)
        ])
    );

    // The application calls the platform's invoke function with its key.
    let invoke = "acme-genai-invoke";
    let ok = local.invoke(
        invoke,
        &api_event(
            &key,
            NOVA_LITE,
            &converse("Summarise last week's tickets.", 200),
        ),
    );
    assert_eq!(ok["statusCode"], 200, "{ok}");
    assert_eq!(ok["headers"]["x-tokenfence-application"], APP);
    assert_eq!(ok["headers"]["x-tokenfence-model"], NOVA_LITE);
    // Its key does not open models its budget does not list.
    let other = local.invoke(
        invoke,
        &api_event(
            &key,
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            &converse("hi", 10),
        ),
    );
    assert_eq!(other["statusCode"], 403, "{other}");

    // Edit the template's day limit and update the stack: the next request falls back.
    let template = std::fs::read_to_string(&by_hand).unwrap();
    // The same update adds an alarm that depends on the budget: CloudFormation updates the
    // budget first, then creates the alarm.
    let hour_alarm = "  ReportingHourTokens:\n    Type: Custom::TokenAlarm\n    DependsOn: ReportingBudget\n    Properties:\n      ServiceToken: !ImportValue acme-genai-ServiceToken\n      Application: reporting\n      AlarmName: acme-genai-reporting-hour-tokens-threshold-90\n      Window: hour\n      Metric: tokens\n      Percent: '90'\nOutputs:\n";
    let lowered =
        template
            .replacen("Usd: '15'", "Usd: '0.0002'", 1)
            .replacen("Outputs:\n", hour_alarm, 1);
    assert!(
        lowered.contains("'0.0002'") && lowered.contains("ReportingHourTokens"),
        "the template's day limit or outputs moved; update this test"
    );
    let edited = local.dir.join("budgets-by-hand-lowered.yaml");
    std::fs::write(&edited, lowered).unwrap();
    let sent_before = local.cfn_requests().await.len();
    let outputs = local.deploy(&edited, "reporting-budgets");
    let sent: Vec<(String, String)> =
        e2e::request_summary(&local.cfn_requests().await.split_off(sent_before))
            .into_iter()
            .map(|(kind, logical, _)| (kind, logical))
            .collect();
    assert_eq!(
        sent,
        [
            ("Update".to_string(), "ReportingBudget".to_string()),
            ("Create".to_string(), "ReportingHourTokens".to_string())
        ]
    );
    assert_eq!(
        outputs.get("ReportingConfigVersion").map(String::as_str),
        Some("2"),
        "{outputs:?}"
    );
    assert_eq!(
        ledger.budget(APP).await.unwrap().unwrap().limits[1].usd,
        Some(MicroUsd::from_micros(200))
    );

    // An update that fails half-way rolls back as CloudFormation does: the budget, already
    // updated, gets a rollback Update with old and new properties swapped; the alarm whose
    // Update failed is updated back too. The stack ends UPDATE_ROLLBACK_COMPLETE.
    let lowered = std::fs::read_to_string(&edited).unwrap();
    let failing = lowered.replacen("Usd: '0.0002'", "Usd: '9'", 1).replacen(
        "Percent: '75'",
        "Percent: '175'",
        1,
    );
    assert_ne!(lowered, failing);
    let failing_path = local.dir.join("budgets-by-hand-failing.yaml");
    std::fs::write(&failing_path, failing).unwrap();
    let sent_before = local.cfn_requests().await.len();
    assert_eq!(
        local.deploy_failing(&failing_path, "reporting-budgets"),
        "UPDATE_ROLLBACK_COMPLETE"
    );
    let sent: Vec<_> = local.cfn_requests().await.split_off(sent_before);
    let day_usd = |props: &serde_json::Value| props["Limits"][1]["Usd"].clone();
    let summary: Vec<(String, String, serde_json::Value, serde_json::Value)> = sent
        .iter()
        .map(|r| {
            let (new, old) = (&r["ResourceProperties"], &r["OldResourceProperties"]);
            let pick = |p: &serde_json::Value| {
                if r["LogicalResourceId"] == "ReportingBudget" {
                    day_usd(p)
                } else {
                    p["Percent"].clone()
                }
            };
            (
                r["RequestType"].as_str().unwrap().to_string(),
                r["LogicalResourceId"].as_str().unwrap().to_string(),
                pick(new),
                pick(old),
            )
        })
        .collect();
    let s = |v: &str| serde_json::Value::String(v.into());
    assert_eq!(
        summary,
        vec![
            (
                "Update".into(),
                "ReportingBudget".into(),
                s("9"),
                s("0.0002")
            ),
            (
                "Update".into(),
                "ReportingDayThreshold".into(),
                s("175"),
                s("75")
            ),
            (
                "Update".into(),
                "ReportingBudget".into(),
                s("0.0002"),
                s("9")
            ),
            (
                "Update".into(),
                "ReportingDayThreshold".into(),
                s("75"),
                s("175")
            ),
        ],
        "{sent:#?}"
    );
    assert_eq!(
        ledger.budget(APP).await.unwrap().unwrap().limits[1].usd,
        Some(MicroUsd::from_micros(200)),
        "the rollback restored the day limit"
    );

    // nova-lite's worst case (1,024 output tokens at $0.24/M) is over what is left of $0.0002.
    let fallback = local.invoke(
        invoke,
        &api_event(
            &key,
            NOVA_LITE,
            &converse("Summarise last week's tickets.", 1024),
        ),
    );
    assert_eq!(fallback["statusCode"], 200, "{fallback}");
    assert_eq!(fallback["headers"]["x-tokenfence-model"], NOVA_MICRO);

    // Deleting the user's stack removes its budget, alarms and AWS Budget, and nothing else.
    local.delete("reporting-budgets");
    assert!(ledger.budget(APP).await.unwrap().is_none());
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId(key.0.clone()))
            .await
            .unwrap(),
        None
    );
    let left = cloudwatch
        .describe_alarms()
        .alarm_name_prefix("acme-genai-reporting")
        .send()
        .await
        .unwrap();
    assert!(
        left.metric_alarms().is_empty(),
        "{:?}",
        left.metric_alarms()
    );
    assert!(
        budgets
            .describe_budget()
            .account_id("123456789012")
            .budget_name("acme-genai-reporting")
            .send()
            .await
            .is_err()
    );
    assert!(
        ledger.budget("support-bot").await.unwrap().is_some(),
        "the platform's own budget is untouched"
    );
    // The provider's role allowed every call it made for the hand-written resources.
    local
        .moto
        .assert_roles_allowed(&[
            ("dynamodb:PutItem", ":table/"),
            ("cloudwatch:PutMetricAlarm", ":alarm:"),
            ("budgets:ModifyBudget", ":budget/acme-genai-reporting"),
        ])
        .await;
}
