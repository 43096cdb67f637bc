//! Reading custom resource properties. CloudFormation sends every scalar as a string (`"200000"`,
//! `"40.5"`, `"true"`); hand-written events may send JSON numbers and booleans. Both are read, and
//! every error names the property, e.g. `Limits[1].Usd`.

use budget::config::{EnforcementMode, ExceedAction, InferenceProfile, ModelPrice};
use budget::{Limit, MicroUsd, Price, Window};
use serde_json::{Map, Value};

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

struct Props<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Props<'a> {
    fn new(value: &'a Value, path: &str, allowed: &[&str]) -> Result<Self, PropError> {
        let map = value.as_object().ok_or_else(|| {
            err(
                if path.is_empty() {
                    "ResourceProperties"
                } else {
                    path
                },
                "must be an object",
            )
        })?;
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(err(
                Self::join(path, unknown),
                format!("unknown property; expected one of {}", allowed.join(", ")),
            ));
        }
        Ok(Props {
            map,
            path: path.to_string(),
        })
    }

    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    }

    fn at(&self, key: &str) -> String {
        Self::join(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, PropError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(self.at(key), "must be a string")),
        }
    }

    fn required_string(&self, key: &str) -> Result<String, PropError> {
        self.string(key)?
            .ok_or_else(|| err(self.at(key), "is required"))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, PropError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("{}[{i}]", self.at(key)), "must be a string"))
                })
                .collect(),
            Some(_) => Err(err(self.at(key), "must be a list of strings")),
        }
    }

    fn list(&self, key: &str) -> Result<&'a [Value], PropError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(err(self.at(key), "must be a list")),
        }
    }

    fn choice<T: Copy>(
        &self,
        key: &str,
        options: &[(&str, T)],
        default: T,
    ) -> Result<T, PropError> {
        match self.string(key)? {
            None => Ok(default),
            Some(v) => options
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, t)| *t)
                .ok_or_else(|| {
                    let names: Vec<String> =
                        options.iter().map(|(n, _)| format!("`{n}`")).collect();
                    err(
                        self.at(key),
                        format!("`{v}` is not one of {}", names.join(", ")),
                    )
                }),
        }
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn whole(v: &Value, path: &str) -> Result<u64, PropError> {
    let text = scalar_text(v).ok_or_else(|| err(path, "must be a whole number"))?;
    let n: u64 = text
        .parse()
        .map_err(|_| err(path, format!("`{text}` is not a whole number")))?;
    if n == 0 {
        return Err(err(path, "must be positive"));
    }
    Ok(n)
}

fn usd(v: &Value, path: &str) -> Result<MicroUsd, PropError> {
    let text = scalar_text(v).ok_or_else(|| err(path, "must be an amount in USD"))?;
    let amount = MicroUsd::parse_usd(&text).map_err(|e| err(path, e.to_string()))?;
    if amount == MicroUsd::ZERO {
        return Err(err(path, "must be positive"));
    }
    Ok(amount)
}

fn percent(v: &Value, path: &str, max: u64) -> Result<u32, PropError> {
    let n = whole(v, path)?;
    if n > max {
        return Err(err(path, format!("`{n}` is above {max}")));
    }
    Ok(n as u32)
}

fn window(v: &Value, path: &str) -> Result<Window, PropError> {
    let text = v.as_str().ok_or_else(|| err(path, "must be a string"))?;
    text.parse().map_err(|_| {
        err(
            path,
            format!("`{text}` is not one of `minute`, `hour`, `day`, `month`"),
        )
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
}

const BUDGET_KEYS: &[&str] = &[
    "ServiceToken",
    "ServiceTimeout",
    "Application",
    "CostCenter",
    "Models",
    "Limits",
    "OnExceed",
    "FallbackModel",
    "Mode",
    "Prices",
    "CostBudget",
    "ApiKeyIds",
    "RequestQueueArns",
    "ResultsQueueUrl",
    "InferenceProfiles",
];

/// CloudFormation's `ServiceTimeout` of a custom resource: 1 to 3,600 seconds. CloudFormation
/// enforces it, and passes it along with the properties; it is checked here so that a bad value is
/// named rather than taken for an unknown property.
fn service_timeout(p: &Props<'_>) -> Result<(), PropError> {
    if let Some(v) = p.get("ServiceTimeout") {
        let seconds = whole(v, "ServiceTimeout")?;
        if seconds > 3_600 {
            return Err(err(
                "ServiceTimeout",
                format!("`{seconds}` is above CloudFormation's 3600 seconds"),
            ));
        }
    }
    Ok(())
}

/// Reads the properties of a `Custom::TokenBudget`.
pub fn parse_budget(value: &Value) -> Result<BudgetProps, PropError> {
    let p = Props::new(value, "", BUDGET_KEYS)?;
    service_timeout(&p)?;
    let application = p.required_string("Application")?;
    if !valid_application(&application) {
        return Err(err(
            "Application",
            format!(
                "`{application}` is not {}",
                spec::names::APPLICATION_NAME_RULE
            ),
        ));
    }
    let mut limits: Vec<Limit> = Vec::new();
    let items = p.list("Limits")?;
    if items.is_empty() {
        return Err(err(
            "Limits",
            "is required and must list at least one limit",
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let path = format!("Limits[{i}]");
        let l = Props::new(item, &path, &["Window", "Tokens", "Usd"])?;
        let w = window(
            l.get("Window")
                .ok_or_else(|| err(l.at("Window"), "is required"))?,
            &l.at("Window"),
        )?;
        let tokens = l
            .get("Tokens")
            .map(|v| whole(v, &l.at("Tokens")))
            .transpose()?;
        let usd = l.get("Usd").map(|v| usd(v, &l.at("Usd"))).transpose()?;
        if tokens.is_none() && usd.is_none() {
            return Err(err(path, "needs `Tokens`, `Usd` or both"));
        }
        if limits.iter().any(|x| x.window == w) {
            return Err(err(
                l.at("Window"),
                format!("a `{w}` limit is already declared"),
            ));
        }
        limits.push(Limit {
            window: w,
            tokens,
            usd,
        });
    }
    limits.sort_by_key(|l| l.window);

    #[derive(Clone, Copy)]
    enum Action {
        Reject,
        Fallback,
        Queue,
    }
    let action = p.choice(
        "OnExceed",
        &[
            ("reject", Action::Reject),
            ("fallback", Action::Fallback),
            ("queue", Action::Queue),
        ],
        Action::Reject,
    )?;
    let fallback = p.string("FallbackModel")?;
    let on_exceed = match (action, fallback) {
        (Action::Fallback, Some(model)) => ExceedAction::Fallback { model },
        (Action::Fallback, None) => {
            return Err(err(
                "FallbackModel",
                "is required with `OnExceed: fallback`",
            ));
        }
        (_, Some(_)) => return Err(err("FallbackModel", "only applies to `OnExceed: fallback`")),
        (Action::Reject, None) => ExceedAction::Reject,
        (Action::Queue, None) => ExceedAction::Queue,
    };
    let mode = p.choice(
        "Mode",
        &[
            ("enforce", EnforcementMode::Enforce),
            ("shadow", EnforcementMode::Shadow),
        ],
        EnforcementMode::Enforce,
    )?;

    let mut prices = Vec::new();
    for (i, item) in p.list("Prices")?.iter().enumerate() {
        let path = format!("Prices[{i}]");
        let q = Props::new(
            item,
            &path,
            &["Model", "Input", "Output", "CacheRead", "CacheWrite"],
        )?;
        let model = q.required_string("Model")?;
        let text = |key: &str, required: bool| -> Result<Option<String>, PropError> {
            match q.get(key) {
                None if required => Err(err(q.at(key), "is required")),
                None => Ok(None),
                Some(v) => scalar_text(v)
                    .map(Some)
                    .ok_or_else(|| err(q.at(key), "must be an amount in USD per million tokens")),
            }
        };
        let (input, output) = (
            text("Input", true)?.unwrap_or_default(),
            text("Output", true)?.unwrap_or_default(),
        );
        let price = Price::from_usd_per_million(
            &model,
            &input,
            &output,
            text("CacheRead", false)?.as_deref(),
            text("CacheWrite", false)?.as_deref(),
        )
        .map_err(|e| err(&path, e.to_string()))?;
        prices.push(ModelPrice { model, price });
    }

    let cost_budget = match p.get("CostBudget") {
        None => None,
        Some(v) => {
            let c = Props::new(
                v,
                "CostBudget",
                &[
                    "BudgetName",
                    "MonthlyUsd",
                    "ForecastPercent",
                    "ActualPercents",
                    "TopicArn",
                    "Emails",
                ],
            )?;
            let monthly_usd = usd(
                c.get("MonthlyUsd")
                    .ok_or_else(|| err(c.at("MonthlyUsd"), "is required"))?,
                &c.at("MonthlyUsd"),
            )?;
            let forecast_percent = c
                .get("ForecastPercent")
                .map(|v| percent(v, &c.at("ForecastPercent"), 1_000))
                .transpose()?
                .unwrap_or(100);
            let actual_percents = match c.get("ActualPercents") {
                None => vec![80, 100],
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| percent(v, &format!("{}[{i}]", c.at("ActualPercents")), 1_000))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(err(c.at("ActualPercents"), "must be a list of percents")),
            };
            if actual_percents.len() > 4 {
                return Err(err(
                    c.at("ActualPercents"),
                    "AWS Budgets allows 5 notifications per budget: at most 4 actual percents besides the forecast",
                ));
            }
            let budget_name = c.string("BudgetName")?;
            if let Some(name) = &budget_name
                && let Some(why) = check_budget_name(name)
            {
                return Err(err(c.at("BudgetName"), why));
            }
            Some(CostBudgetProps {
                budget_name,
                monthly_usd,
                forecast_percent,
                actual_percents,
                topic_arn: c.string("TopicArn")?,
                emails: c.strings("Emails")?,
            })
        }
    };

    let mut inference_profiles = Vec::new();
    for (i, item) in p.list("InferenceProfiles")?.iter().enumerate() {
        let q = Props::new(item, &format!("InferenceProfiles[{i}]"), &["Model", "Arn"])?;
        inference_profiles.push(InferenceProfile {
            model: q.required_string("Model")?,
            arn: q.required_string("Arn")?,
        });
    }

    Ok(BudgetProps {
        application,
        cost_center: p.string("CostCenter")?,
        models: p.strings("Models")?,
        limits,
        on_exceed,
        mode,
        prices,
        cost_budget,
        api_key_ids: p.strings("ApiKeyIds")?,
        request_queue_arns: p.strings("RequestQueueArns")?,
        results_queue_url: p.string("ResultsQueueUrl")?,
        inference_profiles,
    })
}

/// Tokens or USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmMetric {
    /// Tokens.
    Tokens,
    /// USD.
    Usd,
}

impl AlarmMetric {
    /// The name used in properties and metric dimensions.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmMetric::Tokens => "tokens",
            AlarmMetric::Usd => "usd",
        }
    }
}

/// The kinds of `Custom::TokenAlarm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmKind {
    /// At `Percent` of the window's limit.
    Threshold,
    /// The burn rate projects usage past the limit before the window ends.
    Forecast,
    /// Usage leaves its anomaly band.
    Anomaly,
}

impl AlarmKind {
    /// The name used in properties.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Threshold => "threshold",
            AlarmKind::Forecast => "forecast",
            AlarmKind::Anomaly => "anomaly",
        }
    }
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
    let p = Props::new(
        value,
        "",
        &[
            "ServiceToken",
            "ServiceTimeout",
            "Application",
            "AlarmName",
            "Window",
            "Metric",
            "Kind",
            "Percent",
            "AlarmActions",
        ],
    )?;
    service_timeout(&p)?;
    let application = p.required_string("Application")?;
    if !valid_application(&application) {
        return Err(err(
            "Application",
            format!(
                "`{application}` is not {}",
                spec::names::APPLICATION_NAME_RULE
            ),
        ));
    }
    let kind = p.choice(
        "Kind",
        &[
            ("threshold", AlarmKind::Threshold),
            ("forecast", AlarmKind::Forecast),
            ("anomaly", AlarmKind::Anomaly),
        ],
        AlarmKind::Threshold,
    )?;
    let window = match p.get("Window") {
        Some(v) => window(v, "Window")?,
        None if kind == AlarmKind::Anomaly => Window::Hour,
        None => return Err(err("Window", "is required")),
    };
    let metric = match p.string("Metric")? {
        None => None,
        Some(_) => Some(p.choice(
            "Metric",
            &[("tokens", AlarmMetric::Tokens), ("usd", AlarmMetric::Usd)],
            AlarmMetric::Usd,
        )?),
    };
    let percent = match p.get("Percent") {
        None => 80,
        Some(_) if kind != AlarmKind::Threshold => {
            return Err(err("Percent", "only applies to `Kind: threshold`"));
        }
        Some(v) => percent(v, "Percent", 100)?,
    };
    let alarm_name = p.string("AlarmName")?;
    if let Some(name) = &alarm_name
        && (name.len() > 255 || name.chars().any(char::is_control))
    {
        return Err(err("AlarmName", "must be 1 to 255 printable characters"));
    }
    Ok(AlarmProps {
        application,
        alarm_name,
        window,
        metric,
        kind,
        percent,
        alarm_actions: p.strings("AlarmActions")?,
    })
}
