//! The custom resource lifecycle against moto with the real SDK clients. The test plays
//! CloudFormation: it sends Create / Update / Delete events as CloudFormation does (every scalar a
//! string), serves the ResponseURL itself, and checks both the answers and what is left in moto.

use std::sync::Arc;
use std::time::Duration;

use ledger::{DynamoLedger, Identity, Ledger};
use provider::aws::{AwsBudgets, CloudWatchAlarms};
use provider::respond::{HttpResponder, run};
use serde_json::{Value, json};

const ALERTS: &str = "arn:aws:sns:us-east-1:123456789012:acme-genai-alerts";
const STACK: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/acme-genai/5b0fd3e0-ac6d-11f0-9b3c-0e2f0d1f9c5b";
const OTHER_STACK: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/other/1";

struct Cfn {
    provider: Arc<provider::Provider<DynamoLedger, CloudWatchAlarms, AwsBudgets>>,
    responder: HttpResponder,
    response_url: harness::ResponseUrl,
    counter: u32,
    sdk: aws_config::SdkConfig,
}

impl Cfn {
    /// Sends an event and returns CloudFormation's view of the answer.
    async fn send(
        &mut self,
        kind: &str,
        rtype: &str,
        logical: &str,
        physical: Option<&str>,
        props: Value,
        old: Option<Value>,
    ) -> Value {
        self.counter += 1;
        let mut event = json!({
            "RequestType": kind,
            "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider",
            "ResponseURL": self.response_url.url,
            "StackId": STACK,
            "RequestId": format!("req-{}", self.counter),
            "LogicalResourceId": logical,
            "ResourceType": rtype,
            "ResourceProperties": props,
        });
        if let Some(p) = physical {
            event["PhysicalResourceId"] = json!(p);
        }
        if let Some(o) = old {
            event["OldResourceProperties"] = o;
        }
        self.raw(event).await
    }

    async fn raw(&mut self, event: Value) -> Value {
        run(
            Arc::clone(&self.provider),
            &self.responder,
            event,
            Duration::from_secs(60),
        )
        .await
        .expect("answered");
        self.response_url.last().expect("a response was PUT")
    }
}

fn budget_props(limit_day_usd: &str, monthly: &str, keys: &[&str]) -> Value {
    json!({
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider",
        "Application": "support-bot",
        "CostCenter": "cc-1234",
        "Limits": [{ "Window": "minute", "Tokens": "200000" }, { "Window": "day", "Usd": limit_day_usd }],
        "CostBudget": { "BudgetName": "acme-genai-support-bot", "MonthlyUsd": monthly, "ActualPercents": ["80", "100"], "TopicArn": "arn:aws:sns:us-east-1:123456789012:acme-genai-alerts" },
        "ApiKeyIds": keys,
    })
}

async fn setup(fail_first: u32) -> (harness::Moto, Cfn) {
    let moto = harness::Moto::start();
    let sdk = moto.sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    harness::create_ledger_table(&dynamo, "ledger").await;
    let provider = Arc::new(provider::Provider {
        ledger: DynamoLedger::new(dynamo, "ledger"),
        alarms: CloudWatchAlarms {
            client: aws_sdk_cloudwatch::Client::new(&sdk),
        },
        budgets: AwsBudgets {
            client: aws_sdk_budgets::Client::new(&sdk),
        },
        name: "acme-genai".into(),
        alert_topic: Some(ALERTS.into()),
    });
    let response_url = harness::ResponseUrl::start(fail_first).await;
    (
        moto,
        Cfn {
            provider,
            responder: HttpResponder::default(),
            response_url,
            counter: 0,
            sdk,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_and_alarms_through_create_update_rollback_and_delete() {
    let (_moto, mut cfn) = setup(2).await;
    let budgets = aws_sdk_budgets::Client::new(&cfn.sdk);
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&cfn.sdk);

    // An alarm before its budget exists fails, naming the property.
    let alarm_props = json!({ "Application": "support-bot", "AlarmName": "acme-support-bot-day-usd-threshold-80", "Window": "day", "Percent": "80", "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:acme-genai-alerts"] });
    let r = cfn
        .send(
            "Create",
            "Custom::TokenAlarm",
            "Alarm",
            None,
            alarm_props.clone(),
            None,
        )
        .await;
    assert_eq!(r["Status"], "FAILED");
    assert!(
        r["Reason"].as_str().unwrap().starts_with(
            "`Application`: no `Custom::TokenBudget` declares application `support-bot`"
        )
    );

    // Create (the ResponseURL fails the first two PUTs: the answer is retried and arrives).
    let created = cfn
        .send(
            "Create",
            "Custom::TokenBudget",
            "Budget",
            None,
            budget_props("40", "1000", &["key-a", "key-b"]),
            None,
        )
        .await;
    assert_eq!(created["Status"], "SUCCESS", "{created}");
    assert_eq!(
        created["PhysicalResourceId"],
        "tokenfence:budget:support-bot"
    );
    assert_eq!(
        created["Data"],
        json!({ "Application": "support-bot", "ConfigVersion": "1", "CostBudgetName": "acme-genai-support-bot" })
    );
    assert_eq!(created["LogicalResourceId"], "Budget");
    let provider = Arc::clone(&cfn.provider);
    let ledger = &provider.ledger;
    let config = ledger.budget("support-bot").await.unwrap().unwrap();
    assert_eq!(config.limits[1].usd, Some(budget::MicroUsd::from_usd(40)));
    assert_eq!(config.owner.as_deref(), Some(&*format!("{STACK}/Budget")));
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("key-b".into()))
            .await
            .unwrap()
            .as_deref(),
        Some("support-bot")
    );
    let b = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    assert_eq!(b.budget().unwrap().budget_limit().unwrap().amount(), "1000");
    let n = budgets
        .describe_notifications_for_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    let mut kinds: Vec<(String, f64)> = n
        .notifications()
        .iter()
        .map(|x| (x.notification_type().as_str().to_string(), x.threshold()))
        .collect();
    kinds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        kinds,
        vec![
            ("ACTUAL".into(), 80.0),
            ("ACTUAL".into(), 100.0),
            ("FORECASTED".into(), 100.0)
        ]
    );

    // A retry of the same request changes nothing.
    let mut retry = json!({ "RequestType": "Create", "ResponseURL": cfn.response_url.url, "StackId": STACK, "RequestId": "req-2", "LogicalResourceId": "Budget", "ResourceType": "Custom::TokenBudget", "ResourceProperties": budget_props("40", "1000", &["key-a", "key-b"]) });
    retry["ServiceToken"] = json!("x");
    let again = cfn.raw(retry).await;
    assert_eq!(again["Data"]["ConfigVersion"], "1");

    // Another stack cannot take the application over.
    let mut other = json!({ "RequestType": "Create", "ResponseURL": cfn.response_url.url, "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/other/1", "RequestId": "other-1", "LogicalResourceId": "Budget", "ResourceType": "Custom::TokenBudget", "ResourceProperties": budget_props("1", "1", &[]) });
    other["ServiceToken"] = json!("x");
    let taken = cfn.raw(other).await;
    assert_eq!(taken["Status"], "FAILED");
    assert_eq!(
        taken["Reason"],
        format!("`Application`: application `support-bot` already belongs to `{STACK}/Budget`")
    );
    assert_eq!(
        taken["PhysicalResourceId"], "tokenfence:failed:other-1",
        "its rollback Delete touches nothing"
    );
    // Nor can another application list support-bot's API key: refused whole, nothing written.
    let mut grab = json!({ "RequestType": "Create", "ResponseURL": cfn.response_url.url, "StackId": OTHER_STACK, "RequestId": "other-2", "LogicalResourceId": "Evil", "ResourceType": "Custom::TokenBudget", "ResourceProperties": { "Application": "evil", "Limits": [{ "Window": "day", "Tokens": "10" }], "ApiKeyIds": ["key-z", "key-b"] } });
    grab["ServiceToken"] = json!("x");
    let grabbed = cfn.raw(grab).await;
    assert_eq!(grabbed["Status"], "FAILED");
    assert_eq!(
        grabbed["Reason"],
        "`ApiKeyIds`: API key ID `key-b` already belongs to application `support-bot`"
    );
    assert!(ledger.budget("evil").await.unwrap().is_none());
    for (key, app) in [("key-z", None), ("key-b", Some("support-bot"))] {
        assert_eq!(
            ledger
                .application_for(&Identity::ApiKeyId(key.into()))
                .await
                .unwrap()
                .as_deref(),
            app
        );
    }
    // Its Delete of support-bot's physical ID is not its to act on.
    let mut delete = json!({ "RequestType": "Delete", "ResponseURL": cfn.response_url.url, "StackId": OTHER_STACK, "RequestId": "other-3", "LogicalResourceId": "Budget", "PhysicalResourceId": "tokenfence:budget:support-bot", "ResourceType": "Custom::TokenBudget", "ResourceProperties": budget_props("40", "1000", &["key-a", "key-b"]) });
    delete["ServiceToken"] = json!("x");
    assert_eq!(cfn.raw(delete).await["Status"], "SUCCESS");
    assert!(ledger.budget("support-bot").await.unwrap().is_some());
    assert!(
        budgets
            .describe_budget()
            .account_id("123456789012")
            .budget_name("acme-genai-support-bot")
            .send()
            .await
            .is_ok(),
        "another stack's Delete leaves the AWS Budget"
    );

    // Alarms now succeed, with the right metric and threshold in CloudWatch.
    let alarm = cfn
        .send(
            "Create",
            "Custom::TokenAlarm",
            "Alarm",
            None,
            alarm_props.clone(),
            None,
        )
        .await;
    assert_eq!(alarm["Status"], "SUCCESS", "{alarm}");
    assert_eq!(
        alarm["PhysicalResourceId"],
        "acme-support-bot-day-usd-threshold-80"
    );
    assert_eq!(alarm["Data"]["Threshold"], "80");
    assert!(
        alarm["Data"]["AlarmArn"]
            .as_str()
            .unwrap()
            .ends_with(":alarm:acme-support-bot-day-usd-threshold-80")
    );
    let forecast = cfn
        .send(
            "Create",
            "Custom::TokenAlarm",
            "Forecast",
            None,
            json!({ "Application": "support-bot", "Window": "day", "Kind": "forecast" }),
            None,
        )
        .await;
    assert_eq!(forecast["Status"], "SUCCESS", "{forecast}");
    let described = cloudwatch
        .describe_alarms()
        .alarm_names("acme-support-bot-day-usd-threshold-80")
        .alarm_names("acme-genai-support-bot-day-usd-forecast")
        .send()
        .await
        .unwrap();
    let alarms = described.metric_alarms();
    assert_eq!(alarms.len(), 2);
    let threshold = alarms
        .iter()
        .find(|a| a.alarm_name() == Some("acme-support-bot-day-usd-threshold-80"))
        .unwrap();
    assert_eq!(
        (
            threshold.metric_name(),
            threshold.namespace(),
            threshold.threshold()
        ),
        (Some("WindowUtilization"), Some("TokenFence"), Some(80.0))
    );
    let forecast = alarms
        .iter()
        .find(|a| a.alarm_name() == Some("acme-genai-support-bot-day-usd-forecast"))
        .unwrap();
    let expressions: Vec<&str> = forecast
        .metrics()
        .iter()
        .filter_map(|m| m.expression())
        .collect();
    assert_eq!(expressions, ["FILL(projected, 0)"]);
    assert_eq!(forecast.threshold(), Some(100.0));

    // Another resource naming an existing alarm is refused; PutMetricAlarm would overwrite it.
    let mut twin = json!({ "RequestType": "Create", "ResponseURL": cfn.response_url.url, "StackId": OTHER_STACK, "RequestId": "other-4", "LogicalResourceId": "Twin", "ResourceType": "Custom::TokenAlarm", "ResourceProperties": { "Application": "support-bot", "AlarmName": "acme-support-bot-day-usd-threshold-80", "Window": "day", "Percent": "5" } });
    twin["ServiceToken"] = json!("x");
    let twin = cfn.raw(twin).await;
    assert_eq!(twin["Status"], "FAILED");
    assert_eq!(
        twin["Reason"],
        format!(
            "`AlarmName`: alarm `acme-support-bot-day-usd-threshold-80` already belongs to `{STACK}/Alarm`"
        )
    );
    let mut twin_delete = json!({ "RequestType": "Delete", "ResponseURL": cfn.response_url.url, "StackId": OTHER_STACK, "RequestId": "other-5", "LogicalResourceId": "Twin", "PhysicalResourceId": "acme-support-bot-day-usd-threshold-80", "ResourceType": "Custom::TokenAlarm", "ResourceProperties": {} });
    twin_delete["ServiceToken"] = json!("x");
    assert_eq!(cfn.raw(twin_delete).await["Status"], "SUCCESS");
    let kept = cloudwatch
        .describe_alarms()
        .alarm_names("acme-support-bot-day-usd-threshold-80")
        .send()
        .await
        .unwrap();
    assert_eq!(
        kept.metric_alarms()[0].threshold(),
        Some(80.0),
        "the alarm is neither overwritten nor deleted by another resource"
    );

    // Update in place: new day limit, new monthly budget, one API key dropped.
    let old = budget_props("40", "1000", &["key-a", "key-b"]);
    let new = budget_props("25.5", "1500", &["key-a"]);
    let updated = cfn
        .send(
            "Update",
            "Custom::TokenBudget",
            "Budget",
            Some("tokenfence:budget:support-bot"),
            new.clone(),
            Some(old.clone()),
        )
        .await;
    assert_eq!(
        (
            updated["Status"].as_str(),
            updated["PhysicalResourceId"].as_str()
        ),
        (Some("SUCCESS"), Some("tokenfence:budget:support-bot")),
        "{updated}"
    );
    assert_eq!(updated["Data"]["ConfigVersion"], "2");
    assert_eq!(
        ledger.budget("support-bot").await.unwrap().unwrap().limits[1].usd,
        Some(budget::MicroUsd(25_500_000))
    );
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("key-b".into()))
            .await
            .unwrap(),
        None
    );
    let b = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    assert_eq!(
        b.budget().unwrap().budget_limit().unwrap().amount(),
        "1500",
        "updated in place"
    );

    // A failed update (bad property) answers FAILED naming it and changes nothing.
    let mut bad = new.clone();
    bad["Limits"][1]["Usd"] = json!("25.00000001");
    let failed = cfn
        .send(
            "Update",
            "Custom::TokenBudget",
            "Budget",
            Some("tokenfence:budget:support-bot"),
            bad,
            Some(new.clone()),
        )
        .await;
    assert_eq!(failed["Status"], "FAILED");
    assert!(
        failed["Reason"]
            .as_str()
            .unwrap()
            .starts_with("`Limits[1].Usd`:")
    );
    assert_eq!(
        ledger.budget("support-bot").await.unwrap().unwrap().version,
        2
    );

    // Rollback: CloudFormation swaps old and new; the old state comes back.
    let rolled = cfn
        .send(
            "Update",
            "Custom::TokenBudget",
            "Budget",
            Some("tokenfence:budget:support-bot"),
            old.clone(),
            Some(new.clone()),
        )
        .await;
    assert_eq!(rolled["Status"], "SUCCESS");
    assert_eq!(
        ledger.budget("support-bot").await.unwrap().unwrap().limits[1].usd,
        Some(budget::MicroUsd::from_usd(40))
    );
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("key-b".into()))
            .await
            .unwrap()
            .as_deref(),
        Some("support-bot")
    );
    let b = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    assert_eq!(b.budget().unwrap().budget_limit().unwrap().amount(), "1000");

    // Changing the application is a replacement: a new physical ID, the old left for Delete.
    let mut renamed = old.clone();
    renamed["Application"] = json!("support-bot-v2");
    renamed["CostBudget"]["BudgetName"] = json!("acme-genai-support-bot-v2");
    let replaced = cfn
        .send(
            "Update",
            "Custom::TokenBudget",
            "Budget",
            Some("tokenfence:budget:support-bot"),
            renamed.clone(),
            Some(old.clone()),
        )
        .await;
    assert_eq!(
        replaced["PhysicalResourceId"], "tokenfence:budget:support-bot-v2",
        "{replaced}"
    );
    assert!(
        ledger.budget("support-bot").await.unwrap().is_some(),
        "the old one stays until CloudFormation deletes it"
    );
    assert!(ledger.budget("support-bot-v2").await.unwrap().is_some());

    // Deletes: the old physical ID, twice (idempotent), an ID never issued, and the alarms.
    for _ in 0..2 {
        let d = cfn
            .send(
                "Delete",
                "Custom::TokenBudget",
                "Budget",
                Some("tokenfence:budget:support-bot"),
                old.clone(),
                None,
            )
            .await;
        assert_eq!(d["Status"], "SUCCESS", "{d}");
    }
    assert!(ledger.budget("support-bot").await.unwrap().is_none());
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("key-a".into()))
            .await
            .unwrap()
            .as_deref(),
        Some("support-bot-v2"),
        "the new resource's identity was rewritten and kept"
    );
    let gone = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await;
    assert!(gone.is_err(), "the old AWS Budget was deleted");
    let d = cfn
        .send(
            "Delete",
            "Custom::TokenBudget",
            "Budget",
            Some("tokenfence:failed:req-1"),
            json!({}),
            None,
        )
        .await;
    assert_eq!(d["Status"], "SUCCESS");
    for (logical, name) in [
        ("Alarm", "acme-support-bot-day-usd-threshold-80"),
        ("Forecast", "acme-genai-support-bot-day-usd-forecast"),
        ("Alarm", "acme-support-bot-day-usd-threshold-80"),
    ] {
        let d = cfn
            .send(
                "Delete",
                "Custom::TokenAlarm",
                logical,
                Some(name),
                json!({}),
                None,
            )
            .await;
        assert_eq!(d["Status"], "SUCCESS");
    }
    assert!(
        cloudwatch
            .describe_alarms()
            .alarm_names("acme-support-bot-day-usd-threshold-80")
            .alarm_names("acme-genai-support-bot-day-usd-forecast")
            .send()
            .await
            .unwrap()
            .metric_alarms()
            .is_empty()
    );
    // Their names are free again.
    let mut reuse = json!({ "RequestType": "Create", "ResponseURL": cfn.response_url.url, "StackId": OTHER_STACK, "RequestId": "other-6", "LogicalResourceId": "Twin", "ResourceType": "Custom::TokenAlarm", "ResourceProperties": { "Application": "support-bot-v2", "AlarmName": "acme-support-bot-day-usd-threshold-80", "Window": "day", "Percent": "5" } });
    reuse["ServiceToken"] = json!("x");
    assert_eq!(cfn.raw(reuse).await["Status"], "SUCCESS");
}

/// Default AWS Budget names start with the stack's name (inside the provider role's
/// `<name>-*` budgets), and a replacement that keeps the name keeps the AWS Budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_keeps_the_aws_budget_it_still_names() {
    let (_moto, mut cfn) = setup(0).await;
    let budgets = aws_sdk_budgets::Client::new(&cfn.sdk);
    let exists = |name: &'static str| {
        let budgets = budgets.clone();
        async move {
            budgets
                .describe_budget()
                .account_id("123456789012")
                .budget_name(name)
                .send()
                .await
                .is_ok()
        }
    };
    let props = |app: &str, name: Option<&str>| {
        let mut cost = json!({ "MonthlyUsd": "100" });
        if let Some(n) = name {
            cost["BudgetName"] = json!(n);
        }
        json!({ "Application": app, "Limits": [{ "Window": "day", "Tokens": "1000" }], "CostBudget": cost })
    };
    let unnamed = cfn
        .send(
            "Create",
            "Custom::TokenBudget",
            "Plain",
            None,
            props("plain", None),
            None,
        )
        .await;
    assert_eq!(unnamed["Status"], "SUCCESS", "{unnamed}");
    assert_eq!(unnamed["Data"]["CostBudgetName"], "acme-genai-plain");
    assert!(exists("acme-genai-plain").await);

    let a = props("team-a", Some("acme-genai-shared"));
    let created = cfn
        .send(
            "Create",
            "Custom::TokenBudget",
            "Shared",
            None,
            a.clone(),
            None,
        )
        .await;
    assert_eq!(created["Status"], "SUCCESS", "{created}");
    // The application changes (a replacement) and the budget name stays.
    let b = props("team-b", Some("acme-genai-shared"));
    let replaced = cfn
        .send(
            "Update",
            "Custom::TokenBudget",
            "Shared",
            Some("tokenfence:budget:team-a"),
            b.clone(),
            Some(a.clone()),
        )
        .await;
    assert_eq!(
        replaced["PhysicalResourceId"], "tokenfence:budget:team-b",
        "{replaced}"
    );
    // Cleanup deletes the old resource: its AWS Budget is the new one's now.
    let cleanup = cfn
        .send(
            "Delete",
            "Custom::TokenBudget",
            "Shared",
            Some("tokenfence:budget:team-a"),
            a,
            None,
        )
        .await;
    assert_eq!(cleanup["Status"], "SUCCESS", "{cleanup}");
    assert!(
        cfn.provider
            .ledger
            .budget("team-a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        exists("acme-genai-shared").await,
        "the replacement still names it"
    );
    let deleted = cfn
        .send(
            "Delete",
            "Custom::TokenBudget",
            "Shared",
            Some("tokenfence:budget:team-b"),
            b,
            None,
        )
        .await;
    assert_eq!(deleted["Status"], "SUCCESS", "{deleted}");
    assert!(!exists("acme-genai-shared").await);

    // Another stack cannot name an AWS Budget this stack holds.
    let mut grab = json!({ "RequestType": "Create", "ResponseURL": cfn.response_url.url, "StackId": OTHER_STACK, "RequestId": "other-1", "LogicalResourceId": "Grab", "ResourceType": "Custom::TokenBudget", "ResourceProperties": props("grab", Some("acme-genai-plain")) });
    grab["ServiceToken"] = json!("x");
    let grabbed = cfn.raw(grab).await;
    assert_eq!(grabbed["Status"], "FAILED");
    assert_eq!(
        grabbed["Reason"],
        format!(
            "`CostBudget.BudgetName`: AWS Budget `acme-genai-plain` already belongs to `{STACK}/Plain`"
        )
    );
    assert!(
        cfn.provider.ledger.budget("grab").await.unwrap().is_none(),
        "undone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_failed_never_left_hanging() {
    let (_moto, mut cfn) = setup(0).await;
    let r = cfn
        .send("Create", "Custom::Mystery", "M", None, json!({}), None)
        .await;
    assert_eq!(r["Status"], "FAILED");
    assert!(
        r["Reason"]
            .as_str()
            .unwrap()
            .contains("unsupported resource type `Custom::Mystery`")
    );
    assert_eq!(r["PhysicalResourceId"], "tokenfence:failed:req-1");

    let bad = cfn
        .send(
            "Create",
            "Custom::TokenBudget",
            "B",
            None,
            json!({ "Application": "a", "Limits": [{ "Window": "day", "Usd": "1.0000001" }] }),
            None,
        )
        .await;
    assert_eq!(bad["Status"], "FAILED");
    assert!(
        bad["Reason"]
            .as_str()
            .unwrap()
            .starts_with("`Limits[0].Usd`")
    );
    assert!(
        cfn.provider.ledger.budget("a").await.unwrap().is_none(),
        "nothing half-created"
    );

    let malformed = cfn.raw(json!({ "RequestType": "Explode", "ResponseURL": cfn.response_url.url, "RequestId": "m-1", "StackId": STACK, "LogicalResourceId": "X" })).await;
    assert_eq!(malformed["Status"], "FAILED");
    assert!(
        malformed["Reason"]
            .as_str()
            .unwrap()
            .starts_with("malformed request")
    );
    assert_eq!(malformed["RequestId"], "m-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_dependency_is_answered_failed_before_the_deadline() {
    // A ledger endpoint that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "t", "t", None, None, "t",
        ))
        .load()
        .await;
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
    let response_url = harness::ResponseUrl::start(0).await;
    let event = json!({ "RequestType": "Create", "ResponseURL": response_url.url, "StackId": STACK, "RequestId": "slow-1", "LogicalResourceId": "B", "ResourceType": "Custom::TokenBudget", "ServiceToken": "x", "ResourceProperties": budget_props("1", "1", &[]) });
    let started = std::time::Instant::now();
    run(
        provider,
        &HttpResponder::default(),
        event,
        Duration::from_secs(7),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "answered before the deadline"
    );
    let r = response_url.last().unwrap();
    assert_eq!(r["Status"], "FAILED");
    assert!(r["Reason"].as_str().unwrap().starts_with("timed out"));
    drop(silent);
}

/// A ResponseURL that keeps failing is retried only until the Lambda deadline: retries past it
/// would run in a frozen sandbox during some later event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_retries_stop_at_the_lambda_deadline() {
    let (_moto, cfn) = setup(u32::MAX).await;
    let event = json!({ "RequestType": "Explode", "ResponseURL": cfn.response_url.url, "RequestId": "m-1", "StackId": STACK, "LogicalResourceId": "X" });
    let started = std::time::Instant::now();
    let result = run(
        Arc::clone(&cfn.provider),
        &HttpResponder::default(),
        event,
        Duration::from_millis(1_500),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(result.is_err(), "the answer never arrived: {result:?}");
    // Five attempts with 0.2 + 0.4 + 0.8 + 1.6 s between them would take 3 s.
    assert!(
        elapsed < Duration::from_millis(1_700),
        "gave up by the deadline, took {elapsed:?}"
    );
    assert!(cfn.response_url.last().is_none(), "no answer was accepted");
}
