//! `soak --moto URL --invoke BIN --minutes M [--spec FILE]`: minutes of mixed traffic through the
//! gateway with faults injected, then an audit of what it left behind. Run by `benches/soak.sh`,
//! which starts moto and writes SOAK.md; not part of the test command.
//!
//! - Sync: the real `invoke serve` binary with the DynamoDB ledger (table in moto), called over
//!   HTTP by several workers for three applications.
//! - Async: the queue front (`invoke::lambda::handle_sqs`) in process, fed from an SQS queue in moto
//!   by pollers that do what Lambda's event source mapping does (batch, delete what succeeded,
//!   leave failures for redelivery); results collected from the results queue.
//! - Faults: the Bedrock stub throttles, fails (500) and stalls on markers in the prompts; the
//!   ledger endpoint (a TCP proxy in front of moto) is stopped for 10 s every 75 s, its
//!   connections cut; clients give up on some slow requests mid-flight.
//!
//! The audit: reservations still open (must be 0), any window counter above its limit or usage
//! different from what Bedrock billed (overspend, must be 0), async requests without a result
//! (lost, must be 0), and every status by cause. Exit status 1 if a check fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use invoke::bedrock::SignedBedrock;
use invoke::gateway::Gateway;
use invoke::lambda::SdkQueues;
use invoke::metrics::MetricsSink;
use ledger::{DynamoLedger, Identity, Ledger};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TABLE: &str = "soak-ledger";
/// (application, API key, model alias) of the sync front.
const SYNC_APPS: [(&str, &str, &str); 3] = [
    ("web", "web-key", "nova-micro"),
    ("chat", "chat-key", "haiku"),
    ("batch", "batch-key", "nova-lite"),
];
/// Each application calls its own model, so the stub's bill per model is the bill per application.
const MODELS: [(&str, &str); 4] = [
    ("web", "amazon.nova-micro-v1:0"),
    ("chat", "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ("batch", "amazon.nova-lite-v1:0"),
    ("async", "amazon.nova-pro-v1:0"),
];

type Item = HashMap<String, AttributeValue>;
type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A request: its body (with the stub's fault marker, if any), what it carries, and whether the
/// client gives up on it early.
fn request(rng: &mut Rng) -> (Value, &'static str, bool) {
    let (marker, kind, disconnect) = match rng.below(100) {
        0..=3 => ("[[stub:throttle]] ", "bedrock throttles", false),
        4..=6 => ("[[stub:error]] ", "bedrock fails", false),
        7..=9 => ("[[stub:sleep=1500]] ", "bedrock slow", false),
        10..=12 => ("[[stub:sleep=1500]] ", "client gives up", true),
        _ => ("", "plain", false),
    };
    let chars = 200 + rng.below(1800) as usize;
    let text = format!(
        "{marker}{}",
        "Summarise the quarterly numbers. ".repeat(chars / 33 + 1)
    );
    let body = json!({
        "messages": [{ "role": "user", "content": [{ "text": text }] }],
        "inferenceConfig": { "maxTokens": 64 + rng.below(192) }
    });
    (body, kind, disconnect)
}

/// A TCP proxy that can be stopped (listener closed, every connection cut) and restarted on the
/// same port: the ledger endpoint going away and coming back.
async fn ledger_proxy(listener: TcpListener, upstream: String, mut up: watch::Receiver<bool>) {
    let addr = listener.local_addr().unwrap();
    let mut listener = Some(listener);
    loop {
        let current = match listener.take() {
            Some(l) => l,
            None => {
                while !*up.borrow_and_update() {
                    if up.changed().await.is_err() {
                        return;
                    }
                }
                TcpListener::bind(addr)
                    .await
                    .expect("rebind the ledger proxy")
            }
        };
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = current.accept() => {
                    let Ok((mut client, _)) = accepted else { continue };
                    let upstream = upstream.clone();
                    connections.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
                changed = up.changed() => {
                    if changed.is_err() {
                        // The schedule ended with the endpoint up: keep serving.
                        loop {
                            let Ok((mut client, _)) = current.accept().await else { continue };
                            let upstream = upstream.clone();
                            connections.spawn(async move {
                                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                }
                            });
                        }
                    }
                    if !*up.borrow_and_update() {
                        connections.abort_all();
                        break;
                    }
                }
            }
        }
        drop(current);
    }
}

fn count(tally: &Tally, key: String) {
    *tally.lock().unwrap().entry(key).or_default() += 1;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let moto = flag(&args, "--moto").expect("--moto URL");
    let invoke_bin = flag(&args, "--invoke").expect("--invoke BIN");
    let minutes: f64 = flag(&args, "--minutes").map_or(10.0, |m| m.parse().expect("--minutes M"));
    let spec_path = flag(&args, "--spec").unwrap_or_else(|| "benches/soak.yaml".into());
    let run_for = Duration::from_secs_f64(minutes * 60.0);

    // Moto's table and queues, through clients that bypass the faults.
    let direct = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto)
        .load()
        .await;
    let dynamo_direct = aws_sdk_dynamodb::Client::new(&direct);
    create_table(&dynamo_direct).await;
    let sqs = aws_sdk_sqs::Client::new(&direct);
    // As the rendered stack does: a message received 5 times without success is dead-lettered.
    let dead_url = queue(&sqs, "soak-dead-letters", None).await;
    let dead_arn = queue_arn(&sqs, &dead_url).await;
    let redrive = json!({ "deadLetterTargetArn": dead_arn, "maxReceiveCount": "5" }).to_string();
    let requests_url = queue(&sqs, "soak-requests", Some(redrive)).await;
    let results_url = queue(&sqs, "soak-results", None).await;
    let requests_arn = sqs
        .get_queue_attributes()
        .queue_url(&requests_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();

    // The Bedrock stub, and the ledger endpoint behind a proxy that can be stopped.
    let stub = bedrock_stub::start(
        "127.0.0.1:0".parse().unwrap(),
        bedrock_stub::StubConfig {
            latency: Duration::from_millis(20),
            output_tokens: 64,
        },
    )
    .await
    .unwrap();
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let (ledger_up, ledger_up_rx) = watch::channel(true);
    tokio::spawn(ledger_proxy(
        proxy_listener,
        moto.trim_start_matches("http://").to_string(),
        ledger_up_rx,
    ));

    // `invoke serve`, the sync front.
    let serve_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve_log = std::fs::File::create("target/soak-serve.log").expect("target/soak-serve.log");
    let mut serve = std::process::Command::new(&invoke_bin)
        .args(["serve", "--spec", &spec_path])
        .args(["--listen", &format!("127.0.0.1:{serve_port}")])
        .args(["--ledger", &format!("dynamodb:{TABLE}")])
        .args(
            SYNC_APPS
                .iter()
                .flat_map(|(app, key, _)| ["--api-key".to_string(), format!("{key}={app}")]),
        )
        .env("AWS_ENDPOINT_URL_DYNAMODB", &proxy_url)
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", stub.url())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(serve_log)
        .spawn()
        .expect("invoke serve starts");
    let serve_url = format!("http://127.0.0.1:{serve_port}");
    let http = reqwest::Client::new();
    let waited = Instant::now();
    while http.get(format!("{serve_url}/usage")).send().await.is_err() {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "invoke serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The queue front in process: its ledger through the proxy, its results to moto's SQS.
    let ledger_conf = aws_sdk_dynamodb::config::Builder::from(&direct)
        .endpoint_url(&proxy_url)
        .build();
    let ledger = Arc::new(DynamoLedger::new(
        aws_sdk_dynamodb::Client::from_conf(ledger_conf),
        TABLE,
    ));
    let bedrock_conf = direct.to_builder().endpoint_url(stub.url()).build();
    let source = std::fs::read_to_string(&spec_path).unwrap();
    let spec = spec::parse(&spec_path, &source).unwrap();
    let gateway = Arc::new(Gateway::new(
        Arc::clone(&ledger),
        SignedBedrock::from_config(&bedrock_conf),
        invoke::settings::from_spec(&spec),
        MetricsSink::Capture(Arc::default()),
    ));
    let mut config = ledger
        .budget("async")
        .await
        .unwrap()
        .expect("serve seeded `async`");
    config.results_queue_url = Some(results_url.clone());
    config.version += 1;
    ledger
        .put_budget(&config, &[Identity::QueueArn(requests_arn.clone())])
        .await
        .unwrap();
    let queues = Arc::new(SdkQueues::new(sqs.clone()));

    let sync_tally: Tally = Arc::default();
    let async_tally: Tally = Arc::default();
    let sent_async = Arc::new(Mutex::new(Vec::<String>::new()));
    let results: Tally = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(AtomicBool::new(false));
    let outages = Arc::new(AtomicU64::new(0));
    let mut traffic = Vec::new();

    // Sync workers.
    for worker in 0..6u64 {
        let (http, tally, stop, url) = (
            http.clone(),
            sync_tally.clone(),
            stop.clone(),
            serve_url.clone(),
        );
        traffic.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (worker + 1));
            let mut i = worker as usize;
            while !stop.load(Ordering::Relaxed) {
                let (app, key, alias) = SYNC_APPS[i % SYNC_APPS.len()];
                i += 1;
                let (body, kind, disconnect) = request(&mut rng);
                let timeout = if disconnect {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(60)
                };
                let outcome = http
                    .post(format!("{url}/model/{alias}/converse"))
                    .header("x-api-key", key)
                    .json(&body)
                    .timeout(timeout)
                    .send()
                    .await;
                let label = match outcome {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        if status == 429 || status == 503 {
                            // As a well-behaved client does: back off before the next request.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        let code = body["error"].as_str().unwrap_or("ok").to_string();
                        format!("sync {app} {status} {code} ({kind})")
                    }
                    Err(e) if e.is_timeout() && disconnect => {
                        "sync: client disconnected mid-request".to_string()
                    }
                    Err(e) => format!("sync: transport error ({kind}): {e}"),
                };
                count(&tally, label);
            }
        }));
    }

    // The async producer: a message a second (moto, one request at a time, is the bottleneck).
    {
        let (sqs, url, sent, stop) = (
            sqs.clone(),
            requests_url.clone(),
            sent_async.clone(),
            stop.clone(),
        );
        traffic.push(tokio::spawn(async move {
            let mut rng = Rng(0xA5A5_5A5A_DEAD_BEEF);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (body, _, _) = request(&mut rng);
                let id = format!("async-{n}");
                let message = json!({ "requestId": id, "modelId": "nova-pro", "request": body });
                sqs.send_message()
                    .queue_url(&url)
                    .message_body(message.to_string())
                    .send()
                    .await
                    .expect("moto's SQS takes the message");
                sent.lock().unwrap().push(id);
                tokio::time::sleep(Duration::from_millis(1_000)).await;
            }
        }));
    }

    // Two pollers doing what the event source mapping does, and the results collector.
    let mut pollers = Vec::new();
    for _ in 0..2 {
        let (sqs, url, arn, gateway, queues, drain) = (
            sqs.clone(),
            requests_url.clone(),
            requests_arn.clone(),
            gateway.clone(),
            queues.clone(),
            drain.clone(),
        );
        pollers.push(tokio::spawn(async move {
            while !drain.load(Ordering::Relaxed) {
                let Ok(received) = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .visibility_timeout(20)
                    .wait_time_seconds(1)
                    .send()
                    .await
                else {
                    continue;
                };
                let messages = received.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let mut event = SqsEvent::default();
                event.records = messages
                    .iter()
                    .map(|m| {
                        let mut r = SqsMessage::default();
                        r.message_id = m.message_id.clone();
                        r.receipt_handle = m.receipt_handle.clone();
                        r.body = m.body.clone();
                        r.event_source_arn = Some(arn.clone());
                        r.event_source = Some("aws:sqs".into());
                        r
                    })
                    .collect();
                let response = invoke::lambda::handle_sqs(
                    &gateway,
                    queues.as_ref(),
                    event,
                    std::time::Instant::now() + std::time::Duration::from_secs(60),
                )
                .await;
                let failed: HashSet<String> = response
                    .batch_item_failures
                    .into_iter()
                    .map(|f| f.item_identifier)
                    .collect();
                for m in &messages {
                    if !failed.contains(m.message_id.as_deref().unwrap_or_default()) {
                        let _ = sqs
                            .delete_message()
                            .queue_url(&url)
                            .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                            .send()
                            .await;
                    }
                }
            }
        }));
    }
    {
        let (sqs, url, results, tally, drain) = (
            sqs.clone(),
            results_url.clone(),
            results.clone(),
            async_tally.clone(),
            drain.clone(),
        );
        pollers.push(tokio::spawn(async move {
            loop {
                let received = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .expect("moto's SQS answers");
                let messages = received.messages.unwrap_or_default();
                if messages.is_empty() && drain.load(Ordering::Relaxed) {
                    break;
                }
                for m in messages {
                    let v: Value =
                        serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null);
                    let id = v["requestId"].as_str().unwrap_or("?").to_string();
                    let code = v["error"]["error"].as_str().unwrap_or("ok");
                    count(&tally, format!("async {} {code}", v["status"]));
                    count(&results, id);
                    let _ = sqs
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .send()
                        .await;
                }
            }
        }));
    }

    // The fault schedule: the ledger endpoint goes away for 10 s every 75 s.
    let schedule = {
        let (stop, outages) = (stop.clone(), outages.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(65)).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                eprintln!("soak: ledger endpoint down");
                ledger_up.send(false).unwrap();
                outages.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(10)).await;
                ledger_up.send(true).unwrap();
                eprintln!("soak: ledger endpoint up");
            }
        })
    };

    let t0 = Instant::now();
    while t0.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(30).min(run_for)).await;
        let done: u64 = sync_tally.lock().unwrap().values().sum();
        eprintln!(
            "soak: {:>4.0} s, {done} sync requests, {} async sent",
            t0.elapsed().as_secs_f64(),
            sent_async.lock().unwrap().len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }
    // Ends with the endpoint up (the schedule never stops it between its `up` and its return).
    schedule.await.unwrap();
    let traffic_seconds = t0.elapsed().as_secs_f64();

    // Let deferred async requests (over the minute limit) and background settlements finish.
    let sent: Vec<String> = sent_async.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(900);
    let dead: Tally = Arc::default();
    loop {
        drain_queue(&sqs, &dead_url, &dead).await;
        let missing = {
            let (got, dead) = (results.lock().unwrap(), dead.lock().unwrap());
            sent.iter()
                .filter(|id| !got.contains_key(*id) && !dead.contains_key(*id))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    drain.store(true, Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }
    let _ = serve.kill();
    let _ = serve.wait();
    // Whatever is still in the request queue (deferred over the budget, or not yet received) is
    // waiting, not lost: collect its request IDs.
    let queued: Tally = Arc::default();
    for _ in 0..3 {
        drain_queue(&sqs, &requests_url, &queued).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let queued = queued.lock().unwrap().clone();

    // The audit, straight from moto.
    let mut open = Vec::new();
    let mut counters: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for item in scan(&dynamo_direct).await {
        let (pk, sk) = (s(&item, "pk"), s(&item, "sk"));
        let app = pk.trim_start_matches("app#").to_string();
        if sk.starts_with("res#") {
            if s(&item, "state") != "done" {
                open.push(format!("open reservation {pk}/{sk}"));
            }
        } else if pk.starts_with("app#") && sk.contains('#') {
            counters.insert((app, sk), (n(&item, "tokens"), n(&item, "micro_usd")));
        }
    }
    let mut overspend = Vec::new();
    for (app, application) in &spec.applications {
        for limit in &application.limits {
            let prefix = format!("{}#", limit.window.as_str());
            for ((a, sk), (tokens, micro)) in &counters {
                if a != app || !sk.starts_with(&prefix) {
                    continue;
                }
                if let Some(t) = limit.tokens.filter(|t| tokens > t) {
                    overspend.push(format!("{app} {sk}: {tokens} tokens, limit {t}"));
                }
                if let Some(u) = limit.usd.filter(|u| *micro > u.micros()) {
                    overspend.push(format!(
                        "{app} {sk}: {micro} micro-USD, limit {}",
                        u.micros()
                    ));
                }
            }
        }
    }
    // Every token Bedrock billed must be in the ledger, and nothing more: the longest window of
    // each application (the run stays inside it) holds the sum of its settlements.
    let billed = stub.billed();
    let mut billing = Vec::new();
    for (app, model) in MODELS {
        let b = billed.get(model).copied().unwrap_or_default();
        let bill = b.input_tokens + b.output_tokens + b.cache_read_tokens + b.cache_write_tokens;
        let longest = spec.applications[app]
            .limits
            .iter()
            .map(|l| l.window)
            .max()
            .expect("every soak application has a limit");
        let counted: u64 = counters
            .iter()
            .filter(|((a, sk), _)| a == app && sk.starts_with(&format!("{}#", longest.as_str())))
            .map(|(_, (t, _))| *t)
            .sum();
        if counted != bill {
            overspend.push(format!(
                "{app}: the ledger counted {counted} tokens in its {} windows, Bedrock billed {bill}",
                longest.as_str()
            ));
        }
        billing.push((app, b.calls, bill, longest.as_str(), counted));
    }
    drain_queue(&sqs, &dead_url, &dead).await;
    let got = results.lock().unwrap().clone();
    let dead = dead.lock().unwrap().clone();
    let dead_lettered = sent
        .iter()
        .filter(|id| !got.contains_key(*id) && dead.contains_key(*id))
        .count();
    let still_queued = sent
        .iter()
        .filter(|id| !got.contains_key(*id) && !dead.contains_key(*id) && queued.contains_key(*id))
        .count();
    let lost: Vec<&String> = sent
        .iter()
        .filter(|id| !got.contains_key(*id) && !dead.contains_key(*id) && !queued.contains_key(*id))
        .collect();
    let twice = got.values().filter(|c| **c > 1).count();
    let sync_total: u64 = sync_tally.lock().unwrap().values().sum();
    let verdict = |bad: bool| if bad { "FAIL" } else { "pass" };

    println!("| check | result |\n|---|---|");
    println!(
        "| traffic | {traffic_seconds:.0} s: {sync_total} sync requests (6 clients, 3 applications), {} async messages |",
        sent.len()
    );
    println!(
        "| ledger endpoint outages | {} (10 s each, connections cut) |",
        outages.load(Ordering::Relaxed)
    );
    println!(
        "| reservations left open | {} ({}) |",
        open.len(),
        verdict(!open.is_empty())
    );
    println!(
        "| overspend: a counter over its limit, or the ledger ≠ Bedrock's bill | {} ({}) |",
        overspend.len(),
        verdict(!overspend.is_empty())
    );
    println!(
        "| async requests without a result | {} of {} ({}) |",
        lost.len(),
        sent.len(),
        verdict(!lost.is_empty())
    );
    println!(
        "| async requests dead-lettered after 5 failed receives (throttled by Bedrock every time, or met the ledger outages) | {dead_lettered} |"
    );
    println!(
        "| async requests still waiting in the queue at the end (deferred over the minute limit) | {still_queued} |"
    );
    println!(
        "| async results delivered more than once | {twice} (SQS is at-least-once; each charged once, see the bill) |"
    );
    println!(
        "\nBilled by the Bedrock stub against counted by the ledger:\n\n| application | successful calls | tokens billed | ledger window | tokens counted |\n|---|---|---|---|---|"
    );
    for (app, calls, bill, window, counted) in &billing {
        println!("| {app} | {calls} | {bill} | {window} | {counted} |");
    }
    println!("\nOutcomes by cause (sync: status, error code, and what the request carried):\n");
    println!("| outcome | count |\n|---|---|");
    for (k, v) in sync_tally
        .lock()
        .unwrap()
        .iter()
        .chain(async_tally.lock().unwrap().iter())
    {
        println!("| {k} | {v} |");
    }
    let problems: Vec<String> = open
        .iter()
        .chain(&overspend)
        .cloned()
        .chain(lost.iter().map(|id| format!("no result for {id}")))
        .collect();
    if !problems.is_empty() {
        println!("\nProblems (first 20):\n");
        for p in problems.iter().take(20) {
            println!("- {p}");
        }
    }
    std::process::exit(if problems.is_empty() { 0 } else { 1 });
}

/// Receives and deletes every message of the queue at `url`, counting its request ID in `dead`
/// (the dead-letter queue as an operator would drain it, or what is left in the request queue).
async fn drain_queue(sqs: &aws_sdk_sqs::Client, url: &str, dead: &Tally) {
    loop {
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("moto's SQS answers");
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return;
        }
        for m in messages {
            let v: Value =
                serde_json::from_str(m.body().unwrap_or_default()).unwrap_or(Value::Null);
            count(dead, v["requestId"].as_str().unwrap_or("?").to_string());
            let _ = sqs
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await;
        }
    }
}

fn s(item: &Item, k: &str) -> String {
    match item.get(k) {
        Some(AttributeValue::S(v)) => v.clone(),
        _ => String::new(),
    }
}

fn n(item: &Item, k: &str) -> u64 {
    match item.get(k) {
        Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
        _ => 0,
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("moto answers")
        .attributes
        .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .expect("a queue ARN")
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str, redrive: Option<String>) -> String {
    let mut create = sqs.create_queue().queue_name(name);
    if let Some(policy) = redrive {
        create = create.attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            policy,
        );
    }
    create
        .send()
        .await
        .expect("moto creates the queue")
        .queue_url
        .expect("a queue URL")
}

async fn create_table(client: &aws_sdk_dynamodb::Client) {
    ledger::DynamoLedger::new(client.clone(), TABLE)
        .create_table()
        .await
        .expect("moto creates the ledger table");
}

async fn scan(client: &aws_sdk_dynamodb::Client) -> Vec<Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(TABLE)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("moto scans the table");
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return items;
        }
    }
}
