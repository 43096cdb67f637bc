//! Shared setup: a gateway over a ledger and the Bedrock stub, served over HTTP on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bedrock_stub::{Stub, StubConfig};
use budget::PriceBook;
use invoke::bedrock::SignedBedrock;
use invoke::gateway::{Caller, Gateway, Settings};
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
pub async fn bedrock_for(stub: &Stub) -> SignedBedrock {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(stub.url())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_bedrockruntime::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    SignedBedrock::from_config(&config)
}

pub struct Env<L: Ledger> {
    pub stub: Stub,
    pub gateway: Arc<Gateway<L, SignedBedrock>>,
    pub base: String,
    pub metrics: Arc<Mutex<Vec<Value>>>,
    pub http: reqwest::Client,
    /// With [`start_tls`]: the HTTPS base URL and the PEM file of its self-signed certificate,
    /// for clients to trust.
    pub tls: Option<(String, std::path::PathBuf)>,
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
    start_with_keys(ledger, spec_yaml, tune, &[]).await
}

/// [`start`], with `seats` keys too: `(key, application, user)`.
pub async fn start_with_keys<L: Ledger>(
    ledger: Arc<L>,
    spec_yaml: &str,
    tune: impl FnOnce(&mut Settings),
    seats: &[(&str, &str, &str)],
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
    // `key-<app>` for every application of the spec (KEYS names SPEC's).
    let mut keys: HashMap<String, Caller> = spec
        .applications
        .keys()
        .map(|a| (format!("key-{a}"), Caller::application(a.as_str())))
        .collect();
    for (key, app, user) in seats {
        keys.insert(key.to_string(), Caller::user(*app, *user));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = invoke::http::router(Arc::clone(&gateway), keys);
    let tls_router = router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Env {
        stub,
        gateway,
        base,
        metrics,
        http: reqwest::Client::new(),
        tls: Some(serve_tls(tls_router).await),
    }
}

/// The same router served over HTTPS with a fresh self-signed certificate for `127.0.0.1`, as
/// `invoke serve --tls-cert --tls-key` serves it.
async fn serve_tls(router: axum::Router) -> (String, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("a self-signed certificate");
    let dir =
        std::env::temp_dir().join(format!("tokenfence-tls-{}", invoke::http::new_request_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let config = invoke::http::tls_config(&cert, &key).expect("TLS config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(invoke::http::serve_tls(
        listener,
        router,
        config,
        std::future::pending(),
    ));
    (base, cert)
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

    /// `GET /usage` with `key`.
    pub async fn usage(&self, key: &str) -> Value {
        self.http
            .get(format!("{}/usage", self.base))
            .header("x-api-key", key)
            .send()
            .await
            .expect("gateway answers")
            .json()
            .await
            .expect("JSON body")
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

/// 64 clients at once, random prompt sizes and `maxTokens`, against a small budget: what the stub
/// billed never exceeds a window's limit, and the ledger ends equal to what was billed.
pub async fn concurrency_holds<L: Ledger>(ledger: Arc<L>, requests_per_client: usize) {
    let spec = r#"
version: 1
name: c
models: { lite: amazon.nova-lite-v1:0 }
defaults: { max_tokens: 200 }
applications:
  capped:
    limits: [{ window: day, tokens: 30000, usd: 0.02 }, { window: month, usd: 0.5 }]
"#;
    let env = Arc::new(start(Arc::clone(&ledger), spec, |_| {}).await);
    let mut tasks = Vec::new();
    for client in 0..64u64 {
        let env = Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(client + 1);
            let mut statuses = Vec::new();
            for _ in 0..requests_per_client {
                let text = "x".repeat(rng.next(2_000) as usize + 1);
                let max_tokens = rng.next(300) + 1;
                let body = json!({ "messages": [{ "role": "user", "content": [{ "text": text }] }], "inferenceConfig": { "maxTokens": max_tokens } });
                let (status, _, _) = env.converse(KEYS[0].0, "lite", &body).await;
                statuses.push(status);
            }
            statuses
        }));
    }
    let mut ok = 0;
    let mut denied = 0;
    for t in tasks {
        for status in t.await.unwrap() {
            match status {
                200 => ok += 1,
                429 => denied += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert!(
        ok > 0 && denied > 0,
        "the budget is small enough to deny some ({ok} ok, {denied} denied)"
    );
    let billed = env.stub.billed()["amazon.nova-lite-v1:0"];
    let usage = billed.usage();
    let cost = PriceBook::lookup("amazon.nova-lite-v1:0")
        .unwrap()
        .cost(&usage);
    assert_eq!(billed.calls, ok as u64);
    let now = invoke::gateway::now_seconds();
    let limits = budget::config::BudgetConfig::clone(
        &env.gateway
            .ledger()
            .budget("capped")
            .await
            .unwrap()
            .unwrap(),
    )
    .limits;
    let windows = env
        .gateway
        .ledger()
        .usage("capped", None, &limits, now)
        .await
        .unwrap();
    for w in &windows {
        // Every window holds exactly what was billed (settled, nothing left reserved), within its limit.
        assert_eq!(w.used.tokens, usage.total_tokens(), "{:?}", w.limit.window);
        assert!(w.limit.tokens.is_none_or(|l| w.used.tokens <= l));
        assert!(
            w.limit.usd.is_none_or(|l| w.used.cost <= l),
            "{:?}: {} > limit",
            w.limit.window,
            w.used.cost
        );
    }
    // Per-request rounding up to the micro-dollar makes the ledger's sum at least the billed total.
    let ledger_cost = windows[0].used.cost.0;
    assert!(
        ledger_cost >= cost.0 && ledger_cost <= cost.0 + ok as u64,
        "ledger {ledger_cost} vs billed {}",
        cost.0
    );
}
