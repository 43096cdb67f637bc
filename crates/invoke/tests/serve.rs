//! The gateway over HTTP (`invoke serve`'s router) with the in-memory ledger and the Bedrock stub:
//! every error status, enforcement, fallback, shadow, refunds on Bedrock errors, disconnects,
//! metrics, and 64 concurrent clients against a small budget.

mod common;

use std::sync::Arc;
use std::time::Duration;

use budget::{MicroUsd, PriceBook, Usage};
use common::{SPEC, concurrency_holds, prompt, start};
use ledger::{Ledger, MemoryLedger};
use serde_json::{Value, json};

#[tokio::test]
async fn errors_are_json_with_status_and_field() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |s| {
        s.max_body_bytes = 4096
    })
    .await;
    let ok = prompt("hi").to_string();
    type Case<'a> = (
        Option<&'a str>,
        &'a str,
        Vec<u8>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (None, "lite", ok.clone().into_bytes(), 401, "MissingApiKey", None),
        (Some("nope"), "lite", ok.clone().into_bytes(), 401, "InvalidApiKey", None),
        (Some("key-capped"), "micro", ok.clone().into_bytes(), 403, "ModelNotAllowed", None),
        (Some("key-capped"), "no-such-alias", ok.clone().into_bytes(), 404, "UnknownModel", None),
        (Some("key-capped"), "lite", b"{not json".to_vec(), 400, "ValidationError", None),
        (Some("key-capped"), "lite", b"{}".to_vec(), 400, "ValidationError", Some("messages")),
        (Some("key-capped"), "lite", br#"{"messages": []}"#.to_vec(), 400, "ValidationError", Some("messages")),
        (Some("key-capped"), "lite", json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "inferenceConfig": {"maxTokens": 0}}).to_string().into_bytes(), 400, "ValidationError", Some("inferenceConfig.maxTokens")),
        (Some("key-capped"), "lite", json!({"messages": [{"role": "user", "content": [{"video": {"format": "mp4", "source": {"s3Location": {"uri": "s3://b/v.mp4"}}}}]}]}).to_string().into_bytes(), 400, "ValidationError", Some("messages[0].content[0].video.source.s3Location")),
        (Some("key-capped"), "lite", vec![b' '; 5000], 413, "PayloadTooLarge", None),
    ];
    for (key, model, body, status, code, field) in cases {
        let (got, _, body) = env.post(key, model, &body).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(field) = field {
            assert_eq!(body["field"], field);
        }
    }
    // Nothing above reached Bedrock or left a reservation.
    assert_eq!(env.stub.requests(), 0);
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
}

#[tokio::test]
async fn a_request_under_budget_returns_bedrocks_response_and_what_remains() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let (status, headers, body) = env
        .converse("key-capped", "lite", &prompt("hello there"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["message"]["role"], "assistant");
    assert_eq!(body["stopReason"], "end_turn");
    let usage = &body["usage"];
    let (input, output) = (
        usage["inputTokens"].as_u64().unwrap(),
        usage["outputTokens"].as_u64().unwrap(),
    );
    assert_eq!(headers["x-tokenfence-application"], "capped");
    assert_eq!(headers["x-tokenfence-model"], "amazon.nova-lite-v1:0");
    let remaining: u64 = headers["x-tokenfence-remaining-minute-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        remaining,
        2000 - input - output,
        "settled to the actual usage, not the reservation"
    );
    let price = PriceBook::lookup("amazon.nova-lite-v1:0").unwrap();
    let cost = price.cost(&Usage::new(input, output));
    assert_eq!(
        headers["x-tokenfence-remaining-day-usd"],
        MicroUsd(1_000_000 - cost.0).to_string()
    );
    assert_eq!(env.stub.billed()["amazon.nova-lite-v1:0"].output_tokens, 64);
}

#[tokio::test]
async fn bedrock_is_held_to_the_output_that_was_reserved() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    // The model would write 5,000 tokens; the spec's default cap of 100 is what was reserved,
    // and the gateway pins it in the request, so that is all Bedrock generates.
    let (status, _, body) = env
        .converse(
            "key-other",
            "micro",
            &prompt("[[stub:output=5000]] write a lot"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stopReason"], "max_tokens");
    assert_eq!(
        env.stub.billed()["amazon.nova-micro-v1:0"].output_tokens,
        100
    );
    let mut asked = prompt("[[stub:output=5000]] write a little");
    asked["inferenceConfig"] = json!({ "maxTokens": 40 });
    let (status, _, _) = env.converse("key-other", "micro", &asked).await;
    assert_eq!(status, 200);
    assert_eq!(
        env.stub.billed()["amazon.nova-micro-v1:0"].output_tokens,
        140
    );
}

#[tokio::test]
async fn over_budget_is_429_with_retry_after_and_nothing_is_spent() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let mut statuses = Vec::new();
    let mut denial = None;
    for _ in 0..30 {
        let (status, headers, body) = env
            .converse("key-capped", "lite", &prompt("count me"))
            .await;
        statuses.push(status);
        if status == 429 {
            denial = Some((headers, body));
            break;
        }
    }
    let (headers, body) =
        denial.expect("the minute limit of 2000 tokens denies within 30 requests");
    assert_eq!(body["error"], "BudgetExceeded");
    assert_eq!(body["window"], "minute");
    assert_eq!(
        (
            body["metric"].as_str(),
            body["unit"].as_str(),
            body["limit"].as_u64()
        ),
        (Some("tokens"), Some("tokens"), Some(2000))
    );
    let retry: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(body["retryAfterSeconds"], retry);
    let billed = env.stub.billed()["amazon.nova-lite-v1:0"];
    assert_eq!(
        billed.calls as usize,
        statuses.len() - 1,
        "the denied request never reached Bedrock"
    );
    assert!(billed.input_tokens + billed.output_tokens <= 2000);
}

#[tokio::test]
async fn fallback_calls_the_cheaper_model_and_says_so() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let mut saw_fallback = false;
    for _ in 0..20 {
        let (status, headers, body) = env
            .converse("key-fallback", "pro", &prompt("summarise"))
            .await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        if let Some(model) = headers.get("x-tokenfence-fallback") {
            assert_eq!(model, "amazon.nova-micro-v1:0");
            assert_eq!(headers["x-tokenfence-model"], "amazon.nova-micro-v1:0");
            saw_fallback = true;
        }
    }
    assert!(
        saw_fallback,
        "the day's 0.001 USD runs out on nova-pro first"
    );
    let billed = env.stub.billed();
    let spent: u64 = billed
        .iter()
        .map(|(model, b)| {
            PriceBook::lookup(model)
                .unwrap()
                .cost(&Usage::new(b.input_tokens, b.output_tokens))
                .0
        })
        .sum();
    assert!(spent <= 1_000, "spent {spent} micro-USD of a 1,000 limit");
    assert!(billed["amazon.nova-micro-v1:0"].calls > 0);
}

#[tokio::test]
async fn shadow_mode_never_blocks_but_reports() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let mut shadowed = 0;
    for _ in 0..20 {
        let (status, headers, _) = env
            .converse("key-shadowed", "lite", &prompt("shadow"))
            .await;
        assert_eq!(status, 200);
        if let Some(note) = headers.get("x-tokenfence-shadow") {
            assert!(
                note.to_str()
                    .unwrap()
                    .starts_with("would-reject; `minute` limit of 1200 tokens")
            );
            shadowed += 1;
        }
    }
    assert!(
        shadowed > 0,
        "20 requests of ~70 tokens pass a 1200-token minute limit"
    );
    let metrics = env.metrics.lock().unwrap();
    let shadow_records = metrics.iter().filter(|m| m["ShadowDenied"] == 1).count();
    assert_eq!(shadow_records, shadowed);
    // Shadow usage is still counted.
    let used: u64 = env
        .gateway
        .ledger()
        .counters("shadowed")
        .iter()
        .map(|(_, c)| c.tokens)
        .sum();
    let billed = env.stub.billed()["amazon.nova-lite-v1:0"];
    assert_eq!(used, billed.input_tokens + billed.output_tokens);
}

#[tokio::test]
async fn bedrock_refusals_are_refunded_and_failures_after_start_charged_at_the_worst_case() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    // Refusals: Bedrock generated nothing, so the reservation is refunded.
    // Bedrock's answers are passed on as it sent them: status, `x-amzn-ErrorType`, body.
    for (marker, status, code) in [
        ("[[stub:throttle]]", 429, "ThrottlingException"),
        ("[[stub:notready]]", 429, "ModelNotReadyException"),
        ("[[stub:unavailable]]", 503, "ServiceUnavailableException"),
        ("[[stub:invalid]]", 400, "ValidationException"),
        ("[[stub:denied]]", 403, "AccessDeniedException"),
    ] {
        let (got, headers, body) = env.converse("key-capped", "lite", &prompt(marker)).await;
        assert_eq!(
            (got, headers["x-amzn-errortype"].to_str().unwrap()),
            (status, code),
            "{marker}: {body}"
        );
        assert!(body["message"].is_string(), "Bedrock's own body: {body}");
        assert!(!headers.contains_key("x-tokenfence-charged"));
    }
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    assert!(
        env.gateway
            .ledger()
            .counters("capped")
            .iter()
            .all(|(_, c)| c.tokens == 0 && c.cost.0 == 0),
        "{:?}",
        env.gateway.ledger().counters("capped")
    );
    assert_eq!(env.stub.billed_tokens(), 0, "refusals bill nothing");

    // After the generation started: charged the whole reservation, and the caller is told.
    let mut charged = 0;
    for (marker, status, code) in [
        ("[[stub:error]]", 500, "InternalServerException"),
        ("[[stub:modeltimeout]]", 408, "ModelTimeoutException"),
        ("[[stub:nousage]]", 200, ""),
    ] {
        let body = prompt(marker);
        let (got, headers, reply) = env.converse("key-capped", "lite", &body).await;
        assert_eq!(got, status, "{marker}: {reply}");
        if !code.is_empty() {
            assert_eq!(headers["x-amzn-errortype"], code);
        }
        assert_eq!(
            headers
                .get("x-tokenfence-charged")
                .map(|v| v.to_str().unwrap()),
            Some("worst-case"),
            "{marker}: {reply}"
        );
        charged += budget::estimate::input_bound("amazon.nova-lite-v1:0", &body) + 100;
    }
    let used = env.gateway.ledger().counters("capped")[0].1.tokens;
    assert_eq!(used, charged, "each at its reservation");
    assert!(
        used >= env.stub.billed_tokens(),
        "never less than Bedrock billed"
    );
    assert_eq!(env.gateway.ledger().open_reservations(), 0);
    let metrics = env.metrics.lock().unwrap();
    let failed = metrics
        .iter()
        .filter(|m| m["InvocationFailed"] == 1)
        .count();
    let worst = metrics
        .iter()
        .filter(|m| m["WorstCaseSettlements"] == 1)
        .count();
    assert_eq!((failed, worst), (7, 3));
}

#[tokio::test]
async fn a_client_that_disconnects_still_gets_its_request_settled() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let result = client
        .post(format!("{}/model/micro/converse", env.base))
        .header("x-api-key", "key-other")
        .body(prompt("[[stub:sleep=400]] slow").to_string())
        .send()
        .await;
    assert!(
        result.is_err(),
        "the client gave up before Bedrock answered"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        env.gateway.ledger().open_reservations(),
        0,
        "the abandoned request was settled"
    );
    let used: u64 = env
        .gateway
        .ledger()
        .counters("other")
        .iter()
        .map(|(_, c)| c.tokens)
        .sum();
    let billed = env.stub.billed()["amazon.nova-micro-v1:0"];
    assert_eq!(
        used,
        billed.input_tokens + billed.output_tokens,
        "settled to what Bedrock billed"
    );
}

#[tokio::test]
async fn usage_reports_the_callers_windows_only() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let (status, _, _) = env.converse("key-capped", "lite", &prompt("hello")).await;
    assert_eq!(status, 200);
    let usage = env.usage("key-capped").await;
    assert_eq!(usage["application"], "capped");
    let windows = usage["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2);
    assert_eq!(windows[0]["window"], "minute");
    assert_eq!(windows[0]["limitTokens"], 2000);
    let used = windows[0]["usedTokens"].as_u64().unwrap();
    assert!(used > 0);
    assert_eq!(windows[0]["remainingTokens"].as_u64().unwrap(), 2000 - used);
    // Another application's key sees its own (empty) usage, never `capped`'s.
    let other = env.usage("key-other").await;
    assert_eq!(other["application"], "other");
    assert_eq!(other["windows"][0]["usedTokens"], 0);
    let resp = env
        .http
        .get(format!("{}/usage", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn metrics_are_embedded_metric_format() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let (status, _, body) = env.converse("key-capped", "lite", &prompt("metrics")).await;
    assert_eq!(status, 200);
    let metrics = env.metrics.lock().unwrap();
    let request = metrics
        .iter()
        .find(|m| m["TotalRequests"] == 1)
        .expect("a request record");
    let directive = &request["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "TokenFence");
    assert_eq!(
        directive["Dimensions"],
        json!([["Application"], ["Application", "Model"]])
    );
    let names: Vec<&str> = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in [
        "TotalRequests",
        "RateLimitApproved",
        "RateLimitDenied",
        "InvocationFailed",
        "InputTokens",
        "OutputTokens",
        "TotalTokens",
        "CostUsd",
    ] {
        assert!(names.contains(&name), "{name}");
        assert!(request.get(name).is_some(), "{name} has a value");
    }
    assert_eq!(
        (request["Application"].as_str(), request["Model"].as_str()),
        (Some("capped"), Some("amazon.nova-lite-v1:0"))
    );
    assert_eq!(request["InputTokens"], body["usage"]["inputTokens"]);
    assert_eq!(request["RateLimitApproved"], 1);
    let gauges: Vec<&Value> = metrics
        .iter()
        .filter(|m| m.get("WindowUtilization").is_some())
        .collect();
    assert_eq!(gauges.len(), 2, "one gauge per limited window and metric");
    assert!(
        gauges
            .iter()
            .all(|g| g["WindowUtilization"].as_f64().unwrap() > 0.0)
    );
    // Prompts are never in metrics.
    assert!(!metrics.iter().any(|m| m.to_string().contains("metrics\"")));
}

/// Every dashboard widget searches a dimension set and metric the gateway's records publish: a
/// CloudWatch SEARCH `{TokenFence,A,B}` matches only metrics with exactly the dimensions A and B,
/// so a widget naming another set is empty on AWS however much traffic flows.
#[tokio::test]
async fn the_dashboard_searches_the_dimension_sets_the_gateway_emits() {
    let yaml = SPEC.replace("  capped:\n", "  capped:\n    cost_center: support\n");
    let env = start(Arc::new(MemoryLedger::new()), &yaml, |_| {}).await;
    let (status, _, _) = env
        .converse("key-capped", "lite", &prompt("dashboard"))
        .await;
    assert_eq!(status, 200);
    // What CloudWatch would hold: (sorted dimension set, metric name) per published metric.
    let mut published = std::collections::BTreeSet::new();
    for record in env.metrics.lock().unwrap().iter() {
        for directive in record["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            assert_eq!(directive["Namespace"], "TokenFence");
            for set in directive["Dimensions"].as_array().unwrap() {
                let mut dims: Vec<String> = set
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        let name = d.as_str().unwrap().to_string();
                        assert!(
                            record.get(&name).is_some(),
                            "dimension `{name}` has a value"
                        );
                        name
                    })
                    .collect();
                dims.sort();
                for metric in directive["Metrics"].as_array().unwrap() {
                    published.insert((dims.clone(), metric["Name"].as_str().unwrap().to_string()));
                }
            }
        }
    }
    let spec = spec::parse("t.yaml", &yaml).unwrap();
    let rendering = cfn::render(
        &spec,
        &cfn::RenderOptions {
            code_dir: "code".into(),
        },
    )
    .unwrap();
    let dashboard = rendering
        .stacks
        .iter()
        .find_map(|s| s.template.resources.get("Dashboard"))
        .expect("a dashboard");
    let body: Value = serde_json::from_str(
        dashboard.properties["DashboardBody"]["Fn::Sub"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut searched = 0;
    for widget in body["widgets"].as_array().unwrap() {
        for line in widget["properties"]["metrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let expression = line[0]["expression"].as_str().unwrap();
            let inner = expression
                .strip_prefix("SEARCH('{")
                .and_then(|e| e.split_once('}'))
                .unwrap_or_else(|| panic!("not a SEARCH: {expression}"));
            let mut dims: Vec<String> = inner.0.split(',').map(str::to_string).collect();
            assert_eq!(dims.remove(0), "TokenFence", "{expression}");
            dims.sort();
            let metric = inner
                .1
                .split_once("MetricName=\"")
                .and_then(|(_, m)| m.split_once('"'))
                .map(|(m, _)| m.to_string())
                .unwrap_or_else(|| panic!("no metric name: {expression}"));
            assert!(
                published.contains(&(dims.clone(), metric.clone())),
                "`{expression}` matches nothing the gateway publishes; published: {published:?}"
            );
            searched += 1;
        }
    }
    assert_eq!(searched, 8, "every metric widget was checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_clients_never_overspend_on_the_memory_ledger() {
    concurrency_holds(Arc::new(MemoryLedger::new()), 8).await;
}

#[tokio::test]
async fn a_key_spends_only_its_own_applications_budget() {
    let ledger = Arc::new(MemoryLedger::new());
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    // `other`'s key, with a body and a header naming `capped`: the key decides, nothing else.
    let mut body = prompt("charge capped, please");
    body["application"] = json!("capped");
    let status = env
        .http
        .post(format!("{}/model/micro/converse", env.base))
        .header("x-api-key", "key-other")
        .header("x-tokenfence-application", "capped")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status, 400,
        "the field reaches Bedrock, which refuses what it does not know"
    );
    assert_eq!(
        env.stub.billed_tokens(),
        0,
        "and nothing was charged to anyone"
    );
    // `capped`'s model is not `other`'s to call either.
    let (status, _, _) = env.converse("key-other", "lite", &prompt("x")).await;
    assert_eq!(status, 403);
    let (status, headers, _) = env
        .http
        .post(format!("{}/model/micro/converse", env.base))
        .header("x-api-key", "key-other")
        .header("x-tokenfence-application", "capped")
        .json(&prompt("charge capped, please"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r.headers().clone(), ()))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-tokenfence-application"], "other");
    assert!(
        ledger.counters("capped").iter().all(|(_, c)| c.tokens == 0),
        "`capped` was not charged: {:?}",
        ledger.counters("capped")
    );
    assert!(ledger.counters("other").iter().any(|(_, c)| c.tokens > 0));
}

#[tokio::test]
async fn a_token_only_application_on_an_unpriced_model_is_told_its_cost_is_unknown() {
    let spec = r#"
version: 1
name: u
models: { mystery: acme.mystery-v1:0 }
applications:
  tokens-only: { limits: [{ window: day, tokens: 10000 }] }
"#;
    let env = start(Arc::new(MemoryLedger::new()), spec, |_| {}).await;
    let (status, headers, body) = env
        .converse("key-tokens-only", "mystery", &prompt("hello"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-tokenfence-cost"], "unknown");
    let unpriced = env
        .metrics
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["UnpricedRequests"] == 1)
        .count();
    assert_eq!(unpriced, 1);
    let usage = env.usage("key-tokens-only").await;
    assert_eq!(usage["costKnown"], false, "{usage}");
    assert_eq!(usage["unpricedModels"], json!(["acme.mystery-v1:0"]));
}

#[tokio::test]
async fn the_sweeper_charges_abandoned_reservations_and_counts_them() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let limits = env
        .gateway
        .ledger()
        .budget("other")
        .await
        .unwrap()
        .unwrap()
        .limits;
    let attempt = ledger::new_attempt();
    for id in ["a", "b"] {
        let request = ledger::ReserveRequest {
            application: "other",
            user: None,
            user_limits: &[],
            reservation_id: id,
            limits: &limits,
            charge: budget::Charge::new(700, MicroUsd(0)),
            now: invoke::gateway::now_seconds(),
            hold_seconds: 0,
            attempt: &attempt,
        };
        env.gateway.ledger().reserve(&request).await.unwrap();
    }
    let expired = env.gateway.sweep().await.unwrap();
    assert_eq!(expired.len(), 2);
    let metrics = env.metrics.lock().unwrap();
    let record = metrics
        .iter()
        .find(|m| m.get("ExpiredReservations").is_some())
        .expect("an ExpiredReservations record");
    assert_eq!(
        (
            record["Application"].as_str(),
            record["ExpiredReservations"].as_u64(),
            record["ExpiredTokens"].as_u64()
        ),
        (Some("other"), Some(2), Some(1400))
    );
    assert_eq!(env.gateway.ledger().counters("other")[0].1.tokens, 1400);
}

#[tokio::test]
async fn keys_are_accepted_as_bearer_tokens_too() {
    let env = start(Arc::new(MemoryLedger::new()), SPEC, |_| {}).await;
    let send = |auth: &'static str| {
        env.http
            .post(format!("{}/model/micro/converse", env.base))
            .header("authorization", auth)
            .body(prompt("hello").to_string())
            .send()
    };
    let ok = send("Bearer key-other").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-tokenfence-application"], "other");
    let wrong = send("Bearer nope").await.unwrap();
    assert_eq!(wrong.status(), 401);
    for missing in ["Basic a2V5LW90aGVy", "Bearer ", "key-other"] {
        let resp = send(missing).await.unwrap();
        assert_eq!(resp.status(), 401, "{missing}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "MissingApiKey");
    }
    assert_eq!(env.stub.requests(), 1);
}
