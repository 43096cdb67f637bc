//! The in-memory ledger: the embedded default of `invoke serve`, and the reference the DynamoDB
//! ledger is tested against.

use std::collections::HashMap;
use std::sync::Mutex;

use budget::config::BudgetConfig;
use budget::{Charge, Limit};

use crate::*;

#[derive(Debug, Default)]
struct State {
    configs: HashMap<String, BudgetConfig>,
    identities: HashMap<Identity, String>,
    /// (application, window key) -> usage and expiry.
    counters: HashMap<(String, String), (Charge, i64)>,
    /// (application, reservation id) -> record.
    records: HashMap<(String, String), Record>,
    /// When expired counters and records are next dropped (Unix seconds).
    next_sweep: i64,
}

/// How often a long-running ledger drops what has expired, as DynamoDB's TTL does for the table.
const SWEEP_INTERVAL_SECONDS: i64 = 60;

impl State {
    /// Drops counters past their window's grace and records past their expiry: without this a
    /// long-running `invoke serve` would keep every request's record forever.
    fn sweep(&mut self, now: i64) {
        self.counters.retain(|_, (_, expires)| *expires > now);
        self.records.retain(|_, record| record.expires_at > now);
        self.next_sweep = now.saturating_add(SWEEP_INTERVAL_SECONDS);
    }
}

#[derive(Debug, Clone)]
struct Record {
    done: bool,
    result: Option<String>,
    expires_at: i64,
}

/// A ledger in process memory, guarded by one lock (a reservation touches at most four counters).
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<State>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settled plus reserved charge of every counter of `application`, for tests and audits.
    pub fn counters(&self, application: &str) -> Vec<(String, Charge)> {
        let state = self.state.lock().expect("ledger lock");
        let mut out: Vec<(String, Charge)> = state
            .counters
            .iter()
            .filter(|((app, _), _)| app == application)
            .map(|((_, key), (c, _))| (key.clone(), *c))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How many counters and reservation records the ledger holds, for tests and audits.
    pub fn retained(&self) -> (usize, usize) {
        let state = self.state.lock().expect("ledger lock");
        (state.counters.len(), state.records.len())
    }

    /// Reservations held and not yet settled, across applications.
    pub fn open_reservations(&self) -> usize {
        self.state
            .lock()
            .expect("ledger lock")
            .records
            .values()
            .filter(|r| !r.done)
            .count()
    }
}

impl Ledger for MemoryLedger {
    async fn budget(&self, application: &str) -> Result<Option<BudgetConfig>, LedgerError> {
        Ok(self
            .state
            .lock()
            .expect("ledger lock")
            .configs
            .get(application)
            .cloned())
    }

    async fn put_budget(
        &self,
        config: &BudgetConfig,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        state
            .configs
            .insert(config.application.clone(), config.clone());
        for identity in identities {
            state
                .identities
                .insert(identity.clone(), config.application.clone());
        }
        Ok(())
    }

    async fn delete_budget(
        &self,
        application: &str,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        state.configs.remove(application);
        for identity in identities {
            if state
                .identities
                .get(identity)
                .is_some_and(|a| a == application)
            {
                state.identities.remove(identity);
            }
        }
        Ok(())
    }

    async fn delete_identities(&self, identities: &[Identity]) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        for identity in identities {
            state.identities.remove(identity);
        }
        Ok(())
    }

    async fn application_for(&self, identity: &Identity) -> Result<Option<String>, LedgerError> {
        Ok(self
            .state
            .lock()
            .expect("ledger lock")
            .identities
            .get(identity)
            .cloned())
    }

    async fn reserve(&self, request: &ReserveRequest<'_>) -> Result<ReserveOutcome, LedgerError> {
        if let Some((exceeded, retry_after)) =
            precheck(request.limits, request.charge, request.now)?
        {
            return Ok(ReserveOutcome::Exceeded {
                exceeded,
                retry_after,
            });
        }
        let slots = slots(request.limits, request.now)?;
        let app = request.application.to_string();
        let mut state = self.state.lock().expect("ledger lock");
        if request.now >= state.next_sweep {
            state.sweep(request.now);
        }
        let record_key = (app.clone(), request.reservation_id.to_string());
        if let Some(record) = state.records.get(&record_key)
            && record.expires_at > request.now
        {
            return Ok(ReserveOutcome::Duplicate {
                in_flight: !record.done,
                result: record.result.clone(),
            });
        }
        let keys: Vec<(String, String)> = slots
            .iter()
            .map(|slot| (app.clone(), slot.instance.key()))
            .collect();
        for (slot, key) in slots.iter().zip(&keys) {
            let used = state.counters.get(key).map_or(Charge::ZERO, |(c, _)| *c);
            if let Err(exceeded) = slot.limit.admits(used, request.charge) {
                return Ok(ReserveOutcome::Exceeded {
                    exceeded,
                    retry_after: slot.instance.seconds_until_reset(request.now),
                });
            }
        }
        for (slot, key) in slots.iter().zip(keys) {
            let expires = slot.instance.end + COUNTER_GRACE_SECONDS;
            let entry = state.counters.entry(key).or_insert((Charge::ZERO, expires));
            entry.0 = entry.0.saturating_add(request.charge);
        }
        state.records.insert(
            record_key,
            Record {
                done: false,
                result: None,
                expires_at: request.now + request.hold_seconds,
            },
        );
        Ok(ReserveOutcome::Reserved(Reservation {
            id: request.reservation_id.to_string(),
            application: app,
            charge: request.charge,
            slots,
        }))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        settlement: &Settlement,
    ) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        let record_key = (reservation.application.clone(), reservation.id.clone());
        match state.records.get(&record_key) {
            Some(record) if !record.done => {}
            // Already settled (or forgotten after a refund): settling twice changes nothing.
            _ => return Ok(()),
        }
        for slot in &reservation.slots {
            if let Some((used, _)) = state
                .counters
                .get_mut(&(reservation.application.clone(), slot.instance.key()))
            {
                *used = used
                    .saturating_sub(reservation.charge)
                    .saturating_add(settlement.actual);
            }
        }
        match &settlement.completion {
            Some(c) => {
                state.records.insert(
                    record_key,
                    Record {
                        done: true,
                        result: c.result.clone(),
                        expires_at: settlement.now + c.remember_seconds,
                    },
                );
            }
            None => {
                state.records.remove(&record_key);
            }
        }
        Ok(())
    }

    async fn usage(
        &self,
        application: &str,
        limits: &[Limit],
        now: i64,
    ) -> Result<Vec<WindowUsage>, LedgerError> {
        let state = self.state.lock().expect("ledger lock");
        slots(limits, now)?
            .into_iter()
            .map(|slot| {
                let used = state
                    .counters
                    .get(&(application.to_string(), slot.instance.key()))
                    .map_or(Charge::ZERO, |(c, _)| *c);
                Ok(WindowUsage {
                    limit: slot.limit,
                    instance: slot.instance,
                    used,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::{MicroUsd, Window};

    fn request<'a>(id: &'a str, limits: &'a [Limit], now: i64) -> ReserveRequest<'a> {
        ReserveRequest {
            application: "app",
            reservation_id: id,
            limits,
            charge: Charge::new(100, MicroUsd::from_micros(10)),
            now,
            hold_seconds: 900,
        }
    }

    #[tokio::test]
    async fn expired_records_and_counters_are_dropped_as_time_passes() {
        let ledger = MemoryLedger::new();
        let limits = [
            Limit {
                window: Window::Minute,
                tokens: Some(1_000_000),
                usd: None,
            },
            Limit {
                window: Window::Month,
                tokens: None,
                usd: Some(MicroUsd::from_usd(10)),
            },
        ];
        let t0 = 1_795_801_683;
        for i in 0..100 {
            let id = format!("r{i}");
            let ReserveOutcome::Reserved(r) =
                ledger.reserve(&request(&id, &limits, t0)).await.unwrap()
            else {
                panic!("room for 100 small requests")
            };
            let settlement = Settlement {
                actual: Charge::new(50, MicroUsd::from_micros(5)),
                completion: Some(Completion {
                    remember_seconds: 900,
                    result: None,
                }),
                now: t0,
            };
            ledger.settle(&r, &settlement).await.unwrap();
        }
        assert_eq!(ledger.retained(), (2, 100));
        // Two days later the records (900 s) and the minute's counter (minute + a day's grace) are
        // gone; the month's counter is still needed.
        let later = t0 + 2 * 86_400;
        ledger
            .reserve(&request("late", &limits, later))
            .await
            .unwrap();
        assert_eq!(
            ledger.retained(),
            (2, 1),
            "the month counter, a new minute counter, the new record"
        );
        let month = ledger.usage("app", &limits[1..], later).await.unwrap();
        assert_eq!(
            month[0].used.tokens,
            100 * 50 + 100,
            "the month keeps its settled usage"
        );
    }
}
