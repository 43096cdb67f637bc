//! The product as the README uses it, end to end: `synth render` the quickstart, lint it,
//! `aws cloudformation package` + `create-stack` on moto, check what a user would check in AWS,
//! send Converse requests through the deployed invoke function (as API Gateway and as the SQS
//! event source mapping deliver them), change a limit with a stack update, delete the stack.

use std::collections::BTreeSet;

use aws_sdk_cloudwatch::types::MetricAlarm;
use budget::config::ExceedAction;
use budget::{MicroUsd, Window};
use e2e::{LocalAws, api_event, converse};
use ledger::{DynamoLedger, Identity, Ledger};
use serde_json::Value;

const STACK: &str = "acme-genai";
const APP: &str = "support-bot";
const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const NOVA_MICRO: &str = "amazon.nova-micro-v1:0";

fn alarm<'a>(alarms: &'a [MetricAlarm], name: &str) -> &'a MetricAlarm {
    alarms
        .iter()
        .find(|a| a.alarm_name() == Some(name))
        .unwrap_or_else(|| {
            panic!(
                "no alarm {name}: {:?}",
                alarms.iter().map(|a| a.alarm_name()).collect::<Vec<_>>()
            )
        })
}

fn header<'a>(response: &'a Value, name: &str) -> &'a str {
    response["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} header: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quickstart_renders_deploys_enforces_updates_and_deletes() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("quickstart").await;
    let aws = &local.aws;

    // 1. Render and lint, as the README says.
    let out = local.dir.join("out");
    harness::synth_render(
        &harness::repo().join("examples/quickstart.yaml"),
        &out,
        &artifacts,
    );
    let template = out.join("acme-genai.yaml");
    harness::cfn_lint(std::slice::from_ref(&template));

    // 2. Package and deploy; the custom resources run in the real provider binary.
    let outputs = local.deploy(&template, STACK);

    // 3. What a user checks in AWS. Outputs and exports:
    for key in [
        "ProviderServiceToken",
        "LedgerTableName",
        "ApiUrl",
        "RestApiId",
        "InvokeFunctionArn",
        "AlertTopicArn",
        "DeadLetterQueueArn",
        "SupportBotRequestsQueueUrl",
        "SupportBotResultsQueueUrl",
    ] {
        assert!(
            outputs.contains_key(key),
            "output {key} missing: {outputs:?}"
        );
    }
    assert_eq!(outputs["LedgerTableName"], "acme-genai-ledger");
    assert_eq!(
        outputs["ProviderServiceToken"],
        "arn:aws:lambda:us-east-1:123456789012:function:acme-genai-provider"
    );
    let exports = aws.json(&["cloudformation", "list-exports"]);
    let exported: BTreeSet<&str> = exports["Exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Name"].as_str().unwrap())
        .collect();
    for name in [
        "acme-genai-ServiceToken",
        "acme-genai-LedgerTableName",
        "acme-genai-AlertTopicArn",
        "acme-genai-RestApiId",
    ] {
        assert!(
            exported.contains(name),
            "export {name} missing: {exported:?}"
        );
    }

    // The ledger table holds the application's configuration and its identities.
    let dynamo = aws_sdk_dynamodb::Client::new(&local.sdk);
    let ledger = DynamoLedger::new(dynamo.clone(), outputs["LedgerTableName"].clone());
    let config = ledger
        .budget(APP)
        .await
        .unwrap()
        .expect("support-bot's budget is in the ledger");
    let limits: Vec<(Window, Option<u64>, Option<MicroUsd>)> = config
        .limits
        .iter()
        .map(|l| (l.window, l.tokens, l.usd))
        .collect();
    assert_eq!(
        limits,
        vec![
            (Window::Minute, Some(200_000), None),
            (Window::Day, None, Some(MicroUsd::from_usd(40))),
            (Window::Month, None, Some(MicroUsd::from_usd(800))),
        ]
    );
    assert_eq!(config.cost_center.as_deref(), Some("cc-1234"));
    assert_eq!(
        config.on_exceed,
        ExceedAction::Fallback {
            model: NOVA_MICRO.into()
        }
    );
    assert!(
        config
            .inference_profiles
            .iter()
            .all(|p| p.arn.contains(":application-inference-profile/")),
        "requests go through the application's tagged inference profiles: {:?}",
        config.inference_profiles
    );
    let key = local.api_key("acme-genai-support-bot");
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId(key.0.clone()))
            .await
            .unwrap()
            .as_deref(),
        Some(APP)
    );

    // CloudWatch alarms with the right thresholds and metric math.
    let cloudwatch = aws_sdk_cloudwatch::Client::new(&local.sdk);
    let alarms = cloudwatch
        .describe_alarms()
        .alarm_name_prefix("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    let alarms = alarms.metric_alarms();
    assert_eq!(alarms.len(), 3, "{alarms:?}");
    let day = alarm(alarms, "acme-genai-support-bot-day-usd-threshold-80");
    assert_eq!(day.namespace(), Some("TokenFence"));
    assert_eq!(day.metric_name(), Some("WindowUtilization"));
    assert_eq!(day.threshold(), Some(80.0));
    let dims: BTreeSet<(&str, &str)> = day
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap(), d.value().unwrap()))
        .collect();
    assert_eq!(
        dims,
        BTreeSet::from([("Application", APP), ("Window", "day"), ("Limit", "usd")])
    );
    assert_eq!(day.alarm_actions(), [outputs["AlertTopicArn"].clone()]);
    let forecast = alarm(alarms, "acme-genai-support-bot-month-usd-forecast");
    assert_eq!(forecast.threshold(), Some(100.0));
    let expressions: Vec<&str> = forecast
        .metrics()
        .iter()
        .filter_map(|m| m.expression())
        .collect();
    assert_eq!(expressions, ["FILL(projected, 0)"]);
    assert!(forecast.metrics().iter().any(|m| {
        m.metric_stat()
            .and_then(|s| s.metric())
            .and_then(|m| m.metric_name())
            == Some("ProjectedUtilization")
    }));
    let anomaly = alarm(alarms, "acme-genai-support-bot-hour-usd-anomaly");
    assert_eq!(anomaly.threshold_metric_id(), Some("band"));
    assert!(
        anomaly
            .metrics()
            .iter()
            .any(|m| m.expression() == Some("ANOMALY_DETECTION_BAND(usage, 2)"))
    );

    // The AWS Budget with its notifications.
    let budgets = aws_sdk_budgets::Client::new(&local.sdk);
    let described = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    let budget = described.budget().expect("the cost budget exists");
    assert_eq!(
        budget.budget_limit().map(|l| (l.amount(), l.unit())),
        Some(("1000", "USD"))
    );
    let kinds = e2e::budget_notifications(&budgets, "acme-genai-support-bot").await;
    assert_eq!(
        kinds,
        BTreeSet::from([
            ("ACTUAL".into(), 80),
            ("ACTUAL".into(), 100),
            ("FORECASTED".into(), 100)
        ])
    );

    // 4. Requests through the deployed invoke function, as API Gateway sends them.
    let invoke = "acme-genai-invoke";
    let ok = local.invoke(
        invoke,
        &api_event(
            &key,
            "haiku",
            &converse("Summarise our refund policy.", 200),
        ),
    );
    assert_eq!(ok["statusCode"], 200, "{ok}");
    assert_eq!(header(&ok, "x-tokenfence-application"), APP);
    assert_eq!(header(&ok, "x-tokenfence-model"), HAIKU);
    let body: Value = serde_json::from_str(ok["body"].as_str().unwrap()).unwrap();
    assert!(body["usage"]["totalTokens"].as_u64().unwrap() > 0, "{body}");

    // InvokeModel with an Anthropic Messages body, passed through as sent.
    let native = serde_json::json!({ "anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
        "messages": [{ "role": "user", "content": "Summarise our refund policy." }] });
    let mut event = api_event(&key, "haiku", &native);
    event["path"] = serde_json::json!("/model/haiku/invoke");
    event["requestContext"]["path"] = serde_json::json!("/v1/model/haiku/invoke");
    let answer = local.invoke(invoke, &event);
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "message", "{body}");
    assert!(
        body["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );

    // The streaming operations, as the REST API's STREAM integrations call the function
    // (InvokeWithResponseStream): the prelude API Gateway turns into the status and headers,
    // then Bedrock's event stream as it comes; each stream is settled to what the stub billed
    // before the stream ends.
    let billed_before_streams = local.stub.billed_tokens();
    let used_before_streams = e2e::used_tokens(&ledger, APP).await;
    for (op, body, first, last) in [
        (
            "converse-stream",
            converse("Stream our refund policy.", 80),
            "messageStart",
            "metadata",
        ),
        (
            "invoke-with-response-stream",
            native.clone(),
            "chunk",
            "chunk",
        ),
    ] {
        let mut event = api_event(&key, "haiku", &body);
        event["path"] = serde_json::json!(format!("/model/haiku/{op}"));
        event["requestContext"]["path"] = serde_json::json!(format!("/v1/model/haiku/{op}"));
        let (prelude, events) = e2e::split_prelude(&local.invoke_stream(invoke, &event));
        assert_eq!(prelude["statusCode"], 200, "{op}: {prelude}");
        assert_eq!(
            prelude["headers"]["content-type"], "application/vnd.amazon.eventstream",
            "{op}: {prelude}"
        );
        assert_eq!(
            prelude["headers"]["x-tokenfence-application"], APP,
            "{op}: {prelude}"
        );
        let kinds: Vec<String> = harness::event_stream_messages(&events)
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        assert_eq!(
            (
                kinds.first().map(String::as_str),
                kinds.last().map(String::as_str)
            ),
            (Some(first), Some(last)),
            "{op}: {kinds:?}"
        );
    }
    assert_eq!(
        e2e::used_tokens(&ledger, APP).await - used_before_streams,
        local.stub.billed_tokens() - billed_before_streams,
        "both streams settled to the bill before they ended"
    );
    // An over-budget stream is an ordinary 429 before any event.
    let mut event = api_event(&key, "haiku", &converse("Stream a novel.", 199_990));
    event["path"] = serde_json::json!("/model/haiku/converse-stream");
    let (prelude, body) = e2e::split_prelude(&local.invoke_stream(invoke, &event));
    assert_eq!(prelude["statusCode"], 429, "{prelude}");
    let refusal: Value = serde_json::from_slice(&body).expect("a JSON refusal");
    assert!(refusal.to_string().contains("minute"), "{refusal}");

    // A request whose worst case would cross the minute's token limit (the fallback model is
    // under the same token limit) is refused before Bedrock is called.
    let billed_before = local.stub.requests();
    let over = local.invoke(
        invoke,
        &api_event(&key, "haiku", &converse("Write a novel.", 199_990)),
    );
    assert_eq!(over["statusCode"], 429, "{over}");
    assert!(
        over["headers"]["retry-after"].is_string() || over["headers"]["Retry-After"].is_string(),
        "{over}"
    );
    let refusal: Value = serde_json::from_str(over["body"].as_str().unwrap()).unwrap();
    assert!(
        refusal.to_string().contains("minute"),
        "the refusal names the window: {refusal}"
    );
    assert_eq!(
        local.stub.requests(),
        billed_before,
        "a refused request never reaches Bedrock"
    );

    // Another application's key, or none, gets nothing.
    let stranger = local.invoke(
        invoke,
        &api_event(
            &("not-a-key".into(), "nope".into()),
            "haiku",
            &converse("hi", 10),
        ),
    );
    assert_eq!(stranger["statusCode"], 403, "{stranger}");

    // Through SQS: send to the deployed queue; the event source mapping delivers the message.
    let sqs = aws_sdk_sqs::Client::new(&local.sdk);
    sqs.send_message()
        .queue_url(&outputs["SupportBotRequestsQueueUrl"])
        .message_body(serde_json::json!({ "requestId": "q-1", "modelId": "nova-lite", "request": converse("Translate 'budget' to French.", 50) }).to_string())
        .send()
        .await
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&outputs["SupportBotResultsQueueUrl"])
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    let results: Vec<Value> = received
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["requestId"], "q-1");
    assert_eq!(results[0]["status"], 200, "{}", results[0]);

    // The ledger shows exactly what Bedrock billed, and no reservation is left open.
    let billed_tokens: u64 = local
        .stub
        .billed()
        .values()
        .map(|b| b.input_tokens + b.output_tokens)
        .sum();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let usage = ledger.usage(APP, None, &config.limits, now).await.unwrap();
    let month = usage
        .iter()
        .find(|u| u.limit.window == Window::Month)
        .unwrap();
    assert_eq!(
        month.used.tokens, billed_tokens,
        "ledger vs stub-billed tokens"
    );
    let open = dynamo
        .scan()
        .table_name("acme-genai-ledger")
        .filter_expression("begins_with(sk, :res) AND #state = :reserved")
        .expression_attribute_names("#state", "state")
        .expression_attribute_values(
            ":res",
            aws_sdk_dynamodb::types::AttributeValue::S("res#".into()),
        )
        .expression_attribute_values(
            ":reserved",
            aws_sdk_dynamodb::types::AttributeValue::S("reserved".into()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(open.count(), 0, "open reservations: {:?}", open.items());

    // EMF metrics reached the function's log group.
    let emf: Vec<Value> = local
        .log_lines(invoke)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "TokenFence")
        .collect();
    assert!(
        emf.iter()
            .any(|v| v["Application"] == APP && v["TotalTokens"].as_u64().is_some_and(|t| t > 0)),
        "no TokenFence EMF record with TotalTokens for {APP}: {emf:?}"
    );
    assert!(
        emf.iter().any(|v| v["RateLimitDenied"].as_u64() == Some(1)),
        "the refusal is counted: {emf:?}"
    );

    // 5. Lower the day's USD limit in the spec, re-render, update the stack: the next request
    // is enforced against the new limit, with the same binaries.
    let code = (
        local.code_sha("acme-genai-provider"),
        local.code_sha(invoke),
    );
    let spec = std::fs::read_to_string(harness::repo().join("examples/quickstart.yaml")).unwrap();
    let lowered = spec.replace("{ window: day, usd: 40 }", "{ window: day, usd: 0.002 }");
    assert_ne!(
        spec, lowered,
        "the quickstart's day limit moved; update this test"
    );
    let spec2 = local.dir.join("quickstart-lowered.yaml");
    std::fs::write(&spec2, lowered).unwrap();
    let out2 = local.dir.join("out2");
    harness::synth_render(&spec2, &out2, &artifacts);
    local.deploy(&out2.join("acme-genai.yaml"), STACK);
    assert_eq!(
        (
            local.code_sha("acme-genai-provider"),
            local.code_sha(invoke)
        ),
        code,
        "no binary was rebuilt or redeployed"
    );
    let updated = ledger.budget(APP).await.unwrap().unwrap();
    assert_eq!(updated.limits[1].usd, Some(MicroUsd::from_micros(2_000)));
    assert!(
        updated.version > config.version,
        "{} -> {}",
        config.version,
        updated.version
    );
    // Haiku's worst case (1,024 output tokens at $4/M) no longer fits the day: the fallback serves it.
    let fallback = local.invoke(
        invoke,
        &api_event(
            &key,
            "haiku",
            &converse("Summarise our refund policy.", 1024),
        ),
    );
    assert_eq!(fallback["statusCode"], 200, "{fallback}");
    assert_eq!(header(&fallback, "x-tokenfence-model"), NOVA_MICRO);
    let remaining: f64 = header(&fallback, "x-tokenfence-remaining-day-usd")
        .parse()
        .unwrap();
    assert!(
        remaining < 0.002,
        "remaining against the new limit: {remaining}"
    );

    // 6. Delete the stack: the provider removes what it created; the table is retained.
    local.delete(STACK);
    assert!(
        ledger.budget(APP).await.unwrap().is_none(),
        "the budget configuration is gone"
    );
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId(key.0.clone()))
            .await
            .unwrap(),
        None
    );
    let left = cloudwatch
        .describe_alarms()
        .alarm_name_prefix("acme-genai-support-bot")
        .send()
        .await
        .unwrap();
    assert!(
        left.metric_alarms().is_empty(),
        "{:?}",
        left.metric_alarms()
    );
    let gone = budgets
        .describe_budget()
        .account_id("123456789012")
        .budget_name("acme-genai-support-bot")
        .send()
        .await;
    assert!(gone.is_err(), "the cost budget is deleted: {gone:?}");
    dynamo
        .describe_table()
        .table_name("acme-genai-ledger")
        .send()
        .await
        .expect("the ledger table is retained (DeletionPolicy: Retain)");

    // 7. Every call the functions made was allowed by their rendered roles, as IAM would judge
    //    it; among them, each kind of call this scenario exercises.
    local
        .moto
        .assert_roles_allowed(&[
            ("dynamodb:BatchGetItem", ":table/acme-genai-ledger"),
            ("dynamodb:UpdateItem", ":table/acme-genai-ledger"),
            ("bedrock:InvokeModel", ":application-inference-profile/"),
            (
                "bedrock:InvokeModel",
                ":foundation-model/anthropic.claude-3-5-haiku",
            ),
            (
                "bedrock:InvokeModelWithResponseStream",
                ":application-inference-profile/",
            ),
            ("sqs:SendMessage", ":acme-genai-support-bot-results"),
            ("sqs:ReceiveMessage", ":acme-genai-support-bot-requests"),
            (
                "cloudwatch:PutMetricAlarm",
                ":alarm:acme-genai-support-bot-",
            ),
            ("cloudwatch:DeleteAlarms", ":alarm:acme-genai-support-bot-"),
            ("budgets:ModifyBudget", ":budget/acme-genai-support-bot"),
            ("budgets:ViewBudget", ":budget/acme-genai-support-bot"),
        ])
        .await;
}
