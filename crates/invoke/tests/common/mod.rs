//! Shared setup: a gateway over a ledger and the Bedrock stub, served over HTTP on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bedrock_stub::{Stub, StubConfig};
use invoke::bedrock::SdkBedrock;
use invoke::gateway::{Gateway, Settings};
use invoke::metrics::MetricsSink;
use ledger::Ledger;
use serde_json::{Value, json};

pub const SPEC: &str = r#"
version: 1
name: t
models:
  micro: amazon.nova-micro-v1:0
  lite: amazon.nova-lite-v1:0
  pro: amazon.nova-pro-v1:0
defaults: { max_tokens: 100 }
applications:
  capped:
    models: [lite]
    limits: [{ window: minute, tokens: 2000 }, { window: day, usd: 1 }]
  fallback:
    models: [pro]
    limits: [{ window: day, usd: 0.001 }]
    on_exceed: { action: fallback, model: micro }
  shadowed:
    models: [lite]
    limits: [{ window: minute, tokens: 1200 }]
    mode: shadow
  other:
    models: [micro]
    limits: [{ window: day, tokens: 100000 }]
"#;

/// An SDK Bedrock client pointed at the stub with dummy credentials.
pub async fn bedrock_for(stub: &Stub) -> SdkBedrock {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(stub.url())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_bedrockruntime::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    SdkBedrock::new(aws_sdk_bedrockruntime::Client::new(&config))
}

pub struct Env<L: Ledger> {
    pub stub: Stub,
    pub gateway: Arc<Gateway<L, SdkBedrock>>,
    pub base: String,
    pub metrics: Arc<Mutex<Vec<Value>>>,
    pub http: reqwest::Client,
}

pub const KEYS: &[(&str, &str)] = &[
    ("key-capped", "capped"),
    ("key-fallback", "fallback"),
    ("key-shadowed", "shadowed"),
    ("key-other", "other"),
];

/// Starts the stub and serves a gateway over `ledger` with the budgets of `spec_yaml`.
pub async fn start<L: Ledger>(
    ledger: Arc<L>,
    spec_yaml: &str,
    tune: impl FnOnce(&mut Settings),
) -> Env<L> {
    let spec = spec::parse("test.yaml", spec_yaml).unwrap_or_else(|e| panic!("{e}"));
    for app in spec.applications.keys() {
        ledger
            .put_budget(
                &invoke::settings::budget_from_spec(&spec, app).unwrap(),
                &[],
            )
            .await
            .expect("put budget");
    }
    let stub = bedrock_stub::start("127.0.0.1:0".parse().unwrap(), StubConfig::default())
        .await
        .expect("stub");
    let mut settings = invoke::settings::from_spec(&spec);
    tune(&mut settings);
    let metrics = Arc::new(Mutex::new(Vec::new()));
    let gateway = Arc::new(Gateway::new(
        ledger,
        bedrock_for(&stub).await,
        settings,
        MetricsSink::Capture(Arc::clone(&metrics)),
    ));
    let keys: HashMap<String, String> = KEYS
        .iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = invoke::http::router(Arc::clone(&gateway), keys);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Env {
        stub,
        gateway,
        base,
        metrics,
        http: reqwest::Client::new(),
    }
}

pub fn prompt(text: &str) -> Value {
    json!({ "messages": [{ "role": "user", "content": [{ "text": text }] }] })
}

impl<L: Ledger> Env<L> {
    pub async fn post(
        &self,
        key: Option<&str>,
        model: &str,
        body: &[u8],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}/model/{model}/converse", self.base))
            .body(body.to_vec());
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let resp = req.send().await.expect("gateway answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.json::<Value>().await.expect("JSON body");
        (status, headers, body)
    }

    pub async fn converse(
        &self,
        key: &str,
        model: &str,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.post(Some(key), model, body.to_string().as_bytes())
            .await
    }
}

/// A small deterministic generator, so concurrency tests are reproducible.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}
