//! `synth report`: usage, cost and limit utilization of a deployed stack, read back from the
//! metrics the gateway publishes (CloudWatch `GetMetricData`) and the budgets in its ledger.
//!
//! The planning of queries and the assembly of the report are pure functions over the budget
//! configurations and the sums CloudWatch returns; [`gather`] is the thin I/O around them.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use budget::config::BudgetConfig;
use budget::{Window, forecast};
use serde::Serialize;
use thiserror::Error;

/// The namespace the gateway publishes in (see `invoke::metrics`).
pub const NAMESPACE: &str = "TokenFence";

/// The stack output naming the ledger table.
pub const TABLE_OUTPUT: &str = "LedgerTableName";

/// Errors of a report.
#[derive(Debug, Error)]
pub enum ReportError {
    /// `--since` is malformed.
    #[error("`--since` must be a number followed by `m`, `h` or `d` (e.g. `7d`), got `{0}`")]
    Since(String),
    /// The stack cannot be read or has no ledger.
    #[error("stack `{stack}`: {reason}")]
    Stack {
        /// The stack.
        stack: String,
        /// What is wrong.
        reason: String,
    },
    /// The ledger cannot be read.
    #[error("ledger table `{table}`: {source}")]
    Ledger {
        /// The table.
        table: String,
        /// The error.
        source: ledger::LedgerError,
    },
    /// CloudWatch refused a query.
    #[error("cloudwatch GetMetricData: {0}")]
    Metrics(String),
}

/// Parses `30m`, `12h`, `7d` into seconds (at most 455 days, CloudWatch's retention).
pub fn parse_since(text: &str) -> Result<i64, ReportError> {
    let bad = || ReportError::Since(text.to_string());
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if secs <= 0 || secs > 455 * 86_400 {
        return Err(bad());
    }
    Ok(secs)
}

/// The request metrics summed over the report's range.
pub const TOTALS: &[&str] = &[
    "TotalRequests",
    "RateLimitApproved",
    "RateLimitDenied",
    "InvocationFailed",
    "InputTokens",
    "OutputTokens",
    "TotalTokens",
    "CostUsd",
];

/// What a query is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// One of [`TOTALS`] over the report's range.
    Total(&'static str),
    /// Usage of the application's `n`th limit (tokens or USD) in the current window.
    Limit(usize, budget::LimitMetric),
    /// Month-to-date cost, for the projection.
    MonthCost,
}

/// One planned `GetMetricData` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Query ID (`q0`, `q1`, ...).
    pub id: String,
    /// The application (dimension `Application`).
    pub application: String,
    /// The metric.
    pub metric: &'static str,
    /// Start, Unix seconds (inclusive).
    pub start: i64,
    /// End, Unix seconds (exclusive).
    pub end: i64,
    /// Period in seconds.
    pub period: i32,
    /// What it is for.
    pub purpose: Purpose,
}

fn period_for(start: i64, end: i64) -> i32 {
    // One-minute data is kept 15 days; hourly 455. Longer ranges sum hourly datapoints.
    if end - start <= 86_400 { 60 } else { 3_600 }
}

/// Plans every query of a report at `now` covering `since` seconds.
pub fn plan(configs: &[BudgetConfig], now: i64, since: i64) -> Vec<Query> {
    let mut queries = Vec::new();
    let end = now + 60;
    let mut push = |app: &str, metric: &'static str, start: i64, purpose: Purpose| {
        let period = period_for(start, end);
        let start = start - start.rem_euclid(i64::from(period));
        queries.push(Query {
            id: format!("q{}", queries.len()),
            application: app.to_string(),
            metric,
            start,
            end,
            period,
            purpose,
        });
    };
    let month_start = Window::Month
        .instance_at(now)
        .map(|w| w.start)
        .unwrap_or(now);
    for c in configs {
        for metric in TOTALS {
            push(&c.application, metric, now - since, Purpose::Total(metric));
        }
        for (i, limit) in c.limits.iter().enumerate() {
            let Ok(instance) = limit.window.instance_at(now) else {
                continue;
            };
            if limit.tokens.is_some() {
                push(
                    &c.application,
                    "TotalTokens",
                    instance.start,
                    Purpose::Limit(i, budget::LimitMetric::Tokens),
                );
            }
            if limit.usd.is_some() {
                push(
                    &c.application,
                    "CostUsd",
                    instance.start,
                    Purpose::Limit(i, budget::LimitMetric::Usd),
                );
            }
        }
        push(&c.application, "CostUsd", month_start, Purpose::MonthCost);
    }
    queries
}

/// Use of one limit in its current window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitUse {
    /// The window.
    pub window: Window,
    /// `tokens` or `usd`.
    pub metric: budget::LimitMetric,
    /// Used so far in this window (tokens, or micro-USD).
    pub used: u64,
    /// The limit (tokens, or micro-USD).
    pub limit: u64,
    /// `used` as a percent of `limit`.
    pub utilization_percent: f64,
}

/// Request counts, tokens and cost over the report's range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Approved by every limit.
    pub approved: u64,
    /// Denied by a limit.
    pub denied: u64,
    /// Failed (Bedrock or the gateway).
    pub failed: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Tokens of every kind.
    pub tokens: u64,
    /// Cost in micro-USD.
    pub cost_micros: u64,
    /// Cost this calendar month so far, micro-USD.
    pub month_to_date_micros: u64,
    /// Month-to-date cost projected to the month's end at the current burn rate, micro-USD.
    pub month_end_projection_micros: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.approved += o.approved;
        self.denied += o.denied;
        self.failed += o.failed;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.tokens += o.tokens;
        self.cost_micros += o.cost_micros;
        self.month_to_date_micros += o.month_to_date_micros;
        self.month_end_projection_micros += o.month_end_projection_micros;
    }
}

/// One application's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppReport {
    /// The application.
    pub application: String,
    /// Its cost center.
    pub cost_center: Option<String>,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// Totals.
    #[serde(flatten)]
    pub totals: Totals,
    /// Its limits' use.
    pub limits: Vec<LimitUse>,
    /// The monthly USD limit, micro-USD, if any.
    pub month_usd_limit_micros: Option<u64>,
    /// Its seats' limits, in their current windows, from the ledger.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserReport>,
}

/// One user's (seat's) limits in their current windows, as the ledger holds them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserReport {
    /// The user.
    pub user: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// Its limits' use.
    pub limits: Vec<LimitUse>,
}

/// The use of each limited window by what the ledger holds for it (tokens and USD, each limited
/// one).
pub fn limit_uses(usage: &[ledger::WindowUsage]) -> Vec<LimitUse> {
    let mut out = Vec::new();
    for w in usage {
        let pairs = [
            w.limit
                .tokens
                .map(|l| (budget::LimitMetric::Tokens, w.used.tokens, l)),
            w.limit
                .usd
                .map(|l| (budget::LimitMetric::Usd, w.used.cost.micros(), l.micros())),
        ];
        for (metric, used, limit) in pairs.into_iter().flatten() {
            out.push(LimitUse {
                window: w.limit.window,
                metric,
                used,
                limit,
                utilization_percent: (forecast::utilization_percent(used, limit) * 10.0).round()
                    / 10.0,
            });
        }
    }
    out
}

/// The seats of `config` at `now`: every user with a budget that holds a counter
/// (`(user, window key, charge)`, as [`ledger::DynamoLedger::user_counters`] reads them) or is
/// named in `users`, with its limits' use in their current windows.
pub fn seats(
    counters: &[(String, String, budget::Charge)],
    config: &BudgetConfig,
    now: i64,
) -> Vec<UserReport> {
    let mut names: Vec<&str> = counters.iter().map(|(u, _, _)| u.as_str()).collect();
    names.extend(config.users.keys().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for user in names {
        let Some(budget) = config.user_budget(user) else {
            continue;
        };
        let usage: Vec<ledger::WindowUsage> = budget
            .limits
            .iter()
            .filter_map(|limit| {
                let instance = limit.window.instance_at(now).ok()?;
                let key = instance.key();
                let used = counters
                    .iter()
                    .find(|(u, k, _)| u == user && *k == key)
                    .map_or(budget::Charge::ZERO, |(_, _, c)| *c);
                Some(ledger::WindowUsage {
                    limit: *limit,
                    instance,
                    used,
                })
            })
            .collect();
        out.push(UserReport {
            user: user.to_string(),
            mode: budget.mode.as_str(),
            limits: limit_uses(&usage),
        });
    }
    out
}

/// One cost center's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostCenterReport {
    /// The cost center (`-` for applications without one).
    pub cost_center: String,
    /// Its applications.
    pub applications: Vec<String>,
    /// Totals.
    #[serde(flatten)]
    pub totals: Totals,
}

/// A whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The stack.
    pub stack: String,
    /// Its ledger table.
    pub table: String,
    /// Range start, Unix seconds.
    pub since: i64,
    /// When the report was made, Unix seconds.
    pub now: i64,
    /// Per application, by name.
    pub applications: Vec<AppReport>,
    /// Per cost center, by name.
    pub cost_centers: Vec<CostCenterReport>,
}

fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// CloudWatch values are doubles; money is whole micro-USD from here on.
fn micros(usd: f64) -> u64 {
    count(usd * 1_000_000.0)
}

/// Builds the report from the sums returned for `queries` (by query ID; a missing ID is zero).
pub fn assemble(
    stack: &str,
    table: &str,
    configs: &[BudgetConfig],
    queries: &[Query],
    sums: &HashMap<String, f64>,
    now: i64,
    since: i64,
) -> Report {
    let mut applications = Vec::new();
    for c in configs {
        let mut totals = Totals::default();
        let mut limits: Vec<LimitUse> = Vec::new();
        for q in queries.iter().filter(|q| q.application == c.application) {
            let v = sums.get(&q.id).copied().unwrap_or(0.0);
            match &q.purpose {
                Purpose::Total(m) => {
                    let slot = match *m {
                        "TotalRequests" => &mut totals.requests,
                        "RateLimitApproved" => &mut totals.approved,
                        "RateLimitDenied" => &mut totals.denied,
                        "InvocationFailed" => &mut totals.failed,
                        "InputTokens" => &mut totals.input_tokens,
                        "OutputTokens" => &mut totals.output_tokens,
                        "TotalTokens" => &mut totals.tokens,
                        _ => {
                            totals.cost_micros = micros(v);
                            continue;
                        }
                    };
                    *slot = count(v);
                }
                Purpose::Limit(i, metric) => {
                    let limit = &c.limits[*i];
                    let (used, cap) = match metric {
                        budget::LimitMetric::Tokens => (count(v), limit.tokens.unwrap_or(0)),
                        budget::LimitMetric::Usd => {
                            (micros(v), limit.usd.map_or(0, |u| u.micros()))
                        }
                    };
                    limits.push(LimitUse {
                        window: limit.window,
                        metric: *metric,
                        used,
                        limit: cap,
                        utilization_percent: (forecast::utilization_percent(used, cap) * 10.0)
                            .round()
                            / 10.0,
                    });
                }
                Purpose::MonthCost => {
                    totals.month_to_date_micros = micros(v);
                    if let Ok(month) = Window::Month.instance_at(now) {
                        totals.month_end_projection_micros =
                            forecast::projected_usage(micros(v), &month, now);
                    }
                }
            }
        }
        applications.push(AppReport {
            application: c.application.clone(),
            cost_center: c.cost_center.clone(),
            mode: c.mode.as_str(),
            totals,
            limits,
            month_usd_limit_micros: c
                .limits
                .iter()
                .find(|l| l.window == Window::Month)
                .and_then(|l| l.usd)
                .map(|u| u.micros()),
            users: Vec::new(),
        });
    }
    let mut centers: BTreeMap<String, CostCenterReport> = BTreeMap::new();
    for a in &applications {
        let name = a.cost_center.clone().unwrap_or_else(|| "-".into());
        let entry = centers
            .entry(name.clone())
            .or_insert_with(|| CostCenterReport {
                cost_center: name,
                applications: Vec::new(),
                totals: Totals::default(),
            });
        entry.applications.push(a.application.clone());
        entry.totals.add(&a.totals);
    }
    Report {
        stack: stack.to_string(),
        table: table.to_string(),
        since: now - since,
        now,
        applications,
        cost_centers: centers.into_values().collect(),
    }
}

fn usd(micros: u64) -> String {
    crate::estimate::usd(micros)
}

fn amount(metric: budget::LimitMetric, v: u64) -> String {
    match metric {
        budget::LimitMetric::Tokens => v.to_string(),
        budget::LimitMetric::Usd => usd(v),
    }
}

/// The report as tables.
pub fn table(r: &Report, since_text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stack `{}` (ledger `{}`), last {since_text}; limits and projections as of now",
        r.stack, r.table
    );
    let header = |out: &mut String, first: &str| {
        let _ = writeln!(
            out,
            "{first:<24} {:>9} {:>9} {:>7} {:>7} {:>12} {:>10} {:>12} {:>14}",
            "requests",
            "approved",
            "denied",
            "failed",
            "tokens",
            "usd",
            "month-to-date",
            "month-end proj."
        );
    };
    let row = |out: &mut String, name: &str, t: &Totals| {
        let _ = writeln!(
            out,
            "{name:<24} {:>9} {:>9} {:>7} {:>7} {:>12} {:>10} {:>12} {:>14}",
            t.requests,
            t.approved,
            t.denied,
            t.failed,
            t.tokens,
            usd(t.cost_micros),
            usd(t.month_to_date_micros),
            usd(t.month_end_projection_micros)
        );
    };
    let _ = writeln!(out, "\nper application");
    header(&mut out, "application");
    for a in &r.applications {
        row(&mut out, &a.application, &a.totals);
    }
    let _ = writeln!(out, "\nlimits (current window)");
    for a in &r.applications {
        for l in &a.limits {
            let _ = writeln!(
                out,
                "{:<24} {:<7} {:<7} {:>14} of {:<14} {:>6.1}%{}",
                a.application,
                l.window.to_string(),
                l.metric.to_string(),
                amount(l.metric, l.used),
                amount(l.metric, l.limit),
                l.utilization_percent,
                if a.mode == "shadow" { "  (shadow)" } else { "" }
            );
        }
    }
    if r.applications.iter().any(|a| !a.users.is_empty()) {
        let _ = writeln!(out, "\nseats (current window)");
        for a in &r.applications {
            for u in &a.users {
                for l in &u.limits {
                    let _ = writeln!(
                        out,
                        "{:<24} {:<20} {:<7} {:<7} {:>14} of {:<14} {:>6.1}%{}",
                        a.application,
                        u.user,
                        l.window.to_string(),
                        l.metric.to_string(),
                        amount(l.metric, l.used),
                        amount(l.metric, l.limit),
                        l.utilization_percent,
                        if u.mode == "shadow" { "  (shadow)" } else { "" }
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "\nper cost center");
    header(&mut out, "cost center");
    for c in &r.cost_centers {
        row(&mut out, &c.cost_center, &c.totals);
    }
    out
}

/// Runs `queries` against CloudWatch, one call per distinct time range, and sums each query's
/// datapoints.
pub async fn fetch(
    cw: &aws_sdk_cloudwatch::Client,
    queries: &[Query],
) -> Result<HashMap<String, f64>, ReportError> {
    let mut groups: BTreeMap<(i64, i64), Vec<&Query>> = BTreeMap::new();
    for q in queries {
        groups.entry((q.start, q.end)).or_default().push(q);
    }
    let mut sums = HashMap::new();
    for ((start, end), group) in groups {
        // GetMetricData takes at most 500 queries per call.
        for chunk in group.chunks(500) {
            let built: Vec<MetricDataQuery> = chunk
                .iter()
                .map(|q| {
                    MetricDataQuery::builder()
                        .id(&q.id)
                        .metric_stat(
                            MetricStat::builder()
                                .metric(
                                    Metric::builder()
                                        .namespace(NAMESPACE)
                                        .metric_name(q.metric)
                                        .dimensions(
                                            Dimension::builder()
                                                .name("Application")
                                                .value(&q.application)
                                                .build(),
                                        )
                                        .build(),
                                )
                                .period(q.period)
                                .stat("Sum")
                                .build(),
                        )
                        .return_data(true)
                        .build()
                })
                .collect();
            let mut pages = cw
                .get_metric_data()
                .set_metric_data_queries(Some(built))
                .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(start))
                .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(end))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let out = page.map_err(|e| {
                    ReportError::Metrics(format!(
                        "{}",
                        aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
                    ))
                })?;
                for r in out.metric_data_results.unwrap_or_default() {
                    let Some(id) = r.id else { continue };
                    let total: f64 = r.values.unwrap_or_default().iter().sum();
                    *sums.entry(id).or_insert(0.0) += total;
                }
            }
        }
    }
    Ok(sums)
}

/// The ledger table of `stack`, from its `LedgerTableName` output.
pub async fn ledger_table(
    cf: &aws_sdk_cloudformation::Client,
    stack: &str,
) -> Result<String, ReportError> {
    let err = |reason: String| ReportError::Stack {
        stack: stack.to_string(),
        reason,
    };
    let out = cf
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| {
            err(format!(
                "{}",
                aws_sdk_cloudformation::error::DisplayErrorContext(&e)
            ))
        })?;
    let outputs = out
        .stacks
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|s| s.outputs)
        .unwrap_or_default();
    outputs
        .into_iter()
        .find(|o| o.output_key.as_deref() == Some(TABLE_OUTPUT))
        .and_then(|o| o.output_value)
        .ok_or_else(|| {
            err(format!(
                "no `{TABLE_OUTPUT}` output; name the tokenfence stack (the platform stack of a split rendering), or pass `--table`"
            ))
        })
}

/// Everything a report needs, read from AWS.
pub async fn gather(
    cf: &aws_sdk_cloudformation::Client,
    ddb: aws_sdk_dynamodb::Client,
    cw: &aws_sdk_cloudwatch::Client,
    stack: &str,
    table: Option<String>,
    now: i64,
    since: i64,
) -> Result<Report, ReportError> {
    let table = match table {
        Some(t) => t,
        None => ledger_table(cf, stack).await?,
    };
    let ledger = ledger::DynamoLedger::new(ddb, &table);
    let failed = |source| ReportError::Ledger {
        table: table.clone(),
        source,
    };
    let configs = ledger.budgets().await.map_err(failed)?;
    let queries = plan(&configs, now, since);
    let sums = fetch(cw, &queries).await?;
    let mut report = assemble(stack, &table, &configs, &queries, &sums, now, since);
    for (app, config) in report.applications.iter_mut().zip(&configs) {
        if config.per_user.is_none() && config.users.is_empty() {
            continue;
        }
        let counters = ledger
            .user_counters(&config.application)
            .await
            .map_err(failed)?;
        app.users = seats(&counters, config, now);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use budget::{Limit, MicroUsd};

    fn config(app: &str, cc: Option<&str>, limits: Vec<Limit>) -> BudgetConfig {
        serde_json::from_value(serde_json::json!({
            "application": app,
            "cost_center": cc,
            "limits": limits,
            "on_exceed": { "action": "reject" },
            "mode": "enforce"
        }))
        .expect("a config")
    }

    #[test]
    fn seats_are_read_from_their_current_windows() {
        let now = 1_795_801_683; // 2026-11-27T17:48:03Z
        let day = |tokens| Limit {
            window: Window::Day,
            tokens: Some(tokens),
            usd: None,
        };
        let mut c = config("team", None, vec![day(100_000)]);
        c.per_user = Some(budget::config::UserBudget {
            limits: vec![day(700)],
            ..Default::default()
        });
        c.users.insert(
            "lead".into(),
            budget::config::UserBudget {
                limits: vec![day(5_000)],
                mode: budget::config::EnforcementMode::Shadow,
                ..Default::default()
            },
        );
        let charge = |t| budget::Charge::new(t, MicroUsd(0));
        let counters = vec![
            (
                "alice".to_string(),
                "day#2026-11-27".to_string(),
                charge(420),
            ),
            // Yesterday's window no longer counts.
            (
                "alice".to_string(),
                "day#2026-11-26".to_string(),
                charge(690),
            ),
            ("bob".to_string(), "day#2026-11-26".to_string(), charge(9)),
        ];
        let seats = seats(&counters, &c, now);
        let got: Vec<(&str, &str, u64, u64)> = seats
            .iter()
            .map(|u| (u.user.as_str(), u.mode, u.limits[0].used, u.limits[0].limit))
            .collect();
        assert_eq!(
            got,
            [
                ("alice", "enforce", 420, 700),
                ("bob", "enforce", 0, 700),
                // Named, with no spend yet.
                ("lead", "shadow", 0, 5_000),
            ]
        );
        assert_eq!(seats[0].limits[0].utilization_percent, 60.0);
        // An application without seats' budgets lists no one.
        assert!(super::seats(&counters, &config("solo", None, vec![day(1)]), now).is_empty());
    }

    #[test]
    fn since_parses_minutes_hours_days() {
        assert_eq!(parse_since("30m").unwrap(), 1_800);
        assert_eq!(parse_since("12h").unwrap(), 43_200);
        assert_eq!(parse_since("7d").unwrap(), 604_800);
        for bad in [
            "",
            "7",
            "d",
            "0d",
            "-1d",
            "7w",
            "456d",
            "99999999999999999d",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_since("7w").unwrap_err().to_string(),
            "`--since` must be a number followed by `m`, `h` or `d` (e.g. `7d`), got `7w`"
        );
    }

    #[test]
    fn plans_totals_limits_and_the_month() {
        let now = 1_764_300_000; // 2025-11-28T03:20:00Z
        let c = config(
            "chat",
            None,
            vec![
                Limit {
                    window: Window::Hour,
                    tokens: Some(1000),
                    usd: Some(MicroUsd::from_usd(1)),
                },
                Limit {
                    window: Window::Month,
                    tokens: None,
                    usd: Some(MicroUsd::from_usd(50)),
                },
            ],
        );
        let q = plan(&[c], now, 7 * 86_400);
        assert_eq!(q.len(), TOTALS.len() + 3 + 1);
        // Totals over 7 days in hourly periods, aligned to the hour.
        assert_eq!(q[0].period, 3_600);
        assert_eq!(q[0].start % 3_600, 0);
        assert!(q[0].start <= now - 7 * 86_400);
        // The hour window starts on the hour, in minutes.
        let hour = &q[TOTALS.len()];
        assert_eq!(
            (hour.metric, hour.start, hour.period),
            ("TotalTokens", now - now % 3_600, 60)
        );
        // The month window starts on the 1st at 00:00 UTC.
        let month = q.iter().find(|q| q.purpose == Purpose::MonthCost).unwrap();
        assert_eq!(month.start, 1_761_955_200); // 2025-11-01T00:00:00Z
        let ids: std::collections::HashSet<_> = q.iter().map(|q| &q.id).collect();
        assert_eq!(ids.len(), q.len(), "IDs are unique");
    }

    #[test]
    fn assembles_utilization_projection_and_cost_centers() {
        let now = 1_762_819_200; // 2025-11-11T00:00:00Z: 10 of 30 days gone
        let configs = vec![
            config(
                "a",
                Some("cc1"),
                vec![Limit {
                    window: Window::Month,
                    tokens: None,
                    usd: Some(MicroUsd::from_usd(30)),
                }],
            ),
            config(
                "b",
                Some("cc1"),
                vec![Limit {
                    window: Window::Day,
                    tokens: Some(1000),
                    usd: None,
                }],
            ),
            config("c", None, vec![]),
        ];
        let queries = plan(&configs, now, 86_400);
        let mut sums = HashMap::new();
        for q in &queries {
            let v = match (&q.application[..], &q.purpose) {
                ("a", Purpose::Total("CostUsd")) => 1.5,
                ("a", Purpose::Limit(..)) | ("a", Purpose::MonthCost) => 6.0,
                ("a", Purpose::Total("TotalRequests")) => 10.0,
                ("b", Purpose::Total("TotalRequests")) => 4.0,
                ("b", Purpose::Total("RateLimitDenied")) => 1.0,
                ("b", Purpose::Limit(..)) => 250.0,
                _ => 0.0,
            };
            sums.insert(q.id.clone(), v);
        }
        let r = assemble("s", "t", &configs, &queries, &sums, now, 86_400);
        let a = &r.applications[0];
        assert_eq!(a.totals.cost_micros, 1_500_000);
        assert_eq!(a.limits[0].used, 6_000_000);
        assert_eq!(a.limits[0].utilization_percent, 20.0);
        // $6 in 10 of 30 days: $18 by the month's end.
        assert_eq!(a.totals.month_end_projection_micros, 18_000_000);
        assert_eq!(a.month_usd_limit_micros, Some(30_000_000));
        let b = &r.applications[1];
        assert_eq!(
            (b.limits[0].used, b.limits[0].utilization_percent),
            (250, 25.0)
        );
        assert_eq!(r.cost_centers.len(), 2);
        assert_eq!(r.cost_centers[0].cost_center, "-");
        let cc1 = &r.cost_centers[1];
        assert_eq!(cc1.applications, ["a", "b"]);
        assert_eq!((cc1.totals.requests, cc1.totals.denied), (14, 1));
        let text = table(&r, "1d");
        assert!(text.contains("$6.00 of $30.00"), "{text}");
        assert!(text.contains("250 of 1000"), "{text}");
    }
}
