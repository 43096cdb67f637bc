//! The ledger contract, checked on both implementations: the in-memory ledger, and DynamoDB on a
//! moto server through the real SDK client.

use budget::config::{BudgetConfig, EnforcementMode, ExceedAction};
use budget::{Charge, LimitMetric, MicroUsd, Window};
use ledger::*;

const NOW: i64 = 1_795_801_683; // 2026-11-27T17:48:03Z

fn config() -> BudgetConfig {
    BudgetConfig {
        application: "bot".into(),
        cost_center: Some("cc-1".into()),
        models: vec![],
        limits: vec![
            budget::Limit {
                window: Window::Minute,
                tokens: Some(1_000),
                usd: None,
            },
            budget::Limit {
                window: Window::Day,
                tokens: None,
                usd: Some(MicroUsd(500)),
            },
        ],
        on_exceed: ExceedAction::Reject,
        mode: EnforcementMode::Enforce,
        prices: vec![],
        inference_profiles: vec![],
        results_queue_url: Some("http://queue".into()),
        version: 7,
        owner: None,
        applied_request: None,
        per_user: None,
        users: Default::default(),
        user_metrics: false,
        api_key_ids: Vec::new(),
    }
}

fn request<'a>(
    id: &'a str,
    limits: &'a [budget::Limit],
    tokens: u64,
    micros: u64,
) -> ReserveRequest<'a> {
    ReserveRequest {
        application: "bot",
        user: None,
        user_limits: &[],
        reservation_id: id,
        limits,
        charge: Charge::new(tokens, MicroUsd(micros)),
        now: NOW,
        hold_seconds: 900,
        // Every call is its own attempt, as in the gateway.
        attempt: Box::leak(ledger::new_attempt().into_boxed_str()),
    }
}

async fn contract<L: Ledger>(ledger: L) {
    let cfg = config();
    let limits = cfg.limits.clone();
    // Configuration and identities.
    assert_eq!(ledger.budget("bot").await.unwrap(), None);
    let key = Identity::ApiKeyId("k1".into());
    let queue = Identity::QueueArn("arn:aws:sqs:us-east-1:123:q".into());
    ledger
        .put_budget(&cfg, &[key.clone(), queue.clone()])
        .await
        .unwrap();
    assert_eq!(ledger.budget("bot").await.unwrap(), Some(cfg.clone()));
    assert_eq!(
        ledger.application_for(&key).await.unwrap().as_deref(),
        Some("bot")
    );
    assert_eq!(
        ledger.application_for(&queue).await.unwrap().as_deref(),
        Some("bot")
    );
    assert_eq!(
        ledger
            .application_for(&Identity::ApiKeyId("k2".into()))
            .await
            .unwrap(),
        None
    );

    // Reserve in every window.
    let ReserveOutcome::Reserved(first) = ledger
        .reserve(&request("r1", &limits, 600, 300))
        .await
        .unwrap()
    else {
        panic!("r1 fits")
    };
    assert_eq!(first.slots.len(), 2);
    let usage = ledger.usage("bot", None, &limits, NOW).await.unwrap();
    assert_eq!(
        usage.iter().map(|u| u.used).collect::<Vec<_>>(),
        vec![Charge::new(600, MicroUsd(300)); 2]
    );

    // A second that does not fit in the minute changes nothing anywhere (all or nothing).
    match ledger
        .reserve(&request("r2", &limits, 500, 100))
        .await
        .unwrap()
    {
        ReserveOutcome::Exceeded {
            exceeded,
            retry_after,
            ..
        } => {
            assert_eq!(
                (
                    exceeded.window,
                    exceeded.metric,
                    exceeded.limit,
                    exceeded.used
                ),
                (Window::Minute, LimitMetric::Tokens, 1_000, 600)
            );
            assert_eq!(retry_after, 57);
        }
        other => panic!("r2 must exceed: {other:?}"),
    }
    // One that does not fit in the day's USD.
    match ledger
        .reserve(&request("r3", &limits, 10, 201))
        .await
        .unwrap()
    {
        ReserveOutcome::Exceeded { exceeded, .. } => assert_eq!(
            (exceeded.window, exceeded.metric, exceeded.used),
            (Window::Day, LimitMetric::Usd, 300)
        ),
        other => panic!("r3 must exceed: {other:?}"),
    }
    // One larger than a limit on its own never reaches the store.
    assert!(matches!(
        ledger
            .reserve(&request("r4", &limits, 1_001, 0))
            .await
            .unwrap(),
        ReserveOutcome::Exceeded { .. }
    ));
    let usage = ledger.usage("bot", None, &limits, NOW).await.unwrap();
    assert_eq!(
        usage[0].used,
        Charge::new(600, MicroUsd(300)),
        "failed reservations left nothing behind"
    );

    // The same ID again is a duplicate, in flight.
    assert_eq!(
        ledger.reserve(&request("r1", &limits, 1, 1)).await.unwrap(),
        ReserveOutcome::Duplicate {
            in_flight: true,
            result: None
        }
    );

    // Settle to the actual usage, remembering a result; settling again changes nothing.
    let done = Settlement {
        actual: Charge::new(200, MicroUsd(120)),
        completion: Some(Completion {
            remember_seconds: 3_600,
            result: Some("{\"ok\":1}".into()),
            worst_case: None,
        }),
        now: NOW,
    };
    ledger.settle(&first, &done).await.unwrap();
    ledger.settle(&first, &done).await.unwrap();
    let usage = ledger.usage("bot", None, &limits, NOW).await.unwrap();
    assert_eq!(usage[0].used, Charge::new(200, MicroUsd(120)));
    assert_eq!(usage[1].used, Charge::new(200, MicroUsd(120)));
    assert_eq!(
        ledger.reserve(&request("r1", &limits, 1, 1)).await.unwrap(),
        ReserveOutcome::Duplicate {
            in_flight: false,
            result: Some("{\"ok\":1}".into())
        }
    );

    // A refund forgets the request, so it may be retried.
    let ReserveOutcome::Reserved(r5) = ledger
        .reserve(&request("r5", &limits, 100, 50))
        .await
        .unwrap()
    else {
        panic!("r5 fits")
    };
    ledger
        .settle(
            &r5,
            &Settlement {
                actual: Charge::ZERO,
                completion: None,
                now: NOW,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.usage("bot", None, &limits, NOW).await.unwrap()[0].used,
        Charge::new(200, MicroUsd(120))
    );
    assert!(matches!(
        ledger
            .reserve(&request("r5", &limits, 100, 50))
            .await
            .unwrap(),
        ReserveOutcome::Reserved(_)
    ));

    // A new minute starts empty; the day keeps counting.
    let later = ledger.usage("bot", None, &limits, NOW + 60).await.unwrap();
    assert_eq!(later[0].used, Charge::ZERO);
    assert_eq!(later[1].used, Charge::new(300, MicroUsd(170)));

    // A worst-case settlement charges the whole reservation; the ID may be tried again.
    let ReserveOutcome::Reserved(r6) = ledger
        .reserve(&request("r6", &limits, 40, 20))
        .await
        .unwrap()
    else {
        panic!("r6 fits")
    };
    let charged = Settlement {
        actual: r6.charge,
        completion: Some(Completion {
            remember_seconds: 900,
            result: None,
            worst_case: Some("server error after the request was sent".into()),
        }),
        now: NOW,
    };
    ledger.settle(&r6, &charged).await.unwrap();
    let day = ledger.usage("bot", None, &limits, NOW).await.unwrap()[1].used;
    assert_eq!(day, Charge::new(340, MicroUsd(190)));
    let ReserveOutcome::Reserved(r6_again) = ledger
        .reserve(&request("r6", &limits, 10, 5))
        .await
        .unwrap()
    else {
        panic!("a request charged at its worst case may be retried")
    };
    ledger
        .settle(
            &r6_again,
            &Settlement {
                actual: Charge::new(10, MicroUsd(5)),
                completion: Some(Completion {
                    remember_seconds: 900,
                    ..Completion::default()
                }),
                now: NOW,
            },
        )
        .await
        .unwrap();

    // Reservations never settled (r5's retry above, and this one) are closed by the sweeper at
    // their worst case, once.
    let ReserveOutcome::Reserved(lost) = ledger
        .reserve(&request("lost", &limits, 30, 15))
        .await
        .unwrap()
    else {
        panic!("lost fits")
    };
    assert!(
        ledger.sweep(NOW + 10).await.unwrap().is_empty(),
        "still within its hold"
    );
    let mut expired = ledger.sweep(NOW + 901).await.unwrap();
    expired.sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
    assert_eq!(
        expired,
        vec![
            Expired {
                application: "bot".into(),
                reservation_id: "lost".into(),
                charge: lost.charge
            },
            Expired {
                application: "bot".into(),
                reservation_id: "r5".into(),
                charge: Charge::new(100, MicroUsd(50))
            }
        ]
    );
    assert!(
        ledger.sweep(NOW + 902).await.unwrap().is_empty(),
        "closed once"
    );
    let day = ledger.usage("bot", None, &limits, NOW).await.unwrap()[1].used;
    assert_eq!(day, Charge::new(380, MicroUsd(210)), "charged in full");
    // A settlement arriving after the sweep changes nothing.
    ledger
        .settle(
            &lost,
            &Settlement {
                actual: Charge::ZERO,
                completion: None,
                now: NOW + 903,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.usage("bot", None, &limits, NOW).await.unwrap()[1].used,
        Charge::new(380, MicroUsd(210))
    );

    // Deleting the budget removes configuration and identities.
    assert!(
        ledger
            .delete_budget("bot", None, std::slice::from_ref(&key))
            .await
            .unwrap()
    );
    assert_eq!(ledger.budget("bot").await.unwrap(), None);
    assert_eq!(ledger.application_for(&key).await.unwrap(), None);
}

/// Ownership is decided by the writes themselves, not by reading first: one owner per
/// application, identities stay with their application, claimed names with their holder.
async fn ownership<L: Ledger>(ledger: L) {
    let owned = |app: &str, owner: &str| BudgetConfig {
        application: app.into(),
        owner: Some(owner.into()),
        ..config()
    };
    let key = Identity::ApiKeyId("k1".into());
    let queue = Identity::QueueArn("arn:aws:sqs:us-east-1:1:q".into());
    let owned_by = |r: Result<(), LedgerError>| match r {
        Err(e @ LedgerError::Owned { .. }) => e.to_string(),
        other => panic!("expected Owned, got {other:?}"),
    };
    ledger
        .put_budget(&owned("web", "s1/A"), std::slice::from_ref(&key))
        .await
        .unwrap();
    // A second resource declaring the application is refused, and nothing of it is written.
    assert_eq!(
        owned_by(
            ledger
                .put_budget(&owned("web", "s2/B"), std::slice::from_ref(&queue))
                .await
        ),
        "application `web` already belongs to `s1/A`"
    );
    assert_eq!(ledger.application_for(&queue).await.unwrap(), None);
    assert_eq!(
        ledger
            .budget("web")
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("s1/A")
    );
    // Another application cannot list web's key: the whole write is refused.
    assert_eq!(
        owned_by(
            ledger
                .put_budget(&owned("evil", "s2/B"), &[queue.clone(), key.clone()])
                .await
        ),
        "API key ID `k1` already belongs to application `web`"
    );
    assert_eq!(ledger.budget("evil").await.unwrap(), None);
    assert_eq!(ledger.application_for(&queue).await.unwrap(), None);
    assert_eq!(
        ledger.application_for(&key).await.unwrap().as_deref(),
        Some("web")
    );
    // The owner's update writes again; its replacement (another application, same owner) may
    // take the key along, and the replaced application's delete then leaves the key alone.
    ledger
        .put_budget(&owned("web", "s1/A"), std::slice::from_ref(&key))
        .await
        .unwrap();
    ledger
        .put_budget(&owned("web2", "s1/A"), std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(
        ledger.application_for(&key).await.unwrap().as_deref(),
        Some("web2")
    );
    assert!(
        ledger
            .delete_budget("web", Some("s1/A"), std::slice::from_ref(&key))
            .await
            .unwrap()
    );
    assert_eq!(ledger.budget("web").await.unwrap(), None);
    assert_eq!(
        ledger.application_for(&key).await.unwrap().as_deref(),
        Some("web2")
    );
    // Someone else's delete changes nothing; removing identities touches only the application's.
    assert!(
        !ledger
            .delete_budget("web2", Some("s2/B"), std::slice::from_ref(&key))
            .await
            .unwrap()
    );
    ledger
        .delete_identities("web", std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(
        ledger.application_for(&key).await.unwrap().as_deref(),
        Some("web2")
    );
    assert!(ledger.budget("web2").await.unwrap().is_some());
    ledger
        .delete_identities("web2", std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(ledger.application_for(&key).await.unwrap(), None);
    // Deleting what is gone already succeeds (a retried Delete).
    assert!(
        ledger
            .delete_budget("web", Some("s1/A"), &[])
            .await
            .unwrap()
    );

    // Claims: one holder per name; the holder may re-claim for another application.
    let alarm = Claim::Alarm("t-web-day-usd-threshold-80".into());
    ledger.claim(&alarm, "s1/A", "web").await.unwrap();
    ledger.claim(&alarm, "s1/A", "web").await.unwrap();
    assert_eq!(
        owned_by(ledger.claim(&alarm, "s2/B", "web").await),
        "alarm `t-web-day-usd-threshold-80` already belongs to `s1/A`"
    );
    assert_eq!(
        ledger.release(&alarm, "s2/B", Some("web")).await.unwrap(),
        Released::HeldElsewhere
    );
    let budget = Claim::CostBudget("t-web".into());
    ledger.claim(&budget, "s1/A", "web").await.unwrap();
    ledger.claim(&budget, "s1/A", "web2").await.unwrap();
    assert_eq!(
        ledger.release(&budget, "s1/A", Some("web")).await.unwrap(),
        Released::HeldElsewhere,
        "the replacement holds the name now"
    );
    assert_eq!(
        ledger.release(&budget, "s1/A", Some("web2")).await.unwrap(),
        Released::Yes
    );
    assert_eq!(
        ledger.release(&budget, "s1/A", Some("web2")).await.unwrap(),
        Released::Yes,
        "idempotent"
    );
    ledger.claim(&budget, "s2/B", "other").await.unwrap();
    // Without an application, the holder's claim goes whatever application it is for.
    assert_eq!(
        ledger.release(&alarm, "s1/A", None).await.unwrap(),
        Released::Yes
    );
    ledger.claim(&alarm, "s2/B", "web").await.unwrap();
}

#[tokio::test]
async fn memory_ledger_keeps_the_contract() {
    contract(MemoryLedger::new()).await;
}

#[tokio::test]
async fn memory_ledger_decides_ownership_by_its_writes() {
    ownership(MemoryLedger::new()).await;
}

#[tokio::test]
async fn dynamodb_ledger_decides_ownership_by_its_writes_on_moto() {
    let moto = harness::Moto::start();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    ownership(DynamoLedger::new(client, "ledger")).await;
}

#[tokio::test]
async fn dynamodb_ledger_keeps_the_contract_on_moto() {
    let moto = harness::Moto::start();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    contract(DynamoLedger::new(client, "ledger")).await;
}

#[tokio::test]
async fn dynamodb_ledger_reports_an_unreachable_table_as_unavailable() {
    let mut moto = harness::Moto::start();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    let ledger = DynamoLedger::new(client, "ledger");
    moto.stop();
    let limits = config().limits;
    let err = ledger
        .reserve(&request("x", &limits, 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Unavailable(_)), "{err}");
}

/// A reservation write that applied but whose answer was lost (the connection dropped): the SDK's
/// retry meets the record, which the ledger recognises as its own; when every answer is lost, the
/// refund the gateway sends for the attempt removes it, and a refund for another attempt does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_answer_was_lost_is_recognised_or_refunded() {
    use harness::{Fault, FaultProxy};
    let moto = harness::Moto::start_serialized();
    let direct = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&direct, "ledger").await;
    let proxy = FaultProxy::start(&moto.url()).await;
    let via_proxy = aws_sdk_dynamodb::Client::new(&harness::sdk_config_at(&proxy.url).await);
    let ledger = DynamoLedger::new(via_proxy, "ledger");
    let audit = DynamoLedger::new(direct, "ledger");
    let limits = config().limits;
    async fn used_in(ledger: &DynamoLedger, limits: &[budget::Limit]) -> Vec<u64> {
        let windows = ledger.usage("bot", None, limits, NOW).await.unwrap();
        windows.iter().map(|w| w.used.tokens).collect()
    }
    let used = |l| used_in(l, &limits);

    // The first answer is lost; the SDK retries and meets its own record.
    proxy.set(vec![Fault::lost_answer("TransactWriteItems", 1)]);
    let outcome = ledger
        .reserve(&request("r1", &limits, 100, 10))
        .await
        .unwrap();
    let ReserveOutcome::Reserved(r1) = outcome else {
        panic!("the retry recognises its own write: {outcome:?}")
    };
    assert_eq!(used(&audit).await, vec![100, 100], "charged once");
    ledger
        .settle(
            &r1,
            &Settlement {
                actual: Charge::new(40, MicroUsd(4)),
                completion: None,
                now: NOW,
            },
        )
        .await
        .unwrap();
    assert_eq!(used(&audit).await, vec![40, 40]);

    // Every answer is lost: the reservation applied, the caller saw an error.
    proxy.set(vec![Fault::lost_answer("TransactWriteItems", u32::MAX)]);
    let lost = request("r2", &limits, 100, 10);
    assert!(ledger.reserve(&lost).await.is_err());
    proxy.set(vec![]);
    assert_eq!(used(&audit).await, vec![140, 140], "applied, unanswered");
    // A refund from another attempt (a concurrent delivery of `r2`) leaves it alone...
    let other = request("r2", &limits, 100, 10);
    let refund = Settlement {
        actual: Charge::ZERO,
        completion: None,
        now: NOW,
    };
    audit
        .settle(&Reservation::of(&other).unwrap(), &refund)
        .await
        .unwrap();
    assert_eq!(used(&audit).await, vec![140, 140]);
    // ...and the refund of this attempt removes it.
    ledger
        .settle(&Reservation::of(&lost).unwrap(), &refund)
        .await
        .unwrap();
    assert_eq!(used(&audit).await, vec![40, 40], "refunded");
    // A refund of an attempt that never applied changes nothing.
    audit
        .settle(
            &Reservation::of(&request("r3", &limits, 100, 10)).unwrap(),
            &refund,
        )
        .await
        .unwrap();
    assert_eq!(used(&audit).await, vec![40, 40]);
    assert!(proxy.seen("TransactWriteItems") >= 5);
}

/// Seats: a user's windows and its application's are reserved in one step, or neither is; keys
/// are stored by digest, listed per application and revoked.
async fn seats<L: Ledger>(ledger: L) {
    const APP: &[budget::Limit] = &[budget::Limit {
        window: Window::Day,
        tokens: Some(1_000),
        usd: None,
    }];
    const USER: &[budget::Limit] = &[budget::Limit {
        window: Window::Day,
        tokens: Some(400),
        usd: None,
    }];
    let (app, user) = (APP, USER);
    let seat = |id: &'static str, who: &'static str, tokens: u64| ReserveRequest {
        user: Some(who),
        user_limits: USER,
        ..request(id, APP, tokens, 0)
    };
    let used = |who: Option<&'static str>, limits: &'static [budget::Limit]| {
        let ledger = &ledger;
        async move {
            ledger.usage("bot", who, limits, NOW).await.unwrap()[0]
                .used
                .tokens
        }
    };

    let ReserveOutcome::Reserved(first) = ledger.reserve(&seat("s1", "alice", 300)).await.unwrap()
    else {
        panic!("fits both");
    };
    assert_eq!(first.slots.len(), 2);
    assert_eq!(first.slots[1].user.as_deref(), Some("alice"));
    // Over alice's 400: refused by her limit, and nothing held in the application's window.
    match ledger.reserve(&seat("s2", "alice", 200)).await.unwrap() {
        ReserveOutcome::Exceeded {
            by_user, exceeded, ..
        } => {
            assert!(by_user);
            assert_eq!((exceeded.limit, exceeded.used), (400, 300));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(used(None, app).await, 300);
    assert_eq!(used(Some("alice"), user).await, 300);
    // Bob's window is his own; the application's fills up: refused by the application's limit,
    // and nothing held in bob's.
    let ReserveOutcome::Reserved(_) = ledger.reserve(&seat("b1", "bob", 400)).await.unwrap() else {
        panic!("bob's window is his own");
    };
    let ReserveOutcome::Reserved(_) = ledger.reserve(&seat("c1", "carol", 300)).await.unwrap()
    else {
        panic!("carol fits");
    };
    match ledger.reserve(&seat("d1", "dave", 100)).await.unwrap() {
        ReserveOutcome::Exceeded {
            by_user, exceeded, ..
        } => {
            assert!(!by_user, "the application's limit");
            assert_eq!((exceeded.limit, exceeded.used), (1_000, 1_000));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(used(Some("dave"), user).await, 0);
    // Settling moves both windows to the actual usage.
    ledger
        .settle(
            &first,
            &Settlement {
                actual: Charge::new(120, MicroUsd(0)),
                completion: Some(Completion::default()),
                now: NOW,
            },
        )
        .await
        .unwrap();
    assert_eq!(used(Some("alice"), user).await, 120);
    assert_eq!(used(None, app).await, 820);

    // Keys: by digest, listed per application, revoked.
    let key = |id: &str, app: &str, user: Option<&str>| IssuedKey {
        id: id.into(),
        application: app.into(),
        user: user.map(str::to_string),
        created: NOW,
    };
    let alice = key("aaaaaaaaaaaa", "bot", Some("alice"));
    ledger.put_key("digest-a", &alice).await.unwrap();
    ledger
        .put_key("digest-b", &key("bbbbbbbbbbbb", "bot", None))
        .await
        .unwrap();
    ledger
        .put_key("digest-c", &key("cccccccccccc", "other", Some("zed")))
        .await
        .unwrap();
    assert!(matches!(
        ledger
            .put_key("digest-a", &key("dddddddddddd", "other", None))
            .await,
        Err(LedgerError::Owned { .. })
    ));
    assert_eq!(ledger.key("digest-a").await.unwrap(), Some(alice.clone()));
    assert_eq!(ledger.key("digest-z").await.unwrap(), None);
    let listed: Vec<String> = ledger
        .keys("bot")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(listed, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);
    assert_eq!(
        ledger.keys("bot").await.unwrap()[0].user.as_deref(),
        Some("alice")
    );
    assert!(
        !ledger.revoke_key("other", "aaaaaaaaaaaa").await.unwrap(),
        "not `other`'s key"
    );
    assert!(ledger.revoke_key("bot", "aaaaaaaaaaaa").await.unwrap());
    assert_eq!(ledger.key("digest-a").await.unwrap(), None);
    assert!(!ledger.revoke_key("bot", "aaaaaaaaaaaa").await.unwrap());
    assert_eq!(ledger.keys("bot").await.unwrap().len(), 1);
}

#[tokio::test]
async fn memory_ledger_holds_seats() {
    seats(MemoryLedger::new()).await;
}

#[tokio::test]
async fn dynamodb_ledger_holds_seats_on_moto() {
    let moto = harness::Moto::start();
    let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
    harness::create_ledger_table(&client, "ledger").await;
    seats(DynamoLedger::new(client, "ledger")).await;
}
