//! The deployed provider function, run by the Lambda runtime as CloudFormation calls it: events
//! sent through the Lambda Invoke API, answers PUT to a ResponseURL this test serves (failing the
//! first PUTs, as a flaky network would), state checked in moto. The in-process lifecycle tests
//! (`crates/provider/tests/lifecycle.rs`) cover every transition; this proves the packaged binary
//! behaves the same under the runtime, with its deadline and its configured environment.

use e2e::LocalAws;
use ledger::{DynamoLedger, Ledger};
use serde_json::{Value, json};

struct Cloudformation<'a> {
    local: &'a LocalAws,
    response_url: harness::ResponseUrl,
    n: u32,
}

impl Cloudformation<'_> {
    fn send(
        &mut self,
        kind: &str,
        rtype: &str,
        physical: Option<&str>,
        props: Value,
        old: Option<Value>,
    ) -> Value {
        self.n += 1;
        let mut event = json!({
            "RequestType": kind,
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider",
            "ResponseURL": self.response_url.url,
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/ops-budgets/0a1b2c3d-0000-4000-8000-000000000001",
            "RequestId": format!("e2e-{}", self.n),
            "LogicalResourceId": "OpsBudget",
            "ResourceType": rtype,
            "ResourceProperties": props,
        });
        if let Some(p) = physical {
            event["PhysicalResourceId"] = json!(p);
        }
        if let Some(o) = old {
            event["OldResourceProperties"] = o;
        }
        self.local.invoke("acme-genai-provider", &event);
        let answer = self
            .response_url
            .last()
            .expect("the provider PUT an answer");
        assert_eq!(answer["RequestId"], format!("e2e-{}", self.n), "{answer}");
        assert!(serde_json::to_vec(&answer).unwrap().len() < 4096);
        answer
    }
}

fn budget(app: &str, day_usd: &str) -> Value {
    json!({
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider",
        "Application": app,
        "Limits": [{ "Window": "hour", "Tokens": "50000" }, { "Window": "day", "Usd": day_usd }],
        "Mode": "shadow"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployed_provider_answers_every_event_under_the_runtime() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("provider-runtime").await;
    let out = local.dir.join("platform");
    harness::synth_render(
        &harness::repo().join("examples/quickstart.yaml"),
        &out,
        &artifacts,
    );
    local.deploy(&out.join("acme-genai.yaml"), "acme-genai");
    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&local.sdk),
        "acme-genai-ledger",
    );

    // The first two PUTs fail: the provider retries until CloudFormation has its answer.
    let response_url = harness::ResponseUrl::start(2).await;
    let mut cfn = Cloudformation {
        local: &local,
        response_url,
        n: 0,
    };

    let created = cfn.send(
        "Create",
        "Custom::TokenBudget",
        None,
        budget("ops", "2.5"),
        None,
    );
    assert_eq!(created["Status"], "SUCCESS", "{created}");
    assert_eq!(created["PhysicalResourceId"], "tokenfence:budget:ops");
    assert_eq!(created["Data"]["Application"], "ops");
    let config = ledger
        .budget("ops")
        .await
        .unwrap()
        .expect("written by the deployed provider");
    assert_eq!(
        config.limits[1].usd,
        Some(budget::MicroUsd::from_micros(2_500_000))
    );

    // In-place update, a replacement (new Application), the rollback of that replacement, and
    // CloudFormation's cleanup Delete of the resource it rolled back from.
    let updated = cfn.send(
        "Update",
        "Custom::TokenBudget",
        Some("tokenfence:budget:ops"),
        budget("ops", "3"),
        Some(budget("ops", "2.5")),
    );
    assert_eq!(
        (
            updated["Status"].as_str(),
            updated["PhysicalResourceId"].as_str()
        ),
        (Some("SUCCESS"), Some("tokenfence:budget:ops"))
    );
    assert_eq!(
        ledger.budget("ops").await.unwrap().unwrap().limits[1].usd,
        Some(budget::MicroUsd::from_usd(3))
    );
    let replaced = cfn.send(
        "Update",
        "Custom::TokenBudget",
        Some("tokenfence:budget:ops"),
        budget("ops2", "3"),
        Some(budget("ops", "3")),
    );
    assert_eq!(
        replaced["PhysicalResourceId"], "tokenfence:budget:ops2",
        "{replaced}"
    );
    assert!(
        ledger.budget("ops").await.unwrap().is_some(),
        "the old resource waits for CloudFormation's Delete"
    );
    let rolled_back = cfn.send(
        "Update",
        "Custom::TokenBudget",
        Some("tokenfence:budget:ops2"),
        budget("ops", "3"),
        Some(budget("ops2", "3")),
    );
    assert_eq!(
        rolled_back["PhysicalResourceId"], "tokenfence:budget:ops",
        "{rolled_back}"
    );
    let cleanup = cfn.send(
        "Delete",
        "Custom::TokenBudget",
        Some("tokenfence:budget:ops2"),
        budget("ops2", "3"),
        None,
    );
    assert_eq!(cleanup["Status"], "SUCCESS", "{cleanup}");
    assert!(ledger.budget("ops2").await.unwrap().is_none());
    assert_eq!(
        ledger.budget("ops").await.unwrap().unwrap().limits[1].usd,
        Some(budget::MicroUsd::from_usd(3))
    );

    // Bad input is answered FAILED with the property and the reason, never left hanging.
    let mut bad = budget("ops3", "2");
    bad["Limits"][0]["Tokens"] = json!("lots");
    let failed = cfn.send("Create", "Custom::TokenBudget", None, bad, None);
    assert_eq!(failed["Status"], "FAILED");
    assert!(
        failed["Reason"]
            .as_str()
            .unwrap()
            .contains("Limits[0].Tokens"),
        "{failed}"
    );
    let unknown = cfn.send(
        "Create",
        "Custom::TokenQuota",
        None,
        budget("ops3", "2"),
        None,
    );
    assert_eq!(unknown["Status"], "FAILED");
    assert!(
        unknown["Reason"]
            .as_str()
            .unwrap()
            .contains("Custom::TokenQuota"),
        "{unknown}"
    );
    // Deleting what a failed Create answered, or an ID the provider never issued, succeeds.
    for physical in [
        failed["PhysicalResourceId"].as_str().unwrap(),
        "never-issued-by-tokenfence",
    ] {
        let deleted = cfn.send(
            "Delete",
            "Custom::TokenBudget",
            Some(physical),
            budget("ops3", "2"),
            None,
        );
        assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    }
    assert!(
        ledger.budget("ops3").await.unwrap().is_none(),
        "nothing half-created"
    );

    let deleted = cfn.send(
        "Delete",
        "Custom::TokenBudget",
        Some("tokenfence:budget:ops"),
        budget("ops", "3"),
        None,
    );
    assert_eq!(deleted["Status"], "SUCCESS");
    assert!(ledger.budget("ops").await.unwrap().is_none());
    let again = cfn.send(
        "Delete",
        "Custom::TokenBudget",
        Some("tokenfence:budget:ops"),
        budget("ops", "3"),
        None,
    );
    assert_eq!(again["Status"], "SUCCESS", "delete is idempotent: {again}");

    // Through CloudFormation: a stack whose alarm is invalid fails with the provider's reason
    // and rolls back: the failed alarm gets a Delete with the physical ID of its FAILED answer,
    // then the budget created before it is deleted. The stack ends ROLLBACK_COMPLETE.
    let broken = local.dir.join("broken.yaml");
    std::fs::write(
        &broken,
        "Resources:\n  Budget:\n    Type: Custom::TokenBudget\n    Properties:\n      ServiceToken: !ImportValue acme-genai-ServiceToken\n      Application: orphans\n      Limits:\n        - Window: day\n          Tokens: '1000'\n  Broken:\n    Type: Custom::TokenAlarm\n    DependsOn: Budget\n    Properties:\n      ServiceToken: !ImportValue acme-genai-ServiceToken\n      Application: orphans\n      Window: fortnight\n",
    )
    .unwrap();
    let sent_before = local.cfn_requests().await.len();
    assert_eq!(local.deploy_failing(&broken, "broken"), "ROLLBACK_COMPLETE");
    let events = local.aws.run(&[
        "cloudformation",
        "describe-stack-events",
        "--stack-name",
        "broken",
    ]);
    assert!(
        events.contains("CREATE_FAILED") && events.contains("fortnight"),
        "the provider's reason is in the events: {events}"
    );
    let sent = e2e::request_summary(&local.cfn_requests().await.split_off(sent_before));
    let kinds: Vec<(&str, &str)> = sent
        .iter()
        .map(|(kind, logical, _)| (kind.as_str(), logical.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Create", "Budget"),
            ("Create", "Broken"),
            ("Delete", "Broken"),
            ("Delete", "Budget")
        ],
        "{sent:?}"
    );
    assert!(
        !sent[2].2.is_empty() && !sent[3].2.is_empty(),
        "rollback Deletes name physical IDs: {sent:?}"
    );
    assert!(
        ledger.budget("orphans").await.unwrap().is_none(),
        "the rollback deleted the budget created before the failure"
    );
    // Replacements through a stack: a new Application is a new physical ID, and the old budget
    // is deleted in the cleanup phase, after the update succeeded. When the update then fails
    // after a replacement, the rollback goes back to the old budget without an Update and its
    // cleanup deletes the replacement (and the resource whose Create failed).
    let swapping = local.dir.join("swapping.yaml");
    let budget_of = |app: &str, extra: &str| {
        format!(
            "Resources:\n  Budget:\n    Type: Custom::TokenBudget\n    Properties:\n      ServiceToken: !ImportValue acme-genai-ServiceToken\n      Application: {app}\n      Limits:\n        - Window: day\n          Tokens: '1000'\n{extra}"
        )
    };
    let requests = |sent: Vec<serde_json::Value>| e2e::request_summary(&sent);
    std::fs::write(&swapping, budget_of("swap-a", "")).unwrap();
    local.deploy(&swapping, "swapping");
    std::fs::write(&swapping, budget_of("swap-b", "")).unwrap();
    let sent_before = local.cfn_requests().await.len();
    local.deploy(&swapping, "swapping");
    let t = |k: &str, l: &str, p: &str| (k.to_string(), l.to_string(), p.to_string());
    assert_eq!(
        requests(local.cfn_requests().await.split_off(sent_before)),
        [
            t("Update", "Budget", "tokenfence:budget:swap-a"),
            t("Delete", "Budget", "tokenfence:budget:swap-a"),
        ]
    );
    assert!(ledger.budget("swap-a").await.unwrap().is_none());
    assert!(ledger.budget("swap-b").await.unwrap().is_some());
    let broken_alarm = "  Broken:\n    Type: Custom::TokenAlarm\n    DependsOn: Budget\n    Properties:\n      ServiceToken: !ImportValue acme-genai-ServiceToken\n      Application: swap-c\n      Window: fortnight\n";
    std::fs::write(&swapping, budget_of("swap-c", broken_alarm)).unwrap();
    let sent_before = local.cfn_requests().await.len();
    assert_eq!(
        local.deploy_failing(&swapping, "swapping"),
        "UPDATE_ROLLBACK_COMPLETE"
    );
    let sent = requests(local.cfn_requests().await.split_off(sent_before));
    let kinds: Vec<(&str, &str)> = sent
        .iter()
        .map(|(k, l, _)| (k.as_str(), l.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Update", "Budget"),
            ("Create", "Broken"),
            ("Delete", "Broken"),
            ("Delete", "Budget")
        ],
        "{sent:?}"
    );
    assert_eq!(sent[3].2, "tokenfence:budget:swap-c", "{sent:?}");
    assert!(
        ledger.budget("swap-b").await.unwrap().is_some(),
        "the old budget stays"
    );
    assert!(
        ledger.budget("swap-c").await.unwrap().is_none(),
        "the replacement is gone"
    );

    // A ServiceToken whose function fails without answering (the invoke function does not
    // serve custom resources): Lambda invokes it three times (its asynchronous retries), then
    // CloudFormation gives up on the answer; the rollback's Delete is not answered either, so
    // the stack ends ROLLBACK_FAILED, as it would on AWS after the ServiceTimeout.
    let unanswered = local.dir.join("unanswered.yaml");
    std::fs::write(
        &unanswered,
        "Resources:\n  Budget:\n    Type: Custom::TokenBudget\n    Properties:\n      ServiceToken: arn:aws:lambda:us-east-1:123456789012:function:acme-genai-invoke\n      ServiceTimeout: 60\n      Application: nobody-home\n      Limits:\n        - Window: day\n          Tokens: '1000'\n",
    )
    .unwrap();
    let sent_before = local.cfn_requests().await.len();
    assert_eq!(
        local.deploy_failing(&unanswered, "unanswered"),
        "ROLLBACK_FAILED"
    );
    let sent = local.cfn_requests().await.split_off(sent_before);
    let attempts: Vec<(&str, u64)> = sent
        .iter()
        .map(|r| {
            (
                r["RequestType"].as_str().unwrap(),
                r["Attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [("Create", 3), ("Delete", 3)], "{sent:#?}");
    let events = local.aws.run(&[
        "cloudformation",
        "describe-stack-events",
        "--stack-name",
        "unanswered",
    ]);
    assert!(events.contains("did not receive a response"), "{events}");

    // The provider's role allowed every call it made, the refused events' included.
    local
        .moto
        .assert_roles_allowed(&[
            ("dynamodb:PutItem", ":table/"),
            ("cloudwatch:PutMetricAlarm", ":alarm:"),
        ])
        .await;
}
