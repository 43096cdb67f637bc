//! Ledger faults in the middle of a request: a settlement that fails is retried inline until it
//! lands (before the answer, as a Lambda handler must), and a reservation whose answer was lost is
//! refunded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use budget::config::BudgetConfig;
use common::{SPEC, prompt, start};
use ledger::*;

/// The in-memory ledger, failing its first `failures` settlements, and answering its first
/// `lost_reserves` reservations with an error after applying them (an answer lost on the way).
struct FlakySettle {
    inner: MemoryLedger,
    failures: AtomicU32,
    lost_reserves: AtomicU32,
    /// Reservations answer contention (retries exhausted).
    contended: AtomicBool,
    /// Configuration reads fail as unreachable.
    config_down: AtomicBool,
    /// After a reservation is refused as over a limit, the next one fails as unreachable (the
    /// fallback's reservation, in a fallback application).
    fail_after_exceeded: AtomicBool,
    armed: AtomicBool,
}

impl FlakySettle {
    fn new(failures: u32, lost_reserves: u32) -> Self {
        FlakySettle {
            inner: MemoryLedger::new(),
            failures: AtomicU32::new(failures),
            lost_reserves: AtomicU32::new(lost_reserves),
            contended: AtomicBool::new(false),
            config_down: AtomicBool::new(false),
            fail_after_exceeded: AtomicBool::new(false),
            armed: AtomicBool::new(false),
        }
    }
}

impl Ledger for FlakySettle {
    async fn budget(&self, application: &str) -> Result<Option<BudgetConfig>, LedgerError> {
        if self.config_down.load(Ordering::SeqCst) {
            return Err(LedgerError::Unavailable(
                "injected: table unreachable".into(),
            ));
        }
        self.inner.budget(application).await
    }
    async fn put_budget(
        &self,
        config: &BudgetConfig,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        self.inner.put_budget(config, identities).await
    }
    async fn delete_budget(
        &self,
        application: &str,
        owner: Option<&str>,
        identities: &[Identity],
    ) -> Result<bool, LedgerError> {
        self.inner
            .delete_budget(application, owner, identities)
            .await
    }
    async fn delete_identities(
        &self,
        application: &str,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        self.inner.delete_identities(application, identities).await
    }
    async fn claim(
        &self,
        claim: &Claim,
        owner: &str,
        application: &str,
    ) -> Result<(), LedgerError> {
        self.inner.claim(claim, owner, application).await
    }
    async fn release(
        &self,
        claim: &Claim,
        owner: &str,
        application: Option<&str>,
    ) -> Result<Released, LedgerError> {
        self.inner.release(claim, owner, application).await
    }
    async fn application_for(&self, identity: &Identity) -> Result<Option<String>, LedgerError> {
        self.inner.application_for(identity).await
    }
    async fn reserve(&self, request: &ReserveRequest<'_>) -> Result<ReserveOutcome, LedgerError> {
        if self.contended.load(Ordering::SeqCst) {
            return Err(LedgerError::Contention(request.application.into()));
        }
        if self.armed.swap(false, Ordering::SeqCst) {
            return Err(LedgerError::Unavailable(
                "injected: table unreachable".into(),
            ));
        }
        let outcome = self.inner.reserve(request).await;
        if self.fail_after_exceeded.load(Ordering::SeqCst)
            && matches!(outcome, Ok(ReserveOutcome::Exceeded { .. }))
        {
            self.armed.store(true, Ordering::SeqCst);
        }
        if self
            .lost_reserves
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(LedgerError::Unavailable("the answer was lost".into()));
        }
        outcome
    }
    async fn settle(
        &self,
        reservation: &Reservation,
        settlement: &Settlement,
    ) -> Result<(), LedgerError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(LedgerError::Unavailable(
                "injected settlement failure".into(),
            ));
        }
        self.inner.settle(reservation, settlement).await
    }
    async fn sweep(&self, now: i64) -> Result<Vec<Expired>, LedgerError> {
        self.inner.sweep(now).await
    }
    async fn usage_of(
        &self,
        application: &str,
        slots: Vec<ledger::Slot>,
    ) -> Result<Vec<WindowUsage>, LedgerError> {
        self.inner.usage_of(application, slots).await
    }
    async fn put_key(&self, digest: &str, key: &ledger::IssuedKey) -> Result<(), LedgerError> {
        self.inner.put_key(digest, key).await
    }
    async fn key(&self, digest: &str) -> Result<Option<ledger::IssuedKey>, LedgerError> {
        self.inner.key(digest).await
    }
    async fn keys(&self, application: &str) -> Result<Vec<ledger::IssuedKey>, LedgerError> {
        self.inner.keys(application).await
    }
    async fn revoke_key(&self, application: &str, id: &str) -> Result<bool, LedgerError> {
        self.inner.revoke_key(application, id).await
    }
}

#[tokio::test]
async fn failed_settlements_are_retried_inline_until_they_land() {
    let ledger = Arc::new(FlakySettle::new(3, 0));
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    let (ok, _, _) = env
        .converse("key-capped", "lite", &prompt("settle me"))
        .await;
    let failing = prompt("[[stub:error]]");
    let (failed, headers, _) = env.converse("key-capped", "lite", &failing).await;
    assert_eq!((ok, failed), (200, 500));
    assert_eq!(headers["x-tokenfence-charged"], "worst-case");
    // No waiting: both settlements landed before their answers.
    assert_eq!(
        ledger.failures.load(Ordering::SeqCst),
        0,
        "the injected failures were hit"
    );
    assert_eq!(
        ledger.inner.open_reservations(),
        0,
        "every reservation was settled before its answer"
    );
    let used: u64 = ledger
        .inner
        .counters("capped")
        .iter()
        .map(|(_, c)| c.tokens)
        .max()
        .unwrap();
    let billed = env.stub.billed()["amazon.nova-lite-v1:0"];
    assert_eq!(
        billed.calls, 2,
        "the server error came after the generation started"
    );
    // The failed call is charged its whole reservation: input bound + the default 100 output.
    let first = billed.total_tokens();
    let worst = budget::estimate::input_bound("amazon.nova-lite-v1:0", &failing) + 100;
    assert!(
        used >= first,
        "the ledger never counts less than Bedrock billed"
    );
    assert_eq!(
        used,
        (billed.input_tokens + billed.output_tokens) - stub_usage_of(&failing) + worst,
        "the successful call at its usage, the failed one at its worst case"
    );
}

/// What the stub bills for a one-message Nova prompt of `body` at the default output of 64.
fn stub_usage_of(body: &serde_json::Value) -> u64 {
    let text = body["messages"][0]["content"][0]["text"].as_str().unwrap();
    (text.len() as u64).div_ceil(4) + 3 + 1 + 64
}

#[tokio::test]
async fn a_reservation_whose_answer_was_lost_is_refunded() {
    let ledger = Arc::new(FlakySettle::new(0, 1));
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    let (status, _, body) = env.converse("key-capped", "lite", &prompt("lost")).await;
    assert_eq!(status, 503, "fail closed on a ledger error: {body:?}");
    assert_eq!(
        ledger.lost_reserves.load(Ordering::SeqCst),
        0,
        "the fault was hit"
    );
    assert_eq!(
        ledger.inner.open_reservations(),
        0,
        "the applied reservation was refunded before the answer"
    );
    assert!(
        ledger
            .inner
            .counters("capped")
            .iter()
            .all(|(_, c)| c.tokens == 0),
        "nothing stays counted: {:?}",
        ledger.inner.counters("capped")
    );
    assert_eq!(env.stub.requests(), 0, "Bedrock was not called");
}

#[tokio::test]
async fn fail_open_is_only_for_an_unreachable_ledger_after_the_configuration_was_read() {
    let ledger = Arc::new(FlakySettle::new(0, 0));
    let env = start(Arc::clone(&ledger), SPEC, |s| {
        s.on_ledger_error = invoke::LedgerFailurePolicy::Allow;
        s.config_ttl = std::time::Duration::ZERO;
    })
    .await;
    // Contention is not an outage: deny, with a retry hint.
    ledger.contended.store(true, Ordering::SeqCst);
    let (status, headers, body) = env.converse("key-capped", "lite", &prompt("busy")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("LedgerBusy")),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "1");
    ledger.contended.store(false, Ordering::SeqCst);
    // Without the configuration there is no allow-list and no limit: deny.
    ledger.config_down.store(true, Ordering::SeqCst);
    let (status, _, body) = env.converse("key-capped", "lite", &prompt("blind")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("LedgerUnavailable")),
        "{body}"
    );
    assert_eq!(env.stub.requests(), 0, "neither reached Bedrock");
}

#[tokio::test]
async fn failing_open_on_a_fallback_calls_the_fallback_never_the_refused_model() {
    let ledger = Arc::new(FlakySettle::new(0, 0));
    ledger.fail_after_exceeded.store(true, Ordering::SeqCst);
    let env = start(Arc::clone(&ledger), SPEC, |s| {
        s.on_ledger_error = invoke::LedgerFailurePolicy::Allow;
    })
    .await;
    // 400 output tokens of nova-pro cost more than the day's 0.001 USD: refused, so the gateway
    // plans the fallback (nova-micro), whose reservation then finds the ledger unreachable.
    let mut body = prompt("expensive");
    body["inferenceConfig"] = serde_json::json!({ "maxTokens": 400 });
    let (status, headers, reply) = env.converse("key-fallback", "pro", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(headers["x-tokenfence-model"], "amazon.nova-micro-v1:0");
    assert!(headers.contains_key("x-tokenfence-unreserved"));
    let billed = env.stub.billed();
    assert!(billed.contains_key("amazon.nova-micro-v1:0"), "{billed:?}");
    assert!(
        !billed.contains_key("amazon.nova-pro-v1:0"),
        "the refused, dearer model was never called"
    );
}
