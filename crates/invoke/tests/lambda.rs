//! The Lambda fronts, driven with real API Gateway proxy and SQS event JSON (tests/fixtures): the
//! caller's application comes from the API key ID or the queue, results reach the results queue,
//! over-budget async requests are deferred (never dropped), and redeliveries are charged once.

mod common;

use std::sync::{Arc, Mutex};

use bedrock_stub::StubConfig;
use invoke::gateway::Gateway;
use invoke::lambda::{Queues, handle};
use invoke::metrics::MetricsSink;
use ledger::{Identity, Ledger, MemoryLedger};
use serde_json::{Value, json};

const SPEC: &str = r#"
version: 1
name: t
models: { micro: amazon.nova-micro-v1:0 }
defaults: { max_tokens: 100 }
access: [rest, queue]
applications:
  web:
    limits: [{ window: day, tokens: 100000 }]
  batch:
    limits: [{ window: minute, tokens: 300 }]
    on_exceed: queue
"#;
const KEY_ID: &str = "8hq2k3l4m5";
const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:t-batch-requests";
const RESULTS: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/t-batch-results";
const REQUESTS: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/t-batch-requests";

#[derive(Default)]
struct CapturedQueues {
    sent: Mutex<Vec<(String, Value, i32)>>,
}

impl Queues for CapturedQueues {
    async fn send(&self, queue_url: &str, body: String, delay_seconds: i32) -> Result<(), String> {
        self.sent.lock().unwrap().push((
            queue_url.to_string(),
            serde_json::from_str(&body).unwrap(),
            delay_seconds,
        ));
        Ok(())
    }
    async fn url_of(&self, queue_arn: &str) -> Result<String, String> {
        assert_eq!(queue_arn, QUEUE_ARN);
        Ok(REQUESTS.to_string())
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

struct Env {
    stub: bedrock_stub::Stub,
    gateway: Gateway<MemoryLedger, invoke::bedrock::SdkBedrock>,
    queues: CapturedQueues,
}

async fn env() -> Env {
    let spec = spec::parse("t.yaml", SPEC).unwrap();
    let ledger = Arc::new(MemoryLedger::new());
    let web = invoke::settings::budget_from_spec(&spec, "web").unwrap();
    ledger
        .put_budget(&web, &[Identity::ApiKeyId(KEY_ID.into())])
        .await
        .unwrap();
    let mut batch = invoke::settings::budget_from_spec(&spec, "batch").unwrap();
    batch.results_queue_url = Some(RESULTS.into());
    ledger
        .put_budget(&batch, &[Identity::QueueArn(QUEUE_ARN.into())])
        .await
        .unwrap();
    let stub = bedrock_stub::start("127.0.0.1:0".parse().unwrap(), StubConfig::default())
        .await
        .unwrap();
    let gateway = Gateway::new(
        ledger,
        common::bedrock_for(&stub).await,
        invoke::settings::from_spec(&spec),
        MetricsSink::Capture(Default::default()),
    );
    Env {
        stub,
        gateway,
        queues: CapturedQueues::default(),
    }
}

async fn api(env: &Env, event: Value) -> (u16, Value, Value) {
    let out = handle(&env.gateway, &env.queues, event)
        .await
        .expect("handled");
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    (
        out["statusCode"].as_u64().unwrap() as u16,
        out["headers"].clone(),
        body,
    )
}

#[tokio::test]
async fn api_gateway_requests_are_identified_by_their_api_key_id() {
    let env = env().await;
    let (status, headers, body) = api(&env, fixture("apigw-converse.json")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tokenfence-application"], "web");
    assert_eq!(body["output"]["message"]["role"], "assistant");

    // Base64 bodies, as API Gateway sends binary media types.
    let mut event = fixture("apigw-converse.json");
    let raw = event["body"].as_str().unwrap().to_string();
    event["body"] = json!(aws_smithy_types::base64::encode(raw.as_bytes()));
    event["isBase64Encoded"] = json!(true);
    let (status, _, body) = api(&env, event).await;
    assert_eq!(status, 200, "{body}");

    // GET /usage.
    let mut event = fixture("apigw-converse.json");
    event["httpMethod"] = json!("GET");
    event["path"] = json!("/usage");
    event["resource"] = json!("/usage");
    event["pathParameters"] = Value::Null;
    event["body"] = Value::Null;
    let (status, _, body) = api(&env, event).await;
    assert_eq!(
        (status, body["application"].as_str()),
        (200, Some("web")),
        "{body}"
    );
    assert!(body["windows"][0]["usedTokens"].as_u64().unwrap() > 0);

    // The body cannot choose the application: an applicationId field is refused, not trusted.
    let mut event = fixture("apigw-converse.json");
    event["body"] = json!(json!({ "applicationId": "batch", "messages": [{ "role": "user", "content": [{ "text": "x" }] }] }).to_string());
    let (status, _, body) = api(&env, event).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("applicationId"))
    );

    for (mutate, status, code) in [
        (json!({ "apiKeyId": "someone-else" }), 403, "InvalidApiKey"),
        (json!({ "apiKeyId": null }), 401, "MissingApiKey"),
    ] {
        let mut event = fixture("apigw-converse.json");
        event["requestContext"]["identity"]["apiKeyId"] = mutate["apiKeyId"].clone();
        let (got, _, body) = api(&env, event).await;
        assert_eq!((got, body["error"].as_str()), (status, Some(code)));
    }
    let mut event = fixture("apigw-converse.json");
    event["body"] = json!("{\"messages\": 3}");
    let (status, _, body) = api(&env, event).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("messages")));
    assert_eq!(env.stub.requests(), 2);
}

#[tokio::test]
async fn sqs_results_reach_the_results_queue_and_redeliveries_are_charged_once() {
    let env = env().await;
    let out = handle(&env.gateway, &env.queues, fixture("sqs-converse.json"))
        .await
        .unwrap();
    assert_eq!(out["batchItemFailures"], json!([]));
    let first = env.queues.sent.lock().unwrap().clone();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, RESULTS);
    assert_eq!(
        (
            first[0].1["requestId"].as_str(),
            first[0].1["status"].as_u64()
        ),
        (Some("req-0001"), Some(200))
    );
    assert_eq!(
        first[0].1["response"]["output"]["message"]["role"],
        "assistant"
    );
    let counters = env.gateway.ledger().counters("batch");

    // SQS delivers at least once: the same message again is answered from the ledger's record.
    let out = handle(&env.gateway, &env.queues, fixture("sqs-converse.json"))
        .await
        .unwrap();
    assert_eq!(out["batchItemFailures"], json!([]));
    assert_eq!(env.stub.requests(), 1, "Bedrock was called once");
    assert_eq!(
        env.gateway.ledger().counters("batch"),
        counters,
        "and charged once"
    );
    let sent = env.queues.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].1, first[0].1, "the redelivery gets the same result");
}

#[tokio::test]
async fn sqs_requests_over_budget_are_deferred_until_the_window_resets() {
    let env = env().await;
    let mut event = fixture("sqs-converse.json");
    let template = event["Records"][0].clone();
    let mut records = Vec::new();
    for i in 0..6 {
        let mut r = template.clone();
        r["messageId"] = json!(format!("m{i}"));
        r["body"] = json!(json!({ "requestId": format!("req-{i}"), "modelId": "micro", "request": { "messages": [{ "role": "user", "content": [{ "text": "hello" }] }] } }).to_string());
        records.push(r);
    }
    event["Records"] = json!(records);
    let out = handle(&env.gateway, &env.queues, event).await.unwrap();
    assert_eq!(
        out["batchItemFailures"],
        json!([]),
        "deferred messages are re-sent, not failed into the DLQ"
    );
    let sent = env.queues.sent.lock().unwrap().clone();
    let results: Vec<_> = sent.iter().filter(|(url, _, _)| url == RESULTS).collect();
    let deferred: Vec<_> = sent.iter().filter(|(url, _, _)| url == REQUESTS).collect();
    assert_eq!(results.len() + deferred.len(), 6, "nothing dropped");
    assert!(
        !deferred.is_empty(),
        "six requests of ~69 settled tokens (~130 reserved) overflow a 300-token minute"
    );
    for (_, body, delay) in &deferred {
        assert!(
            (1..=60).contains(delay),
            "delayed until the minute resets, got {delay}"
        );
        assert_eq!(body["deferrals"], 1);
        assert!(body["requestId"].as_str().unwrap().starts_with("req-"));
        assert_eq!(
            body["request"]["messages"][0]["content"][0]["text"],
            "hello"
        );
    }
    assert_eq!(
        env.stub.requests() as usize,
        results.len(),
        "deferred requests did not reach Bedrock"
    );
}

#[tokio::test]
async fn sqs_failures_are_reported_per_message() {
    let env = env().await;
    let mut event = fixture("sqs-converse.json");
    let good = event["Records"][0].clone();
    let mut throttled = good.clone();
    throttled["messageId"] = json!("throttled");
    throttled["body"] = json!(json!({ "requestId": "t1", "modelId": "micro", "request": { "messages": [{ "role": "user", "content": [{ "text": "[[stub:throttle]]" }] }] } }).to_string());
    let mut stranger = good.clone();
    stranger["messageId"] = json!("stranger");
    stranger["eventSourceARN"] = json!("arn:aws:sqs:us-east-1:123456789012:someone-elses-queue");
    let mut malformed = good.clone();
    malformed["messageId"] = json!("malformed");
    malformed["body"] = json!("not json");
    event["Records"] = json!([good, throttled, stranger, malformed]);
    let out = handle(&env.gateway, &env.queues, event).await.unwrap();
    let failed: Vec<&str> = out["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        ["throttled", "stranger"],
        "transient and unattributable messages are retried"
    );
    let sent = env.queues.sent.lock().unwrap().clone();
    assert_eq!(
        sent.len(),
        2,
        "the good one's result and the malformed one's error"
    );
    assert_eq!(sent[1].1["status"], 400);
    assert_eq!(sent[1].1["requestId"], "malformed");
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
}

#[tokio::test]
async fn unknown_events_are_errors() {
    let env = env().await;
    let err = handle(&env.gateway, &env.queues, json!({ "hello": "world" }))
        .await
        .unwrap_err();
    assert!(err.contains("unsupported event"));
}
