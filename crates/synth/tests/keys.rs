//! A key's lifecycle against moto: `synth keys create` in a deployed stack's ledger, calls with the
//! key through the gateway (the same router `invoke serve` runs, over the same DynamoDB ledger),
//! `list`, `rotate` and `revoke` (then 401), as a platform team would run them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bedrock_stub::StubConfig;
use invoke::gateway::Gateway;
use invoke::metrics::MetricsSink;
use ledger::{DynamoLedger, Ledger};
use serde_json::{Value, json};

const SPEC: &str = r#"
version: 1
name: keys
models: { lite: amazon.nova-lite-v1:0 }
defaults: { max_tokens: 100 }
applications:
  coding-agents:
    limits: [{ window: day, tokens: 100000 }]
    per_user:
      limits: [{ window: day, tokens: 700 }]
"#;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_issued_used_rotated_and_revoked() {
    let moto = harness::Moto::start();
    common::ledger_stack(&moto, "keys", "keys-ledger");
    let config = moto.sdk_config().await;
    let ledger = Arc::new(DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&config),
        "keys-ledger",
    ));

    // Before the application is deployed, no key can be issued for it.
    let early = common::synth_on(
        &moto,
        &[
            "keys",
            "create",
            "--stack",
            "keys",
            "--app",
            "coding-agents",
            "--user",
            "alice",
        ],
    );
    assert!(!early.status.success());
    assert!(
        String::from_utf8_lossy(&early.stderr)
            .contains("application `coding-agents` has no budget in the ledger"),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );

    let spec = spec::parse("keys.yaml", SPEC).unwrap();
    ledger
        .put_budget(
            &invoke::settings::budget_from_spec(&spec, "coding-agents").unwrap(),
            &[],
        )
        .await
        .unwrap();

    let created = common::synth_on(
        &moto,
        &[
            "keys",
            "create",
            "--stack",
            "keys",
            "--app",
            "coding-agents",
            "--user",
            "alice",
        ],
    );
    let alice = ok(&created).trim().to_string();
    assert!(alice.starts_with("tfk_") && alice.len() == 68, "{alice}");
    let told = String::from_utf8_lossy(&created.stderr);
    assert!(
        told.contains("for user `alice` of application `coding-agents`"),
        "{told}"
    );
    let bob = ok(&common::synth_on(
        &moto,
        &[
            "keys",
            "create",
            "--table",
            "keys-ledger",
            "--app",
            "coding-agents",
            "--user",
            "bob",
        ],
    ))
    .trim()
    .to_string();

    // Only the digest is stored: no item holds the key.
    let scan = aws_sdk_dynamodb::Client::new(&config)
        .scan()
        .table_name("keys-ledger")
        .send()
        .await
        .unwrap();
    let stored = format!("{:?}", scan.items());
    assert!(!stored.contains(&alice) && !stored.contains(&alice[4..]));
    assert!(stored.contains(&ledger::key_digest(&alice)));

    let listed: Value = serde_json::from_str(&ok(&common::synth_on(
        &moto,
        &[
            "keys",
            "list",
            "--stack",
            "keys",
            "--app",
            "coding-agents",
            "--json",
        ],
    )))
    .unwrap();
    let users: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 2);
    assert!(users.contains(&"alice") && users.contains(&"bob"));
    let alice_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["user"] == "alice")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(alice_id, ledger::key_id(&ledger::key_digest(&alice)));

    // The gateway over the same ledger, with no static keys: the issued ones authenticate.
    let stub = bedrock_stub::start("127.0.0.1:0".parse().unwrap(), StubConfig::default())
        .await
        .unwrap();
    let bedrock_config = harness::sdk_config_at(&stub.url()).await;
    let mut settings = invoke::settings::from_spec(&spec);
    // Revocation takes effect within the key cache's lifetime; none here.
    settings.config_ttl = std::time::Duration::ZERO;
    let gateway = Arc::new(Gateway::new(
        Arc::clone(&ledger),
        invoke::bedrock::SignedBedrock::from_config(&bedrock_config),
        settings,
        MetricsSink::Capture(Default::default()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, invoke::http::router(gateway, HashMap::new()))
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let call = |key: String, text: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let resp = http
                .post(format!("{base}/model/lite/converse"))
                .header("authorization", format!("Bearer {key}"))
                .json(&json!({ "messages": [{ "role": "user", "content": [{ "text": text }] }] }))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let user = resp
                .headers()
                .get("x-tokenfence-user")
                .map(|v| v.to_str().unwrap().to_string());
            (status, user, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, user, body) = call(alice.clone(), "hello".into()).await;
    assert_eq!((status, user.as_deref()), (200, Some("alice")), "{body}");
    // Alice's own 700 tokens a day, spent in her seat only.
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(call(alice.clone(), format!("question {i}")).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(
        call(bob.clone(), "bob".into()).await.0,
        200,
        "bob's seat is his own"
    );

    // Rotation: the new key works, the old one is refused.
    let rotated = common::synth_on(
        &moto,
        &[
            "keys",
            "rotate",
            "--stack",
            "keys",
            "--app",
            "coding-agents",
            "--id",
            &alice_id,
        ],
    );
    let new_alice = ok(&rotated).trim().to_string();
    assert_ne!(new_alice, alice);
    let (status, _, body) = call(alice.clone(), "old key".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("InvalidApiKey")),
        "{body}"
    );
    let (status, user, _) = call(new_alice.clone(), "new key".into()).await;
    assert_eq!(
        status, 429,
        "the new key is still alice's seat, and her day is spent"
    );
    assert_eq!(user.as_deref(), Some("alice"));

    // Revocation: 401 from then on; revoking twice says there is no such key.
    let bob_id = ledger::key_id(&ledger::key_digest(&bob));
    ok(&common::synth_on(
        &moto,
        &[
            "keys",
            "revoke",
            "--stack",
            "keys",
            "--app",
            "coding-agents",
            "--id",
            &bob_id,
        ],
    ));
    let (status, _, body) = call(bob.clone(), "after revocation".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("InvalidApiKey")),
        "{body}"
    );
    let again = common::synth_on(
        &moto,
        &[
            "keys",
            "revoke",
            "--stack",
            "keys",
            "--app",
            "coding-agents",
            "--id",
            &bob_id,
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!("has no key `{bob_id}`")));
    let table = ok(&common::synth_on(
        &moto,
        &["keys", "list", "--stack", "keys", "--app", "coding-agents"],
    ));
    assert_eq!(
        table.lines().count(),
        2,
        "a header and alice's new key:\n{table}"
    );
    assert!(table.contains("alice") && !table.contains("bob"), "{table}");

    // `synth report` lists each seat's current windows, as the ledger holds them.
    let report: Value = serde_json::from_str(&ok(&common::synth_on(
        &moto,
        &["report", "--stack", "keys", "--since", "1h", "--json"],
    )))
    .unwrap();
    let seats = report["applications"][0]["users"]
        .as_array()
        .unwrap()
        .clone();
    let now = invoke::gateway::now_seconds();
    let config = ledger.budget("coding-agents").await.unwrap().unwrap();
    let limits = config.user_budget("alice").unwrap().limits.clone();
    for (seat, name) in seats.iter().zip(["alice", "bob"]) {
        assert_eq!(seat["user"], name, "{seats:?}");
        let used = ledger
            .usage("coding-agents", Some(name), &limits, now)
            .await
            .unwrap()[0]
            .used
            .tokens;
        assert_eq!(seat["limits"][0]["used"], used, "{name}");
        assert_eq!(seat["limits"][0]["limit"], 700);
        assert!(used > 0);
    }
    assert_eq!(seats.len(), 2);
    let text = ok(&common::synth_on(
        &moto,
        &["report", "--stack", "keys", "--since", "1h"],
    ));
    assert!(text.contains("seats (current window)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("coding-agents") && l.contains("alice") && l.contains("of 700")),
        "{text}"
    );
}
