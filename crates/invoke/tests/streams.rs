//! Streams and pass-through on `invoke serve`: ConverseStream and InvokeModelWithResponseStream
//! reserved before the stream opens, settled from the final usage; hang-ups, broken streams and
//! streams without usage charged at their worst case; bodies passed to Bedrock byte for byte.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ledger::MemoryLedger;
use serde_json::{Value, json};

const SPEC: &str = r#"
version: 1
name: streams
models:
  sonnet: anthropic.claude-sonnet-4-20250514-v1:0
  lite: amazon.nova-lite-v1:0
  mistral: mistral.mistral-large-2407-v1:0
defaults: { max_tokens: 100 }
applications:
  open:
    models: [sonnet, lite, mistral]
    limits: [{ window: day, tokens: 10000000 }]
  tight:
    models: [lite]
    limits: [{ window: day, tokens: 20000 }]
  falls:
    models: [sonnet]
    limits: [{ window: day, usd: 0.01 }]
    on_exceed: { action: fallback, model: lite }
"#;

async fn env() -> (common::Env<MemoryLedger>, Arc<MemoryLedger>) {
    let ledger = Arc::new(MemoryLedger::new());
    (
        common::start(Arc::clone(&ledger), SPEC, |_| {}).await,
        ledger,
    )
}

async fn settled(ledger: &MemoryLedger) {
    for _ in 0..200 {
        if ledger.open_reservations() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("reservations left open: {}", ledger.open_reservations());
}

async fn used(env: &common::Env<MemoryLedger>, key: &str) -> u64 {
    env.usage(key).await["windows"][0]["usedTokens"]
        .as_u64()
        .unwrap()
}

fn post(
    env: &common::Env<MemoryLedger>,
    key: &str,
    model: &str,
    op: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    env.http
        .post(format!("{}/model/{model}/{op}", env.base))
        .header("authorization", format!("Bearer {key}"))
        .body(body.to_string())
}

fn anthropic(text: &str, max_tokens: u64) -> Value {
    json!({ "anthropic_version": "bedrock-2023-05-31", "max_tokens": max_tokens,
            "messages": [{ "role": "user", "content": text }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_reach_bedrock_byte_for_byte_and_answers_come_back_unchanged() {
    let (env, ledger) = env().await;
    // Fields and blocks the gateway does not model pass, in the caller's order and spacing.
    let raw = r#"{"messages":[{"role":"user","content":[{"text":"hi"},{"citationsContent":{"x":1}}]}],  "inferenceConfig":{"maxTokens":40},"requestMetadata":{"team":"a"},"outputConfig":{"textFormat":{"type":"json_schema"}},"guardrailConfig":{"guardrailIdentifier":"g","guardrailVersion":"1"}}"#;
    let resp = env
        .http
        .post(format!("{}/model/lite/converse", env.base))
        .header("x-api-key", "key-open")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tokenfence-application"], "open");
    let (path, sent) = env.stub.last_request().unwrap();
    assert_eq!(path, "amazon.nova-lite-v1:0/converse");
    assert_eq!(&sent[..], raw.as_bytes());
    // InvokeModel: Bedrock's usage headers reach the caller too.
    let resp = post(
        &env,
        "key-open",
        "sonnet",
        "invoke",
        &anthropic("hello", 50),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .contains_key("x-amzn-bedrock-input-token-count")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    // A body without a cap gets one, in its family's own field.
    let mut uncapped = anthropic("hello", 1);
    uncapped.as_object_mut().unwrap().remove("max_tokens");
    let resp = post(&env, "key-open", "sonnet", "invoke", &uncapped)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent: Value = serde_json::from_slice(&env.stub.last_request().unwrap().1).unwrap();
    assert_eq!(sent["max_tokens"], 100);
    // A family the gateway cannot bound: 400 naming it, nothing sent.
    let before = env.stub.requests();
    let resp = post(
        &env,
        "key-open",
        "mistral",
        "invoke",
        &json!({ "prompt": "x" }),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-amzn-errortype"], "ValidationException");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["field"], "modelId");
    assert!(body["message"].as_str().unwrap().contains("`mistral`"));
    assert_eq!(env.stub.requests(), before);
    // Bedrock's own errors come back as Bedrock sent them, and refusals are refunded.
    let resp = post(
        &env,
        "key-open",
        "lite",
        "converse",
        &common::prompt("[[stub:throttle]]"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-amzn-errortype"], "ThrottlingException");
    settled(&ledger).await;
    assert_eq!(used(&env, "key-open").await, env.stub.billed_tokens());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_relayed_and_settled_from_their_final_usage() {
    let (env, ledger) = env().await;
    for (model, op, body) in [
        ("lite", "converse-stream", common::prompt("stream me")),
        (
            "sonnet",
            "invoke-with-response-stream",
            anthropic("stream me", 80),
        ),
        (
            "lite",
            "invoke-with-response-stream",
            json!({ "messages": [{ "role": "user", "content": [{ "text": "nova" }] }] }),
        ),
    ] {
        let resp = post(&env, "key-open", model, op, &body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{op}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.amazon.eventstream"
        );
        let bytes = resp.bytes().await.unwrap();
        assert!(bytes.len() > 100, "{op}: the events came through");
        settled(&ledger).await;
        assert_eq!(
            used(&env, "key-open").await,
            env.stub.billed_tokens(),
            "{op}"
        );
        assert!(
            env.stub.billed_tokens() < 1000,
            "settled to the usage, not the worst case"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_break_or_report_nothing_are_charged_their_worst_case() {
    for marker in [
        "[[stub:nousage]]",
        "[[stub:streamerror]]",
        "[[stub:streamcut]]",
    ] {
        let (env, ledger) = env().await;
        let body = json!({ "messages": [{ "role": "user", "content": [{ "text": marker }] }], "inferenceConfig": { "maxTokens": 5000 } });
        let resp = post(&env, "key-open", "lite", "converse-stream", &body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{marker}");
        let _ = resp.bytes().await;
        settled(&ledger).await;
        let used = used(&env, "key-open").await;
        assert!(used > 5000, "{marker}: charged {used}, not the worst case");
        assert!(used > env.stub.billed_tokens(), "{marker}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_budget_stream_is_an_ordinary_429_before_any_event() {
    let (env, _) = env().await;
    let body = json!({ "messages": [{ "role": "user", "content": [{ "text": "x" }] }], "inferenceConfig": { "maxTokens": 50000 } });
    let resp = post(&env, "key-tight", "lite", "converse-stream", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-amzn-errortype"], "BudgetExceeded");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "BudgetExceeded");
    assert_eq!(env.stub.requests(), 0);
}

/// 64 streaming clients at once against a tight budget, a third of them hanging up after the
/// first bytes: Bedrock's bill never passes the limit, and every hang-up is still charged what
/// the stream really used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_with_hang_ups_never_pass_the_limit() {
    let (env, ledger) = env().await;
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for client in 0..64u64 {
        let env = Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let mut rng = common::Lcg(client + 7);
            let mut ok = 0;
            for _ in 0..3 {
                let text = format!("[[stub:gap=5]] {}", "y".repeat(rng.next(800) as usize));
                let body = json!({ "messages": [{ "role": "user", "content": [{ "text": text }] }], "inferenceConfig": { "maxTokens": rng.next(400) + 1 } });
                let resp = post(&env, "key-tight", "lite", "converse-stream", &body)
                    .send()
                    .await
                    .unwrap();
                if resp.status() != 200 {
                    assert_eq!(resp.status(), 429);
                    continue;
                }
                ok += 1;
                if client % 3 == 0 {
                    // Hang up after the first bytes.
                    let mut resp = resp;
                    let _ = resp.chunk().await;
                    drop(resp);
                } else {
                    let _ = resp.bytes().await;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    settled(&ledger).await;
    let billed = env.stub.billed_tokens();
    assert!(ok > 10, "enough streams ran: {ok}");
    assert!(billed <= 20_000, "billed {billed} over the limit");
    assert_eq!(
        used(&env, "key-tight").await,
        billed,
        "ledger equals the bill"
    );
}

/// Over a USD limit with `fallback`: a Converse body is served by the cheaper model, but an
/// Anthropic Messages body cannot go to a Nova model, so it is refused rather than sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_keeps_model_native_bodies_in_their_family() {
    let (env, _) = env().await;
    let body = json!({ "messages": [{ "role": "user", "content": [{ "text": "hi" }] }], "inferenceConfig": { "maxTokens": 2000 } });
    let resp = post(&env, "key-falls", "sonnet", "converse", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let fallback = resp.headers()["x-tokenfence-fallback"].to_str().unwrap();
    assert!(fallback.contains("nova-lite"), "{fallback}");
    assert_eq!(
        env.stub.last_request().unwrap().0,
        "amazon.nova-lite-v1:0/converse"
    );
    let before = env.stub.requests();
    let resp = post(
        &env,
        "key-falls",
        "sonnet",
        "invoke",
        &anthropic("hi", 2000),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(env.stub.requests(), before, "nothing was sent");
}
