//! Seats through the deployed REST API: a spec with per-user budgets is rendered, linted and
//! deployed; keys are issued with `synth keys create --stack`, as a platform team issues them;
//! each developer calls the stack's `ApiUrl` with the bearer key a coding agent sends. The REST
//! API's authorizer finds the seat by its key's digest in the ledger and hands the call to its
//! application's usage plan; the deployed invoke function holds the user's and the application's
//! windows in one step, under its own role's IAM policies. A revoked key is refused with 401.

use e2e::LocalAws;
use ledger::{DynamoLedger, Ledger};
use serde_json::{Value, json};

const SPEC: &str = r#"version: 1
name: seats
models: { lite: amazon.nova-lite-v1:0 }
defaults: { max_tokens: 100 }
applications:
  team:
    limits: [{ window: day, tokens: 100000 }]
    per_user:
      limits: [{ window: day, tokens: 700 }]
    users:
      lead:
        limits: [{ window: day, tokens: 5000 }]
"#;

/// `synth keys ARGS` through cargo, against the stack in moto; its stdout.
fn synth_keys(local: &LocalAws, args: &[&str]) -> std::process::Output {
    harness::nested_cargo()
        .args(["run", "--quiet", "--locked", "-p", "synth", "--", "keys"])
        .args(args)
        .env("AWS_ENDPOINT_URL", local.moto.url())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("cargo run -p synth")
}

fn issue(local: &LocalAws, user: &str) -> String {
    let out = synth_keys(
        local,
        &[
            "create", "--stack", "seats", "--app", "team", "--user", user,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_are_held_through_the_deployed_api() {
    let local = LocalAws::start("seats").await;
    let spec = local.dir.join("seats.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let outputs = local.render_lint_deploy(&spec, "seats");
    let (endpoint, ca) = local.moto.rest_api(&outputs["ApiUrl"]).await;
    let ledger = DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&local.sdk),
        outputs["LedgerTableName"].clone(),
    );

    let alice = issue(&local, "alice");
    let bob = issue(&local, "bob");
    let lead = issue(&local, "lead");
    let (_, team_key) = local.api_key("seats-team");

    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("the CA file")).unwrap(),
        )
        .build()
        .unwrap();
    let call = |key: String, user: &'static str, i: usize| {
        let http = http.clone();
        let url = format!("{endpoint}/model/lite/converse");
        async move {
            let body = json!({
                "messages": [{ "role": "user", "content": [{ "text": format!("question {i}") }] }],
                "requestMetadata": { "user": user }
            });
            let response = http
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .expect("the API answers");
            let status = response.status().as_u16();
            let seat = response
                .headers()
                .get("x-tokenfence-user")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, seat, body)
        }
    };

    // Alice spends her own 700 tokens a day; the 429 says it is hers.
    let mut refused = None;
    for i in 0..14 {
        let (status, seat, body) = call(alice.clone(), "alice", i).await;
        assert_eq!(seat.as_deref(), Some("alice"), "{status}: {body}");
        match status {
            200 => {}
            429 => {
                refused = Some(body);
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let refused = refused.expect("alice's daily limit refused her");
    assert_eq!(refused["user"], "alice");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("user `alice` of application `team` would exceed its `day` limit"),
        "{refused}"
    );
    // Bob and the lead have their own; the application's own key is no one's seat.
    let (status, seat, body) = call(bob.clone(), "bob", 0).await;
    assert_eq!((status, seat.as_deref()), (200, Some("bob")), "{body}");
    for i in 0..10 {
        let (status, seat, body) = call(lead.clone(), "lead", i).await;
        assert_eq!((status, seat.as_deref()), (200, Some("lead")), "{body}");
    }
    let (status, seat, body) = call(team_key.clone(), "none", 0).await;
    assert_eq!((status, seat), (200, None), "{body}");

    // Each seat's window in the ledger holds what the stub billed for that user.
    let config = ledger
        .budget("team")
        .await
        .unwrap()
        .expect("the team's budget");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let billed = local.stub.billed_by_metadata();
    for user in ["alice", "bob", "lead"] {
        let limits = &config.user_budget(user).unwrap().limits;
        let used = ledger.usage("team", Some(user), limits, now).await.unwrap()[0]
            .used
            .tokens;
        assert_eq!(
            used,
            billed[&format!("user={user}")].total_tokens(),
            "{user}"
        );
        assert!(used <= limits[0].tokens.unwrap(), "{user}");
    }
    assert_eq!(
        e2e::used_tokens(&ledger, "team").await,
        local.stub.billed_tokens(),
        "the application's window holds every seat's spend and its own"
    );

    // Revoked: refused by the authorizer (401) before the function is called.
    let bob_id = ledger::key_id(&ledger::key_digest(&bob));
    let out = synth_keys(
        &local,
        &[
            "revoke", "--stack", "seats", "--app", "team", "--id", &bob_id,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = local.stub.requests();
    let (status, _, _) = call(bob.clone(), "bob", 1).await;
    assert_eq!(status, 401);
    let (status, _, _) = call("tfk_0000".into(), "nobody", 0).await;
    assert_eq!(status, 401, "an unknown seat key");
    assert_eq!(local.stub.requests(), before, "refused before Bedrock");

    local
        .moto
        .assert_roles_allowed(&[
            ("apigateway:GET", ":/apikeys/"),
            ("dynamodb:GetItem", "table/"),
            ("bedrock:InvokeModel", "application-inference-profile"),
        ])
        .await;
}
