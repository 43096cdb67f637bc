//! The `invoke serve` binary as a user runs it: Bedrock reached through the standard
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, EMF lines on stdout, and a graceful shutdown that finishes
//! (and settles) the request in flight.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_enforces_emits_metrics_and_drains_on_shutdown() {
    let stub = bedrock_stub::start(
        "127.0.0.1:0".parse().unwrap(),
        bedrock_stub::StubConfig::default(),
    )
    .await
    .unwrap();
    let port = harness::free_port();
    let spec = harness::repo().join("examples/quickstart.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_invoke"))
        .args([
            "serve",
            "--spec",
            spec.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--api-key",
            "secret=support-bot",
            "--api-key",
            "seat=support-bot/alice",
        ])
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", stub.url())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("invoke serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "invoke serve did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    let body = json!({ "messages": [{ "role": "user", "content": [{ "text": "hi" }] }] });
    let resp = http
        .post(format!("{base}/model/haiku/converse"))
        .header("x-api-key", "secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-tokenfence-application"], "support-bot");
    let resp = http
        .post(format!("{base}/model/sonnet/converse"))
        .header("x-api-key", "secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        403,
        "support-bot may not call sonnet"
    );
    // A seat declared as `KEY=APP/USER`: the application's call, as alice's.
    let resp = http
        .post(format!("{base}/model/haiku/converse"))
        .bearer_auth("seat")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-tokenfence-user"], "alice");

    // A slow request in flight when the server is told to stop still completes.
    let slow = json!({ "messages": [{ "role": "user", "content": [{ "text": "[[stub:sleep=700]] slow" }] }] });
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/model/haiku/converse");
        async move {
            http.post(url)
                .header("x-api-key", "secret")
                .json(&slow)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        in_flight.await.unwrap().expect("answered before shutdown"),
        200
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "exited cleanly: {status}");

    let lines: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("stdout is EMF JSON lines"))
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l["TotalRequests"] == 1).collect();
    assert_eq!(
        requests.len(),
        3,
        "the three approved requests (the 403 never reached budgeting)"
    );
    // The user is a property of its request's record, not a metric dimension (opt-in).
    let seat = requests
        .iter()
        .find(|r| r["User"] == "alice")
        .expect("alice's record");
    assert!(
        !seat["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
            .to_string()
            .contains("User")
    );
    assert!(
        requests.iter().all(
            |r| r["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "TokenFence"
                && r["Application"] == "support-bot"
        )
    );
    assert_eq!(stub.requests(), 3);
}
