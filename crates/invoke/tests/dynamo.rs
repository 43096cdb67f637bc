//! The gateway on the production ledger: DynamoDB on a moto server through the real SDK client.
//! moto answers ~130 conditional writes per second here, so these runs are small; the figures are
//! moto's, not the product's.

mod common;

use std::sync::Arc;

use common::{SPEC, concurrency_holds, prompt, start};
use ledger::DynamoLedger;

async fn ledger_on(moto: &harness::Moto) -> Arc<DynamoLedger> {
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    Arc::new(DynamoLedger::new(client, "ledger"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_clients_never_overspend_on_dynamodb() {
    // Serialized: moto's own transactions are not isolated between concurrent requests
    // (tests/tools/moto_launcher.py says how that was measured); DynamoDB's are.
    let moto = harness::Moto::start_serialized();
    concurrency_holds(ledger_on(&moto).await, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_ledger_fails_closed_by_default() {
    let mut moto = harness::Moto::start();
    let env = start(ledger_on(&moto).await, SPEC, |s| {
        s.config_ttl = std::time::Duration::ZERO
    })
    .await;
    let (status, _, _) = env.converse("key-capped", "lite", &prompt("before")).await;
    assert_eq!(status, 200);
    moto.stop();
    let (status, _, body) = env.converse("key-capped", "lite", &prompt("after")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("LedgerUnavailable")),
        "{body}"
    );
    assert_eq!(
        env.stub.requests(),
        1,
        "nothing reached Bedrock while the ledger was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_ledger_can_fail_open_and_says_so() {
    let mut moto = harness::Moto::start();
    let env = start(ledger_on(&moto).await, SPEC, |s| {
        s.config_ttl = std::time::Duration::from_secs(3600);
        s.on_ledger_error = invoke::LedgerFailurePolicy::Allow;
    })
    .await;
    let (status, _, _) = env.converse("key-capped", "lite", &prompt("before")).await;
    assert_eq!(status, 200);
    moto.stop();
    let (status, headers, body) = env.converse("key-capped", "lite", &prompt("after")).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-tokenfence-unreserved"));
    assert_eq!(env.stub.requests(), 2);
    let unreserved = env
        .metrics
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["UnreservedRequests"] == 1)
        .count();
    assert_eq!(unreserved, 1);
}
