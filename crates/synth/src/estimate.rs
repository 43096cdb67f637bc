//! `synth estimate`: what the guard itself costs per month on each engine, and the most Bedrock
//! spend a spec's budgets let through.
//!
//! Pure arithmetic on integers: prices are read from dated data (`data/aws-prices.json`) into
//! pico-USD (10^-12), quantities are whole units (requests, MB-milliseconds, write units), and only
//! the totals are rounded, up, to micro-USD. Every figure that is an assumption rather than a
//! price or an input is named in [`Assumptions`] and printed with the estimate.

use budget::{MicroUsd, Window};
use serde::{Deserialize, Serialize};
use spec::{Mode, Spec};
use thiserror::Error;

/// The price data compiled into `synth`.
pub const PRICES_JSON: &str = include_str!("../data/aws-prices.json");

/// Errors of the estimate.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EstimateError {
    /// The price data is malformed.
    #[error("price data: {0}")]
    Prices(String),
    /// A workload figure is out of range.
    #[error("`{flag}` must be {what}, got `{value}`")]
    Workload {
        /// The flag.
        flag: &'static str,
        /// What it must be.
        what: &'static str,
        /// What was given.
        value: u64,
    },
}

/// Pico-USD per unit, with volume tiers (each `up_to` is a cumulative monthly quantity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiered(Vec<(Option<u128>, u128)>);

impl Tiered {
    /// One price at every volume.
    pub fn flat(pico: u128) -> Tiered {
        Tiered(vec![(None, pico)])
    }

    /// Cost in pico-USD of `quantity` sub-units, where `per_unit` sub-units make one priced unit
    /// (e.g. MB-milliseconds per GB-second), rounded up.
    fn cost(&self, quantity: u128, per_unit: u128) -> u128 {
        let mut left = quantity;
        let mut below = 0u128;
        let mut total = 0u128;
        for (up_to, price) in &self.0 {
            if left == 0 {
                break;
            }
            let room = match up_to {
                Some(limit) => limit.saturating_mul(per_unit).saturating_sub(below),
                None => u128::MAX,
            };
            let here = left.min(room);
            total = total.saturating_add(here.saturating_mul(*price));
            left -= here;
            below = below.saturating_add(here);
        }
        total.div_ceil(per_unit)
    }
}

/// AWS prices in pico-USD, with where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prices {
    /// The region they apply to.
    pub region: String,
    /// When they were taken from the pricing pages.
    pub date: String,
    /// The pricing pages.
    pub sources: Vec<String>,
    /// Per Lambda request.
    pub lambda_request: Tiered,
    /// Per Lambda GB-second.
    pub lambda_gb_second: Tiered,
    /// Per Express execution.
    pub express_request: Tiered,
    /// Per Express GB-second.
    pub express_gb_second: Tiered,
    /// Per Standard state transition.
    pub standard_transition: Tiered,
    /// Per REST API request.
    pub rest_api_request: Tiered,
    /// Per SQS request (64 KB chunk); also EventBridge Pipes' price per request.
    pub sqs_request: Tiered,
    /// Per DynamoDB on-demand write request unit.
    pub dynamodb_write_unit: Tiered,
    /// Per custom metric and month.
    pub cloudwatch_metric_month: Tiered,
    /// Per alarm metric and month.
    pub cloudwatch_alarm_metric_month: Tiered,
    /// Per dashboard and month.
    pub cloudwatch_dashboard_month: Tiered,
    /// Per GB of logs ingested.
    pub cloudwatch_logs_gb: Tiered,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrice {
    Flat(String),
    Tiers(Vec<RawTier>),
}

#[derive(Deserialize)]
struct RawTier {
    up_to: Option<u64>,
    usd: String,
}

#[derive(Deserialize)]
struct RawPrices {
    region: String,
    date: String,
    sources: Vec<String>,
    lambda_request: RawPrice,
    lambda_gb_second: RawPrice,
    express_request: RawPrice,
    express_gb_second: RawPrice,
    standard_transition: RawPrice,
    rest_api_request: RawPrice,
    sqs_request: RawPrice,
    dynamodb_write_unit: RawPrice,
    cloudwatch_metric_month: RawPrice,
    cloudwatch_alarm_metric_month: RawPrice,
    cloudwatch_dashboard_month: RawPrice,
    cloudwatch_logs_gb: RawPrice,
}

/// Parses a non-negative decimal USD amount with at most 12 fractional digits into pico-USD.
pub fn parse_pico(text: &str) -> Result<u128, EstimateError> {
    let bad = || {
        EstimateError::Prices(format!(
            "`{text}` is not a USD amount with at most 12 decimals"
        ))
    };
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if (whole.is_empty() && frac.is_empty())
        || frac.len() > 12
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_value: u128 = format!("{frac:0<12}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(1_000_000_000_000)
        .and_then(|w| w.checked_add(frac_value))
        .ok_or_else(bad)
}

impl Prices {
    /// The prices compiled into `synth`.
    pub fn builtin() -> Prices {
        Prices::from_json(PRICES_JSON).expect("the built-in price data is valid")
    }

    /// Reads price data.
    pub fn from_json(text: &str) -> Result<Prices, EstimateError> {
        let raw: RawPrices =
            serde_json::from_str(text).map_err(|e| EstimateError::Prices(e.to_string()))?;
        let tiered = |p: RawPrice| -> Result<Tiered, EstimateError> {
            match p {
                RawPrice::Flat(usd) => Ok(Tiered::flat(parse_pico(&usd)?)),
                RawPrice::Tiers(tiers) => {
                    let mut out = Vec::with_capacity(tiers.len());
                    for (i, t) in tiers.iter().enumerate() {
                        if t.up_to.is_none() != (i + 1 == tiers.len()) {
                            return Err(EstimateError::Prices(
                                "only the last tier may be open-ended, and it must be".into(),
                            ));
                        }
                        out.push((t.up_to.map(u128::from), parse_pico(&t.usd)?));
                    }
                    Ok(Tiered(out))
                }
            }
        };
        Ok(Prices {
            region: raw.region,
            date: raw.date,
            sources: raw.sources,
            lambda_request: tiered(raw.lambda_request)?,
            lambda_gb_second: tiered(raw.lambda_gb_second)?,
            express_request: tiered(raw.express_request)?,
            express_gb_second: tiered(raw.express_gb_second)?,
            standard_transition: tiered(raw.standard_transition)?,
            rest_api_request: tiered(raw.rest_api_request)?,
            sqs_request: tiered(raw.sqs_request)?,
            dynamodb_write_unit: tiered(raw.dynamodb_write_unit)?,
            cloudwatch_metric_month: tiered(raw.cloudwatch_metric_month)?,
            cloudwatch_alarm_metric_month: tiered(raw.cloudwatch_alarm_metric_month)?,
            cloudwatch_dashboard_month: tiered(raw.cloudwatch_dashboard_month)?,
            cloudwatch_logs_gb: tiered(raw.cloudwatch_logs_gb)?,
        })
    }
}

/// The traffic the estimate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Inference requests per month, all applications together.
    pub requests_per_month: u64,
    /// Average input tokens per request.
    pub avg_input_tokens: u64,
    /// Average output tokens per request.
    pub avg_output_tokens: u64,
    /// Average Bedrock latency per request, in milliseconds.
    pub avg_latency_ms: u64,
    /// Percent of requests arriving through the queue rather than the REST API.
    pub queued_percent: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            requests_per_month: 1_000_000,
            avg_input_tokens: 1_000,
            avg_output_tokens: 500,
            avg_latency_ms: 2_000,
            queued_percent: 0,
        }
    }
}

impl Workload {
    /// Rejects figures no workload can have.
    pub fn validate(&self) -> Result<(), EstimateError> {
        if self.queued_percent > 100 {
            return Err(EstimateError::Workload {
                flag: "--queued-percent",
                what: "between 0 and 100",
                value: self.queued_percent,
            });
        }
        if self.avg_latency_ms > 900_000 {
            return Err(EstimateError::Workload {
                flag: "--avg-latency-ms",
                what: "at most 900000 (Lambda's 15-minute limit)",
                value: self.avg_latency_ms,
            });
        }
        Ok(())
    }
}

/// Figures the estimate assumes rather than knows; printed with every estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Assumptions {
    /// The invoke Lambda's memory (as rendered).
    pub invoke_memory_mb: u64,
    /// Time the invoke Lambda spends besides waiting for Bedrock (ledger round trips, parsing).
    pub invoke_overhead_ms: u64,
    /// Memory of the Step Functions engine's Lambda steps (as rendered).
    pub step_memory_mb: u64,
    /// Billed time of one Lambda step.
    pub step_duration_ms: u64,
    /// Lambda steps per execution (plan and account).
    pub steps_per_execution: u64,
    /// Time an execution spends besides waiting for Bedrock (steps, ledger calls, transitions).
    pub workflow_overhead_ms: u64,
    /// State transitions of one approved request on the happy path (Standard bills each).
    pub transitions_per_execution: u64,
    /// Bytes of a state machine definition (part of Express's billed memory).
    pub definition_bytes: u64,
    /// Bytes per token of prompt and completion held in the execution's state.
    pub bytes_per_token: u64,
    /// Log bytes written per request (EMF metric records and the Lambda's own lines).
    pub log_bytes_per_request: u64,
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            invoke_memory_mb: u64::from(cfn::platform::INVOKE_MEMORY_MB),
            invoke_overhead_ms: 15,
            step_memory_mb: u64::from(cfn::platform::STEP_MEMORY_MB),
            step_duration_ms: 5,
            steps_per_execution: 2,
            workflow_overhead_ms: 120,
            transitions_per_execution: cfn::workflow::HAPPY_PATH_STATES,
            definition_bytes: 12_000,
            bytes_per_token: 4,
            log_bytes_per_request: 2_500,
        }
    }
}

/// The engines compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The invoke Lambda.
    Lambda,
    /// A Step Functions Express workflow.
    StepFunctionsExpress,
    /// The same workflow as Standard, for comparison (it cannot answer synchronously).
    StepFunctionsStandard,
}

impl EngineKind {
    /// The name used in specs and output.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Lambda => "lambda",
            EngineKind::StepFunctionsExpress => "step-functions-express",
            EngineKind::StepFunctionsStandard => "step-functions-standard",
        }
    }
}

/// One billed item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// What is billed.
    pub item: String,
    /// How much of it.
    pub quantity: String,
    /// Monthly cost in pico-USD.
    #[serde(skip)]
    pub pico: u128,
    /// Monthly cost in micro-USD, rounded up.
    pub usd_micros: u64,
}

/// One engine's monthly cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineCost {
    /// Which engine.
    pub engine: EngineKind,
    /// Its billed items.
    pub lines: Vec<Line>,
    /// Monthly total in micro-USD.
    pub total_micros: u64,
    /// Cost per 100,000 requests in micro-USD (`None` without requests).
    pub per_100k_requests_micros: Option<u64>,
}

/// The most one application can spend on Bedrock in a month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BedrockCap {
    /// The application.
    pub application: String,
    /// Its cost center.
    pub cost_center: Option<String>,
    /// The cap over a 31-day month in micro-USD, `None` when nothing bounds it.
    pub monthly_max_micros: Option<u64>,
    /// Which limit sets the cap, or why there is none.
    pub bound_by: String,
}

/// The whole estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Estimate {
    /// Region of the prices.
    pub prices_region: String,
    /// Date of the prices.
    pub prices_date: String,
    /// Where the prices come from.
    pub prices_sources: Vec<String>,
    /// The workload.
    pub workload: Workload,
    /// What was assumed.
    pub assumptions: Assumptions,
    /// The spec's engine.
    pub spec_engine: EngineKind,
    /// Each engine's cost.
    pub engines: Vec<EngineCost>,
    /// The cheaper of the two engines that can answer synchronously.
    pub cheaper: EngineKind,
    /// Average Bedrock latency from which Express costs no more than Lambda (`None`: never within
    /// Express's 5-minute limit).
    pub break_even_latency_ms: Option<u64>,
    /// Bedrock spend the budgets allow, per application.
    pub bedrock: Vec<BedrockCap>,
    /// Their sum, `None` when some application is unbounded.
    pub bedrock_total_micros: Option<u64>,
}

const MB_MS_PER_GB_S: u128 = 1024 * 1000;
const BYTES_PER_GB: u128 = 1 << 30;
const EXPRESS_BASE_MB: u64 = 50;
const EXPRESS_MAX_MS: u64 = 300_000;

fn micros(pico: u128) -> u64 {
    u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn line(item: &str, quantity: String, pico: u128) -> Line {
    Line {
        item: item.to_string(),
        quantity,
        pico,
        usd_micros: micros(pico),
    }
}

/// What a spec fixes regardless of traffic: metric series, alarm metrics, DynamoDB writes per
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Custom metric series the gateway publishes.
    pub metric_series: u64,
    /// Metrics watched by alarms (anomaly bands bill three).
    pub alarm_metrics: u64,
    /// Write request units per request (reserve and settle transactions).
    pub write_units_per_request: u64,
}

impl Footprint {
    /// The footprint of `spec`.
    pub fn of(spec: &Spec) -> Footprint {
        // Metrics of the request record (see invoke::metrics::request_record).
        const REQUEST_METRICS: u64 = 15;
        let mut series = 0u64;
        let mut cost_centers = std::collections::BTreeSet::new();
        let mut alarm_metrics = 0u64;
        let mut windows = 0u64;
        for app in spec.applications.values() {
            let models = app.models.len() as u64
                + u64::from(matches!(app.on_exceed, spec::OnExceed::Fallback { .. }));
            series += REQUEST_METRICS * (1 + models);
            if let Some(cc) = &app.cost_center {
                cost_centers.insert(cc.clone());
            }
            for limit in &app.limits {
                let gauges = u64::from(limit.tokens.is_some()) + u64::from(limit.usd.is_some());
                series += 2 * gauges;
            }
            windows += app.limits.len() as u64;
            for alarm in &app.alarms {
                alarm_metrics += match alarm.kind {
                    spec::AlarmKind::Anomaly => 3,
                    _ => 1,
                };
            }
        }
        series += REQUEST_METRICS * cost_centers.len() as u64;
        let apps = spec.applications.len().max(1) as u64;
        // A reservation and its settlement are one transaction each over every window counter
        // and the reservation record; a transactional write costs 2 units per item (under 1 KB).
        // The record enters the ledger's `open` index on reserve and leaves it on settle: one
        // index write unit each.
        let items = windows.div_ceil(apps) + 1;
        Footprint {
            metric_series: series,
            alarm_metrics,
            write_units_per_request: 2 * 2 * items + 2,
        }
    }
}

fn round_up(value: u64, step: u64) -> u64 {
    value.div_ceil(step).saturating_mul(step)
}

/// Express bills memory in 64 MB steps: 50 MB, the definition, and the execution's data.
fn express_billed_mb(w: &Workload, a: &Assumptions) -> u64 {
    let data = (w.avg_input_tokens + w.avg_output_tokens)
        .saturating_mul(a.bytes_per_token)
        .saturating_add(a.definition_bytes);
    round_up(EXPRESS_BASE_MB.saturating_add(data.div_ceil(1 << 20)), 64)
}

fn engine_cost(
    kind: EngineKind,
    prices: &Prices,
    w: &Workload,
    a: &Assumptions,
    fp: &Footprint,
) -> EngineCost {
    let n = u128::from(w.requests_per_month);
    let queued = n * u128::from(w.queued_percent) / 100;
    let rest = n - queued;
    let mut lines = Vec::new();
    lines.push(line(
        "API Gateway REST requests",
        format!("{rest}"),
        prices.rest_api_request.cost(rest, 1),
    ));
    if queued > 0 {
        // Send, receive and delete per message.
        lines.push(line(
            "SQS requests",
            format!("{}", queued * 3),
            prices.sqs_request.cost(queued * 3, 1),
        ));
        if kind != EngineKind::Lambda {
            lines.push(line(
                "EventBridge Pipes requests (queue to workflow)",
                format!("{queued}"),
                prices.sqs_request.cost(queued, 1),
            ));
        }
    }
    match kind {
        EngineKind::Lambda => {
            let ms = u128::from(w.avg_latency_ms + a.invoke_overhead_ms);
            let mb_ms = n * ms * u128::from(a.invoke_memory_mb);
            lines.push(line(
                "Lambda requests",
                format!("{n}"),
                prices.lambda_request.cost(n, 1),
            ));
            lines.push(line(
                "Lambda duration",
                format!("{} GB-s", mb_ms / MB_MS_PER_GB_S),
                prices.lambda_gb_second.cost(mb_ms, MB_MS_PER_GB_S),
            ));
        }
        EngineKind::StepFunctionsExpress | EngineKind::StepFunctionsStandard => {
            if kind == EngineKind::StepFunctionsExpress {
                let ms = u128::from(round_up(w.avg_latency_ms + a.workflow_overhead_ms, 100));
                let mb = u128::from(express_billed_mb(w, a));
                let mb_ms = n * ms * mb;
                lines.push(line(
                    "Step Functions Express requests",
                    format!("{n}"),
                    prices.express_request.cost(n, 1),
                ));
                lines.push(line(
                    "Step Functions Express duration",
                    format!("{} GB-s ({mb} MB billed)", mb_ms / MB_MS_PER_GB_S),
                    prices.express_gb_second.cost(mb_ms, MB_MS_PER_GB_S),
                ));
            } else {
                let transitions = n * u128::from(a.transitions_per_execution);
                lines.push(line(
                    "Step Functions Standard transitions",
                    format!("{transitions}"),
                    prices.standard_transition.cost(transitions, 1),
                ));
            }
            let steps = n * u128::from(a.steps_per_execution);
            let mb_ms = steps * u128::from(a.step_duration_ms) * u128::from(a.step_memory_mb);
            lines.push(line(
                "Lambda step requests",
                format!("{steps}"),
                prices.lambda_request.cost(steps, 1),
            ));
            lines.push(line(
                "Lambda step duration",
                format!("{} GB-s", mb_ms / MB_MS_PER_GB_S),
                prices.lambda_gb_second.cost(mb_ms, MB_MS_PER_GB_S),
            ));
        }
    }
    let wru = n * u128::from(fp.write_units_per_request);
    lines.push(line(
        "DynamoDB write units",
        format!("{wru}"),
        prices.dynamodb_write_unit.cost(wru, 1),
    ));
    let log_bytes = n * u128::from(a.log_bytes_per_request);
    lines.push(line(
        "CloudWatch Logs ingestion",
        format!("{} MB", log_bytes / (1 << 20)),
        prices.cloudwatch_logs_gb.cost(log_bytes, BYTES_PER_GB),
    ));
    lines.push(line(
        "CloudWatch custom metrics",
        format!("{}", fp.metric_series),
        prices
            .cloudwatch_metric_month
            .cost(u128::from(fp.metric_series), 1),
    ));
    lines.push(line(
        "CloudWatch alarm metrics",
        format!("{}", fp.alarm_metrics),
        prices
            .cloudwatch_alarm_metric_month
            .cost(u128::from(fp.alarm_metrics), 1),
    ));
    lines.push(line(
        "CloudWatch dashboard",
        "1".into(),
        prices.cloudwatch_dashboard_month.cost(1, 1),
    ));
    let total: u128 = lines.iter().map(|l| l.pico).fold(0, u128::saturating_add);
    EngineCost {
        engine: kind,
        lines,
        total_micros: micros(total),
        per_100k_requests_micros: (n > 0).then(|| micros(total.saturating_mul(100_000) / n)),
    }
}

fn total_pico(c: &EngineCost) -> u128 {
    c.lines.iter().map(|l| l.pico).fold(0, u128::saturating_add)
}

/// Occurrences of `window` in a 31-day month, the longest.
fn per_month(window: Window) -> u64 {
    match window {
        Window::Minute => 31 * 24 * 60,
        Window::Hour => 31 * 24,
        Window::Day => 31,
        Window::Month => 1,
    }
}

/// The most each application can spend on Bedrock in a month, as its budgets allow.
pub fn bedrock_caps(spec: &Spec) -> Vec<BedrockCap> {
    spec.applications
        .iter()
        .map(|(name, app)| {
            let mut aliases: Vec<&str> = app.models.iter().map(String::as_str).collect();
            if let spec::OnExceed::Fallback { model } = &app.on_exceed {
                aliases.push(model);
            }
            // The dearest token any of its models bills in any tier it has a price for, per
            // million, in micro-USD: a request chooses its tier and its cache TTL.
            let dearest = aliases.iter().try_fold(0u64, |acc, alias| {
                let def = spec.models.get(*alias)?;
                let standard = def.price?.dearest();
                Some(
                    def.tiers
                        .values()
                        .map(|p| p.dearest())
                        .fold(acc.max(standard), u64::max),
                )
            });
            let mut best: Option<(u64, String)> = None;
            for limit in &app.limits {
                let n = per_month(limit.window);
                if let Some(usd) = limit.usd {
                    let cap = usd.micros().saturating_mul(n);
                    if best.as_ref().is_none_or(|(b, _)| cap < *b) {
                        best = Some((cap, format!("{} USD limit", limit.window)));
                    }
                }
                if let (Some(tokens), Some(price)) = (limit.tokens, dearest) {
                    let cap = u128::from(tokens) * u128::from(n) * u128::from(price);
                    let cap = u64::try_from(cap.div_ceil(1_000_000)).unwrap_or(u64::MAX);
                    if best.as_ref().is_none_or(|(b, _)| cap < *b) {
                        best = Some((
                            cap,
                            format!("{} token limit at its dearest model's price", limit.window),
                        ));
                    }
                }
            }
            let (max, bound_by) = if app.mode == Mode::Shadow {
                (None, "unbounded: shadow mode never blocks".to_string())
            } else {
                match best {
                    Some((cap, why)) => (Some(cap), why),
                    None => (
                        None,
                        "unbounded: only token limits on unpriced models".to_string(),
                    ),
                }
            };
            BedrockCap {
                application: name.clone(),
                cost_center: app.cost_center.clone(),
                monthly_max_micros: max,
                bound_by,
            }
        })
        .collect()
}

/// Estimates `spec` under `workload`.
pub fn estimate(
    spec: &Spec,
    prices: &Prices,
    workload: &Workload,
    assumptions: &Assumptions,
) -> Result<Estimate, EstimateError> {
    workload.validate()?;
    let fp = Footprint::of(spec);
    let engines: Vec<EngineCost> = [
        EngineKind::Lambda,
        EngineKind::StepFunctionsExpress,
        EngineKind::StepFunctionsStandard,
    ]
    .into_iter()
    .map(|k| engine_cost(k, prices, workload, assumptions, &fp))
    .collect();
    let express_fits = workload.avg_latency_ms + assumptions.workflow_overhead_ms <= EXPRESS_MAX_MS;
    let cheaper = if express_fits && total_pico(&engines[1]) < total_pico(&engines[0]) {
        EngineKind::StepFunctionsExpress
    } else {
        EngineKind::Lambda
    };
    let bedrock = bedrock_caps(spec);
    let bedrock_total_micros = bedrock.iter().try_fold(0u64, |acc, c| {
        Some(acc.saturating_add(c.monthly_max_micros?))
    });
    Ok(Estimate {
        prices_region: prices.region.clone(),
        prices_date: prices.date.clone(),
        prices_sources: prices.sources.clone(),
        workload: *workload,
        assumptions: *assumptions,
        spec_engine: match spec.engine {
            spec::Engine::Lambda => EngineKind::Lambda,
            spec::Engine::StepFunctionsExpress => EngineKind::StepFunctionsExpress,
        },
        break_even_latency_ms: break_even(prices, workload, assumptions, &fp),
        engines,
        cheaper,
        bedrock,
        bedrock_total_micros,
    })
}

/// The lowest average latency (10 ms steps) from which Express costs no more than Lambda for the
/// rest of Express's range. Express's duration is billed at half Lambda's memory, so its cost grows
/// more slowly with latency and the two cross at most once (up to the 100 ms billing steps).
fn break_even(
    prices: &Prices,
    workload: &Workload,
    a: &Assumptions,
    fp: &Footprint,
) -> Option<u64> {
    let cost = |kind, latency| {
        let w = Workload {
            avg_latency_ms: latency,
            ..*workload
        };
        total_pico(&engine_cost(kind, prices, &w, a, fp))
    };
    let max = EXPRESS_MAX_MS - a.workflow_overhead_ms;
    let mut found = None;
    let mut latency = max - max % 10;
    // Walk down from the longest latency Express can serve while it stays no dearer.
    loop {
        if cost(EngineKind::StepFunctionsExpress, latency) > cost(EngineKind::Lambda, latency) {
            break;
        }
        found = Some(latency);
        if latency == 0 {
            break;
        }
        latency -= 10;
    }
    found
}

/// Formats micro-USD as dollars with cents rounded up, or exactly below a cent.
pub fn usd(micros: u64) -> String {
    if micros >= 10_000 {
        let cents = micros.div_ceil(10_000);
        format!("${}.{:02}", cents / 100, cents % 100)
    } else {
        format!("${}", MicroUsd(micros))
    }
}

/// The estimate as a table.
pub fn table(e: &Estimate) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let w = &e.workload;
    let _ = writeln!(
        out,
        "workload: {} requests/month, {} input + {} output tokens, {} ms Bedrock latency, {}% queued",
        w.requests_per_month,
        w.avg_input_tokens,
        w.avg_output_tokens,
        w.avg_latency_ms,
        w.queued_percent
    );
    let _ = writeln!(
        out,
        "prices: {} list prices compiled {} (no free tier; verify before relying on them), from {}",
        e.prices_region,
        e.prices_date,
        e.prices_sources.join(", ")
    );
    for c in &e.engines {
        let mark = if c.engine == e.spec_engine {
            "  (this spec's engine)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\nguard cost per month, engine {}{mark}",
            c.engine.as_str()
        );
        for l in &c.lines {
            let _ = writeln!(
                out,
                "  {:<48} {:>28} {:>12}",
                l.item,
                l.quantity,
                usd(l.usd_micros)
            );
        }
        let per = c
            .per_100k_requests_micros
            .map(usd)
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  {:<48} {:>28} {:>12}",
            "total",
            format!("{per} per 100k requests"),
            usd(c.total_micros)
        );
        if c.engine == EngineKind::StepFunctionsStandard {
            let _ = writeln!(
                out,
                "  (Standard cannot answer API Gateway synchronously; shown for comparison)"
            );
        }
    }
    let _ = writeln!(out, "\ncheaper for this workload: {}", e.cheaper.as_str());
    match e.break_even_latency_ms {
        Some(0) => {
            let _ = writeln!(
                out,
                "break-even: Express is no dearer than Lambda at any latency"
            );
        }
        Some(ms) => {
            let _ = writeln!(
                out,
                "break-even: Express is no dearer than Lambda from about {ms} ms of average Bedrock latency"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "break-even: none; Lambda is cheaper at every latency Express can serve (5 minutes)"
            );
        }
    }
    let a = &e.assumptions;
    let _ = writeln!(
        out,
        "assumed: invoke Lambda {} MB + {} ms overhead; workflow {} ms overhead, {} Lambda steps of {} ms at {} MB, {} transitions (Standard); {} log bytes per request",
        a.invoke_memory_mb,
        a.invoke_overhead_ms,
        a.workflow_overhead_ms,
        a.steps_per_execution,
        a.step_duration_ms,
        a.step_memory_mb,
        a.transitions_per_execution,
        a.log_bytes_per_request
    );
    let _ = writeln!(
        out,
        "\nBedrock spend the budgets allow at most (31-day month)"
    );
    for c in &e.bedrock {
        let max = c
            .monthly_max_micros
            .map(usd)
            .unwrap_or_else(|| "unbounded".into());
        let cc = c.cost_center.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "  {:<24} {:<16} {:>14}  {}",
            c.application, cc, max, c.bound_by
        );
    }
    let total = e
        .bedrock_total_micros
        .map(usd)
        .unwrap_or_else(|| "unbounded".into());
    let _ = writeln!(out, "  {:<24} {:<16} {:>14}", "total", "", total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The monthly cost of `item` on `engine`, in micro-USD.
    fn cost(engine: &EngineCost, item: &str) -> Option<u64> {
        engine
            .lines
            .iter()
            .find(|l| l.item == item)
            .map(|l| l.usd_micros)
    }

    fn spec(yaml: &str) -> Spec {
        spec::parse("test.yaml", yaml).expect("valid spec")
    }

    const SPEC: &str = "version: 1\nname: demo\nmodels:\n  lite:\n    id: amazon.nova-lite-v1:0\napplications:\n  chat:\n    models: [lite]\n    limits:\n      - { window: day, usd: 10 }\n      - { window: month, usd: 200, tokens: 1000000000 }\n  batch:\n    cost_center: research\n    models: [lite]\n    limits:\n      - { window: minute, tokens: 10000 }\n";

    #[test]
    fn pico_parsing_is_exact() {
        assert_eq!(parse_pico("0.0000166667").unwrap(), 16_666_700);
        assert_eq!(parse_pico("1").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_pico("0.000000000001").unwrap(), 1);
        assert!(parse_pico("0.0000000000001").is_err());
        assert!(parse_pico("-1").is_err());
        assert!(parse_pico("").is_err());
    }

    #[test]
    fn tiers_charge_each_slice_at_its_price() {
        let t = Tiered(vec![(Some(10), 5), (Some(30), 2), (None, 1)]);
        assert_eq!(t.cost(5, 1), 25);
        assert_eq!(t.cost(10, 1), 50);
        assert_eq!(t.cost(25, 1), 50 + 15 * 2);
        assert_eq!(t.cost(40, 1), 50 + 40 + 10);
        // Sub-units: 15 half-units = 7.5 units, rounded up after pricing.
        assert_eq!(t.cost(15, 2), 38);
    }

    /// The reference design's figure: about $3.75 per 100,000 Express executions. Its inputs are
    /// Express's $1.00 per million requests and $0.00001667 per GB-second at the 64 MB minimum; the
    /// figure follows from executions of about 35 s (its measured runs took 6.76 s to 32.24 s).
    #[test]
    fn reference_design_express_cost_per_100k() {
        let p = Prices::builtin();
        let n = 100_000u128;
        let requests = p.express_request.cost(n, 1);
        let mb_ms = n * 35_000 * 64;
        let duration = p.express_gb_second.cost(mb_ms, MB_MS_PER_GB_S);
        // 100,000 x $0.000001 = $0.10; 100,000 x 35 s x 0.0625 GB x $0.00001667 = $3.6465625.
        assert_eq!(micros(requests), 100_000);
        assert_eq!(micros(duration), 3_646_563);
        assert_eq!(usd(micros(requests + duration)), "$3.75");
    }

    #[test]
    fn lambda_engine_by_hand() {
        let s = spec(SPEC);
        let p = Prices::builtin();
        let w = Workload {
            requests_per_month: 1_000_000,
            avg_latency_ms: 985,
            ..Workload::default()
        };
        let a = Assumptions::default();
        let e = estimate(&s, &p, &w, &a).unwrap();
        let lambda = &e.engines[0];
        let get = |item: &str| cost(lambda, item).unwrap();
        // 1M x $3.50 per million.
        assert_eq!(get("API Gateway REST requests"), 3_500_000);
        // 1M x $0.20 per million.
        assert_eq!(get("Lambda requests"), 200_000);
        // 1M x (985 + 15) ms x 256 MB = 250,000 GB-s x $0.0000166667 = $4.166675.
        assert_eq!(get("Lambda duration"), 4_166_675);
        // Windows: chat 2, batch 1 -> 2 per app on average (rounded up) + the record = 3 items,
        // 2 transactions x 2 units each -> 12 units, + 2 for the open index -> 14 per request;
        // 14M x $0.625 per million.
        assert_eq!(get("DynamoDB write units"), 8_750_000);
        // 2,500 bytes x 1M = 2.328 GB x $0.50.
        assert_eq!(get("CloudWatch Logs ingestion"), 1_164_154);
        // chat: 15 x 2 + gauges 2 (day usd) + 4 (month usd+tokens) = 36; batch: 30 + 2 = 32;
        // cost center research: 15 -> 83 series x $0.30.
        assert_eq!(get("CloudWatch custom metrics"), 24_900_000);
        assert_eq!(get("CloudWatch dashboard"), 3_000_000);
        let sum: u64 = lambda.lines.iter().map(|l| l.usd_micros).sum();
        assert!(lambda.total_micros.abs_diff(sum) <= lambda.lines.len() as u64);
    }

    #[test]
    fn express_engine_by_hand() {
        let s = spec(SPEC);
        let p = Prices::builtin();
        let w = Workload {
            requests_per_month: 1_000_000,
            avg_latency_ms: 1_930,
            ..Workload::default()
        };
        let e = estimate(&s, &p, &w, &Assumptions::default()).unwrap();
        let express = &e.engines[1];
        let get = |item: &str| cost(express, item).unwrap();
        assert_eq!(get("Step Functions Express requests"), 1_000_000);
        // 1,930 + 120 ms -> 2,100 ms billed; 64 MB (50 MB + 18 KB); 1M x 2.1 s x 0.0625 GB =
        // 131,250 GB-s, within the first 3.6M GB-s tier: x $0.00001667 = $2.18793750.
        assert_eq!(get("Step Functions Express duration"), 2_187_938);
        // Two 5 ms steps at 128 MB: 2M requests ($0.40) and 1,250 GB-s ($0.02083...).
        assert_eq!(get("Lambda step requests"), 400_000);
        assert_eq!(get("Lambda step duration"), 20_834);
        let standard = &e.engines[2];
        // 6M transitions x $0.000025.
        assert_eq!(
            cost(standard, "Step Functions Standard transitions"),
            Some(150_000_000)
        );
    }

    #[test]
    fn express_memory_grows_with_the_payload() {
        let a = Assumptions::default();
        let small = Workload::default();
        assert_eq!(express_billed_mb(&small, &a), 64);
        // 4M tokens x 4 bytes = ~15.3 MB of state: 50 + 16 = 66 MB -> 128 MB billed.
        let large = Workload {
            avg_input_tokens: 4_000_000,
            ..small
        };
        assert_eq!(express_billed_mb(&large, &a), 128);
    }

    #[test]
    fn break_even_latency_matches_the_costs_on_both_sides() {
        let s = spec(SPEC);
        let p = Prices::builtin();
        let a = Assumptions::default();
        let w = Workload::default();
        let e = estimate(&s, &p, &w, &a).unwrap();
        let be = e
            .break_even_latency_ms
            .expect("express wins at long latencies");
        // Lambda bills 256 MB for every ms; Express 64 MB per started 100 ms, plus $1.20 per million
        // more in requests and steps: by hand, (1.2e-6 + 0.0625 x 0.12 s x 1.667e-5) / ((0.25 -
        // 0.0625) GB x 1.667e-5) = ~0.42 s; the 100 ms steps put it at 430 ms.
        assert_eq!(be, 430);
        let at = |ms| {
            let e = estimate(
                &s,
                &p,
                &Workload {
                    avg_latency_ms: ms,
                    ..w
                },
                &a,
            )
            .unwrap();
            (
                e.engines[0].total_micros,
                e.engines[1].total_micros,
                e.cheaper,
            )
        };
        let (lambda, express, _) = at(be);
        assert!(express <= lambda);
        let (lambda, express, cheaper) = at(be - 10);
        assert!(express > lambda);
        assert_eq!(cheaper, EngineKind::Lambda);
        let (_, _, cheaper) = at(be + 5_000);
        assert_eq!(cheaper, EngineKind::StepFunctionsExpress);
    }

    #[test]
    fn bedrock_caps_take_the_tightest_limit() {
        let s = spec(SPEC);
        let caps = bedrock_caps(&s);
        // chat: day $10 x 31 = $310 against month $200 and 1e9 tokens x $0.24/M = $240 -> $200.
        assert_eq!(caps[0].monthly_max_micros, Some(200_000_000));
        assert_eq!(caps[0].bound_by, "month USD limit");
        // batch: 10,000 tokens per minute x 44,640 minutes x $0.24 per million = $107.136.
        assert_eq!(caps[1].monthly_max_micros, Some(107_136_000));
        assert_eq!(caps[1].cost_center.as_deref(), Some("research"));
        let e = estimate(
            &s,
            &Prices::builtin(),
            &Workload::default(),
            &Assumptions::default(),
        )
        .unwrap();
        assert_eq!(e.bedrock_total_micros, Some(307_136_000));
    }

    #[test]
    fn token_caps_price_the_dearest_tier_and_cache_write() {
        // Sonnet 4's standard output is $15/M; the spec's priority tier charges $18.75/M.
        let tiered = "version: 1\nname: demo\nmodels:\n  sonnet:\n    id: anthropic.claude-sonnet-4-20250514-v1:0\n    price:\n      input: 3\n      output: 15\n      tiers:\n        priority: { input: 3.75, output: 18.75 }\napplications:\n  chat:\n    models: [sonnet]\n    limits:\n      - { window: month, tokens: 1000000 }\n";
        let caps = bedrock_caps(&spec(tiered));
        assert_eq!(caps[0].monthly_max_micros, Some(18_750_000));
        assert_eq!(
            caps[0].bound_by,
            "month token limit at its dearest model's price"
        );
        // A spec price whose one-hour cache write is its dearest token: $40/M against $30/M out.
        let cached = "version: 1\nname: demo\nmodels:\n  sonnet:\n    id: anthropic.claude-sonnet-4-20250514-v1:0\n    price: { input: 3, output: 30, cache_write_1h: 40 }\napplications:\n  chat:\n    models: [sonnet]\n    limits:\n      - { window: month, tokens: 1000000 }\n";
        let caps = bedrock_caps(&spec(cached));
        assert_eq!(caps[0].monthly_max_micros, Some(40_000_000));
    }

    #[test]
    fn shadow_mode_is_unbounded() {
        let s = spec(&SPEC.replace("  batch:\n", "  batch:\n    mode: shadow\n"));
        let caps = bedrock_caps(&s);
        assert_eq!(caps[1].monthly_max_micros, None);
        let e = estimate(
            &s,
            &Prices::builtin(),
            &Workload::default(),
            &Assumptions::default(),
        )
        .unwrap();
        assert_eq!(e.bedrock_total_micros, None);
        assert!(table(&e).contains("unbounded: shadow mode never blocks"));
    }

    #[test]
    fn queued_requests_bill_sqs_instead_of_api_gateway() {
        let s = spec(SPEC);
        let w = Workload {
            queued_percent: 50,
            ..Workload::default()
        };
        let e = estimate(&s, &Prices::builtin(), &w, &Assumptions::default()).unwrap();
        let lambda = &e.engines[0];
        let get = |item: &str| cost(lambda, item);
        assert_eq!(get("API Gateway REST requests"), Some(1_750_000));
        // 500,000 messages x 3 requests x $0.40 per million.
        assert_eq!(get("SQS requests"), Some(600_000));
        assert!(
            e.engines[1]
                .lines
                .iter()
                .any(|l| l.item.starts_with("EventBridge Pipes"))
        );
        let bad = Workload {
            queued_percent: 101,
            ..Workload::default()
        };
        let err = estimate(&s, &Prices::builtin(), &bad, &Assumptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`--queued-percent` must be between 0 and 100, got `101`"
        );
    }

    #[test]
    fn bad_price_data_is_named() {
        let text = PRICES_JSON.replace("\"0.0000002\"", "\"0.0000002x\"");
        let err = Prices::from_json(&text).unwrap_err();
        assert!(err.to_string().contains("`0.0000002x`"), "{err}");
    }
}
