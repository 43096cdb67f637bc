//! Reading custom resource properties, defined once in [`cfn::custom`] (synth renders the same
//! types). Deserializing checks the shape and each scalar, whether CloudFormation sent it as a
//! string (`"200000"`) or a hand-written event as a number; what types cannot say (positive
//! limits, one limit per window, percent ranges, names) is checked here. Every error names the
//! property, e.g. `Limits[1].Usd`.

use budget::config::{EnforcementMode, ExceedAction, InferenceProfile, ModelPrice, UserBudget};
use budget::{BudgetError, Limit, MicroUsd, Price, PriceText, PriceTier, Window};
pub use cfn::custom::{AlarmKind, AlarmMetric};
use cfn::custom::{
    LimitProperties, ModeName, OnExceedName, PerMillion, TokenAlarmProperties,
    TokenBudgetProperties, UserProperties,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A property that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{property}`: {message}")]
pub struct PropError {
    /// The property's path, e.g. `CostBudget.MonthlyUsd`.
    pub property: String,
    /// What is wrong.
    pub message: String,
}

fn err(property: impl Into<String>, message: impl Into<String>) -> PropError {
    PropError {
        property: property.into(),
        message: message.into(),
    }
}

/// An optional amount as text.
fn text(amount: &Option<PerMillion>) -> Option<&str> {
    amount.as_ref().map(|a| a.0.as_str())
}

/// A price that cannot be read, named at the amount's property (`Prices[0].CacheWrite1h`).
fn price_error(path: &str, e: BudgetError) -> PropError {
    match e {
        // The price's field names are the properties' in snake case (`cache_write_1h`).
        BudgetError::InvalidPrice { field, reason } => err(
            format!("{path}.{}", spec::names::logical_id_part(field)),
            reason.to_string(),
        ),
        other => err(path, other.to_string()),
    }
}

/// The value without `null` members: a property set to `null` is a property not given.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Deserializes `value`, naming the property of the first error.
fn read<T: DeserializeOwned>(value: &Value) -> Result<T, PropError> {
    if !value.is_object() {
        return Err(err("ResourceProperties", "must be an object"));
    }
    serde_path_to_error::deserialize(without_nulls(value)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let at = |key: &str| {
            if path == "." {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        if let Some(rest) = message.strip_prefix("missing field `") {
            let key = rest.split('`').next().unwrap_or_default();
            return err(at(key), "is required");
        }
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let expected = rest.split_once(", expected ").map(|(_, e)| e).unwrap_or("");
            return err(path, format!("unknown property; expected {expected}"));
        }
        let path = if path == "." {
            "ResourceProperties".to_string()
        } else {
            path
        };
        err(path, message)
    })
}

/// `Application` names: the spec's rule ([`spec::names::is_application_name`]).
pub fn valid_application(app: &str) -> bool {
    spec::names::is_application_name(app)
}

/// Why `name` is not a valid AWS Budgets name, if it is not.
pub fn check_budget_name(name: &str) -> Option<String> {
    (name.is_empty() || name.len() > 100 || name.contains(':') || name.contains('\\')).then(|| {
        format!("`{name}` is not a valid AWS Budgets name (1 to 100 characters, no `:` or `\\`)")
    })
}

/// The lagging-indicator AWS Budget of a `Custom::TokenBudget`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostBudgetProps {
    /// Name, if given; the provider's default is `<name>-<Application>` (see
    /// `spec::names::Names::budget`), inside its role's `<name>-*` budgets.
    pub budget_name: Option<String>,
    /// Monthly limit.
    pub monthly_usd: MicroUsd,
    /// Forecast notification threshold, percent.
    pub forecast_percent: u32,
    /// Actual-spend notification thresholds, percent.
    pub actual_percents: Vec<u32>,
    /// SNS topic to notify.
    pub topic_arn: Option<String>,
    /// Emails to notify.
    pub emails: Vec<String>,
}

/// The properties of a `Custom::TokenBudget`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetProps {
    /// The application.
    pub application: String,
    /// Its cost center.
    pub cost_center: Option<String>,
    /// Models it may call (empty: any).
    pub models: Vec<String>,
    /// Its limits.
    pub limits: Vec<Limit>,
    /// What happens over a limit.
    pub on_exceed: ExceedAction,
    /// Enforce or shadow.
    pub mode: EnforcementMode,
    /// Price overrides.
    pub prices: Vec<ModelPrice>,
    /// The AWS Budget, if any.
    pub cost_budget: Option<CostBudgetProps>,
    /// API Gateway API key IDs identifying the application.
    pub api_key_ids: Vec<String>,
    /// SQS queues whose messages belong to the application.
    pub request_queue_arns: Vec<String>,
    /// Where async results go.
    pub results_queue_url: Option<String>,
    /// Inference profiles to call models through.
    pub inference_profiles: Vec<InferenceProfile>,
    /// Seats: the budget each user gets unless named in `users`.
    pub per_user: Option<UserBudget>,
    /// Seats: users with budgets of their own.
    pub users: std::collections::BTreeMap<String, UserBudget>,
    /// Publish request metrics per user too.
    pub user_metrics: bool,
}

/// CloudFormation's `ServiceTimeout` of a custom resource: 1 to 3,600 seconds. CloudFormation
/// enforces it, and passes it along with the properties; it is checked here so that a bad value is
/// named rather than accepted.
fn service_timeout(seconds: Option<cfn::custom::Count>) -> Result<(), PropError> {
    match seconds {
        Some(s) if s.0 > 3_600 => Err(err(
            "ServiceTimeout",
            format!("`{s}` is above CloudFormation's 3600 seconds"),
        )),
        _ => Ok(()),
    }
}

fn application(name: String) -> Result<String, PropError> {
    if !valid_application(&name) {
        return Err(err(
            "Application",
            format!("`{name}` is not {}", spec::names::APPLICATION_NAME_RULE),
        ));
    }
    Ok(name)
}

fn percent(n: cfn::custom::Count, path: &str, max: u64) -> Result<u32, PropError> {
    if n.0 > max {
        return Err(err(path, format!("`{n}` is above {max}")));
    }
    Ok(n.0 as u32)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Reads the properties of a `Custom::TokenBudget`.
pub fn parse_budget(value: &Value) -> Result<BudgetProps, PropError> {
    let p: TokenBudgetProperties<String> = read(value)?;
    service_timeout(p.service_timeout)?;
    let application = application(p.application)?;
    if p.limits.is_empty() {
        return Err(err(
            "Limits",
            "is required and must list at least one limit",
        ));
    }
    let limits = limits(&p.limits, "")?;
    let on_exceed = on_exceed(p.on_exceed, p.fallback_model, "")?;
    let mode = mode(p.mode);
    let per_user = p
        .per_user
        .map(|u| user_budget(u, "PerUser", false))
        .transpose()?
        .map(|(_, b)| b);
    let mut users = std::collections::BTreeMap::new();
    for (i, u) in p.users.into_iter().enumerate() {
        let path = format!("Users[{i}]");
        let (name, budget) = user_budget(u, &path, true)?;
        let name = name.expect("required for `Users`");
        if users.insert(name.clone(), budget).is_some() {
            return Err(err(
                format!("{path}.User"),
                format!("user `{name}` is already declared"),
            ));
        }
    }

    let mut prices = Vec::new();
    for (i, q) in p.prices.into_iter().enumerate() {
        let price = Price::from_usd_per_million(
            &q.model,
            PriceText {
                input: &q.input.0,
                output: &q.output.0,
                cache_read: text(&q.cache_read),
                cache_write: text(&q.cache_write),
                cache_write_1h: text(&q.cache_write_1h),
            },
        )
        .map_err(|e| price_error(&format!("Prices[{i}]"), e))?;
        let mut tiers = std::collections::BTreeMap::new();
        for (j, t) in q.tiers.iter().enumerate() {
            let path = format!("Prices[{i}].Tiers[{j}]");
            let tier = PriceTier::from_name(&t.tier).ok_or_else(|| {
                err(
                    format!("{path}.Tier"),
                    format!(
                        "`{}` is not a tier: `flex`, `priority` or `latency-optimized`",
                        t.tier
                    ),
                )
            })?;
            let price = Price::from_usd_per_million(
                &q.model,
                PriceText {
                    input: &t.input.0,
                    output: &t.output.0,
                    cache_read: text(&t.cache_read),
                    cache_write: text(&t.cache_write),
                    cache_write_1h: text(&t.cache_write_1h),
                },
            )
            .map_err(|e| price_error(&path, e))?;
            if tiers.insert(tier, price).is_some() {
                return Err(err(
                    format!("{path}.Tier"),
                    format!("tier `{tier}` is listed twice"),
                ));
            }
        }
        prices.push(ModelPrice {
            model: q.model,
            price,
            tiers,
        });
    }

    let cost_budget = match p.cost_budget {
        None => None,
        Some(c) => {
            let forecast_percent = c
                .forecast_percent
                .map(|n| percent(n, "CostBudget.ForecastPercent", 1_000))
                .transpose()?
                .unwrap_or(100);
            let actual_percents = match c.actual_percents {
                None => vec![80, 100],
                Some(items) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| percent(n, &format!("CostBudget.ActualPercents[{i}]"), 1_000))
                    .collect::<Result<_, _>>()?,
            };
            if actual_percents.len() > 4 {
                return Err(err(
                    "CostBudget.ActualPercents",
                    "AWS Budgets allows 5 notifications per budget: at most 4 actual percents besides the forecast",
                ));
            }
            if let Some(name) = &c.budget_name
                && let Some(why) = check_budget_name(name)
            {
                return Err(err("CostBudget.BudgetName", why));
            }
            Some(CostBudgetProps {
                budget_name: c.budget_name,
                monthly_usd: c.monthly_usd.0,
                forecast_percent,
                actual_percents,
                topic_arn: non_empty(c.topic_arn),
                emails: c.emails,
            })
        }
    };

    Ok(BudgetProps {
        application,
        cost_center: p.cost_center,
        models: p.models,
        limits,
        on_exceed,
        mode,
        prices,
        cost_budget,
        api_key_ids: p.api_key_ids,
        request_queue_arns: p.request_queue_arns,
        results_queue_url: non_empty(p.results_queue_url),
        inference_profiles: p
            .inference_profiles
            .into_iter()
            .map(|q| InferenceProfile {
                model: q.model,
                arn: q.arn,
            })
            .collect(),
        per_user,
        users,
        user_metrics: p.user_metrics.is_some_and(|f| f.0),
    })
}

/// The limits of `Limits` under `prefix` (`""` or `PerUser.`).
fn limits(items: &[LimitProperties], prefix: &str) -> Result<Vec<Limit>, PropError> {
    let mut limits: Vec<Limit> = Vec::new();
    for (i, l) in items.iter().enumerate() {
        let window = Window::from(l.window);
        if l.tokens.is_none() && l.usd.is_none() {
            return Err(err(
                format!("{prefix}Limits[{i}]"),
                "needs `Tokens`, `Usd` or both",
            ));
        }
        if limits.iter().any(|x| x.window == window) {
            return Err(err(
                format!("{prefix}Limits[{i}].Window"),
                format!("a `{window}` limit is already declared"),
            ));
        }
        limits.push(Limit {
            window,
            tokens: l.tokens.map(|t| t.0),
            usd: l.usd.map(|u| u.0),
        });
    }
    limits.sort_by_key(|l| l.window);
    Ok(limits)
}

fn on_exceed(
    name: Option<OnExceedName>,
    fallback_model: Option<String>,
    prefix: &str,
) -> Result<ExceedAction, PropError> {
    let property = format!("{prefix}FallbackModel");
    Ok(
        match (name.unwrap_or(OnExceedName::Reject), fallback_model) {
            (OnExceedName::Fallback, Some(model)) => ExceedAction::Fallback { model },
            (OnExceedName::Fallback, None) => {
                return Err(err(property, "is required with `OnExceed: fallback`"));
            }
            (_, Some(_)) => return Err(err(property, "only applies to `OnExceed: fallback`")),
            (OnExceedName::Reject, None) => ExceedAction::Reject,
            (OnExceedName::Queue, None) => ExceedAction::Queue,
        },
    )
}

fn mode(name: Option<ModeName>) -> EnforcementMode {
    match name.unwrap_or(ModeName::Enforce) {
        ModeName::Enforce => EnforcementMode::Enforce,
        ModeName::Shadow => EnforcementMode::Shadow,
    }
}

/// A user's budget at `path` (`PerUser` or `Users[i]`), with its name when `named`.
fn user_budget(
    u: UserProperties,
    path: &str,
    named: bool,
) -> Result<(Option<String>, UserBudget), PropError> {
    let prefix = format!("{path}.");
    let name = match (u.user, named) {
        (Some(name), true) => {
            budget::config::check_user(&name).map_err(|why| err(format!("{prefix}User"), why))?;
            Some(name)
        }
        (None, true) => return Err(err(format!("{prefix}User"), "is required")),
        (Some(_), false) => {
            return Err(err(
                format!("{prefix}User"),
                "only applies to entries of `Users`",
            ));
        }
        (None, false) => None,
    };
    if u.limits.is_empty() {
        return Err(err(
            format!("{prefix}Limits"),
            "is required and must list at least one limit",
        ));
    }
    Ok((
        name,
        UserBudget {
            limits: limits(&u.limits, &prefix)?,
            on_exceed: on_exceed(u.on_exceed, u.fallback_model, &prefix)?,
            mode: mode(u.mode),
        },
    ))
}

/// The properties of a `Custom::TokenAlarm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmProps {
    /// The application (its `Custom::TokenBudget` must exist).
    pub application: String,
    /// The alarm's name, if given.
    pub alarm_name: Option<String>,
    /// The window.
    pub window: Window,
    /// Tokens or USD; `None` means USD when the window has a USD limit, else tokens.
    pub metric: Option<AlarmMetric>,
    /// The kind.
    pub kind: AlarmKind,
    /// Threshold percent (threshold alarms).
    pub percent: u32,
    /// ARNs to notify.
    pub alarm_actions: Vec<String>,
}

/// Reads the properties of a `Custom::TokenAlarm`.
pub fn parse_alarm(value: &Value) -> Result<AlarmProps, PropError> {
    let p: TokenAlarmProperties<String> = read(value)?;
    service_timeout(p.service_timeout)?;
    let application = application(p.application)?;
    let kind = p.kind.unwrap_or(AlarmKind::Threshold);
    let window = match p.window {
        Some(w) => Window::from(w),
        None if kind == AlarmKind::Anomaly => Window::Hour,
        None => return Err(err("Window", "is required")),
    };
    let percent = match p.percent {
        None => 80,
        Some(_) if kind != AlarmKind::Threshold => {
            return Err(err("Percent", "only applies to `Kind: threshold`"));
        }
        Some(n) => percent(n, "Percent", 100)?,
    };
    if let Some(name) = &p.alarm_name
        && (name.len() > 255 || name.chars().any(char::is_control))
    {
        return Err(err("AlarmName", "must be 1 to 255 printable characters"));
    }
    Ok(AlarmProps {
        application,
        alarm_name: p.alarm_name,
        window,
        metric: p.metric,
        kind,
        percent,
        alarm_actions: p.alarm_actions,
    })
}
