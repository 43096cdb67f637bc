//! Metrics as CloudWatch Embedded Metric Format lines on stdout.
//!
//! Typed records serialized straight to bytes rather than a `metrics` exporter: each request
//! emits its lines synchronously, with the dimensions it was decided under, and tests can capture
//! them. Records are plain structs over borrowed strings and static metric lists, and a batch is
//! one `write` to stdout: building `serde_json::Value` maps and printing them through `Display`
//! cost a fifth of the gateway's CPU per request (see BENCHMARKS.md).

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

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
    pub fn emit<R: Serialize>(&self, record: &R) {
        self.emit_all(std::slice::from_ref(record));
    }

    /// Emits EMF records, one line each, in one write.
    pub fn emit_all<R: Serialize>(&self, records: &[R]) {
        match self {
            MetricsSink::Stdout => {
                let mut lines = Vec::with_capacity(records.len() * 640);
                for record in records {
                    // Serializing structs of strings and numbers cannot fail.
                    if serde_json::to_writer(&mut lines, record).is_ok() {
                        lines.push(b'\n');
                    }
                }
                // A closed stdout must not fail a request: the metrics are lost, the budget is not.
                let _ = std::io::stdout().lock().write_all(&lines);
            }
            MetricsSink::Capture(captured) => {
                let mut captured = captured.lock().expect("metrics lock");
                captured.extend(records.iter().filter_map(|r| serde_json::to_value(r).ok()));
            }
        }
    }
}

/// A metric's name and unit in the EMF directive.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetricDef {
    name: &'static str,
    unit: &'static str,
}

const fn def(name: &'static str, unit: &'static str) -> MetricDef {
    MetricDef { name, unit }
}

/// The EMF `_aws` envelope: which members of the record are metrics, under which dimension sets.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Envelope {
    timestamp: u64,
    cloud_watch_metrics: [Directive; 1],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Directive {
    namespace: &'static str,
    dimensions: &'static [&'static [&'static str]],
    metrics: &'static [MetricDef],
}

fn envelope(
    timestamp_ms: u64,
    dimensions: &'static [&'static [&'static str]],
    metrics: &'static [MetricDef],
) -> Envelope {
    Envelope {
        timestamp: timestamp_ms,
        cloud_watch_metrics: [Directive {
            namespace: NAMESPACE,
            dimensions,
            metrics,
        }],
    }
}

/// One request's outcome, as metrics.
#[derive(Debug, Clone, Default)]
pub struct RequestMetrics<'a> {
    /// The application.
    pub application: &'a str,
    /// Its cost center, if any.
    pub cost_center: Option<&'a str>,
    /// The caller's user, if its key is a seat's: always a property of the record (searchable in
    /// CloudWatch Logs Insights, not billed as a metric).
    pub user: Option<&'a str>,
    /// Publish the metrics per user too (an `Application, User` dimension set): opt-in, because
    /// CloudWatch bills every custom metric, and every user makes fifteen more.
    pub user_dimension: bool,
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

const REQUEST_METRICS: &[MetricDef] = &[
    def("TotalRequests", "Count"),
    def("RateLimitApproved", "Count"),
    def("RateLimitDenied", "Count"),
    def("ShadowDenied", "Count"),
    def("InvocationFailed", "Count"),
    def("UnreservedRequests", "Count"),
    def("FallbackRequests", "Count"),
    def("WorstCaseSettlements", "Count"),
    def("UnpricedRequests", "Count"),
    def("InputTokens", "Count"),
    def("OutputTokens", "Count"),
    def("CacheReadInputTokens", "Count"),
    def("CacheWriteInputTokens", "Count"),
    def("TotalTokens", "Count"),
    def("CostUsd", "None"),
];

/// The EMF record of one request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestRecord<'a> {
    #[serde(rename = "_aws")]
    aws: Envelope,
    application: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost_center: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    total_requests: u8,
    rate_limit_approved: u8,
    rate_limit_denied: u8,
    shadow_denied: u8,
    invocation_failed: u8,
    unreserved_requests: u8,
    fallback_requests: u8,
    worst_case_settlements: u8,
    unpriced_requests: u8,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_write_input_tokens: u64,
    total_tokens: u64,
    cost_usd: f64,
}

/// The EMF record of one request.
pub fn request_record<'a>(m: &RequestMetrics<'a>, timestamp_ms: u64) -> RequestRecord<'a> {
    let per_user = m.user_dimension && m.user.is_some();
    let dimensions: &'static [&'static [&'static str]] = match (m.cost_center.is_some(), per_user) {
        (true, false) => &[&["Application"], &["Application", "Model"], &["CostCenter"]],
        (false, false) => &[&["Application"], &["Application", "Model"]],
        (true, true) => &[
            &["Application"],
            &["Application", "Model"],
            &["CostCenter"],
            &["Application", "User"],
        ],
        (false, true) => &[
            &["Application"],
            &["Application", "Model"],
            &["Application", "User"],
        ],
    };
    RequestRecord {
        aws: envelope(timestamp_ms, dimensions, REQUEST_METRICS),
        application: m.application,
        model: m.model,
        cost_center: m.cost_center,
        user: m.user,
        total_requests: 1,
        rate_limit_approved: m.approved.into(),
        rate_limit_denied: m.denied.into(),
        shadow_denied: m.shadow_denied.into(),
        invocation_failed: m.failed.into(),
        unreserved_requests: m.unreserved.into(),
        fallback_requests: m.fallback.into(),
        worst_case_settlements: m.worst_case.into(),
        unpriced_requests: m.cost_unknown.into(),
        input_tokens: m.usage.input_tokens,
        output_tokens: m.usage.output_tokens,
        cache_read_input_tokens: m.usage.cache_read_tokens,
        cache_write_input_tokens: m.usage.cache_write_tokens,
        total_tokens: m.usage.total_tokens(),
        // CloudWatch values are doubles; the ledger keeps the exact integer.
        cost_usd: m.cost_micro_usd as f64 / 1_000_000.0,
    }
}

const WINDOW_METRICS: &[MetricDef] = &[
    def("WindowUtilization", "Percent"),
    def("ProjectedUtilization", "Percent"),
];

/// The EMF record of one window's gauges: utilization of the limit and the projection at the
/// window's end, in percent. Alarms on these line up with the ledger's calendar windows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WindowRecord<'a> {
    #[serde(rename = "_aws")]
    aws: Envelope,
    application: &'a str,
    window: &'a str,
    limit: &'a str,
    window_utilization: f64,
    projected_utilization: f64,
}

/// The EMF record of one window's gauges.
pub fn window_record<'a>(
    application: &'a str,
    window: &'a str,
    limit_metric: &'a str,
    utilization: f64,
    projected: f64,
    timestamp_ms: u64,
) -> WindowRecord<'a> {
    WindowRecord {
        aws: envelope(
            timestamp_ms,
            &[&["Application", "Window", "Limit"]],
            WINDOW_METRICS,
        ),
        application,
        window,
        limit: limit_metric,
        window_utilization: utilization,
        projected_utilization: projected,
    }
}

const EXPIRED_METRICS: &[MetricDef] = &[
    def("ExpiredReservations", "Count"),
    def("ExpiredTokens", "Count"),
    def("ExpiredCostUsd", "None"),
];

/// The EMF record of the reservations the sweeper closed for one application: held past their
/// hold and never settled, so charged their whole reservation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExpiredRecord<'a> {
    #[serde(rename = "_aws")]
    aws: Envelope,
    application: &'a str,
    expired_reservations: u64,
    expired_tokens: u64,
    expired_cost_usd: f64,
}

/// The EMF record of the reservations the sweeper closed for one application.
pub fn expired_record(
    application: &str,
    count: u64,
    tokens: u64,
    micro_usd: u64,
    timestamp_ms: u64,
) -> ExpiredRecord<'_> {
    ExpiredRecord {
        aws: envelope(timestamp_ms, &[&["Application"]], EXPIRED_METRICS),
        application,
        expired_reservations: count,
        expired_tokens: tokens,
        // CloudWatch values are doubles; the ledger keeps the exact integer.
        expired_cost_usd: micro_usd as f64 / 1_000_000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_record_is_the_emf_cloudwatch_reads() {
        let m = RequestMetrics {
            application: "support-bot",
            cost_center: Some("cc-42"),
            model: "amazon.nova-micro-v1:0",
            approved: true,
            usage: budget::Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Default::default()
            },
            cost_micro_usd: 1_500,
            ..Default::default()
        };
        let record = serde_json::to_value(request_record(&m, 1_700_000_000_000)).unwrap();
        let directive = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(record["_aws"]["Timestamp"], 1_700_000_000_000u64);
        assert_eq!(directive["Namespace"], "TokenFence");
        assert_eq!(
            directive["Dimensions"],
            serde_json::json!([["Application"], ["Application", "Model"], ["CostCenter"]])
        );
        // Every declared metric is a member of the record, as EMF requires.
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(record[name].is_number(), "{name} missing");
        }
        assert_eq!(record["CostCenter"], "cc-42");
        assert_eq!(record["TotalTokens"], 15);
        assert_eq!(record["RateLimitApproved"], 1);
        assert_eq!(record["RateLimitDenied"], 0);
        assert_eq!(record["CostUsd"], 0.0015);
        let without = serde_json::to_value(request_record(
            &RequestMetrics {
                cost_center: None,
                ..m
            },
            0,
        ))
        .unwrap();
        assert!(without.get("CostCenter").is_none());
        assert_eq!(
            without["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // A seat's user: a property always, a dimension only when the application opts in.
        let seat = RequestMetrics {
            user: Some("alice"),
            ..m.clone()
        };
        let property = serde_json::to_value(request_record(&seat, 0)).unwrap();
        assert_eq!(property["User"], "alice");
        assert!(
            !property["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
                .to_string()
                .contains("User")
        );
        let dimension = serde_json::to_value(request_record(
            &RequestMetrics {
                user_dimension: true,
                ..seat
            },
            0,
        ))
        .unwrap();
        assert_eq!(
            dimension["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([
                ["Application"],
                ["Application", "Model"],
                ["CostCenter"],
                ["Application", "User"]
            ])
        );
    }

    #[test]
    fn a_batch_is_captured_line_by_line() {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = MetricsSink::Capture(Arc::clone(&captured));
        sink.emit_all(&[
            window_record("a", "minute", "tokens", 50.0, 75.0, 1),
            window_record("a", "day", "usd", 1.0, 2.0, 1),
        ]);
        sink.emit(&expired_record("a", 2, 30, 7, 1));
        let captured = captured.lock().unwrap();
        assert_eq!(captured.len(), 3);
        assert_eq!(captured[1]["Window"], "day");
        assert_eq!(captured[1]["ProjectedUtilization"], 2.0);
        assert_eq!(captured[2]["ExpiredReservations"], 2);
        assert_eq!(captured[2]["ExpiredCostUsd"], 0.000007);
    }
}
