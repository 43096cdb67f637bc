//! Hostile callers: requests built to cost more than their reservation, run concurrently against
//! a Bedrock stub that bills as Bedrock does (every started generation, whatever becomes of the
//! answer), on the in-memory ledger and on DynamoDB (moto). In every case what Bedrock billed
//! stays within the application's limit, the ledger never counts less than Bedrock billed, every
//! reservation is closed, and a client's mistake is a 4xx, never a 5xx.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::start;
use invoke::gateway::Settings;
use ledger::{DynamoLedger, Ledger, MemoryLedger};
use serde_json::{Value, json};

const SPEC: &str = r#"
version: 1
name: h
models:
  lite: amazon.nova-lite-v1:0
  haiku: anthropic.claude-3-5-haiku-20241022-v1:0
defaults: { max_tokens: 16 }
applications:
  timeouts: { models: [lite], limits: [{ window: day, tokens: 3000 }] }
  disconnects: { models: [lite], limits: [{ window: day, tokens: 3000 }] }
  failures: { models: [lite], limits: [{ window: day, tokens: 3000 }] }
  caps: { models: [haiku], limits: [{ window: day, tokens: 20000 }] }
  tools: { models: [haiku], limits: [{ window: day, tokens: 6000 }] }
  documents: { models: [haiku, lite], limits: [{ window: day, tokens: 60000 }] }
  blocks: { models: [lite], limits: [{ window: day, tokens: 300000 }] }
"#;

const CLIENTS: usize = 32;

fn text(t: &str) -> Value {
    json!({ "messages": [{ "role": "user", "content": [{ "text": t }] }] })
}

/// What one scenario ended with: statuses, what the stub billed and what the ledger counts.
struct Ended {
    statuses: BTreeMap<u16, usize>,
    billed: u64,
    counted: u64,
    limit: u64,
}

/// Runs `CLIENTS` concurrent callers of `app`, each sending `rounds` requests built by `body`,
/// with the gateway tuned by `tune` and each client giving up after `client_timeout`.
async fn scenario<L: Held>(
    ledger: &Arc<L>,
    app: &str,
    model: &str,
    rounds: usize,
    tune: impl FnOnce(&mut Settings),
    client_timeout: Option<Duration>,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> Ended {
    let env = Arc::new(start(Arc::clone(ledger), SPEC, tune).await);
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (env, body, key, model) = (
            Arc::clone(&env),
            Arc::clone(&body),
            format!("key-{app}"),
            model.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for round in 0..rounds {
                let mut req = env
                    .http
                    .post(format!("{}/model/{model}/converse", env.base))
                    .header("x-api-key", &key)
                    .body(body(client * rounds + round).to_string());
                if let Some(t) = client_timeout {
                    req = req.timeout(t);
                }
                match req.send().await {
                    // The gateway's own 500 (InternalError) is 599 here; a 500 from Bedrock
                    // (InternalServerException) is passed on as Bedrock sent it.
                    Ok(resp)
                        if resp
                            .headers()
                            .get("x-amzn-errortype")
                            .is_some_and(|t| t == "InternalError") =>
                    {
                        statuses.push(599)
                    }
                    Ok(resp) => statuses.push(resp.status().as_u16()),
                    // The caller hung up: status 0.
                    Err(e) if e.is_timeout() => statuses.push(0),
                    Err(e) => panic!("the gateway answers: {e}"),
                }
            }
            statuses
        }));
    }
    let mut statuses = BTreeMap::new();
    for t in tasks {
        for s in t.await.unwrap() {
            *statuses.entry(s).or_default() += 1;
        }
    }
    // Requests whose callers hung up run on to their settlement.
    for _ in 0..100 {
        if ledger.held().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ledger.held().await, 0, "{app}: every reservation closed");
    let config = ledger.budget(app).await.unwrap().unwrap();
    let windows = ledger
        .usage(app, None, &config.limits, invoke::gateway::now_seconds())
        .await
        .unwrap();
    Ended {
        statuses,
        billed: env.stub.billed_tokens(),
        counted: windows[0].used.tokens,
        limit: config.limits[0].tokens.unwrap(),
    }
}

/// Reservations still held, read without closing them.
trait Held: Ledger {
    fn held(&self) -> impl std::future::Future<Output = usize> + Send;
}

impl Held for MemoryLedger {
    async fn held(&self) -> usize {
        self.open_reservations()
    }
}

impl Held for DynamoLedger {
    async fn held(&self) -> usize {
        self.open_reservations()
            .await
            .expect("query the open index")
    }
}

impl Ended {
    fn holds(&self, what: &str) {
        eprintln!(
            "{what}: billed {} counted {} limit {} statuses {:?}",
            self.billed, self.counted, self.limit, self.statuses
        );
        assert!(
            self.billed <= self.limit,
            "{what}: Bedrock billed {} tokens of a {}-token limit ({:?})",
            self.billed,
            self.limit,
            self.statuses
        );
        assert!(
            self.counted >= self.billed,
            "{what}: the ledger counts {} tokens, Bedrock billed {}",
            self.counted,
            self.billed
        );
        assert!(
            self.counted <= self.limit,
            "{what}: the ledger counts {} over the limit {}",
            self.counted,
            self.limit
        );
        assert!(
            !self.statuses.contains_key(&599) && !self.statuses.contains_key(&503),
            "{what}: no gateway failure ({:?})",
            self.statuses
        );
        assert!(
            self.statuses.contains_key(&429),
            "{what}: the limit was reached ({:?})",
            self.statuses
        );
    }
}

async fn hostile_callers_stay_within_their_limits<L: Held>(ledger: Arc<L>, rounds: usize) {
    // Time-outs: Bedrock is slower than the gateway's deadline; each cut-off call was billed.
    let ended = scenario(
        &ledger,
        "timeouts",
        "lite",
        rounds,
        |s| s.call_timeout = Duration::from_millis(300),
        None,
        |_| text("[[stub:sleep=1000]] hello"),
    )
    .await;
    ended.holds("time-outs");
    assert!(ended.statuses.contains_key(&504), "{:?}", ended.statuses);

    // Disconnects: callers hang up while Bedrock generates; the gateway settles anyway.
    let ended = scenario(
        &ledger,
        "disconnects",
        "lite",
        rounds,
        |_| {},
        Some(Duration::from_millis(100)),
        |_| text("[[stub:sleep=400]] hello"),
    )
    .await;
    assert!(ended.billed <= ended.limit && ended.counted >= ended.billed);
    assert!(ended.statuses.contains_key(&0), "{:?}", ended.statuses);

    // Failures after the generation started: server errors, model time-outs, no usage.
    let markers = [
        "[[stub:error]]",
        "[[stub:modeltimeout]]",
        "[[stub:nousage]]",
    ];
    let ended = scenario(
        &ledger,
        "failures",
        "lite",
        rounds,
        |_| {},
        None,
        move |i| text(&format!("{} hello", markers[i % 3])),
    )
    .await;
    ended.holds("failures after start");
    // Bedrock's own answers, passed on: 500 InternalServerException, 408 ModelTimeoutException.
    for status in [200, 500, 408] {
        assert!(ended.statuses.contains_key(&status), "{:?}", ended.statuses);
    }

    // Output caps raised through the model's own fields (Anthropic `max_tokens`).
    let ended = scenario(
        &ledger,
        "caps",
        "haiku",
        rounds,
        |_| {},
        None,
        |i| {
            let mut b = text("[[stub:output=20000]] write");
            b["inferenceConfig"] = json!({ "maxTokens": 16 });
            b["additionalModelRequestFields"] =
                json!({ "max_tokens": if i % 2 == 0 { 30_000 } else { 2_000 } });
            b
        },
    )
    .await;
    ended.holds("raised caps");

    // Tools offered with a short prompt: Anthropic's hidden tool-use prompt is billed.
    let ended = scenario(
        &ledger,
        "tools",
        "haiku",
        rounds,
        |_| {},
        None,
        |_| {
            let mut b = text("hi");
            b["toolConfig"] = json!({ "tools": [{ "toolSpec": { "name": "f", "inputSchema": { "json": { "type": "object" } } } }] });
            b
        },
    )
    .await;
    ended.holds("tools");

    // PDFs expand past their bytes: counted with CountTokens on Anthropic's models.
    let pdf = aws_smithy_types::base64::encode(vec![b'%'; 3_000]);
    let ended = scenario(
        &ledger,
        "documents",
        "haiku",
        rounds,
        |_| {},
        None,
        move |_| {
            json!({ "messages": [{ "role": "user", "content": [
            { "text": "summarise" },
            { "document": { "format": "pdf", "name": "report", "source": { "bytes": pdf } } }
        ] }] })
        },
    )
    .await;
    ended.holds("documents");

    // 200,000 one-character blocks: each costs its framing; refused as over the limit, no 5xx.
    let many: Vec<Value> = (0..200_000).map(|_| json!({ "text": "a" })).collect();
    let body = json!({ "messages": [{ "role": "user", "content": many }] });
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    let (status, _, reply) = env.converse("key-blocks", "lite", &body).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (429, Some("BudgetExceeded")),
        "{reply}"
    );
    let some: Vec<Value> = (0..20_000).map(|_| json!({ "text": "a" })).collect();
    let body = json!({ "messages": [{ "role": "user", "content": some }] });
    let (status, _, reply) = env.converse("key-blocks", "lite", &body).await;
    assert_eq!(status, 200, "{reply}");
    let config = ledger.budget("blocks").await.unwrap().unwrap();
    let counted = ledger
        .usage(
            "blocks",
            None,
            &config.limits,
            invoke::gateway::now_seconds(),
        )
        .await
        .unwrap()[0]
        .used
        .tokens;
    assert!(counted >= env.stub.billed_tokens() && counted > 0);
}

/// Mistakes are the caller's: 4xx naming the field, nothing reserved, nothing billed.
async fn mistakes_are_4xx<L: Ledger>(ledger: Arc<L>) {
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    let mut bad_cap = text("x");
    bad_cap["additionalModelRequestFields"] = json!({ "max_tokens": "lots" });
    let (status, _, body) = env.converse("key-caps", "haiku", &bad_cap).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("additionalModelRequestFields.max_tokens")),
        "{body}"
    );
    let pdf_on_nova = json!({ "messages": [{ "role": "user", "content": [
        { "text": "x" },
        { "document": { "format": "pdf", "name": "d", "source": { "bytes": "JVBERg==" } } }
    ] }] });
    let (status, _, body) = env.converse("key-documents", "lite", &pdf_on_nova).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("messages[0].content[1].document")),
        "{body}"
    );
    // A request ID longer than a ledger key may be (DynamoDB's sort key) is the caller's mistake,
    // refused before the ledger is asked, never an outage that could fail open.
    let huge = "r".repeat(5_000);
    for id in [huge.as_str(), "spaces are not allowed", ""] {
        let outcome = env
            .gateway
            .converse(
                &invoke::gateway::Caller::application("caps"),
                "haiku",
                text("x").to_string().as_bytes(),
                invoke::gateway::Front::Queue,
                id,
            )
            .await;
        let invoke::gateway::Outcome::Reply(reply) = outcome else {
            panic!("answered")
        };
        assert_eq!(
            (reply.status, reply.body["field"].as_str()),
            (400, Some("requestId")),
            "{}",
            reply.body
        );
    }
    assert_eq!(env.stub.requests(), 0, "nothing reached Bedrock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_callers_stay_within_their_limits_on_the_memory_ledger() {
    let ledger = Arc::new(MemoryLedger::new());
    hostile_callers_stay_within_their_limits(Arc::clone(&ledger), 4).await;
    mistakes_are_4xx(ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_callers_stay_within_their_limits_on_dynamodb() {
    // Serialized: moto's transactions are not isolated between concurrent requests.
    let moto = harness::Moto::start_serialized();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    let ledger = Arc::new(DynamoLedger::new(client, "ledger"));
    hostile_callers_stay_within_their_limits(Arc::clone(&ledger), 4).await;
    mistakes_are_4xx(ledger).await;
}
