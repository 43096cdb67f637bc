//! What the provider asks CloudWatch and AWS Budgets for, as plain data (pure, unit-tested).

use budget::config::BudgetConfig;

use crate::props::{AlarmKind, AlarmMetric, AlarmProps, CostBudgetProps, PropError};

/// The namespace the gateway publishes in.
pub const NAMESPACE: &str = "TokenFence";

/// One metric with a statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricStat {
    /// Metric name.
    pub metric_name: String,
    /// Dimensions, name and value.
    pub dimensions: Vec<(String, String)>,
    /// Statistic (`Maximum`, `Sum`).
    pub stat: String,
    /// Period in seconds.
    pub period: i32,
}

/// One metric-math query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Query ID.
    pub id: String,
    /// An expression, or
    pub expression: Option<String>,
    /// a metric.
    pub metric: Option<MetricStat>,
    /// Whether the alarm evaluates it.
    pub return_data: bool,
    /// Label.
    pub label: Option<String>,
}

/// A CloudWatch alarm to put.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmPlan {
    /// Alarm name (its physical ID).
    pub name: String,
    /// Description.
    pub description: String,
    /// A single metric (threshold alarms), or
    pub metric: Option<MetricStat>,
    /// metric-math queries (forecast and anomaly alarms).
    pub queries: Vec<Query>,
    /// Static threshold (absent for anomaly bands).
    pub threshold: Option<f64>,
    /// The band an anomaly alarm compares with.
    pub threshold_metric_id: Option<String>,
    /// Comparison operator.
    pub comparison: &'static str,
    /// Evaluation periods.
    pub evaluation_periods: i32,
    /// Datapoints that must breach.
    pub datapoints_to_alarm: i32,
    /// Missing data handling.
    pub treat_missing_data: &'static str,
    /// ARNs notified.
    pub actions: Vec<String>,
    /// The `Threshold` returned to CloudFormation.
    pub threshold_text: String,
}

fn dims(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The default alarm name of `props` in the stack called `prefix`: the rendered alarms' rule,
/// `<prefix>-<app>-<window>-<metric>-<kind>[-<percent>]`, inside the provider role's alarms.
pub fn default_alarm_name(prefix: &str, props: &AlarmProps, metric: AlarmMetric) -> String {
    let percent = (props.kind == AlarmKind::Threshold).then_some(props.percent);
    spec::names::Names::new(prefix).alarm_of(
        &props.application,
        props.window,
        metric.as_str(),
        props.kind.as_str(),
        percent,
    )
}

/// Plans the alarm of `props` against the application's configuration.
///
/// Threshold and forecast alarms watch the gateway's per-window gauges, which are percentages of
/// the limit: they line up with the ledger's calendar windows (a CloudWatch Sum cannot watch a
/// calendar month) and follow any change of the limit with no change to the alarm.
///
/// An alarm without `AlarmName` is named by [`default_alarm_name`] under `prefix`.
pub fn plan_alarm(
    props: &AlarmProps,
    config: &BudgetConfig,
    prefix: &str,
) -> Result<AlarmPlan, PropError> {
    let limit = config.limits.iter().find(|l| l.window == props.window);
    let metric = props.metric.unwrap_or(match limit {
        Some(l) if l.usd.is_some() => AlarmMetric::Usd,
        Some(_) => AlarmMetric::Tokens,
        None if config.has_usd_limit() => AlarmMetric::Usd,
        None => AlarmMetric::Tokens,
    });
    let name = props
        .alarm_name
        .clone()
        .unwrap_or_else(|| default_alarm_name(prefix, props, metric));
    let app = props.application.as_str();
    let window = props.window.as_str();
    if props.kind != AlarmKind::Anomaly {
        let has = limit.is_some_and(|l| match metric {
            AlarmMetric::Tokens => l.tokens.is_some(),
            AlarmMetric::Usd => l.usd.is_some(),
        });
        if !has {
            return Err(PropError {
                property: "Window".into(),
                message: format!(
                    "application `{app}` has no `{}` limit on the `{window}` window for a `{}` alarm to watch",
                    metric.as_str(),
                    props.kind.as_str()
                ),
            });
        }
    }
    let gauge = |metric_name: &str| MetricStat {
        metric_name: metric_name.into(),
        dimensions: dims(&[
            ("Application", app),
            ("Window", window),
            ("Limit", metric.as_str()),
        ]),
        stat: "Maximum".into(),
        period: 60,
    };
    let common = |description: String| AlarmPlan {
        name: name.clone(),
        description,
        metric: None,
        queries: Vec::new(),
        threshold: None,
        threshold_metric_id: None,
        comparison: "GreaterThanOrEqualToThreshold",
        evaluation_periods: 1,
        datapoints_to_alarm: 1,
        treat_missing_data: "notBreaching",
        actions: props.alarm_actions.clone(),
        threshold_text: String::new(),
    };
    Ok(match props.kind {
        AlarmKind::Threshold => AlarmPlan {
            metric: Some(gauge("WindowUtilization")),
            threshold: Some(f64::from(props.percent)),
            threshold_text: props.percent.to_string(),
            ..common(format!(
                "tokenfence: {app} has used {}% of its {window} {} limit",
                props.percent,
                metric.as_str()
            ))
        },
        AlarmKind::Forecast => AlarmPlan {
            queries: vec![
                Query {
                    id: "projected".into(),
                    expression: None,
                    metric: Some(gauge("ProjectedUtilization")),
                    return_data: false,
                    label: None,
                },
                // No traffic means no projection: count it as zero rather than repeating an old one
                // into the next window.
                Query {
                    id: "forecast".into(),
                    expression: Some("FILL(projected, 0)".into()),
                    metric: None,
                    return_data: true,
                    label: Some(format!("{app} {window} projected % of limit")),
                },
            ],
            threshold: Some(100.0),
            comparison: "GreaterThanThreshold",
            evaluation_periods: 3,
            datapoints_to_alarm: 2,
            threshold_text: "100".into(),
            ..common(format!(
                "tokenfence: at the current burn rate {app} passes its {window} {} limit before the window ends",
                metric.as_str()
            ))
        },
        AlarmKind::Anomaly => {
            let (metric_name, period) = (
                if metric == AlarmMetric::Usd {
                    "CostUsd"
                } else {
                    "TotalTokens"
                },
                if props.window == budget::Window::Minute {
                    60
                } else {
                    300
                },
            );
            AlarmPlan {
                queries: vec![
                    Query {
                        id: "usage".into(),
                        expression: None,
                        metric: Some(MetricStat {
                            metric_name: metric_name.into(),
                            dimensions: dims(&[("Application", app)]),
                            stat: "Sum".into(),
                            period,
                        }),
                        return_data: true,
                        label: None,
                    },
                    Query {
                        id: "band".into(),
                        expression: Some("ANOMALY_DETECTION_BAND(usage, 2)".into()),
                        metric: None,
                        return_data: true,
                        label: Some(format!("{app} expected {metric_name}")),
                    },
                ],
                threshold_metric_id: Some("band".into()),
                comparison: "GreaterThanUpperThreshold",
                evaluation_periods: 3,
                datapoints_to_alarm: 2,
                threshold_text: "ANOMALY_DETECTION_BAND(usage, 2)".into(),
                ..common(format!(
                    "tokenfence: {app}'s {metric_name} is above its expected band"
                ))
            }
        }
    })
}

/// An AWS Budget to create or update.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPlan {
    /// Budget name.
    pub name: String,
    /// Monthly limit in USD, as an exact decimal.
    pub limit_usd: String,
    /// The service whose cost counts.
    pub service: String,
    /// The cost allocation tag (key, value) that selects the application's cost.
    pub tag: (String, String),
    /// Notifications: `ACTUAL` / `FORECASTED` and the percent.
    pub notifications: Vec<(&'static str, u32)>,
    /// SNS topic subscribed to every notification.
    pub topic_arn: Option<String>,
    /// Emails subscribed to every notification.
    pub emails: Vec<String>,
}

/// Plans the AWS Budget called `name` of an application. A budget that names no subscriber
/// notifies `default_topic` (the stack's alert topic): an AWS Budget without subscribers has no
/// notifications at all.
pub fn plan_budget(
    application: &str,
    name: &str,
    cb: &CostBudgetProps,
    default_topic: Option<&str>,
) -> BudgetPlan {
    let mut notifications: Vec<(&'static str, u32)> =
        cb.actual_percents.iter().map(|p| ("ACTUAL", *p)).collect();
    notifications.push(("FORECASTED", cb.forecast_percent));
    BudgetPlan {
        name: name.to_string(),
        limit_usd: cb.monthly_usd.to_string(),
        service: "Amazon Bedrock".into(),
        tag: ("tokenfence:application".into(), application.to_string()),
        notifications,
        topic_arn: cb.topic_arn.clone().or_else(|| {
            cb.emails
                .is_empty()
                .then(|| default_topic.map(str::to_string))
                .flatten()
        }),
        emails: cb.emails.clone(),
    }
}
