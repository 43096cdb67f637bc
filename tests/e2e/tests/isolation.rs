//! One application cannot spend another's budget or read its usage, on the deployed fronts:
//! REST (API Gateway proxy events carrying the caller's API key ID) and SQS (the queue a message
//! arrived on). `invoke serve` is covered by `crates/invoke/tests/serve.rs`.

use e2e::{LocalAws, api_event, converse, used_tokens};
use ledger::DynamoLedger;
use serde_json::{Value, json};

const SEARCH: &str = "search-summaries";
const LEGAL: &str = "legal-review";
const BATCH: &str = "batch-translation";

fn usage_event(key: &(String, String)) -> Value {
    let mut event = api_event(key, "unused", &json!({}));
    event["resource"] = json!("/usage");
    event["path"] = json!("/usage");
    event["httpMethod"] = json!("GET");
    event["requestContext"]["resourcePath"] = json!("/usage");
    event["requestContext"]["httpMethod"] = json!("GET");
    event["requestContext"]["path"] = json!("/v1/usage");
    event["pathParameters"] = Value::Null;
    event["body"] = Value::Null;
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_application_cannot_spend_or_read_anothers_budget() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("isolation").await;
    let out = local.dir.join("out");
    harness::synth_render(
        &harness::repo().join("examples/multi-team.yaml"),
        &out,
        &artifacts,
    );
    let outputs = local.deploy(&out.join("globex-ai.yaml"), "globex-ai");
    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&local.sdk),
        "globex-ai-ledger",
    );
    let invoke = "globex-ai-invoke";
    let search = local.api_key("globex-ai-search-summaries");

    // REST. The caller's own request is charged to it.
    let own = local.invoke(
        invoke,
        &api_event(&search, "haiku", &converse("Summarise this page.", 100)),
    );
    assert_eq!(own["statusCode"], 200, "{own}");
    assert_eq!(own["headers"]["x-tokenfence-application"], SEARCH);
    // Naming the other application in the body is refused; in a header it is ignored.
    let mut body = converse("Summarise this page.", 100);
    body["applicationId"] = json!(LEGAL);
    let named = local.invoke(invoke, &api_event(&search, "haiku", &body));
    assert_eq!(named["statusCode"], 400, "{named}");
    assert!(
        named["body"].as_str().unwrap().contains("applicationId"),
        "{named}"
    );
    let mut headed = api_event(&search, "haiku", &converse("Summarise this page.", 100));
    headed["headers"]["x-tokenfence-application"] = json!(LEGAL);
    let headed = local.invoke(invoke, &headed);
    assert_eq!(
        headed["headers"]["x-tokenfence-application"], SEARCH,
        "{headed}"
    );
    // The other application's model is not the caller's to use.
    let sonnet = local.invoke(
        invoke,
        &api_event(&search, "sonnet", &converse("Review this contract.", 100)),
    );
    assert_eq!(sonnet["statusCode"], 403, "{sonnet}");
    // Usage: the caller sees its own windows only.
    let usage = local.invoke(invoke, &usage_event(&search));
    assert_eq!(usage["statusCode"], 200, "{usage}");
    let usage: Value = serde_json::from_str(usage["body"].as_str().unwrap()).unwrap();
    assert_eq!(usage["application"], SEARCH, "{usage}");
    assert!(!usage.to_string().contains(LEGAL), "{usage}");

    // SQS (batch-translation's queue). A message on the caller's queue is charged to the
    // caller, whatever its body says.
    let sqs = aws_sdk_sqs::Client::new(&local.sdk);
    let queue = &outputs["BatchTranslationRequestsQueueUrl"];
    let mut messages = Vec::new();
    for (id, model, extra) in [
        ("own", "nova-lite", None),
        ("named", "nova-lite", Some(LEGAL)),
        ("sonnet", "sonnet", None),
    ] {
        let mut message = json!({ "requestId": id, "modelId": model, "request": converse("Summarise this page.", 50) });
        if let Some(app) = extra {
            message["applicationId"] = json!(app);
        }
        messages.push(message.to_string());
    }
    for message in &messages {
        sqs.send_message()
            .queue_url(queue)
            .message_body(message)
            .send()
            .await
            .unwrap();
    }
    let mut results = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let received = sqs
            .receive_message()
            .queue_url(&outputs["BatchTranslationResultsQueueUrl"])
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        for m in received.messages() {
            let v: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            results.insert(v["requestId"].as_str().unwrap().to_string(), v);
        }
        if results.len() == 3 {
            break;
        }
    }
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results["own"]["status"], 200, "{}", results["own"]);
    assert_eq!(results["named"]["status"], 400, "{}", results["named"]);
    assert!(
        results["named"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("applicationId"),
        "{}",
        results["named"]
    );
    assert_eq!(results["sonnet"]["status"], 403, "{}", results["sonnet"]);

    // Everything was charged to the callers; the other application's ledger is untouched.
    let billed: u64 = local
        .stub
        .billed()
        .values()
        .map(|b| b.input_tokens + b.output_tokens)
        .sum();
    let (search, batch) = (
        used_tokens(&ledger, SEARCH).await,
        used_tokens(&ledger, BATCH).await,
    );
    assert!(search > 0 && batch > 0, "{search} {batch}");
    assert_eq!(
        used_tokens(&ledger, LEGAL).await,
        0,
        "legal-review was charged"
    );
    assert_eq!(search + batch, billed, "the callers' ledgers vs billed");
    // legal-review's own call goes through its profile of a cross-region (`us.`) profile: IAM
    // wants the application profile, the system profile and the model in every region the
    // request may land in. The invoke role allowed that and every other call made here.
    let legal = local.api_key("globex-ai-legal-review");
    let own = local.invoke(
        "globex-ai-invoke",
        &api_event(&legal, "sonnet", &converse("Review this contract.", 100)),
    );
    assert_eq!(own["statusCode"], 200, "{own}");
    local
        .moto
        .assert_roles_allowed(&[
            ("bedrock:InvokeModel", ":application-inference-profile/"),
            (
                "bedrock:InvokeModel",
                ":inference-profile/us.anthropic.claude-sonnet-4",
            ),
            (
                "bedrock:InvokeModel",
                "us-west-2::foundation-model/anthropic.claude-sonnet-4",
            ),
            ("dynamodb:BatchGetItem", ":table/globex-ai-ledger"),
            ("sqs:ReceiveMessage", "-requests"),
        ])
        .await;
}
