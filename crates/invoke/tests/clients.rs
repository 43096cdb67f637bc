//! Clients people use, installed from PyPI (tests/tools/requirements.txt), pointed at the gateway
//! with only their endpoint and key changed: boto3 for all five operations, the Anthropic SDK's
//! `AnthropicBedrock` (create and stream), a Strands agent (streams by default), LangChain's
//! `ChatBedrockConverse.stream`, and a coding-agent-shaped session stopped by its budget. After
//! each, the ledger holds exactly what the Bedrock stub billed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ledger::MemoryLedger;
use serde_json::Value;

/// The clients' spec (`tests/clients/clients.yaml`), also deployed by the end-to-end test.
fn spec() -> String {
    std::fs::read_to_string(harness::repo().join("tests/clients/clients.yaml"))
        .expect("tests/clients/clients.yaml")
}

/// Runs `tests/clients/clients.py CLIENT` against a fresh gateway; returns what it saw and the
/// environment, once every reservation is settled.
async fn run(client: &str) -> (Value, common::Env<MemoryLedger>) {
    let ledger = Arc::new(MemoryLedger::new());
    let env = common::start(Arc::clone(&ledger), &spec(), |_| {}).await;
    // Over HTTPS, as `invoke serve --tls-cert` serves it: botocore sends bearer keys to HTTPS
    // endpoints only.
    let (base, ca) = env.tls.clone().expect("served over TLS");
    let client = client.to_string();
    let seen = tokio::task::spawn_blocking(move || {
        let keys = harness::ClientKeys {
            agents: "key-agents",
            tight: "key-tight",
            priced: "key-priced",
            agent: "key-agent",
        };
        harness::run_client(&client, &base, &ca, &keys)
    })
    .await
    .expect("the client process runs");
    // Streams settle after their last byte: wait until nothing is held.
    for _ in 0..100 {
        if ledger.open_reservations() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ledger.open_reservations() == 0, "reservations left open");
    (seen, env)
}

/// Tokens the ledger counted for `key` in its day window.
async fn used(env: &common::Env<MemoryLedger>, key: &str) -> u64 {
    let usage = env.usage(key).await;
    usage["windows"][0]["usedTokens"]
        .as_u64()
        .expect("used tokens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_calls_all_five_operations_unchanged() {
    let (seen, env) = run("boto3").await;
    assert!(seen["converse"]["inputTokens"].as_u64().unwrap() > 0);
    assert!(seen["count_tokens"].as_u64().unwrap() > 0);
    assert!(
        seen["converse_stream_refused"]
            .as_str()
            .unwrap()
            .contains("would exceed"),
        "{seen}"
    );
    // Everything billed was charged to the caller's applications, exactly.
    let billed = env.stub.billed_tokens();
    let charged = used(&env, "key-agents").await
        + used(&env, "key-tight").await
        + used(&env, "key-priced").await;
    assert_eq!(charged, billed, "ledger equals the stub's bill");
    assert_eq!(
        used(&env, "key-tight").await,
        0,
        "refused requests cost nothing"
    );
    // converse, converse_stream, three invoke_model, one invoke stream; count_tokens is free and
    // not a generation.
    let calls: u64 = env.stub.billed().values().map(|b| b.calls).sum();
    assert_eq!(calls, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_creates_and_streams() {
    let (seen, env) = run("anthropic").await;
    assert!(seen["stream_output_tokens"].as_u64().unwrap() > 0);
    assert!(
        seen["refused"].as_str().unwrap().contains("BudgetExceeded"),
        "{seen}"
    );
    assert_eq!(used(&env, "key-agents").await, env.stub.billed_tokens());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coding_agent_session_is_stopped_by_its_budget() {
    let (seen, env) = run("agent").await;
    let turns = seen["turns"].as_u64().unwrap();
    assert!((1..20).contains(&turns), "{seen}");
    let used = used(&env, "key-agent").await;
    assert_eq!(used, env.stub.billed_tokens());
    assert!(used <= 60_000, "never over the limit: {used}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strands_agent_streams_through_the_gateway() {
    let (seen, env) = run("strands").await;
    assert!(seen["strands"].as_str().unwrap().contains("stub reply"));
    assert!(env.stub.billed_tokens() > 0);
    assert_eq!(used(&env, "key-agents").await, env.stub.billed_tokens());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_streams_through_the_gateway() {
    let (seen, env) = run("langchain").await;
    assert!(seen["langchain"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(used(&env, "key-agents").await, env.stub.billed_tokens());
}
