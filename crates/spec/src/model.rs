//! The validated spec. Values of these types have passed every check: an alias names a declared
//! model, a fallback is priced no higher than what it replaces, names make valid AWS names.

use budget::{Limit, MicroUsd, Price, TierPrices, Window};
use indexmap::IndexMap;
use serde::Serialize;

/// A whole, valid tokenfence spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spec {
    /// Spec language version; always 1.
    pub version: u32,
    /// Prefix of stack and resource names.
    pub name: String,
    /// Model aliases, in declaration order.
    pub models: IndexMap<String, ModelDef>,
    /// Request defaults.
    pub defaults: Defaults,
    /// Which fronts the gateway has.
    pub access: Access,
    /// Where enforcement runs.
    pub engine: Engine,
    /// Where alerts go.
    pub alerts: Alerts,
    /// Applications, in declaration order.
    pub applications: IndexMap<String, Application>,
    /// The spec's own price book, if it names one: its prices are the spec's, as if written under
    /// `models`.
    pub price_book: Option<PriceBookRef>,
}

/// The price book a spec names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceBookRef {
    /// Its path, as the spec writes it (relative to the spec).
    pub file: String,
    /// When its prices were read, as it says.
    pub recorded: String,
}

/// A model alias's target and price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelDef {
    /// Model ID, inference profile ID or ARN.
    pub id: String,
    /// The price used for USD limits: the spec's override, else the built-in book's.
    pub price: Option<Price>,
    /// Whether `price` came from the spec (or its `price_book`) rather than the built-in book.
    pub price_from_spec: bool,
    /// Its prices in other tiers (flex, priority, latency-optimized) from the spec's
    /// `price_book`, rendered with its price; the built-in book's are looked up where enforced.
    #[serde(skip_serializing_if = "TierPrices::is_empty")]
    pub tiers: TierPrices,
}

/// Defaults applied to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// Output cap for requests that set no `maxTokens`.
    pub max_tokens: u32,
    /// What happens when the ledger cannot be reached.
    pub on_ledger_error: OnLedgerError,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            max_tokens: 1024,
            on_ledger_error: OnLedgerError::Deny,
        }
    }
}

/// Behaviour when the ledger is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLedgerError {
    /// Fail closed: answer 503.
    Deny,
    /// Fail open: call Bedrock and count the request as unreserved.
    Allow,
}

/// The fronts the gateway exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Access {
    /// API Gateway REST (synchronous).
    pub rest: bool,
    /// SQS (asynchronous).
    pub queue: bool,
}

/// Where enforcement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Engine {
    /// The invoke Lambda.
    Lambda,
    /// A Step Functions Express workflow (reserve, Bedrock, settle as states).
    StepFunctionsExpress,
}

/// Alert destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Alerts {
    /// Email addresses subscribed to the alert topic.
    pub emails: Vec<String>,
}

/// One application and its budgets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Application {
    /// Cost allocation tag value.
    pub cost_center: Option<String>,
    /// Model aliases the application may use.
    pub models: Vec<String>,
    /// Limits, shortest window first.
    pub limits: Vec<Limit>,
    /// What happens when a limit is hit.
    pub on_exceed: OnExceed,
    /// Enforce or only report.
    pub mode: Mode,
    /// Leading-indicator alarms.
    pub alarms: Vec<AlarmSpec>,
    /// Lagging-indicator AWS Budget.
    pub cost_budget: Option<CostBudget>,
    /// The budget every user of the application gets unless named in `users`.
    pub per_user: Option<UserLimits>,
    /// Users with budgets of their own, in declaration order.
    pub users: IndexMap<String, UserLimits>,
    /// Publish request metrics per user too (each user adds custom metrics CloudWatch bills).
    pub user_metrics: bool,
}

/// A user's budget inside an application (`per_user`, or one of `users`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserLimits {
    /// Limits, shortest window first.
    pub limits: Vec<Limit>,
    /// What happens when one of these limits is hit.
    pub on_exceed: OnExceed,
    /// Enforce or only report these limits.
    pub mode: Mode,
}

impl Application {
    /// The limit on `window`, if any.
    pub fn limit(&self, window: Window) -> Option<&Limit> {
        self.limits.iter().find(|l| l.window == window)
    }
}

/// What happens to a request that would exceed a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum OnExceed {
    /// Answer 429.
    Reject,
    /// Call a cheaper model instead.
    Fallback {
        /// Alias of the fallback model.
        model: String,
    },
    /// Return an async request to the queue until the window resets.
    Queue,
}

impl OnExceed {
    /// The name used in properties.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnExceed::Reject => "reject",
            OnExceed::Fallback { .. } => "fallback",
            OnExceed::Queue => "queue",
        }
    }
}

/// Enforce limits, or only evaluate and report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Block requests over a limit.
    Enforce,
    /// Never block; report what would have happened.
    Shadow,
}

impl Mode {
    /// The name used in properties.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// Tokens or USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Tokens of every kind.
    Tokens,
    /// Cost in USD.
    Usd,
}

impl Metric {
    /// The name used in properties and alarm names.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Tokens => "tokens",
            Metric::Usd => "usd",
        }
    }
}

/// One alarm of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AlarmSpec {
    /// The window watched.
    pub window: Window,
    /// Tokens or USD.
    pub metric: Metric,
    /// Threshold, forecast or anomaly.
    pub kind: AlarmKind,
}

/// The kinds of alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmKind {
    /// Usage reaches `percent` of the window's limit.
    Threshold {
        /// Percent of the limit, 1 to 100.
        percent: u32,
    },
    /// The burn rate projects usage past the limit before the window ends.
    Forecast,
    /// Usage leaves its anomaly-detection band.
    Anomaly,
}

impl AlarmKind {
    /// The name used in properties and alarm names.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlarmKind::Threshold { .. } => "threshold",
            AlarmKind::Forecast => "forecast",
            AlarmKind::Anomaly => "anomaly",
        }
    }
}

/// An AWS Budget for the application's Bedrock spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CostBudget {
    /// Monthly budget.
    pub monthly_usd: MicroUsd,
    /// Percent of the budget at which the forecast notification fires.
    pub forecast_percent: u32,
    /// Percents of the budget at which actual-spend notifications fire.
    pub actual_percents: Vec<u32>,
}
