//! Ledger faults in the middle of a request: a settlement that fails is retried until it lands,
//! and a panic or early return between reserve and settle refunds the reservation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use budget::Limit;
use budget::config::BudgetConfig;
use common::{SPEC, prompt, start};
use ledger::*;

/// The in-memory ledger, failing its first `failures` settlements, and answering its first
/// `lost_reserves` reservations with an error after applying them (an answer lost on the way).
struct FlakySettle {
    inner: MemoryLedger,
    failures: AtomicU32,
    lost_reserves: AtomicU32,
}

impl Ledger for FlakySettle {
    async fn budget(&self, application: &str) -> Result<Option<BudgetConfig>, LedgerError> {
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
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        self.inner.delete_budget(application, identities).await
    }
    async fn delete_identities(&self, identities: &[Identity]) -> Result<(), LedgerError> {
        self.inner.delete_identities(identities).await
    }
    async fn application_for(&self, identity: &Identity) -> Result<Option<String>, LedgerError> {
        self.inner.application_for(identity).await
    }
    async fn reserve(&self, request: &ReserveRequest<'_>) -> Result<ReserveOutcome, LedgerError> {
        let outcome = self.inner.reserve(request).await;
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
    async fn usage(
        &self,
        application: &str,
        limits: &[Limit],
        now: i64,
    ) -> Result<Vec<WindowUsage>, LedgerError> {
        self.inner.usage(application, limits, now).await
    }
}

#[tokio::test]
async fn failed_settlements_and_refunds_are_retried_until_they_land() {
    let ledger = Arc::new(FlakySettle {
        inner: MemoryLedger::new(),
        failures: AtomicU32::new(3),
        lost_reserves: AtomicU32::new(0),
    });
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    let (ok, _, _) = env
        .converse("key-capped", "lite", &prompt("settle me"))
        .await;
    let (failed, _, _) = env
        .converse("key-capped", "lite", &prompt("[[stub:error]]"))
        .await;
    assert_eq!((ok, failed), (200, 502));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        ledger.failures.load(Ordering::SeqCst),
        0,
        "the injected failures were hit"
    );
    assert_eq!(
        ledger.inner.open_reservations(),
        0,
        "every reservation was settled or refunded in the end"
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
        used,
        billed.input_tokens + billed.output_tokens,
        "settled to the successful call's usage, the failed one refunded"
    );
}

#[tokio::test]
async fn a_reservation_whose_answer_was_lost_is_refunded() {
    let ledger = Arc::new(FlakySettle {
        inner: MemoryLedger::new(),
        failures: AtomicU32::new(0),
        lost_reserves: AtomicU32::new(1),
    });
    let env = start(Arc::clone(&ledger), SPEC, |_| {}).await;
    let (status, _, body) = env.converse("key-capped", "lite", &prompt("lost")).await;
    assert_eq!(status, 503, "fail closed on a ledger error: {body:?}");
    assert_eq!(
        ledger.lost_reserves.load(Ordering::SeqCst),
        0,
        "the fault was hit"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger.inner.open_reservations(),
        0,
        "the applied reservation was refunded"
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
