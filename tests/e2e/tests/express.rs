//! The Step Functions Express engine, deployed and run: `synth render` of `examples/express.yaml`,
//! `aws cloudformation package` and `create-stack` into moto, then executions of the deployed
//! state machine. moto executes it (the launcher turns on moto's executing backend, evaluates
//! JSONata and sends its Bedrock Converse task to the stub); the reserve and settle steps are the
//! deployed invoke function, run by the launcher's Lambda runtime.
//!
//! What moto cannot do, and what this test does instead (the README lists it too): API Gateway's
//! `StartSyncExecution` integration (moto has no StartSyncExecution and does not run request
//! templates), so executions are started with the input the rendered request template builds; and
//! EventBridge Pipes (moto's CloudFormation skips `AWS::Pipes::Pipe`), so queued requests are
//! started with the input the rendered pipe's template builds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_smithy_types::base64;
use e2e::{LocalAws, converse, used_tokens};
use ledger::DynamoLedger;
use serde_json::{Value, json};

fn sync_input(key_id: &str, model: &str, body: &Value) -> Value {
    json!({
        "action": "reserve",
        "apiKeyId": key_id,
        "requestId": format!("api-{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()),
        "modelBase64": base64::encode(model),
        "bodyBase64": base64::encode(body.to_string())
    })
}

fn run(local: &LocalAws, workflow: &str, input: &Value) -> Value {
    // Named, as the rendered request template names executions after API Gateway's request ID.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "run-{}",
        RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let started = local.aws.json(&[
        "stepfunctions",
        "start-execution",
        "--state-machine-arn",
        workflow,
        "--name",
        &name,
        "--input",
        &input.to_string(),
    ]);
    let arn = started["executionArn"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let described = local.aws.json(&[
            "stepfunctions",
            "describe-execution",
            "--execution-arn",
            &arn,
        ]);
        if described["status"] != "RUNNING" {
            return described;
        }
        assert!(
            Instant::now() < deadline,
            "execution still running: {described}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a synchronous request and returns the reply the API's response template would turn into
/// the HTTP answer: (status, headers, body).
fn call(local: &LocalAws, workflow: &str, input: &Value) -> (u64, Value, Value) {
    let done = run(local, workflow, input);
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let reply: Value = serde_json::from_str(done["output"].as_str().unwrap()).unwrap();
    let body: Value = serde_json::from_str(reply["body"].as_str().expect("body is JSON text"))
        .expect("body parses");
    (
        reply["statusCode"].as_u64().unwrap(),
        reply["headers"].clone(),
        body,
    )
}

async fn queue_attribute(sqs: &aws_sdk_sqs::Client, url: &str, name: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    let name = QueueAttributeName::from(name);
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes()
        .and_then(|a| a.get(&name).cloned())
        .expect("the attribute")
}

async fn receive(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Value> {
    let got = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("ReceiveMessage");
    got.messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect()
}

/// What the rendered pipe hands the workflow for one message (its input template around the
/// SQS record).
fn pipe_input(queue_arn: &str, id: &str, body: &Value) -> Value {
    json!({
        "action": "reserve",
        "records": [{
            "messageId": id,
            "receiptHandle": "handle",
            "body": body.to_string(),
            "attributes": {},
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn,
            "awsRegion": "us-east-1"
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_express_workflow_enforces_budgets_as_the_lambda_engine_does() {
    let artifacts = harness::lambda_artifacts();
    let local = LocalAws::start("express").await;
    let out = local.dir.join("out");
    harness::synth_render(
        &harness::repo().join("examples/express.yaml"),
        &out,
        &artifacts,
    );
    let outputs = local.deploy(&out.join("initech-ai.yaml"), "initech-ai");
    let workflow = outputs["WorkflowArn"].clone();
    let described = local.aws.json(&[
        "stepfunctions",
        "describe-state-machine",
        "--state-machine-arn",
        &workflow,
    ]);
    let definition = described["definition"].as_str().unwrap();
    assert!(definition.contains("arn:aws:states:::aws-sdk:bedrockruntime:converse"));
    assert!(
        definition.contains(":function:initech-ai-invoke"),
        "the steps' ARN was substituted"
    );
    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&local.sdk),
        "initech-ai-ledger",
    );

    // Approved: Bedrock answers through the workflow, the ledger holds exactly what was billed.
    let assistant = local.api_key("initech-ai-assistant");
    let (status, headers, body) = call(
        &local,
        &workflow,
        &sync_input(
            &assistant.0,
            "nova-lite",
            &converse("Hello from the workflow.", 100),
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tokenfence-application"], "assistant");
    assert_eq!(headers["x-tokenfence-model"], "amazon.nova-lite-v1:0");
    assert!(
        body["output"]["message"]["content"][0]["text"].is_string(),
        "{body}"
    );
    assert_eq!(body["usage"]["outputTokens"], 64);
    let billed = local.stub.billed();
    let lite = billed
        .values()
        .map(|b| b.input_tokens + b.output_tokens)
        .sum::<u64>();
    assert_eq!(
        used_tokens(&ledger, "assistant").await,
        lite,
        "settled to what Bedrock billed"
    );

    // Bedrock's errors are answered as the Lambda engine answers them: a refusal is refunded, a
    // server error after the generation started is charged its whole reservation.
    let before = used_tokens(&ledger, "assistant").await;
    let (status, _, body) = call(
        &local,
        &workflow,
        &sync_input(
            &assistant.0,
            "nova-lite",
            &converse("[[stub:invalid]]", 100),
        ),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("ValidationException")),
        "{body}"
    );
    assert_eq!(
        used_tokens(&ledger, "assistant").await,
        before,
        "the refused call was refunded"
    );
    let failing = converse("[[stub:error]]", 100);
    let (status, headers, body) = call(
        &local,
        &workflow,
        &sync_input(&assistant.0, "nova-lite", &failing),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("BedrockFailed")),
        "{body}"
    );
    assert_eq!(headers["x-tokenfence-charged"], "worst-case");
    assert_eq!(
        used_tokens(&ledger, "assistant").await,
        before + budget::estimate::input_bound("amazon.nova-lite-v1:0", &failing) + 100,
        "the failed generation is charged its reservation"
    );

    // Bad input is refused before anything is reserved, naming the field.
    let (status, _, body) = call(
        &local,
        &workflow,
        &sync_input(&assistant.0, "nova-lite", &json!({ "messages": [] })),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("messages")),
        "{body}"
    );
    let (status, _, _) = call(
        &local,
        &workflow,
        &sync_input("", "nova-lite", &converse("hi", 10)),
    );
    assert_eq!(status, 401);

    // Over budget: `capped` has 600 tokens a day; the third request of ~210 is refused before
    // Bedrock is called.
    let capped = local.api_key("initech-ai-capped");
    let calls_before = local.stub.requests();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let (status, headers, body) = call(
            &local,
            &workflow,
            &sync_input(
                &capped.0,
                "nova-lite",
                &converse(&format!("request {i} [[stub:output=200]]"), 200),
            ),
        );
        statuses.push(status);
        if status == 429 {
            assert_eq!(body["error"], "BudgetExceeded", "{body}");
            assert!(headers["retry-after"].is_string(), "{headers}");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        local.stub.requests() - calls_before,
        2,
        "the refused request never reached Bedrock"
    );
    assert!(used_tokens(&ledger, "capped").await <= 600);

    // Fallback: `frugal` may spend $0.00008 a day. The second nova-lite request would pass it; the
    // same request on nova-micro fits, and is served by it.
    let frugal = local.api_key("initech-ai-frugal");
    let ask = |i: u32| {
        sync_input(
            &frugal.0,
            "nova-lite",
            &converse(&format!("fb {i} [[stub:output=200]]"), 200),
        )
    };
    let (status, headers, _) = call(&local, &workflow, &ask(1));
    assert_eq!(
        (status, headers["x-tokenfence-fallback"].is_null()),
        (200, true),
        "{headers}"
    );
    let (status, headers, body) = call(&local, &workflow, &ask(2));
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["x-tokenfence-fallback"]
            .as_str()
            .is_some_and(|m| m.contains("nova-micro")),
        "{headers}"
    );
    assert!(
        headers["x-tokenfence-model"]
            .as_str()
            .unwrap()
            .contains("nova-micro")
    );

    // Shadow mode: over its limit, still served, and says what would have happened.
    let shadowed = local.api_key("initech-ai-shadowed");
    let mut shadow_headers = Vec::new();
    for i in 0..2 {
        let (status, headers, _) = call(
            &local,
            &workflow,
            &sync_input(
                &shadowed.0,
                "nova-micro",
                &converse(&format!("shadow {i} [[stub:output=200]]"), 200),
            ),
        );
        assert_eq!(status, 200);
        shadow_headers.push(headers["x-tokenfence-shadow"].clone());
    }
    assert!(shadow_headers[0].is_null());
    assert!(
        shadow_headers[1]
            .as_str()
            .unwrap()
            .starts_with("would-reject"),
        "{shadow_headers:?}"
    );

    // The queue front: a message as the pipe delivers it; the answer goes to the results queue.
    let requests = outputs["NightlyRequestsQueueUrl"].clone();
    let results = outputs["NightlyResultsQueueUrl"].clone();
    let sqs = aws_sdk_sqs::Client::new(&local.sdk);
    let arn = queue_attribute(&sqs, &requests, "QueueArn").await;
    let message = json!({ "requestId": "night-1", "modelId": "nova-micro", "request": converse("[[stub:output=200]] tonight's batch", 200) });
    let done = run(&local, &workflow, &pipe_input(&arn, "m1", &message));
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let answers = receive(&sqs, &results).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (
            answers[0]["requestId"].as_str(),
            answers[0]["status"].as_u64()
        ),
        (Some("night-1"), Some(200))
    );
    // Over the hour's 300 tokens with `queue`: re-sent to its queue with a delay, not answered.
    let message = json!({ "requestId": "night-2", "modelId": "nova-micro", "request": converse("[[stub:output=200]] more", 200) });
    let done = run(&local, &workflow, &pipe_input(&arn, "m2", &message));
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert!(
        receive(&sqs, &results).await.is_empty(),
        "a deferred request is not answered yet"
    );
    let mut waiting = 0u64;
    for attribute in [
        "ApproximateNumberOfMessagesDelayed",
        "ApproximateNumberOfMessages",
    ] {
        waiting += queue_attribute(&sqs, &requests, attribute)
            .await
            .parse::<u64>()
            .unwrap();
    }
    assert_eq!(waiting, 1, "the request waits in its queue");
    // A malformed message is answered, not retried for ever.
    let done = run(
        &local,
        &workflow,
        &pipe_input(&arn, "m3", &json!({ "requestId": "bad", "model": "x" })),
    );
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let answers = receive(&sqs, &results).await;
    assert_eq!(
        (
            answers[0]["requestId"].as_str(),
            answers[0]["status"].as_u64()
        ),
        (Some("bad"), Some(400))
    );

    // The streaming operations reach the invoke function through ordinary (buffered)
    // integrations on this engine, which answers them 400 saying why, without calling Bedrock.
    let requests = local.stub.requests();
    let mut event = e2e::api_event(&assistant, "nova-lite", &converse("Stream this.", 50));
    event["path"] = serde_json::json!("/model/nova-lite/converse-stream");
    let refused = local.invoke("initech-ai-invoke", &event);
    assert_eq!(refused["statusCode"], 400, "{refused}");
    let message: Value = serde_json::from_str(refused["body"].as_str().unwrap()).unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("Lambda engine"),
        "{message}"
    );
    assert_eq!(local.stub.requests(), requests, "nothing reached Bedrock");

    // The same metrics as the Lambda engine, from the settle step's log.
    let lines = local.log_lines("initech-ai-invoke");
    let emf: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some() && v.get("TotalRequests").is_some())
        .collect();
    let denied = emf
        .iter()
        .filter(|v| v["Application"] == "capped" && v["RateLimitDenied"] == 1)
        .count();
    assert_eq!(denied, 1, "one denial metric for capped");
    assert!(
        emf.iter()
            .any(|v| v["Application"] == "assistant" && v["InvocationFailed"] == 1)
    );
    // Prompts are not logged.
    assert!(!lines.iter().any(|l| l.contains("Hello from the workflow")));
    // The workflow's execution role allowed every Bedrock call the workflow made.
    local
        .moto
        .assert_roles_allowed(&[("bedrock:InvokeModel", ":foundation-model/")])
        .await;
}
