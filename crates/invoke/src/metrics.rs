//! Metrics as CloudWatch Embedded Metric Format lines on stdout.
//!
//! A few lines of serde_json rather than a `metrics` exporter: each request emits exactly one
//! line, synchronously, with the dimensions it was decided under, and tests can capture the lines.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

/// The namespace every metric is published in.
pub const NAMESPACE: &str = "TokenFence";

/// Where metric lines go.
#[derive(Debug, Clone, Default)]
pub enum MetricsSink {
    /// One JSON line per record on stdout (Lambda ships stdout to CloudWatch Logs, which extracts EMF).
    #[default]
    Stdout,
    /// Kept in memory, for tests.
    Capture(Arc<Mutex<Vec<Value>>>),
}

impl MetricsSink {
    /// Emits one EMF record.
    pub fn emit(&self, record: Value) {
        match self {
            MetricsSink::Stdout => println!("{record}"),
            MetricsSink::Capture(lines) => lines.lock().expect("metrics lock").push(record),
        }
    }
}

/// The EMF `_aws` envelope: which members of the record are metrics, under which dimension sets.
fn envelope(timestamp_ms: u64, dimensions: Value, metrics: &[(&str, &str)]) -> Value {
    json!({
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [{
            "Namespace": NAMESPACE,
            "Dimensions": dimensions,
            "Metrics": metrics.iter().map(|(n, u)| json!({ "Name": n, "Unit": u })).collect::<Vec<_>>()
        }]
    })
}

/// One request's outcome, as metrics.
#[derive(Debug, Clone, Default)]
pub struct RequestMetrics<'a> {
    /// The application.
    pub application: &'a str,
    /// Its cost center, if any.
    pub cost_center: Option<&'a str>,
    /// The model called (or asked for).
    pub model: &'a str,
    /// Approved by every limit (or unreserved by policy).
    pub approved: bool,
    /// Denied by a limit.
    pub denied: bool,
    /// Would have been denied (shadow mode).
    pub shadow_denied: bool,
    /// Bedrock or the gateway failed.
    pub failed: bool,
    /// Called without a reservation because the ledger was down and policy allows it.
    pub unreserved: bool,
    /// Served by the fallback model.
    pub fallback: bool,
    /// Tokens used, by kind.
    pub usage: budget::Usage,
    /// Cost in micro-USD.
    pub cost_micro_usd: u64,
    /// Charged its whole reservation: Bedrock may have billed a generation whose usage is unknown.
    pub worst_case: bool,
    /// The model has no price, so the cost is unknown (token-only applications).
    pub cost_unknown: bool,
}

/// The EMF record of one request.
pub fn request_record(m: &RequestMetrics<'_>, timestamp_ms: u64) -> Value {
    let flag = |b: bool| if b { 1 } else { 0 };
    let names = [
        ("TotalRequests", "Count"),
        ("RateLimitApproved", "Count"),
        ("RateLimitDenied", "Count"),
        ("ShadowDenied", "Count"),
        ("InvocationFailed", "Count"),
        ("UnreservedRequests", "Count"),
        ("FallbackRequests", "Count"),
        ("WorstCaseSettlements", "Count"),
        ("UnpricedRequests", "Count"),
        ("InputTokens", "Count"),
        ("OutputTokens", "Count"),
        ("CacheReadInputTokens", "Count"),
        ("CacheWriteInputTokens", "Count"),
        ("TotalTokens", "Count"),
        ("CostUsd", "None"),
    ];
    let mut dimensions = vec![json!(["Application"]), json!(["Application", "Model"])];
    if m.cost_center.is_some() {
        dimensions.push(json!(["CostCenter"]));
    }
    let mut record = Map::new();
    record.insert(
        "_aws".into(),
        envelope(timestamp_ms, json!(dimensions), &names),
    );
    record.insert("Application".into(), json!(m.application));
    record.insert("Model".into(), json!(m.model));
    if let Some(cc) = m.cost_center {
        record.insert("CostCenter".into(), json!(cc));
    }
    record.insert("TotalRequests".into(), json!(1));
    record.insert("RateLimitApproved".into(), json!(flag(m.approved)));
    record.insert("RateLimitDenied".into(), json!(flag(m.denied)));
    record.insert("ShadowDenied".into(), json!(flag(m.shadow_denied)));
    record.insert("InvocationFailed".into(), json!(flag(m.failed)));
    record.insert("UnreservedRequests".into(), json!(flag(m.unreserved)));
    record.insert("FallbackRequests".into(), json!(flag(m.fallback)));
    record.insert("WorstCaseSettlements".into(), json!(flag(m.worst_case)));
    record.insert("UnpricedRequests".into(), json!(flag(m.cost_unknown)));
    record.insert("InputTokens".into(), json!(m.usage.input_tokens));
    record.insert("OutputTokens".into(), json!(m.usage.output_tokens));
    record.insert(
        "CacheReadInputTokens".into(),
        json!(m.usage.cache_read_tokens),
    );
    record.insert(
        "CacheWriteInputTokens".into(),
        json!(m.usage.cache_write_tokens),
    );
    record.insert("TotalTokens".into(), json!(m.usage.total_tokens()));
    // CloudWatch values are doubles; the ledger keeps the exact integer.
    record.insert(
        "CostUsd".into(),
        json!(m.cost_micro_usd as f64 / 1_000_000.0),
    );
    Value::Object(record)
}

/// The EMF record of one window's gauges: utilization of the limit and the projection at the
/// window's end, in percent. Alarms on these line up with the ledger's calendar windows.
pub fn window_record(
    application: &str,
    window: &str,
    limit_metric: &str,
    utilization: f64,
    projected: f64,
    timestamp_ms: u64,
) -> Value {
    json!({
        "_aws": envelope(
            timestamp_ms,
            json!([["Application", "Window", "Limit"]]),
            &[("WindowUtilization", "Percent"), ("ProjectedUtilization", "Percent")],
        ),
        "Application": application,
        "Window": window,
        "Limit": limit_metric,
        "WindowUtilization": utilization,
        "ProjectedUtilization": projected
    })
}

/// The EMF record of the reservations the sweeper closed for one application: held past their
/// hold and never settled, so charged their whole reservation.
pub fn expired_record(
    application: &str,
    count: u64,
    tokens: u64,
    micro_usd: u64,
    timestamp_ms: u64,
) -> Value {
    json!({
        "_aws": envelope(
            timestamp_ms,
            json!([["Application"]]),
            &[
                ("ExpiredReservations", "Count"),
                ("ExpiredTokens", "Count"),
                ("ExpiredCostUsd", "None"),
            ],
        ),
        "Application": application,
        "ExpiredReservations": count,
        "ExpiredTokens": tokens,
        // CloudWatch values are doubles; the ledger keeps the exact integer.
        "ExpiredCostUsd": micro_usd as f64 / 1_000_000.0
    })
}
