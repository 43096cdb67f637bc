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

    // Through CloudFormation: a stack whose alarm names an undeclared application fails with
    // the provider's reason.
    let broken = local.dir.join("broken.yaml");
    std::fs::write(
        &broken,
        "Resources:\n  Orphan:\n    Type: Custom::TokenAlarm\n    Properties:\n      ServiceToken: !ImportValue acme-genai-ServiceToken\n      Application: nobody\n      Window: day\n",
    )
    .unwrap();
    let events = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        local.deploy(&broken, "broken")
    }));
    let message = match events {
        Ok(outputs) => panic!("the stack was created: {outputs:?}"),
        Err(panic) => panic.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains("CREATE_FAILED") && message.contains("nobody"),
        "{message}"
    );
    // The provider's role allowed every call it made, the refused events' included.
    local
        .moto
        .assert_roles_allowed(&[
            ("dynamodb:PutItem", ":table/"),
            ("cloudwatch:PutMetricAlarm", ":alarm:"),
        ])
        .await;
}
