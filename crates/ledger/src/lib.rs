//! The budget ledger: atomic multi-window reservations, settlement, and budget configuration.
//!
//! A request reserves its worst case in every window of its application at once, or in none; it
//! is then settled to its actual usage (or refunded) exactly once. Reservation records are keyed
//! by request ID, so a redelivered message is recognised as a duplicate and never charged twice.

mod dynamo;
mod memory;

use std::future::Future;

use budget::config::BudgetConfig;
use budget::{Charge, Exceeded, Limit, WindowInstance};
use thiserror::Error;

pub use dynamo::{DynamoLedger, OPEN_INDEX, OPEN_SHARDS, decode_charge, decode_config};
pub use memory::MemoryLedger;

/// Errors of a ledger.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// The store could not be reached or answered with an error.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// The store answered something the ledger cannot read.
    #[error("ledger item `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The item.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Too many concurrent writers on the same counters; retried and still conflicting.
    #[error("ledger contention on application `{0}`: retries exhausted")]
    Contention(String),
    /// A timestamp outside the calendar the windows support.
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    /// Something a write asked for belongs to someone else: an application's configuration to
    /// another resource, an identity to another application, a claimed name to another resource.
    #[error("{} already belongs to {holder}", what.describe())]
    Owned {
        /// What was asked for.
        what: Held,
        /// Who holds it, e.g. ``application `batch` `` or `` `stack/Logical` ``.
        holder: String,
    },
}

/// Something one owner holds at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// An application's configuration.
    Application(String),
    /// An identity.
    Identity(Identity),
    /// A claimed name.
    Claim(Claim),
    /// An issued key, by ID.
    Key(String),
}

impl Held {
    /// It in messages: ``application `web` ``.
    pub fn describe(&self) -> String {
        match self {
            Held::Application(app) => format!("application `{app}`"),
            Held::Identity(identity) => identity.describe(),
            Held::Claim(claim) => claim.describe(),
            Held::Key(id) => format!("key `{id}`"),
        }
    }
}

/// How a caller was authenticated, mapped to an application by the provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An API Gateway API key ID.
    ApiKeyId(String),
    /// The SQS queue a message arrived on.
    QueueArn(String),
}

impl Identity {
    fn key(&self) -> String {
        match self {
            Identity::ApiKeyId(id) => format!("identity#apikey#{id}"),
            Identity::QueueArn(arn) => format!("identity#queue#{arn}"),
        }
    }

    /// The identity in messages: ``API key ID `abc` ``.
    pub fn describe(&self) -> String {
        match self {
            Identity::ApiKeyId(id) => format!("API key ID `{id}`"),
            Identity::QueueArn(arn) => format!("queue `{arn}`"),
        }
    }
}

/// A name outside the ledger that one resource holds at a time: CloudWatch and AWS Budgets
/// overwrite by name, so two resources naming the same alarm or budget would silently share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// A CloudWatch alarm name.
    Alarm(String),
    /// An AWS Budgets budget name.
    CostBudget(String),
}

impl Claim {
    fn key(&self) -> String {
        match self {
            Claim::Alarm(name) => format!("claim#alarm#{name}"),
            Claim::CostBudget(name) => format!("claim#budget#{name}"),
        }
    }

    /// The claim in messages: ``alarm `x` ``.
    pub fn describe(&self) -> String {
        match self {
            Claim::Alarm(name) => format!("alarm `{name}`"),
            Claim::CostBudget(name) => format!("AWS Budget `{name}`"),
        }
    }
}

/// What [`Ledger::release`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The holder held it and no longer does (or no one did): the named thing is the holder's to
    /// delete.
    Yes,
    /// Someone else holds it now (a replacement took it over): leave the named thing alone.
    HeldElsewhere,
}

/// A request to reserve `charge` in every limited window of an application, and of its user.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    /// The application.
    pub application: &'a str,
    /// The application's user the request is made for, if its key names one.
    pub user: Option<&'a str>,
    /// The user's limits: held in the same atomic step as the application's.
    pub user_limits: &'a [Limit],
    /// Unique per request (an SQS message's request ID for the async path).
    pub reservation_id: &'a str,
    /// The application's limits.
    pub limits: &'a [Limit],
    /// The worst case.
    pub charge: Charge,
    /// Now, Unix seconds.
    pub now: i64,
    /// How long an unsettled reservation is held before the sweeper charges it its worst case.
    pub hold_seconds: i64,
    /// A token unique to this call ([`new_attempt`]). A write whose answer was lost may still
    /// have applied: the ledger recognises its own record by it (instead of taking it for
    /// another delivery of the same request), and a refund of it touches no one else's.
    pub attempt: &'a str,
}

/// A fresh attempt token: 128 random bits in hex.
pub fn new_attempt() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and varied per instance; two of its
    // hashes of a counter and the time make a token no other call will repeat.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u64(salt);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// One window a reservation counts in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// The limit.
    pub limit: Limit,
    /// The occurrence of its window.
    pub instance: WindowInstance,
    /// The user whose window it is; `None` for the application's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A held reservation, to be settled or refunded exactly once. It serializes, so that a workflow
/// can carry it from the state that reserves to the state that settles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// Its ID.
    pub id: String,
    /// The application.
    pub application: String,
    /// What was reserved.
    pub charge: Charge,
    /// Where.
    pub slots: Vec<Slot>,
    /// The attempt that wrote it (see [`ReserveRequest::attempt`]).
    pub attempt: String,
}

impl Reservation {
    /// The reservation `request` makes if it applies: what to refund when the answer to it was
    /// lost and whether it applied is unknown (a refund of a reservation that does not exist, or
    /// belongs to another attempt, changes nothing).
    pub fn of(request: &ReserveRequest<'_>) -> Result<Reservation, LedgerError> {
        Ok(Reservation::held(request, request_slots(request)?))
    }

    /// The reservation `request` holds in `slots` once its write applied.
    pub(crate) fn held(request: &ReserveRequest<'_>, slots: Vec<Slot>) -> Reservation {
        Reservation {
            id: request.reservation_id.to_string(),
            application: request.application.to_string(),
            charge: request.charge,
            slots,
            attempt: request.attempt.to_string(),
        }
    }
}

/// Usage of one window: settled plus currently reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUsage {
    /// The limit.
    pub limit: Limit,
    /// The occurrence.
    pub instance: WindowInstance,
    /// Settled plus reserved.
    pub used: Charge,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Held in every window.
    Reserved(Reservation),
    /// Some window has no room; nothing was reserved.
    Exceeded {
        /// Which limit.
        exceeded: Exceeded,
        /// Seconds until that window resets.
        retry_after: i64,
        /// Whether the limit is the user's rather than the application's.
        by_user: bool,
    },
    /// The reservation ID was seen before.
    Duplicate {
        /// Still in flight elsewhere (not settled yet).
        in_flight: bool,
        /// The stored result of the completed request, if one was kept.
        result: Option<String>,
    },
}

/// How a reservation ends.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// What was actually used (zero refunds everything).
    pub actual: Charge,
    /// Keep a record of completion so duplicates are recognised, with an optional result to
    /// hand to a duplicate; `None` forgets the request so it may be retried.
    pub completion: Option<Completion>,
    /// Now, Unix seconds.
    pub now: i64,
}

/// A completed request's record.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// How long to remember it.
    pub remember_seconds: i64,
    /// The result to give a duplicate delivery.
    pub result: Option<String>,
    /// Set (to the reason) when the request was charged its whole reservation because Bedrock may
    /// have billed a generation whose usage is unknown (a timeout, a cut connection, a server
    /// error after the request was sent). The record keeps the reason; the request may be tried
    /// again under the same ID, and a retry is a new generation, reserved and charged anew.
    pub worst_case: Option<String>,
}

/// A reservation that outlived its hold without being settled, closed by [`Ledger::sweep`] at its
/// worst case (its reserved charge stays counted in every window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The application.
    pub application: String,
    /// The reservation's ID.
    pub reservation_id: String,
    /// What it was charged: its whole reservation.
    pub charge: Charge,
}

/// Why the sweeper closed a reservation, as the record keeps it.
pub const EXPIRED_REASON: &str = "hold expired without settlement";

/// How long a closed-by-the-sweeper or worst-case record is kept, for audits.
pub const CHARGED_RECORD_SECONDS: i64 = 86_400;

/// The ledger's operations. Implementations must make `reserve` all-or-nothing across windows and
/// `settle` exactly-once.
pub trait Ledger: Send + Sync + 'static {
    /// The application's budget configuration.
    fn budget(
        &self,
        application: &str,
    ) -> impl Future<Output = Result<Option<BudgetConfig>, LedgerError>> + Send;

    /// Writes an application's configuration and the identities that map to it, in one atomic
    /// step, or nothing: [`LedgerError::Owned`] when the configuration is held by another owner
    /// than `config.owner`, or an identity belongs to another application whose owner is not
    /// `config.owner` (an owner may move its own identities, as a replacement does).
    fn put_budget(
        &self,
        config: &BudgetConfig,
        identities: &[Identity],
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Removes an application's configuration if `owner` holds it (or it is gone already), and
    /// those of `identities` that still belong to the application; counters expire by TTL.
    /// Answers whether the configuration was `owner`'s to remove: `false` leaves everything.
    fn delete_budget(
        &self,
        application: &str,
        owner: Option<&str>,
        identities: &[Identity],
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;

    /// Removes those of `identities` that belong to `application` (API keys or queues that went
    /// away in an update); others' are left alone.
    fn delete_identities(
        &self,
        application: &str,
        identities: &[Identity],
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Records that `owner` holds `claim` for `application`, atomically: [`LedgerError::Owned`]
    /// when another owner holds it. The same owner may claim it again for another application
    /// (a replacement takes over what the resource it replaces named).
    fn claim(
        &self,
        claim: &Claim,
        owner: &str,
        application: &str,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Gives up `owner`'s claim on `claim`, atomically; with `application`, only a claim for that
    /// application (a replacement that re-claimed the name for its own application keeps it).
    fn release(
        &self,
        claim: &Claim,
        owner: &str,
        application: Option<&str>,
    ) -> impl Future<Output = Result<Released, LedgerError>> + Send;

    /// The application an identity belongs to.
    fn application_for(
        &self,
        identity: &Identity,
    ) -> impl Future<Output = Result<Option<String>, LedgerError>> + Send;

    /// Reserves a charge in every limited window, atomically.
    fn reserve(
        &self,
        request: &ReserveRequest<'_>,
    ) -> impl Future<Output = Result<ReserveOutcome, LedgerError>> + Send;

    /// Settles or refunds a reservation; settling twice changes nothing.
    fn settle(
        &self,
        reservation: &Reservation,
        settlement: &Settlement,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// Closes every reservation held past its hold and never settled, at its worst case: the
    /// reserved charge stays counted (Bedrock may have billed all of it), the record is marked
    /// charged with [`EXPIRED_REASON`], and each one is returned so the caller can count it.
    fn sweep(&self, now: i64) -> impl Future<Output = Result<Vec<Expired>, LedgerError>> + Send;

    /// Current usage of each limited window of the application, or of its `user`.
    fn usage(
        &self,
        application: &str,
        user: Option<&str>,
        limits: &[Limit],
        now: i64,
    ) -> impl Future<Output = Result<Vec<WindowUsage>, LedgerError>> + Send {
        let slots = slots(limits, user, now);
        async move { self.usage_of(application, slots?).await }
    }

    /// Current usage of `slots` of the application (its own windows and its users' together, in
    /// one read), in their order.
    fn usage_of(
        &self,
        application: &str,
        slots: Vec<Slot>,
    ) -> impl Future<Output = Result<Vec<WindowUsage>, LedgerError>> + Send;

    /// Stores a key issued to `key.application` (and its user) by its digest ([`key_digest`]):
    /// [`LedgerError::Owned`] if that digest or that key ID is stored already.
    fn put_key(
        &self,
        digest: &str,
        key: &IssuedKey,
    ) -> impl Future<Output = Result<(), LedgerError>> + Send;

    /// The key stored under `digest`, if it has not been revoked.
    fn key(
        &self,
        digest: &str,
    ) -> impl Future<Output = Result<Option<IssuedKey>, LedgerError>> + Send;

    /// The keys issued to `application`, oldest first.
    fn keys(
        &self,
        application: &str,
    ) -> impl Future<Output = Result<Vec<IssuedKey>, LedgerError>> + Send;

    /// Revokes `application`'s key `id`; answers whether there was one to revoke.
    fn revoke_key(
        &self,
        application: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send;
}

/// A key issued to a caller: the application it spends from and, for seats, its user. The key
/// itself is never stored, only its digest ([`key_digest`]); `id` names it in listings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedKey {
    /// Public name of the key: the first 12 hex digits of its digest.
    pub id: String,
    /// The application.
    pub application: String,
    /// The user, if the key is a seat's.
    pub user: Option<String>,
    /// When it was issued, Unix seconds.
    pub created: i64,
}

/// The prefix of every key `synth keys` issues, so a leaked one is recognisable (secret scanners
/// match it) and the REST API's authorizer knows to look it up in the ledger.
pub const ISSUED_KEY_PREFIX: &str = "tfk_";

/// The digest a key is stored and looked up by: SHA-256, lower-case hex. A key is 256 random
/// bits, so an unsalted fast hash is enough: there is no dictionary to try.
pub fn key_digest(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The public ID of the key with `digest`.
pub fn key_id(digest: &str) -> String {
    digest.chars().take(12).collect()
}

pub use budget::config::check_user;

fn owned_config(application: &str, owner: Option<&str>) -> LedgerError {
    LedgerError::Owned {
        what: Held::Application(application.to_string()),
        holder: match owner {
            Some(o) => format!("`{o}`"),
            None => "a configuration written outside CloudFormation".into(),
        },
    }
}

fn owned_identity(identity: &Identity, application: &str) -> LedgerError {
    LedgerError::Owned {
        what: Held::Identity(identity.clone()),
        holder: format!("application `{application}`"),
    }
}

fn owned_key(key: &IssuedKey, held: &IssuedKey) -> LedgerError {
    LedgerError::Owned {
        what: Held::Key(key.id.clone()),
        holder: format!("application `{}`", held.application),
    }
}

fn owned_claim(claim: &Claim, owner: &str) -> LedgerError {
    LedgerError::Owned {
        what: Held::Claim(claim.clone()),
        holder: format!("`{owner}`"),
    }
}

/// The slots of an application's limits (or its `user`'s): each limit's current window
/// occurrence.
pub fn slots(limits: &[Limit], user: Option<&str>, now: i64) -> Result<Vec<Slot>, LedgerError> {
    limits
        .iter()
        .map(|l| {
            Ok(Slot {
                limit: *l,
                instance: l.window.instance_at(now)?,
                user: user.map(str::to_string),
            })
        })
        .collect()
}

/// Every slot a request reserves in: the application's, then its user's.
pub fn request_slots(request: &ReserveRequest<'_>) -> Result<Vec<Slot>, LedgerError> {
    let mut all = slots(request.limits, None, request.now)?;
    if let Some(user) = request.user {
        all.extend(slots(request.user_limits, Some(user), request.now)?);
    }
    Ok(all)
}

/// The longest request ID a caller may choose (the queue front's `requestId`).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Checks a caller-chosen request ID: 1 to [`MAX_REQUEST_ID_LEN`] characters of `A-Z a-z 0-9 . _
/// : -`. It becomes part of a ledger key, so anything longer or stranger is the caller's mistake
/// (a 400), never a ledger failure.
pub fn check_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
        return Err(format!(
            "`requestId` must have 1 to {MAX_REQUEST_ID_LEN} characters; it has {}",
            id.chars().count()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:-".contains(*c)))
    {
        return Err(format!(
            "`requestId` may hold only letters, digits and `._:-`; it holds `{}`",
            c.escape_default()
        ));
    }
    Ok(())
}

/// Grace after a window ends before its counter may expire, so late settlements still find it.
pub const COUNTER_GRACE_SECONDS: i64 = 86_400;

/// Checks a request against every limit, the application's and its user's, before touching the
/// store: a request larger than a limit can never fit, and stores that compare against
/// `limit - request` must not see it.
pub fn precheck(request: &ReserveRequest<'_>) -> Result<Option<ReserveOutcome>, LedgerError> {
    let user_limits = if request.user.is_some() {
        request.user_limits
    } else {
        &[]
    };
    let scoped = request
        .limits
        .iter()
        .map(|l| (l, false))
        .chain(user_limits.iter().map(|l| (l, true)));
    for (limit, by_user) in scoped {
        if let Err(exceeded) = limit.admits(Charge::ZERO, request.charge) {
            let instance = limit.window.instance_at(request.now)?;
            return Ok(Some(ReserveOutcome::Exceeded {
                exceeded,
                retry_after: instance.seconds_until_reset(request.now),
                by_user,
            }));
        }
    }
    Ok(None)
}
