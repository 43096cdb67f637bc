//! `synth report` against moto: a stack with a ledger, budgets written as the provider writes
//! them, and metrics as the invoke Lambda's path emits them for real requests through the
//! gateway and the Bedrock stub.
//!
//! moto's CloudWatch Logs accepts EMF lines but extracts no metrics from them (CloudWatch does),
//! so the test does that one step itself: every EMF record the gateway emitted is put with
//! `PutMetricData` under each of its dimension sets, as CloudWatch's extraction would.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use bedrock_stub::StubConfig;
use invoke::gateway::Gateway;
use invoke::metrics::MetricsSink;
use ledger::{DynamoLedger, Ledger};
use serde_json::{Value, json};

const SPEC: &str = r#"
version: 1
name: rep
models:
  lite: amazon.nova-lite-v1:0
defaults: { max_tokens: 100 }
applications:
  capped:
    cost_center: cc-a
    models: [lite]
    limits: [{ window: day, tokens: 400 }, { window: month, usd: 1 }]
  steady:
    cost_center: cc-a
    models: [lite]
    limits: [{ window: day, tokens: 100000 }]
  solo:
    models: [lite]
    limits: [{ window: month, usd: 5 }]
"#;

/// What CloudWatch does with an EMF line: one datum per metric and dimension set.
fn extract(record: &Value) -> Vec<MetricDatum> {
    let aws = &record["_aws"];
    let timestamp = aws["Timestamp"].as_u64().expect("EMF timestamp");
    let mut data = Vec::new();
    for directive in aws["CloudWatchMetrics"].as_array().expect("directives") {
        for set in directive["Dimensions"].as_array().expect("dimension sets") {
            for metric in directive["Metrics"].as_array().expect("metrics") {
                let name = metric["Name"].as_str().unwrap();
                let dims = set
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        let d = d.as_str().unwrap();
                        Dimension::builder()
                            .name(d)
                            .value(record[d].as_str().expect("dimension value"))
                            .build()
                    })
                    .collect();
                data.push(
                    MetricDatum::builder()
                        .metric_name(name)
                        .set_dimensions(Some(dims))
                        .value(record[name].as_f64().expect("metric value"))
                        .unit(StandardUnit::from(metric["Unit"].as_str().unwrap()))
                        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_millis(
                            timestamp as i64,
                        ))
                        .build(),
                );
            }
        }
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_reads_back_what_the_gateway_emitted() {
    let moto = harness::Moto::start();
    common::ledger_stack(&moto, "rep", "rep-ledger");

    // Budgets as the provider writes them, in the stack's table.
    let config = moto.sdk_config().await;
    let ledger = Arc::new(DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&config),
        "rep-ledger",
    ));
    let spec = spec::parse("rep.yaml", SPEC).unwrap();
    for app in spec.applications.keys() {
        let budget = invoke::settings::budget_from_spec(&spec, app).unwrap();
        ledger.put_budget(&budget, &[]).await.unwrap();
    }

    // Real requests through the gateway to the Bedrock stub.
    let stub = bedrock_stub::start("127.0.0.1:0".parse().unwrap(), StubConfig::default())
        .await
        .unwrap();
    let bedrock_config = harness::sdk_config_at(&stub.url()).await;
    let captured = Arc::new(Mutex::new(Vec::new()));
    let gateway = Arc::new(Gateway::new(
        Arc::clone(&ledger),
        invoke::bedrock::SignedBedrock::from_config(&bedrock_config),
        invoke::settings::from_spec(&spec),
        MetricsSink::Capture(Arc::clone(&captured)),
    ));
    let keys: HashMap<String, invoke::gateway::Caller> = ["capped", "steady", "solo"]
        .iter()
        .map(|a| (format!("key-{a}"), invoke::gateway::Caller::application(*a)))
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, invoke::http::router(gateway, keys))
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let mut statuses: HashMap<&str, Vec<u16>> = HashMap::new();
    for (app, n) in [("capped", 6), ("steady", 3), ("solo", 2)] {
        for i in 0..n {
            let body = json!({ "messages": [{ "role": "user", "content": [{ "text": format!("question {i} from {app}") }] }] });
            let resp = http
                .post(format!("{base}/model/lite/converse"))
                .header("x-api-key", format!("key-{app}"))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            statuses
                .entry(app)
                .or_default()
                .push(resp.status().as_u16());
        }
    }
    let capped = &statuses["capped"];
    assert!(capped.contains(&200) && capped.contains(&429), "{capped:?}");

    // CloudWatch's EMF extraction, then the metrics in moto.
    let records = captured.lock().unwrap().clone();
    let cw = aws_sdk_cloudwatch::Client::new(&config);
    let mut expected: HashMap<String, (u64, u64, f64)> = HashMap::new();
    for record in &records {
        if let Some(app) = record
            .get("TotalRequests")
            .and(record["Application"].as_str())
        {
            let e = expected.entry(app.to_string()).or_default();
            e.0 += record["TotalTokens"].as_u64().unwrap();
            e.1 += record["RateLimitDenied"].as_u64().unwrap();
            e.2 += record["CostUsd"].as_f64().unwrap();
        }
        for chunk in extract(record).chunks(20) {
            cw.put_metric_data()
                .namespace("TokenFence")
                .set_metric_data(Some(chunk.to_vec()))
                .send()
                .await
                .expect("PutMetricData");
        }
    }

    let out = common::synth_on(
        &moto,
        &["report", "--stack", "rep", "--since", "1h", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["table"], "rep-ledger");
    let apps = report["applications"].as_array().unwrap();
    let names: Vec<&str> = apps
        .iter()
        .map(|a| a["application"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["capped", "solo", "steady"]);
    for a in apps {
        let name = a["application"].as_str().unwrap();
        let sent = &statuses[name];
        let ok = sent.iter().filter(|s| **s == 200).count() as u64;
        let denied = sent.iter().filter(|s| **s == 429).count() as u64;
        assert_eq!(a["requests"], sent.len() as u64, "{name}: {a}");
        assert_eq!(a["approved"], ok, "{name}");
        assert_eq!(a["denied"], denied, "{name}");
        assert_eq!(a["failed"], 0, "{name}");
        let (tokens, denied_metric, usd) = expected[name];
        assert_eq!(denied_metric, denied);
        assert!(tokens > 0);
        assert_eq!(a["tokens"], tokens, "{name}");
        let micros = (usd * 1e6).round() as u64;
        assert_eq!(a["cost_micros"], micros, "{name}");
        assert_eq!(a["month_to_date_micros"], micros, "{name}");
        assert!(a["month_end_projection_micros"].as_u64().unwrap() >= micros);
    }
    // The day token limit of `capped`: what the ledger admitted, against 400.
    let day = &apps[0]["limits"][0];
    assert_eq!(
        (day["window"].as_str(), day["metric"].as_str()),
        (Some("day"), Some("tokens"))
    );
    assert_eq!(day["used"], expected["capped"].0);
    assert_eq!(day["limit"], 400);
    let pct = day["utilization_percent"].as_f64().unwrap();
    assert!(
        (pct - expected["capped"].0 as f64 / 4.0).abs() < 0.06,
        "{pct}"
    );
    // Cost centers sum their applications.
    let centers = report["cost_centers"].as_array().unwrap();
    let cc = centers.iter().find(|c| c["cost_center"] == "cc-a").unwrap();
    assert_eq!(cc["applications"], json!(["capped", "steady"]));
    assert_eq!(cc["tokens"], expected["capped"].0 + expected["steady"].0);
    assert_eq!(cc["requests"], 9);

    // The table form names the same figures.
    let out = common::synth_on(&moto, &["report", "--stack", "rep", "--since", "1h"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("per cost center") && text.contains("cc-a"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} of 400", expected["capped"].0)),
        "{text}"
    );

    // A stack without a ledger output is named, not guessed.
    let out = common::synth_on(&moto, &["report", "--stack", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stack `missing`"));
}
