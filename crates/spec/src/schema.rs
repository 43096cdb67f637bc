//! The JSON Schema of the spec, for YAML editors (`synth schema`).
//!
//! These types mirror the YAML shape (amounts as numbers, aliases as strings); the decoder is the
//! authority on validity. A test checks that both know the same keys.

#![allow(dead_code)]

use std::collections::BTreeMap;

use schemars::JsonSchema;

/// A tokenfence spec: applications, model aliases and their token and dollar budgets on Amazon Bedrock.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub(crate) struct SpecSchema {
    /// Spec language version. Always `1`.
    #[schemars(range(min = 1, max = 1))]
    version: u32,
    /// Prefix of stack and resource names: letters, digits and single hyphens, starting with a letter.
    #[schemars(regex(pattern = r"^[A-Za-z](-?[A-Za-z0-9])*$"))]
    name: String,
    /// Model aliases: a model ID, inference profile ID or ARN, or `{id, price}`.
    models: BTreeMap<String, ModelSchema>,
    /// Request defaults.
    defaults: Option<DefaultsSchema>,
    /// Fronts: `rest` (API Gateway) and/or `queue` (SQS). Default `[rest]`.
    access: Option<Vec<AccessSchema>>,
    /// Where enforcement runs. Default `lambda`.
    engine: Option<EngineSchema>,
    /// Alert destinations.
    alerts: Option<AlertsSchema>,
    /// Applications and their budgets.
    applications: BTreeMap<String, ApplicationSchema>,
    /// A price book of your own (negotiated rates, another region, models the built-in book lacks), in the built-in book's JSON format, its path relative to the spec; its prices count as the spec's.
    price_book: Option<String>,
}

#[derive(JsonSchema)]
#[serde(untagged)]
enum ModelSchema {
    /// A model ID, inference profile ID or ARN.
    Id(String),
    /// A model with an explicit price.
    Full(Box<ModelFull>),
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct ModelFull {
    /// Model ID, inference profile ID or ARN.
    id: String,
    /// Price in USD per million tokens; overrides the built-in price book.
    price: Option<PriceSchema>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct PriceSchema {
    /// USD per million input tokens.
    input: f64,
    /// USD per million output tokens.
    output: f64,
    /// USD per million prompt-cache read tokens (default 0.1 x input).
    cache_read: Option<f64>,
    /// USD per million prompt-cache write tokens, five-minute TTL (default by family: Claude 1.25 x input, others the input price).
    cache_write: Option<f64>,
    /// USD per million prompt-cache write tokens with a one-hour TTL (default: Claude 2 x input; other families none, so a request asking for one is refused under USD limits).
    cache_write_1h: Option<f64>,
    /// Prices in other tiers: a request asking for a tier priced here is reserved and settled at that price.
    tiers: Option<TiersSchema>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TiersSchema {
    /// The flex service tier (`serviceTier.type: flex`).
    flex: Option<TierPriceSchema>,
    /// The priority service tier (`serviceTier.type: priority`).
    priority: Option<TierPriceSchema>,
    /// Latency-optimized inference (`performanceConfig.latency: optimized`).
    #[serde(rename = "latency-optimized")]
    latency_optimized: Option<TierPriceSchema>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct TierPriceSchema {
    /// USD per million input tokens in this tier.
    input: f64,
    /// USD per million output tokens in this tier.
    output: f64,
    /// USD per million prompt-cache read tokens (default by family from this tier's input price).
    cache_read: Option<f64>,
    /// USD per million prompt-cache write tokens, five-minute TTL (default by family).
    cache_write: Option<f64>,
    /// USD per million prompt-cache write tokens, one-hour TTL (default by family).
    cache_write_1h: Option<f64>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct DefaultsSchema {
    /// Output cap applied when a request sets no `maxTokens`. Default 1024.
    #[schemars(range(min = 1, max = 1_000_000))]
    max_tokens: Option<u32>,
    /// `deny` (fail closed, default) or `allow` when the ledger is unavailable.
    on_ledger_error: Option<OnLedgerErrorSchema>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnLedgerErrorSchema {
    Deny,
    Allow,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum AccessSchema {
    Rest,
    Queue,
}

#[derive(JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum EngineSchema {
    /// The invoke Lambda enforces and calls Bedrock (default).
    Lambda,
    /// A Step Functions Express workflow: reserve and settle steps, Bedrock called by the workflow.
    StepFunctionsExpress,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct AlertsSchema {
    /// Email addresses subscribed to the alert topic.
    emails: Option<Vec<String>>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct ApplicationSchema {
    /// Cost allocation tag value.
    cost_center: Option<String>,
    /// Model aliases this application may call. Default: every declared model.
    models: Option<Vec<String>>,
    /// Limits per window in tokens and/or USD.
    #[schemars(length(min = 1))]
    limits: Vec<LimitSchema>,
    /// What happens when a limit is hit: `reject` (default), `fallback` or `queue`.
    on_exceed: Option<OnExceedSchema>,
    /// `enforce` (default) or `shadow` (evaluate and report, never block).
    mode: Option<ModeSchema>,
    /// Leading-indicator alarms.
    alarms: Option<Vec<AlarmSchema>>,
    /// A lagging-indicator AWS Budget.
    cost_budget: Option<CostBudgetSchema>,
    /// Seats: the budget each user of the application gets (keys issued per user with `synth keys create --user`).
    per_user: Option<UserSchema>,
    /// Seats: users with budgets of their own, by user name.
    users: Option<BTreeMap<String, UserSchema>>,
    /// Publish request metrics per user too (opt-in: CloudWatch bills each custom metric).
    user_metrics: Option<bool>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct UserSchema {
    /// Limits per window in tokens and/or USD, held together with the application's.
    #[schemars(length(min = 1))]
    limits: Vec<LimitSchema>,
    /// What happens when one of these limits is hit: `reject` (default), `fallback` or `queue`.
    on_exceed: Option<OnExceedSchema>,
    /// `enforce` (default) or `shadow`.
    mode: Option<ModeSchema>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum WindowSchema {
    Minute,
    Hour,
    Day,
    Month,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct LimitSchema {
    /// Calendar window in UTC.
    window: WindowSchema,
    /// Most tokens (all kinds) per window.
    #[schemars(range(min = 1))]
    tokens: Option<u64>,
    /// Most USD per window, at most 6 decimal places.
    usd: Option<f64>,
}

#[derive(JsonSchema)]
#[serde(untagged)]
enum OnExceedSchema {
    Short(ActionSchema),
    Full(OnExceedFull),
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ActionSchema {
    Reject,
    Fallback,
    Queue,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct OnExceedFull {
    /// `reject`, `fallback` or `queue`.
    action: ActionSchema,
    /// With `fallback`: alias of a model priced no higher than the ones it replaces.
    model: Option<String>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ModeSchema {
    Enforce,
    Shadow,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum MetricSchema {
    Tokens,
    Usd,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct AlarmSchema {
    /// The window watched (anomaly alarms default to `hour`).
    window: Option<WindowSchema>,
    /// `tokens` or `usd` (default `usd` when the window has a USD limit).
    metric: Option<MetricSchema>,
    /// Threshold alarm at this percent of the window's limit.
    #[schemars(range(min = 1, max = 100))]
    percent: Option<u32>,
    /// Forecast alarm: the burn rate projects usage past the limit.
    forecast: Option<bool>,
    /// Anomaly-detection band alarm on usage.
    anomaly: Option<bool>,
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct CostBudgetSchema {
    /// Monthly AWS Budget in USD.
    monthly_usd: f64,
    /// Forecast notification at this percent (default 100).
    forecast_percent: Option<u32>,
    /// Actual-spend notifications at these percents (default [80, 100]).
    actual_percents: Option<Vec<u32>>,
}

/// The JSON Schema of the spec.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(SpecSchema)).expect("a schema serializes")
}
