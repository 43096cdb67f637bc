//! Seats: users inside an application, each with a budget of their own held in the same atomic
//! step as the application's. The stub bills by each request's `requestMetadata`, which these
//! callers set to their user, so what each user was billed can be checked against its limit.

mod common;

use std::sync::Arc;

use budget::{Limit, PriceBook, Usage};
use common::{Lcg, prompt, start_with_keys};
use ledger::{DynamoLedger, Ledger, MemoryLedger};
use serde_json::{Value, json};

const TEAM: &str = r#"
version: 1
name: seats
models: { lite: amazon.nova-lite-v1:0, micro: amazon.nova-micro-v1:0 }
defaults: { max_tokens: 200 }
applications:
  team:
    models: [lite]
    limits: [{ window: day, tokens: 30000, usd: 0.02 }]
    per_user:
      limits: [{ window: day, tokens: 6000 }]
    users:
      lead:
        limits: [{ window: day, tokens: 9000 }]
      # Below most of its own requests: refused by its own limit whenever the application still
      # has room, however the 64 callers interleave (which limit binds first among the others
      # depends on the order the ledger sees them in).
      u7:
        limits: [{ window: day, tokens: 600 }]
"#;

const USERS: [&str; 8] = ["lead", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];

fn seat_keys() -> Vec<(String, &'static str, &'static str)> {
    USERS
        .iter()
        .map(|u| (format!("key-{u}"), "team", *u))
        .collect()
}

/// 64 callers across the 8 users, random prompt sizes and caps, against tight user and
/// application limits: no user is billed over its limit, the application is not billed over its
/// own, and every ledger window holds exactly what the stub billed.
async fn seats_hold<L: Ledger>(ledger: Arc<L>, requests_per_client: usize) {
    let keys = seat_keys();
    let seats: Vec<(&str, &str, &str)> =
        keys.iter().map(|(k, a, u)| (k.as_str(), *a, *u)).collect();
    let env = Arc::new(start_with_keys(Arc::clone(&ledger), TEAM, |_| {}, &seats).await);
    let mut tasks = Vec::new();
    for client in 0..64u64 {
        let env = Arc::clone(&env);
        let user = USERS[(client % 8) as usize];
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(client + 11);
            let mut answers = Vec::new();
            for _ in 0..requests_per_client {
                let text = "y".repeat(rng.next(3_000) as usize + 1);
                let body = json!({
                    "messages": [{ "role": "user", "content": [{ "text": text }] }],
                    "inferenceConfig": { "maxTokens": rng.next(300) + 1 },
                    "requestMetadata": { "user": user }
                });
                let (status, _, reply) = env.converse(&format!("key-{user}"), "lite", &body).await;
                answers.push((user, status, reply));
            }
            answers
        }));
    }
    let (mut ok, mut by_user, mut by_app) = (0u64, 0, 0);
    for t in tasks {
        for (user, status, reply) in t.await.unwrap() {
            match status {
                200 => ok += 1,
                429 if reply["user"] == user => {
                    by_user += 1;
                    assert!(
                        reply["message"].as_str().unwrap().starts_with(&format!(
                            "user `{user}` of application `team` would exceed its `day` limit"
                        )),
                        "{reply}"
                    );
                }
                429 => {
                    by_app += 1;
                    assert!(reply.get("user").is_none(), "{reply}");
                }
                other => panic!("unexpected {other}: {reply}"),
            }
        }
    }
    assert!(
        ok > 0 && by_user > 0 && by_app > 0,
        "both limits bind ({ok} ok, {by_user} by a user's limit, {by_app} by the application's)"
    );

    let now = invoke::gateway::now_seconds();
    let config = ledger.budget("team").await.unwrap().unwrap();
    let by_metadata = env.stub.billed_by_metadata();
    let mut total = Usage::default();
    for user in USERS {
        let billed = by_metadata
            .get(&format!("user={user}"))
            .copied()
            .unwrap_or_default();
        let usage = billed.usage();
        total = Usage {
            input_tokens: total.input_tokens + usage.input_tokens,
            output_tokens: total.output_tokens + usage.output_tokens,
            cache_read_tokens: total.cache_read_tokens + usage.cache_read_tokens,
            cache_write_tokens: total.cache_write_tokens + usage.cache_write_tokens,
            cache_write_5m_tokens: total.cache_write_5m_tokens + usage.cache_write_5m_tokens,
            cache_write_1h_tokens: total.cache_write_1h_tokens + usage.cache_write_1h_tokens,
        };
        let limits: &[Limit] = &config.user_budget(user).unwrap().limits;
        let windows = ledger.usage("team", Some(user), limits, now).await.unwrap();
        for w in &windows {
            assert_eq!(
                w.used.tokens,
                usage.total_tokens(),
                "{user}: the ledger holds what was billed"
            );
            assert!(
                w.limit.tokens.is_none_or(|l| usage.total_tokens() <= l),
                "{user} billed {} over its {:?}",
                usage.total_tokens(),
                w.limit
            );
        }
    }
    let all = env.stub.billed()["amazon.nova-lite-v1:0"];
    assert_eq!(
        all.calls, ok,
        "every approved request was billed once, and nothing else"
    );
    assert_eq!(all.usage(), total, "every billed request was one user's");
    let price = PriceBook::lookup("amazon.nova-lite-v1:0").unwrap();
    for w in ledger
        .usage("team", None, &config.limits, now)
        .await
        .unwrap()
    {
        assert_eq!(w.used.tokens, total.total_tokens());
        assert!(w.limit.tokens.is_none_or(|l| w.used.tokens <= l));
        assert!(w.limit.usd.is_none_or(|l| w.used.cost <= l));
        // Each request's cost is rounded up to the micro-dollar: the ledger's sum is at least the
        // bill's, by at most a micro-dollar a request.
        let billed_cost = price.cost(&total).0;
        assert!(w.used.cost.0 >= billed_cost && w.used.cost.0 <= billed_cost + ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_callers_across_eight_users_never_overspend_a_user_or_the_application() {
    seats_hold(Arc::new(MemoryLedger::new()), 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seats_hold_on_dynamodb_too() {
    // Serialized, as the application-level test on moto: moto's transactions are not isolated.
    let moto = harness::Moto::start_serialized();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    seats_hold(Arc::new(DynamoLedger::new(client, "ledger")), 3).await;
}

const POLICIES: &str = r#"
version: 1
name: seats
models: { lite: amazon.nova-lite-v1:0, micro: amazon.nova-micro-v1:0 }
defaults: { max_tokens: 100 }
applications:
  team:
    models: [lite, micro]
    limits: [{ window: day, tokens: 100000 }]
    per_user:
      limits: [{ window: day, tokens: 800 }]
    users:
      watcher:
        mode: shadow
        limits: [{ window: day, tokens: 800 }]
      saver:
        limits: [{ window: day, usd: 0.0001 }]
        on_exceed: { action: fallback, model: micro }
  solo:
    limits: [{ window: day, tokens: 900 }]
    per_user:
      limits: [{ window: day, tokens: 100000 }]
"#;

#[tokio::test]
async fn a_users_limit_is_its_own_and_says_so() {
    let env = start_with_keys(
        Arc::new(MemoryLedger::new()),
        POLICIES,
        |_| {},
        &[
            ("key-alice", "team", "alice"),
            ("key-bob", "team", "bob"),
            ("key-watcher", "team", "watcher"),
            ("key-saver", "team", "saver"),
            ("key-solo-carol", "solo", "carol"),
        ],
    )
    .await;
    // Alice spends her default 800 tokens a day; Bob, same application, still has his.
    let mut alice = Vec::new();
    for i in 0..14 {
        let (status, headers, body) = env
            .converse("key-alice", "lite", &prompt(&format!("question {i}")))
            .await;
        alice.push(status);
        if status == 200 {
            assert_eq!(headers["x-tokenfence-user"], "alice");
            assert!(headers.contains_key("x-tokenfence-remaining-user-day-tokens"));
            assert!(headers.contains_key("x-tokenfence-remaining-day-tokens"));
        } else {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["user"], "alice");
            assert_eq!(body["window"], "day");
            assert_eq!(body["limit"], 800);
            assert_eq!(headers["x-tokenfence-user"], "alice");
            assert!(
                body["message"].as_str().unwrap().contains("it resets in"),
                "{body}"
            );
        }
    }
    assert!(alice.contains(&200) && alice.contains(&429), "{alice:?}");
    let (status, _, _) = env.converse("key-bob", "lite", &prompt("bob's turn")).await;
    assert_eq!(status, 200, "bob's budget is his own");

    // `/usage` answers for the caller's user and its application.
    let usage = env.usage("key-alice").await;
    assert_eq!(usage["application"], "team");
    assert_eq!(usage["user"]["name"], "alice");
    assert_eq!(usage["user"]["limited"], true);
    let mine = &usage["user"]["windows"][0];
    assert_eq!(mine["limitTokens"], 800);
    assert!(mine["usedTokens"].as_u64().unwrap() > 0);
    let app_used = usage["windows"][0]["usedTokens"].as_u64().unwrap();
    let bob = env.usage("key-bob").await;
    assert_eq!(
        app_used,
        mine["usedTokens"].as_u64().unwrap()
            + bob["user"]["windows"][0]["usedTokens"].as_u64().unwrap(),
        "the application's window holds its users' spend"
    );

    // A shadow user is never blocked, and told what would have happened.
    let mut shadowed = 0;
    for i in 0..14 {
        let (status, headers, _) = env
            .converse("key-watcher", "lite", &prompt(&format!("watch {i}")))
            .await;
        assert_eq!(status, 200);
        if let Some(note) = headers.get("x-tokenfence-shadow") {
            assert!(
                note.to_str()
                    .unwrap()
                    .starts_with("would-reject; user `watcher`'s `day` limit"),
                "{note:?}"
            );
            shadowed += 1;
        }
    }
    assert!(shadowed > 0);

    // A user's own fallback: over its USD limit on `lite`, served by `micro`.
    let mut fell_back = false;
    for i in 0..16 {
        let (status, headers, body) = env
            .converse("key-saver", "lite", &prompt(&format!("save {i}")))
            .await;
        match status {
            200 => {
                fell_back |= headers
                    .get("x-tokenfence-fallback")
                    .is_some_and(|m| m == "amazon.nova-micro-v1:0")
            }
            429 => assert_eq!(body["user"], "saver", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(fell_back, "the saver's fallback was used");

    // The application's limit binds its users too, and the 429 says it is the application's.
    let mut last = Value::Null;
    for i in 0..16 {
        let (status, _, body) = env
            .converse("key-solo-carol", "lite", &prompt(&format!("solo {i}")))
            .await;
        if status == 429 {
            last = body;
            break;
        }
    }
    assert!(last.get("user").is_none(), "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("application `solo` would exceed"),
        "{last}"
    );
}

#[tokio::test]
async fn a_users_first_requests_meet_its_default_limits_at_once() {
    // Many first requests of one new user at the same instant: the default budget holds from the
    // first one (no window is created lazily outside the reservation).
    let env = Arc::new(
        start_with_keys(
            Arc::new(MemoryLedger::new()),
            POLICIES,
            |_| {},
            &[("key-newcomer", "team", "newcomer")],
        )
        .await,
    );
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let env = Arc::clone(&env);
            tokio::spawn(async move {
                env.converse("key-newcomer", "lite", &prompt(&format!("hi {i}")))
                    .await
                    .0
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    let billed = env.stub.billed()["amazon.nova-lite-v1:0"];
    assert_eq!(billed.calls, ok);
    assert!(
        billed.total_tokens() <= 800,
        "billed {} over the default 800",
        billed.total_tokens()
    );
    assert!(ok < 32, "the default limit refused some of the burst");
}
