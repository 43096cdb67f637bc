//! The Lambda fronts, driven with real API Gateway proxy and SQS event JSON (tests/fixtures): the
//! caller's application comes from the API key ID or the queue, results reach the results queue,
//! over-budget async requests are deferred (never dropped), and redeliveries are charged once.

mod common;

use std::sync::{Arc, Mutex};

use bedrock_stub::StubConfig;
use invoke::gateway::Gateway;
use invoke::lambda::{Queues, handle, handle_stream, is_stream_request};
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
    async fn send(
        &self,
        queue_url: &str,
        body: String,
        delay_seconds: i32,
    ) -> Result<(), invoke::Error> {
        self.sent.lock().unwrap().push((
            queue_url.to_string(),
            serde_json::from_str(&body).unwrap(),
            delay_seconds,
        ));
        Ok(())
    }
    async fn url_of(&self, queue_arn: &str) -> Result<String, invoke::Error> {
        assert_eq!(queue_arn, QUEUE_ARN);
        Ok(REQUESTS.to_string())
    }
}

/// No API key values: none of these events carries a seat's key, so the authorizer never asks
/// (the seat path runs against API Gateway on moto in the e2e `seats` test).
struct NoSeats;

impl invoke::lambda::ApiKeyValues for NoSeats {
    async fn value(&self, key_id: &str) -> Result<String, invoke::Error> {
        panic!("no event here carries a seat's key, yet the value of `{key_id}` was asked for")
    }
}

/// The message IDs an SQS batch response reports as failed.
fn failed_ids(out: &Value) -> Vec<&str> {
    out["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect()
}

/// A Lambda deadline a minute away.
fn soon() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

struct Env {
    stub: bedrock_stub::Stub,
    gateway: Arc<Gateway<MemoryLedger, invoke::bedrock::SignedBedrock>>,
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
        gateway: Arc::new(gateway),
        queues: CapturedQueues::default(),
    }
}

async fn api(env: &Env, event: Value) -> (u16, Value, Value) {
    let out = handle(&*env.gateway, &env.queues, &NoSeats, event, soon())
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

    // The body cannot choose the application: an applicationId field is passed to Bedrock, which
    // refuses what it does not know, and nothing is charged to `batch`.
    let mut event = fixture("apigw-converse.json");
    event["body"] = json!(json!({ "applicationId": "batch", "messages": [{ "role": "user", "content": [{ "text": "x" }] }] }).to_string());
    let (status, headers, body) = api(&env, event).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("applicationId"),
        "{body}"
    );
    assert!(
        format!("{headers:?}").contains("ValidationException"),
        "{headers:?}"
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
    // Two answered requests, and the applicationId one Bedrock refused.
    assert_eq!(env.stub.requests(), 3);
}

#[tokio::test]
async fn sqs_results_reach_the_results_queue_and_redeliveries_are_charged_once() {
    let env = env().await;
    let out = handle(
        &*env.gateway,
        &env.queues,
        &NoSeats,
        fixture("sqs-converse.json"),
        soon(),
    )
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
    let out = handle(
        &*env.gateway,
        &env.queues,
        &NoSeats,
        fixture("sqs-converse.json"),
        soon(),
    )
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
    let out = handle(&*env.gateway, &env.queues, &NoSeats, event, soon())
        .await
        .unwrap();
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
    // The good one in a batch of its own: a batch's messages reserve concurrently, and two
    // worst cases at once would overflow `batch`'s 300-token minute (deferring the throttled one).
    let mut first = event.clone();
    first["Records"] = json!([good]);
    let out = handle(&*env.gateway, &env.queues, &NoSeats, first, soon())
        .await
        .unwrap();
    assert_eq!(out["batchItemFailures"], json!([]));
    event["Records"] = json!([throttled, stranger, malformed]);
    let out = handle(&*env.gateway, &env.queues, &NoSeats, event, soon())
        .await
        .unwrap();
    let failed = failed_ids(&out);
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
    let malformed = sent
        .iter()
        .find(|(_, body, _)| body["requestId"] == "malformed")
        .expect("the malformed message is answered under its message ID");
    assert_eq!(malformed.1["status"], 400);
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
}

fn message(template: &Value, id: &str, body: Value) -> Value {
    let mut r = template.clone();
    r["messageId"] = json!(id);
    r["body"] = json!(body.to_string());
    r
}

#[tokio::test]
async fn hostile_queue_messages_are_answered_or_retried_never_failed_open() {
    let env = env().await;
    let mut event = fixture("sqs-converse.json");
    let template = event["Records"][0].clone();
    let hello = json!({ "messages": [{ "role": "user", "content": [{ "text": "hello" }] }] });
    let records = vec![
        // A requestId longer than a ledger key may be: the caller's mistake, answered 400.
        message(
            &template,
            "huge-id",
            json!({ "requestId": "x".repeat(5_000), "modelId": "micro", "request": hello }),
        ),
        message(
            &template,
            "odd-id",
            json!({ "requestId": "a b/c", "modelId": "micro", "request": hello }),
        ),
        // A server error after the generation started: charged at its worst case, retried.
        message(
            &template,
            "server-error",
            json!({ "requestId": "e1", "modelId": "micro", "request": { "messages": [{ "role": "user", "content": [{ "text": "[[stub:error]]" }] }] } }),
        ),
        // Deferred as often as allowed: answered 429 instead of being re-sent forever.
        message(
            &template,
            "deferred-enough",
            json!({ "requestId": "d1", "modelId": "micro", "request": hello, "deferrals": invoke::lambda::MAX_DEFERRALS }),
        ),
    ];
    event["Records"] = json!(records);
    let out = handle(&*env.gateway, &env.queues, &NoSeats, event, soon())
        .await
        .unwrap();
    let failed = failed_ids(&out);
    assert_eq!(
        failed,
        ["server-error"],
        "only the transient failure is retried"
    );
    let sent = env.queues.sent.lock().unwrap().clone();
    let answer = |id: &str| {
        sent.iter()
            .find(|(url, body, _)| url == RESULTS && body["requestId"] == id)
            .map(|(_, body, _)| body.clone())
            .unwrap_or_else(|| panic!("an answer for `{id}` in {sent:?}"))
    };
    for id in ["huge-id", "odd-id"] {
        let a = answer(id);
        assert_eq!(
            (a["status"].as_u64(), a["error"]["field"].as_str()),
            (Some(400), Some("requestId")),
            "{a}"
        );
    }
    assert_eq!(answer("d1")["status"], 429);
    assert!(
        !sent.iter().any(|(_, body, _)| body["requestId"] == "e1"),
        "a transient failure is not a final answer"
    );
    assert_eq!(
        env.stub.requests(),
        1,
        "only the server-error request reached Bedrock"
    );
    let charged = env.gateway.ledger().counters("batch")[0].1.tokens;
    assert!(
        charged >= env.stub.billed_tokens() && charged > 0,
        "the failed generation stays charged: {charged}"
    );
    assert_eq!(env.gateway.ledger().open_reservations(), 0);

    // The redelivery of the failed message is a new generation, reserved and charged anew.
    let mut again = fixture("sqs-converse.json");
    again["Records"] = json!([message(
        &template,
        "server-error",
        json!({ "requestId": "e1", "modelId": "micro", "request": hello })
    )]);
    let out = handle(&*env.gateway, &env.queues, &NoSeats, again, soon())
        .await
        .unwrap();
    assert_eq!(out["batchItemFailures"], json!([]));
    assert_eq!(answer_of(&env, "e1")["status"], 200);
}

fn answer_of(env: &Env, id: &str) -> Value {
    env.queues
        .sent
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(url, body, _)| url == RESULTS && body["requestId"] == id)
        .map(|(_, body, _)| body.clone())
        .expect("an answer")
}

#[tokio::test]
async fn a_message_with_no_time_left_is_retried_without_calling_bedrock() {
    let env = env().await;
    let out = handle(
        &*env.gateway,
        &env.queues,
        &NoSeats,
        fixture("sqs-converse.json"),
        std::time::Instant::now(),
    )
    .await
    .unwrap();
    assert_eq!(out["batchItemFailures"].as_array().unwrap().len(), 1);
    assert_eq!(env.stub.requests(), 0);
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    assert!(
        env.gateway
            .ledger()
            .counters("batch")
            .iter()
            .all(|(_, c)| c.tokens == 0),
        "refunded: nothing was sent"
    );
}

#[tokio::test]
async fn the_sweep_event_closes_expired_reservations_and_counts_them() {
    let env = env().await;
    // A reservation whose Lambda died before settling it (held for 0 seconds here).
    let limits = env
        .gateway
        .ledger()
        .budget("web")
        .await
        .unwrap()
        .unwrap()
        .limits;
    let attempt = ledger::new_attempt();
    let request = ledger::ReserveRequest {
        application: "web",
        user: None,
        user_limits: &[],
        reservation_id: "died",
        limits: &limits,
        charge: budget::Charge::new(500, budget::MicroUsd(0)),
        now: invoke::gateway::now_seconds(),
        hold_seconds: 0,
        attempt: &attempt,
    };
    env.gateway.ledger().reserve(&request).await.unwrap();
    assert_eq!(env.gateway.ledger().open_reservations(), 1);
    let sweep = json!({ "tokenfence": "sweep" });
    let out = handle(&*env.gateway, &env.queues, &NoSeats, sweep.clone(), soon())
        .await
        .unwrap();
    assert_eq!(out, json!({ "expired": 1 }));
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    assert_eq!(
        env.gateway.ledger().counters("web")[0].1.tokens,
        500,
        "charged at its worst case"
    );
    let out = handle(&*env.gateway, &env.queues, &NoSeats, sweep, soon())
        .await
        .unwrap();
    assert_eq!(out, json!({ "expired": 0 }), "counted once");
}

#[tokio::test]
async fn unknown_events_are_errors() {
    let env = env().await;
    let err = handle(
        &*env.gateway,
        &env.queues,
        &NoSeats,
        json!({ "hello": "world" }),
        soon(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, invoke::Error::UnsupportedEvent), "{err}");
}

/// The REST API's REQUEST authorizer hands API Gateway the key the caller presented, as a bearer
/// token or `x-api-key`, for its usage plans to validate; no key is `Unauthorized` (401).
#[tokio::test]
async fn the_authorizer_passes_bearer_and_header_keys_to_usage_plans() {
    let env = env().await;
    let bearer = fixture("apigw-authorizer-request.json");
    let out = handle(&*env.gateway, &env.queues, &NoSeats, bearer.clone(), soon())
        .await
        .expect("authorized");
    assert_eq!(out["usageIdentifierKey"], "tf-key-0123456789");
    let statement = &out["policyDocument"]["Statement"][0];
    assert_eq!(
        (
            &statement["Effect"],
            &statement["Action"],
            &statement["Resource"]
        ),
        (
            &json!("Allow"),
            &json!("execute-api:Invoke"),
            &bearer["methodArn"]
        )
    );
    let mut header = bearer.clone();
    header["headers"] = json!({ "x-api-key": "tf-key-header" });
    header["multiValueHeaders"] = json!({ "x-api-key": ["tf-key-header"] });
    let out = handle(&*env.gateway, &env.queues, &NoSeats, header, soon())
        .await
        .unwrap();
    assert_eq!(out["usageIdentifierKey"], "tf-key-header");
    let mut none = bearer;
    none["headers"] = json!({ "Authorization": "Basic dXNlcjpwYXNz" });
    none["multiValueHeaders"] = json!({});
    let err = handle(&*env.gateway, &env.queues, &NoSeats, none, soon())
        .await
        .unwrap_err();
    assert!(matches!(err, invoke::Error::Unauthorized), "{err}");
    assert_eq!(err.to_string(), "Unauthorized");
}

/// A proxy event for `POST /model/micro/{op}` with `body`.
fn api_event_for(op: &str, body: Value) -> Value {
    let mut event = fixture("apigw-converse.json");
    event["path"] = json!(format!("/model/micro/{op}"));
    event["resource"] = json!(format!("/model/{{modelId}}/{op}"));
    event["requestContext"]["path"] = json!(format!("/v1/model/micro/{op}"));
    event["body"] = json!(body.to_string());
    event
}

/// A streamed answer: (status, headers, body bytes).
async fn streamed(
    response: lambda_runtime::StreamResponse<invoke::lambda::BodyStream>,
) -> (u16, aws_lambda_events::http::HeaderMap, Vec<u8>) {
    use futures_util::StreamExt;
    let mut body = Vec::new();
    let mut stream = response.stream;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.expect("no stream error reaches the runtime"));
    }
    (
        response.metadata_prelude.status_code.as_u16(),
        response.metadata_prelude.headers,
        body,
    )
}

/// The event-stream messages of `body`: (`:event-type` or `:exception-type`, payload).
fn messages(body: &[u8]) -> Vec<(String, Value)> {
    harness::event_stream_messages(body)
        .into_iter()
        .map(|(kind, payload)| (kind, serde_json::from_slice(&payload).unwrap()))
        .collect()
}

#[tokio::test]
async fn streaming_requests_are_answered_in_lambdas_streaming_format_and_settled_to_the_bill() {
    let env = env().await;
    let converse = json!({ "messages": [{ "role": "user", "content": [{ "text": "Stream a haiku." }] }],
        "inferenceConfig": { "maxTokens": 60 } });
    let event = api_event_for("converse-stream", converse.clone());
    assert!(is_stream_request(&event));
    assert!(!is_stream_request(&fixture("apigw-converse.json")));
    assert!(!is_stream_request(&json!({ "Records": [] })));
    // The authorizer's event for a streaming path is answered with a JSON policy, not a stream.
    let authorizer = fixture("apigw-authorizer-request.json");
    assert_eq!(
        authorizer["path"],
        "/model/haiku/invoke-with-response-stream"
    );
    assert!(!is_stream_request(&authorizer));

    let (status, headers, body) =
        streamed(handle_stream(Arc::clone(&env.gateway), event, soon()).await).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers["content-type"],
        "application/vnd.amazon.eventstream"
    );
    assert_eq!(headers["x-tokenfence-application"], "web");
    let events = messages(&body);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"messageStart"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"metadata"), "{kinds:?}");
    // The stream ends after its settlement: nothing is held, and the ledger holds the bill.
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    assert_eq!(
        env.gateway.ledger().counters("web")[0].1.tokens,
        env.stub.billed_tokens()
    );

    // InvokeModelWithResponseStream with a Nova body: chunks, settled to the bill.
    let native = json!({ "schemaVersion": "messages-v1",
        "messages": [{ "role": "user", "content": [{ "text": "Stream a haiku." }] }],
        "inferenceConfig": { "maxTokens": 60 } });
    let (status, _, body) = streamed(
        handle_stream(
            Arc::clone(&env.gateway),
            api_event_for("invoke-with-response-stream", native),
            soon(),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(messages(&body).iter().all(|(k, _)| k == "chunk"));
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    assert_eq!(
        env.gateway.ledger().counters("web")[0].1.tokens,
        env.stub.billed_tokens()
    );

    // Errors before the stream opens are ordinary answers: a status and a JSON body.
    let billed = env.stub.requests();
    let over = json!({ "messages": [{ "role": "user", "content": [{ "text": "x" }] }],
        "inferenceConfig": { "maxTokens": 200000 } });
    let mut stranger = api_event_for("converse-stream", converse.clone());
    stranger["requestContext"]["identity"]["apiKeyId"] = json!("someone-else");
    for (event, want, code) in [
        (
            api_event_for("converse-stream", over),
            429,
            "BudgetExceeded",
        ),
        (stranger, 403, "InvalidApiKey"),
        (
            api_event_for("converse-stream", json!({ "messages": 3 })),
            400,
            "ValidationException",
        ),
    ] {
        let (status, headers, body) =
            streamed(handle_stream(Arc::clone(&env.gateway), event, soon()).await).await;
        assert_eq!(status, want, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert!(
            body.to_string().contains(code) || format!("{headers:?}").contains(code),
            "{body} {headers:?}"
        );
    }
    assert_eq!(
        env.stub.requests(),
        billed,
        "refused streams never reach Bedrock"
    );
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
}

#[tokio::test]
async fn whole_answer_fronts_refuse_streams_naming_the_engine() {
    let env = env().await;
    let event = api_event_for(
        "converse-stream",
        json!({ "messages": [{ "role": "user", "content": [{ "text": "x" }] }] }),
    );
    let (status, _, body) = api(&env, event).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("converse-stream") && message.contains("Lambda engine"),
        "{message}"
    );
    assert_eq!(env.stub.requests(), 0);
}
