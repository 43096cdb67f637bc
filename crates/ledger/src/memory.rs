//! The in-memory ledger: the embedded default of `invoke serve`, and the reference the DynamoDB
//! ledger is tested against.

use std::collections::HashMap;
use std::sync::Mutex;

use budget::config::BudgetConfig;
use budget::{Charge, WindowInstance};

use crate::*;

#[derive(Debug, Default)]
struct State {
    configs: HashMap<String, BudgetConfig>,
    /// Identity -> (application, the owner that wrote it).
    identities: HashMap<Identity, (String, Option<String>)>,
    /// Claim -> (owner, application).
    claims: HashMap<Claim, (String, String)>,
    /// Per application, so the hot path looks up by `&str` and window instance without formatting
    /// or allocating a key (the DynamoDB ledger's string keys are its own concern).
    apps: HashMap<String, AppState>,
    /// When expired counters and records are next dropped (Unix seconds).
    next_sweep: i64,
    /// Reservations closed at their worst case since the last [`Ledger::sweep`].
    expired: Vec<Expired>,
    /// Issued keys by digest.
    keys: HashMap<String, IssuedKey>,
}

type Counters = HashMap<WindowInstance, (Charge, i64)>;

#[derive(Debug, Default)]
struct AppState {
    /// Window instance -> usage and expiry.
    counters: Counters,
    /// Per user of the application, its windows' usage and expiry.
    users: HashMap<String, Counters>,
    /// Reservation id -> record.
    records: HashMap<String, Record>,
}

/// How often a long-running ledger drops what has expired, as DynamoDB's TTL does for the table.
const SWEEP_INTERVAL_SECONDS: i64 = 60;

impl State {
    /// Drops counters past their window's grace and records past their expiry: without this a
    /// long-running `invoke serve` would keep every request's record forever.
    fn sweep(&mut self, now: i64) {
        let expired = &mut self.expired;
        self.apps.retain(|application, app| {
            for (id, record) in app.records.iter_mut() {
                record.close_if_expired(application, id, now, expired);
            }
            app.counters.retain(|_, (_, expires)| *expires > now);
            app.users.retain(|_, counters| {
                counters.retain(|_, (_, expires)| *expires > now);
                !counters.is_empty()
            });
            app.records.retain(|_, record| record.expires_at > now);
            !(app.counters.is_empty() && app.users.is_empty() && app.records.is_empty())
        });
        self.next_sweep = now.saturating_add(SWEEP_INTERVAL_SECONDS);
    }
}

impl AppState {
    fn counters_of(&self, user: Option<&str>) -> Option<&Counters> {
        match user {
            None => Some(&self.counters),
            Some(u) => self.users.get(u),
        }
    }

    fn used(&self, slot: &Slot) -> Charge {
        self.counters_of(slot.user.as_deref())
            .and_then(|c| c.get(&slot.instance))
            .map_or(Charge::ZERO, |(c, _)| *c)
    }

    fn counters_mut(&mut self, user: Option<&str>) -> &mut Counters {
        match user {
            None => &mut self.counters,
            Some(u) => {
                if !self.users.contains_key(u) {
                    self.users.insert(u.to_string(), Counters::new());
                }
                self.users.get_mut(u).expect("inserted")
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    state: RecordState,
    result: Option<String>,
    expires_at: i64,
    /// What was reserved, for closing it at the worst case.
    charge: Charge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordState {
    /// Reserved and not settled; `expires_at` is the end of its hold.
    Held,
    /// Settled to its usage.
    Done,
    /// Charged its whole reservation (worst-case settlement or the sweeper); the ID may be
    /// reserved again.
    Charged,
}

impl Record {
    /// A held reservation past its hold is closed at its worst case (its charge stays in the
    /// counters) and reported.
    fn close_if_expired(&mut self, application: &str, id: &str, now: i64, out: &mut Vec<Expired>) {
        if self.state == RecordState::Held && self.expires_at <= now {
            self.state = RecordState::Charged;
            self.expires_at = now.saturating_add(CHARGED_RECORD_SECONDS);
            out.push(Expired {
                application: application.to_string(),
                reservation_id: id.to_string(),
                charge: self.charge,
            });
        }
    }
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

    /// Settled plus reserved charge of every counter of `application`, for tests and audits; a
    /// user's counters are named `user#{user}#{window}`.
    pub fn counters(&self, application: &str) -> Vec<(String, Charge)> {
        let state = self.state.lock().expect("ledger lock");
        let app = state.apps.get(application);
        let own = app
            .into_iter()
            .flat_map(|app| app.counters.iter())
            .map(|(instance, (c, _))| (instance.key(), *c));
        let users = app.into_iter().flat_map(|app| {
            app.users.iter().flat_map(|(user, counters)| {
                counters
                    .iter()
                    .map(move |(i, (c, _))| (format!("user#{user}#{}", i.key()), *c))
            })
        });
        let mut out: Vec<(String, Charge)> = own.chain(users).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How many counters and reservation records the ledger holds, for tests and audits.
    pub fn retained(&self) -> (usize, usize) {
        let state = self.state.lock().expect("ledger lock");
        state.apps.values().fold((0, 0), |(c, r), app| {
            (c + app.counters.len(), r + app.records.len())
        })
    }

    /// Reservations held and not yet settled, across applications.
    pub fn open_reservations(&self) -> usize {
        self.state
            .lock()
            .expect("ledger lock")
            .apps
            .values()
            .flat_map(|app| app.records.values())
            .filter(|r| r.state == RecordState::Held)
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
        let owner = config.owner.as_deref();
        if let Some(held) = state.configs.get(&config.application)
            && held.owner.as_deref() != owner
        {
            return Err(owned_config(&config.application, held.owner.as_deref()));
        }
        for identity in identities {
            if let Some((app, by)) = state.identities.get(identity)
                && *app != config.application
                && by.as_deref() != owner
            {
                return Err(owned_identity(identity, app));
            }
        }
        state
            .configs
            .insert(config.application.clone(), config.clone());
        for identity in identities {
            state.identities.insert(
                identity.clone(),
                (config.application.clone(), config.owner.clone()),
            );
        }
        Ok(())
    }

    async fn delete_budget(
        &self,
        application: &str,
        owner: Option<&str>,
        identities: &[Identity],
    ) -> Result<bool, LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        if state
            .configs
            .get(application)
            .is_some_and(|c| c.owner.as_deref() != owner)
        {
            return Ok(false);
        }
        state.configs.remove(application);
        drop_identities(&mut state, application, identities);
        Ok(true)
    }

    async fn delete_identities(
        &self,
        application: &str,
        identities: &[Identity],
    ) -> Result<(), LedgerError> {
        drop_identities(
            &mut self.state.lock().expect("ledger lock"),
            application,
            identities,
        );
        Ok(())
    }

    async fn claim(
        &self,
        claim: &Claim,
        owner: &str,
        application: &str,
    ) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        if let Some((by, _)) = state.claims.get(claim)
            && by != owner
        {
            return Err(owned_claim(claim, by));
        }
        state
            .claims
            .insert(claim.clone(), (owner.to_string(), application.to_string()));
        Ok(())
    }

    async fn release(
        &self,
        claim: &Claim,
        owner: &str,
        application: Option<&str>,
    ) -> Result<Released, LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        match state.claims.get(claim) {
            Some((by, app)) if by != owner || application.is_some_and(|a| a != app) => {
                Ok(Released::HeldElsewhere)
            }
            _ => {
                state.claims.remove(claim);
                Ok(Released::Yes)
            }
        }
    }

    async fn application_for(&self, identity: &Identity) -> Result<Option<String>, LedgerError> {
        Ok(self
            .state
            .lock()
            .expect("ledger lock")
            .identities
            .get(identity)
            .map(|(app, _)| app.clone()))
    }

    async fn reserve(&self, request: &ReserveRequest<'_>) -> Result<ReserveOutcome, LedgerError> {
        if let Some(outcome) = precheck(request)? {
            return Ok(outcome);
        }
        let slots = request_slots(request)?;
        let mut state = self.state.lock().expect("ledger lock");
        if request.now >= state.next_sweep {
            state.sweep(request.now);
        }
        let State { apps, expired, .. } = &mut *state;
        if let Some(record) = apps
            .get_mut(request.application)
            .and_then(|app| app.records.get_mut(request.reservation_id))
        {
            record.close_if_expired(
                request.application,
                request.reservation_id,
                request.now,
                expired,
            );
            if record.expires_at > request.now && record.state != RecordState::Charged {
                return Ok(ReserveOutcome::Duplicate {
                    in_flight: record.state == RecordState::Held,
                    result: record.result.clone(),
                });
            }
        }
        // Every window, the application's and the user's, is checked under the one lock before
        // any is charged: all or nothing.
        let app = state.apps.get(request.application);
        for slot in &slots {
            let used = app.map_or(Charge::ZERO, |app| app.used(slot));
            if let Err(exceeded) = slot.limit.admits(used, request.charge) {
                return Ok(ReserveOutcome::Exceeded {
                    exceeded,
                    retry_after: slot.instance.seconds_until_reset(request.now),
                    by_user: slot.user.is_some(),
                });
            }
        }
        let app = match state.apps.get_mut(request.application) {
            Some(app) => app,
            None => state
                .apps
                .entry(request.application.to_string())
                .or_default(),
        };
        for slot in &slots {
            let expires = slot.instance.end + COUNTER_GRACE_SECONDS;
            let entry = app
                .counters_mut(slot.user.as_deref())
                .entry(slot.instance)
                .or_insert((Charge::ZERO, expires));
            entry.0 = entry.0.saturating_add(request.charge);
        }
        app.records.insert(
            request.reservation_id.to_string(),
            Record {
                state: RecordState::Held,
                result: None,
                expires_at: request.now.saturating_add(request.hold_seconds),
                charge: request.charge,
            },
        );
        Ok(ReserveOutcome::Reserved(Reservation::held(request, slots)))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        settlement: &Settlement,
    ) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        let Some(app) = state.apps.get_mut(&reservation.application) else {
            return Ok(());
        };
        match app.records.get_mut(&reservation.id) {
            Some(record) if record.state == RecordState::Held => match &settlement.completion {
                Some(c) => {
                    record.state = if c.worst_case.is_some() {
                        RecordState::Charged
                    } else {
                        RecordState::Done
                    };
                    record.result = c.result.clone();
                    record.expires_at = settlement.now + c.remember_seconds;
                }
                None => {
                    app.records.remove(&reservation.id);
                }
            },
            // Already settled (or forgotten after a refund): settling twice changes nothing.
            _ => return Ok(()),
        }
        for slot in &reservation.slots {
            if let Some((used, _)) = app
                .counters_mut(slot.user.as_deref())
                .get_mut(&slot.instance)
            {
                *used = used
                    .saturating_sub(reservation.charge)
                    .saturating_add(settlement.actual);
            }
        }
        Ok(())
    }

    async fn sweep(&self, now: i64) -> Result<Vec<Expired>, LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        state.sweep(now);
        Ok(std::mem::take(&mut state.expired))
    }

    async fn usage_of(
        &self,
        application: &str,
        slots: Vec<Slot>,
    ) -> Result<Vec<WindowUsage>, LedgerError> {
        let state = self.state.lock().expect("ledger lock");
        let app = state.apps.get(application);
        Ok(slots
            .into_iter()
            .map(|slot| WindowUsage {
                used: app.map_or(Charge::ZERO, |app| app.used(&slot)),
                limit: slot.limit,
                instance: slot.instance,
            })
            .collect())
    }

    async fn put_key(&self, digest: &str, key: &IssuedKey) -> Result<(), LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        if let Some(held) = state
            .keys
            .iter()
            .find(|(d, k)| *d == digest || (k.application == key.application && k.id == key.id))
            .map(|(_, k)| k)
        {
            return Err(owned_key(key, held));
        }
        state.keys.insert(digest.to_string(), key.clone());
        Ok(())
    }

    async fn key(&self, digest: &str) -> Result<Option<IssuedKey>, LedgerError> {
        Ok(self
            .state
            .lock()
            .expect("ledger lock")
            .keys
            .get(digest)
            .cloned())
    }

    async fn keys(&self, application: &str) -> Result<Vec<IssuedKey>, LedgerError> {
        let state = self.state.lock().expect("ledger lock");
        let mut out: Vec<IssuedKey> = state
            .keys
            .values()
            .filter(|k| k.application == application)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(out)
    }

    async fn revoke_key(&self, application: &str, id: &str) -> Result<bool, LedgerError> {
        let mut state = self.state.lock().expect("ledger lock");
        let before = state.keys.len();
        state
            .keys
            .retain(|_, k| !(k.application == application && k.id == id));
        Ok(state.keys.len() < before)
    }
}

fn drop_identities(state: &mut State, application: &str, identities: &[Identity]) {
    for identity in identities {
        if state
            .identities
            .get(identity)
            .is_some_and(|(app, _)| app == application)
        {
            state.identities.remove(identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::{MicroUsd, Window};

    fn request<'a>(id: &'a str, limits: &'a [Limit], now: i64) -> ReserveRequest<'a> {
        ReserveRequest {
            application: "app",
            user: None,
            user_limits: &[],
            reservation_id: id,
            limits,
            charge: Charge::new(100, MicroUsd::from_micros(10)),
            now,
            hold_seconds: 900,
            attempt: "a",
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
                    ..Completion::default()
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
        let month = ledger
            .usage("app", None, &limits[1..], later)
            .await
            .unwrap();
        assert_eq!(
            month[0].used.tokens,
            100 * 50 + 100,
            "the month keeps its settled usage"
        );
    }

    #[tokio::test]
    async fn a_reservation_past_its_hold_is_closed_at_its_worst_case_and_reported() {
        let ledger = MemoryLedger::new();
        let limits = [Limit {
            window: Window::Day,
            tokens: Some(1_000),
            usd: None,
        }];
        let t0 = 1_795_801_683;
        let ReserveOutcome::Reserved(held) =
            ledger.reserve(&request("lost", &limits, t0)).await.unwrap()
        else {
            panic!("room")
        };
        assert!(
            ledger.sweep(t0 + 10).await.unwrap().is_empty(),
            "still held"
        );
        let expired = ledger.sweep(t0 + 900).await.unwrap();
        assert_eq!(
            expired,
            vec![Expired {
                application: "app".into(),
                reservation_id: "lost".into(),
                charge: held.charge
            }]
        );
        assert_eq!(ledger.open_reservations(), 0);
        assert_eq!(ledger.counters("app")[0].1.tokens, 100, "charged in full");
        // A late settlement changes nothing; the ID may be reserved again.
        let late = Settlement {
            actual: Charge::ZERO,
            completion: None,
            now: t0 + 901,
        };
        ledger.settle(&held, &late).await.unwrap();
        assert_eq!(ledger.counters("app")[0].1.tokens, 100);
        assert!(matches!(
            ledger
                .reserve(&request("lost", &limits, t0 + 902))
                .await
                .unwrap(),
            ReserveOutcome::Reserved(_)
        ));
        assert!(
            ledger.sweep(t0 + 903).await.unwrap().is_empty(),
            "reported once"
        );
    }
}
