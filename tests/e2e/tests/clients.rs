//! Real clients through the deployed API: the clients' spec (`tests/clients/clients.yaml`) is
//! rendered, linted and deployed with `aws cloudformation package` + `deploy`, and the clients
//! people use (boto3 for all five operations, the Anthropic SDK's `AnthropicBedrock` create and
//! stream, a Strands agent, LangChain streaming, and a coding-agent-shaped session) call the
//! stack's `ApiUrl` with a bearer key, changing nothing else. The REST API is served as API
//! Gateway serves it (`tests/tools/apigw.py`: the REQUEST authorizer, the key checked against the
//! usage plans, Lambda proxy integrations, the streaming ones through InvokeWithResponseStream),
//! and the deployed invoke function runs under its own role's IAM policies. Afterwards the
//! ledger in DynamoDB holds exactly what the Bedrock stub billed.

use e2e::{LocalAws, used_tokens};
use harness::ClientKeys;
use ledger::DynamoLedger;
use serde_json::Value;

const APPS: [&str; 4] = ["agents", "tight", "priced", "agent"];

/// Tokens charged to every application of the stack, in their day windows.
async fn charged(ledger: &DynamoLedger) -> Vec<u64> {
    let mut used = Vec::new();
    for app in APPS {
        used.push(used_tokens(ledger, app).await);
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_clients_call_the_deployed_api_unchanged() {
    let local = LocalAws::start("clients").await;
    let outputs = local.render_lint_deploy(
        &harness::repo().join("tests/clients/clients.yaml"),
        "clients",
    );
    let (endpoint, ca) = local.moto.rest_api(&outputs["ApiUrl"]).await;
    let values: Vec<String> = APPS
        .iter()
        .map(|app| local.api_key(&format!("clients-{app}")).1)
        .collect();
    let keys = ClientKeys {
        agents: &values[0],
        tight: &values[1],
        priced: &values[2],
        agent: &values[3],
    };
    let dynamo = aws_sdk_dynamodb::Client::new(&local.sdk);
    let ledger = DynamoLedger::new(dynamo, outputs["LedgerTableName"].clone());

    // API Gateway itself refuses what never reaches the function: no key (the authorizer's
    // 401), a key of no usage plan (403), an unknown route (403).
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("the CA file")).unwrap(),
        )
        .build()
        .unwrap();
    let converse = e2e::converse("hello", 50).to_string();
    for (key, path, status) in [
        (None, "model/sonnet/converse", 401),
        (
            Some("not-a-key-of-any-usage-plan"),
            "model/sonnet/converse",
            403,
        ),
        (Some(keys.agents), "model/sonnet/unknown-operation", 403),
    ] {
        let mut request = http
            .post(format!("{endpoint}/{path}"))
            .header("content-type", "application/json")
            .body(converse.clone());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("the API answers");
        assert_eq!(response.status().as_u16(), status, "{path} with {key:?}");
    }
    assert_eq!(local.stub.billed_tokens(), 0, "refused before the function");

    let mut seen = serde_json::Map::new();
    for client in ["boto3", "anthropic", "agent", "strands", "langchain"] {
        let before = local.stub.billed_tokens();
        let (endpoint, ca, client_name) = (endpoint.clone(), ca.clone(), client.to_string());
        let keys_owned: Vec<String> = values.clone();
        let saw: Value = tokio::task::spawn_blocking(move || {
            let keys = ClientKeys {
                agents: &keys_owned[0],
                tight: &keys_owned[1],
                priced: &keys_owned[2],
                agent: &keys_owned[3],
            };
            harness::run_client(&client_name, &endpoint, &ca, &keys)
        })
        .await
        .expect("the client process runs");
        // Whole answers are settled before the function answers, and a deployed stream ends
        // only after its settlement: nothing is left to wait for.
        let charged: u64 = charged(&ledger).await.iter().sum();
        assert_eq!(
            charged,
            local.stub.billed_tokens(),
            "after {client}: the ledger equals the stub's bill"
        );
        assert!(
            local.stub.billed_tokens() > before,
            "{client} reached Bedrock"
        );
        // Each client reports under keys of its own (`converse`, `refused`, `turns`, ...).
        seen.extend(saw.as_object().cloned().unwrap_or_default());
    }

    // What each client saw, as through `invoke serve`.
    assert!(seen["count_tokens"].as_u64().unwrap() > 0);
    for refused in ["converse_refused", "converse_stream_refused"] {
        assert!(
            seen[refused].as_str().unwrap().contains("would exceed"),
            "{seen:?}"
        );
    }
    assert!(seen["stream_output_tokens"].as_u64().unwrap() > 0);
    assert!(seen["refused"].as_str().unwrap().contains("BudgetExceeded"));
    assert!(seen["strands"].as_str().unwrap().contains("stub reply"));
    assert!(seen["langchain"]["input_tokens"].as_u64().unwrap() > 0);
    let turns = seen["turns"].as_u64().unwrap();
    assert!((1..20).contains(&turns), "{seen:?}");

    let used = charged(&ledger).await;
    assert_eq!(used[1], 0, "the tight application's refusals cost nothing");
    assert!(used[3] <= 60_000, "the agent never went over its limit");
    local
        .moto
        .assert_roles_allowed(&[
            ("bedrock:InvokeModel", "application-inference-profile"),
            (
                "bedrock:InvokeModelWithResponseStream",
                "application-inference-profile",
            ),
            ("bedrock:CountTokens", ""),
        ])
        .await;
}
