//! The provider when AWS misbehaves: throttling and server errors injected in front of moto (the
//! SDK's own retry policy applies), a call that outlives the Lambda's deadline. Every request is
//! still answered, and nothing half-created is left behind once CloudFormation has cleaned up.

use std::sync::Arc;
use std::time::Duration;

use harness::{Fault, FaultProxy};
use ledger::{DynamoLedger, Identity, Ledger};
use provider::aws::{AwsBudgets, CloudWatchAlarms};
use provider::respond::{HttpResponder, run};
use serde_json::{Value, json};

const ALERTS: &str = "arn:aws:sns:us-east-1:123456789012:acme-genai-alerts";
const STACK: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/acme-genai/5b0fd3e0-ac6d-11f0-9b3c-0e2f0d1f9c5b";
const ACCOUNT: &str = "123456789012";

type Prov = provider::Provider<DynamoLedger, CloudWatchAlarms, AwsBudgets>;

struct Rig {
    _moto: harness::Moto,
    proxy: FaultProxy,
    provider: Arc<Prov>,
    /// Clients straight to moto, to inspect what was left behind.
    direct: aws_config::SdkConfig,
    response_url: harness::ResponseUrl,
    answers: usize,
    counter: u32,
}

impl Rig {
    async fn start() -> Rig {
        let moto = harness::Moto::start();
        let direct = moto.sdk_config().await;
        harness::create_ledger_table(&aws_sdk_dynamodb::Client::new(&direct), "ledger").await;
        let proxy = FaultProxy::start(&moto.url()).await;
        let sdk = harness::sdk_config_at(&proxy.url).await;
        let provider = Arc::new(provider::Provider {
            ledger: DynamoLedger::new(aws_sdk_dynamodb::Client::new(&sdk), "ledger"),
            alarms: CloudWatchAlarms {
                client: aws_sdk_cloudwatch::Client::new(&sdk),
            },
            budgets: AwsBudgets {
                client: aws_sdk_budgets::Client::new(&sdk),
            },
            name: "acme-genai".into(),
            alert_topic: Some(ALERTS.into()),
        });
        Rig {
            _moto: moto,
            proxy,
            provider,
            direct,
            response_url: harness::ResponseUrl::start(0).await,
            answers: 0,
            counter: 0,
        }
    }

    /// Sends one event with `deadline` left and returns the single answer it got.
    async fn send(
        &mut self,
        kind: &str,
        rtype: &str,
        physical: Option<&str>,
        props: Value,
        old: Option<Value>,
        deadline: Duration,
    ) -> Value {
        self.counter += 1;
        let mut event = json!({
            "RequestType": kind,
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider",
            "ResponseURL": self.response_url.url,
            "StackId": STACK,
            "RequestId": format!("fault-{}", self.counter),
            "LogicalResourceId": if rtype == "Custom::TokenBudget" { "Budget" } else { "Alarm" },
            "ResourceType": rtype,
            "ResourceProperties": props,
        });
        if let Some(p) = physical {
            event["PhysicalResourceId"] = json!(p);
        }
        if let Some(o) = old {
            event["OldResourceProperties"] = o;
        }
        let started = std::time::Instant::now();
        run(
            Arc::clone(&self.provider),
            &HttpResponder::default(),
            event,
            deadline,
        )
        .await
        .expect("answered");
        assert!(started.elapsed() < deadline, "answered before the deadline");
        self.answers += 1;
        assert_eq!(
            self.response_url.count(),
            self.answers,
            "exactly one answer per request"
        );
        self.response_url.last().unwrap()
    }

    fn ledger(&self) -> DynamoLedger {
        DynamoLedger::new(aws_sdk_dynamodb::Client::new(&self.direct), "ledger")
    }

    async fn aws_budget(&self, name: &str) -> Option<String> {
        aws_sdk_budgets::Client::new(&self.direct)
            .describe_budget()
            .account_id(ACCOUNT)
            .budget_name(name)
            .send()
            .await
            .ok()
            .and_then(|b| b.budget)
            .and_then(|b| b.budget_limit)
            .map(|l| l.amount)
    }

    async fn alarm_exists(&self, name: &str) -> bool {
        !aws_sdk_cloudwatch::Client::new(&self.direct)
            .describe_alarms()
            .alarm_names(name)
            .send()
            .await
            .unwrap()
            .metric_alarms()
            .is_empty()
    }
}

fn budget(day_usd: &str) -> Value {
    json!({
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider",
        "Application": "support-bot",
        "Limits": [{ "Window": "minute", "Tokens": "200000" }, { "Window": "day", "Usd": day_usd }],
        "CostBudget": { "BudgetName": "acme-genai-support-bot", "MonthlyUsd": "1000" },
        "ApiKeyIds": ["key-a"],
    })
}

fn alarm() -> Value {
    json!({ "ServiceToken": "x", "Application": "support-bot", "AlarmName": "acme-support-bot-day-usd-80", "Window": "day", "Percent": "80" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_and_the_resources_created() {
    let mut rig = Rig::start().await;
    rig.proxy.set(vec![
        Fault::throttle("TransactWriteItems", 1),
        Fault::throttle("CreateBudget", 2),
        Fault::throttle("PutMetricAlarm", 1),
        Fault {
            status: 500,
            code: "InternalFailure".into(),
            ..Fault::throttle("DescribeBudget", 1)
        },
    ]);
    let r = rig
        .send(
            "Create",
            "Custom::TokenBudget",
            None,
            budget("40"),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(r["Status"], "SUCCESS", "{r}");
    assert_eq!(
        rig.proxy.seen("CreateBudget"),
        3,
        "two throttled, the third created"
    );
    assert_eq!(
        rig.proxy.seen("TransactWriteItems"),
        3,
        "one throttled, then the configuration, then its applied mark after the AWS Budget"
    );
    assert_eq!(
        rig.aws_budget("acme-genai-support-bot").await.as_deref(),
        Some("1000")
    );
    assert!(rig.ledger().budget("support-bot").await.unwrap().is_some());

    let r = rig
        .send(
            "Create",
            "Custom::TokenAlarm",
            None,
            alarm(),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(r["Status"], "SUCCESS", "{r}");
    assert_eq!(rig.proxy.seen("PutMetricAlarm"), 2);
    assert!(rig.alarm_exists("acme-support-bot-day-usd-80").await);
}

/// The AWS Budget's notifications always have subscribers: the stack's alert topic when the
/// resource names none, and exactly the ones it names after an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_notifications_follow_their_subscribers() {
    let mut rig = Rig::start().await;
    let subscribers = |n: &Value| {
        let mut s: Vec<(String, String)> = n["Subscribers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["SubscriptionType"].as_str().unwrap().to_string(),
                    s["Address"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        s.sort();
        s
    };
    let created = rig
        .send(
            "Create",
            "Custom::TokenBudget",
            None,
            budget("40"),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(created["Status"], "SUCCESS", "{created}");
    let create = rig.proxy.json_bodies("CreateBudget");
    let notifications = create[0]["NotificationsWithSubscribers"]
        .as_array()
        .unwrap();
    assert_eq!(
        notifications.len(),
        3,
        "ACTUAL 80, ACTUAL 100, FORECASTED 100"
    );
    for n in notifications {
        assert_eq!(subscribers(n), [("SNS".to_string(), ALERTS.to_string())]);
    }

    // New subscribers: every notification is replaced with them.
    let mut mailed = budget("40");
    mailed["CostBudget"]["Emails"] = json!(["ops@example.com"]);
    rig.proxy.clear_seen();
    let updated = rig
        .send(
            "Update",
            "Custom::TokenBudget",
            Some("tokenfence:budget:support-bot"),
            mailed.clone(),
            Some(budget("40")),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(updated["Status"], "SUCCESS", "{updated}");
    assert_eq!(rig.proxy.seen("DeleteNotification"), 3);
    let recreated = rig.proxy.json_bodies("CreateNotification");
    assert_eq!(recreated.len(), 3);
    for n in &recreated {
        assert_eq!(
            subscribers(n),
            [("EMAIL".to_string(), "ops@example.com".to_string())]
        );
    }

    // Same subscribers, one threshold changed: only that notification is touched.
    let mut moved = mailed.clone();
    moved["CostBudget"]["ActualPercents"] = json!(["50", "100"]);
    rig.proxy.clear_seen();
    let updated = rig
        .send(
            "Update",
            "Custom::TokenBudget",
            Some("tokenfence:budget:support-bot"),
            moved,
            Some(mailed),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(updated["Status"], "SUCCESS", "{updated}");
    assert_eq!(rig.proxy.seen("DeleteNotification"), 1);
    let added = rig.proxy.json_bodies("CreateNotification");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["Notification"]["Threshold"], 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_service_leaves_nothing_half_created() {
    let mut rig = Rig::start().await;

    // AWS Budgets keeps failing: the Create fails naming `CostBudget`, and the ledger write that
    // preceded it is undone.
    rig.proxy.set(vec![Fault::always_500("CreateBudget")]);
    let r = rig
        .send(
            "Create",
            "Custom::TokenBudget",
            None,
            budget("40"),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(r["Status"], "FAILED");
    assert!(
        r["Reason"]
            .as_str()
            .unwrap()
            .starts_with("`CostBudget`: AWS Budgets refused"),
        "{r}"
    );
    assert!(
        rig.proxy.seen("CreateBudget") >= 3,
        "the SDK retried before giving up"
    );
    let ledger = rig.ledger();
    assert_eq!(
        ledger.budget("support-bot").await.unwrap(),
        None,
        "configuration undone"
    );
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("key-a".into()))
            .await
            .unwrap(),
        None,
        "identity undone"
    );
    // CloudFormation's rollback deletes the failed resource: that succeeds too.
    let id = r["PhysicalResourceId"].as_str().unwrap().to_string();
    let d = rig
        .send(
            "Delete",
            "Custom::TokenBudget",
            Some(&id),
            budget("40"),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(d["Status"], "SUCCESS", "{d}");

    // A working Create, then an Update that AWS Budgets refuses: the previous configuration stays.
    rig.proxy.set(vec![]);
    let r = rig
        .send(
            "Create",
            "Custom::TokenBudget",
            None,
            budget("40"),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(r["Status"], "SUCCESS", "{r}");
    rig.proxy.set(vec![Fault::always_500("UpdateBudget")]);
    let mut bigger = budget("10");
    bigger["CostBudget"]["MonthlyUsd"] = json!("2000");
    let u = rig
        .send(
            "Update",
            "Custom::TokenBudget",
            Some("tokenfence:budget:support-bot"),
            bigger,
            Some(budget("40")),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(u["Status"], "FAILED", "{u}");
    let config = ledger.budget("support-bot").await.unwrap().unwrap();
    assert_eq!(
        config.limits[1].usd,
        Some(budget::MicroUsd::from_usd(40)),
        "old limit kept"
    );
    assert_eq!(
        rig.aws_budget("acme-genai-support-bot").await.as_deref(),
        Some("1000")
    );

    // CloudWatch refuses the alarm: FAILED, and no alarm exists.
    rig.proxy.set(vec![Fault::always_500("PutMetricAlarm")]);
    let a = rig
        .send(
            "Create",
            "Custom::TokenAlarm",
            None,
            alarm(),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(a["Status"], "FAILED");
    assert!(
        a["Reason"]
            .as_str()
            .unwrap()
            .starts_with("CloudWatch refused the alarm"),
        "{a}"
    );
    assert!(!rig.alarm_exists("acme-support-bot-day-usd-80").await);
    let id = a["PhysicalResourceId"].as_str().unwrap().to_string();
    let d = rig
        .send(
            "Delete",
            "Custom::TokenAlarm",
            Some(&id),
            alarm(),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(d["Status"], "SUCCESS", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_reached_mid_work_is_answered_and_cleaned_up_by_the_rollback() {
    let mut rig = Rig::start().await;
    // The ledger write lands, then AWS Budgets hangs past the deadline.
    rig.proxy.set(vec![Fault {
        delay: Duration::from_secs(60),
        ..Fault::throttle("DescribeBudget", 1)
    }]);
    let r = rig
        .send(
            "Create",
            "Custom::TokenBudget",
            None,
            budget("40"),
            None,
            Duration::from_secs(6),
        )
        .await;
    assert_eq!(r["Status"], "FAILED");
    assert!(
        r["Reason"].as_str().unwrap().starts_with("timed out"),
        "{r}"
    );
    // Half-created: the configuration was written before the hang.
    assert!(rig.ledger().budget("support-bot").await.unwrap().is_some());
    // The answer names the budget, so CloudFormation's rollback Delete removes it.
    assert_eq!(r["PhysicalResourceId"], "tokenfence:budget:support-bot");
    rig.proxy.set(vec![]);
    let d = rig
        .send(
            "Delete",
            "Custom::TokenBudget",
            Some("tokenfence:budget:support-bot"),
            budget("40"),
            None,
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(d["Status"], "SUCCESS", "{d}");
    let ledger = rig.ledger();
    assert_eq!(
        ledger.budget("support-bot").await.unwrap(),
        None,
        "nothing left behind"
    );
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("key-a".into()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(rig.aws_budget("acme-genai-support-bot").await, None);
    // The abandoned work was stopped: it does not create the AWS Budget later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.aws_budget("acme-genai-support-bot").await, None);
}
