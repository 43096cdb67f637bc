//! The properties of `Custom::TokenBudget` and `Custom::TokenAlarm`: one definition, rendered by
//! synth ([`crate::render_app`] serializes it) and read by the provider (which deserializes it
//! and then checks what types cannot say: positive limits, one limit per window, ...).
//!
//! CloudFormation passes every scalar as a string (`"200000"`, `"40.5"`, `"true"`); hand-written
//! events may send JSON numbers. Scalars therefore go through [`Scalar`], a `serde_with` adapter
//! that reads either and parses the text with the type's `FromStr`, whose error names the value.
//! Values that may be intrinsic functions when rendered (`Ref`, `Fn::GetAtt`, `Fn::ImportValue`)
//! are of the type parameter `S`: [`serde_json::Value`] in a template, `String` in an event.

use std::fmt;
use std::str::FromStr;

use budget::{MicroUsd, Window};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_with::{DeserializeAs, NoneAsEmptyString, SerializeAs, serde_as};

/// A scalar CloudFormation passes as a string: read from a string or a JSON number, written as
/// a string.
pub struct Scalar;

/// What a scalar must be, for the error when it is not a string or a number.
pub trait Expected {
    /// E.g. `must be a whole number`.
    const EXPECTED: &'static str;
}

impl<'de, T> DeserializeAs<'de, T> for Scalar
where
    T: FromStr + Expected,
    T::Err: fmt::Display,
{
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        let text = match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => s.trim().to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return Err(D::Error::custom(T::EXPECTED)),
        };
        text.parse().map_err(D::Error::custom)
    }
}

impl<T: fmt::Display> SerializeAs<T> for Scalar {
    fn serialize_as<S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }
}

/// A positive whole number (tokens, seconds, percents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Count(pub u64);

impl FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<u64>() {
            Ok(0) => Err("must be positive".into()),
            Ok(n) => Ok(Count(n)),
            Err(_) => Err(format!("`{s}` is not a whole number")),
        }
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Expected for Count {
    const EXPECTED: &'static str = "must be a whole number";
}

/// A positive amount in USD, exact to the micro-dollar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usd(pub MicroUsd);

impl FromStr for Usd {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let amount = MicroUsd::parse_usd(s).map_err(|e| e.to_string())?;
        if amount == MicroUsd::ZERO {
            return Err("must be positive".into());
        }
        Ok(Usd(amount))
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Expected for Usd {
    const EXPECTED: &'static str = "must be an amount in USD";
}

/// A price in USD per million tokens, as written (checked where the price is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerMillion(pub String);

impl FromStr for PerMillion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(PerMillion(s.to_string()))
    }
}

impl fmt::Display for PerMillion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Expected for PerMillion {
    const EXPECTED: &'static str = "must be an amount in USD per million tokens";
}

/// A property naming one of a fixed set of choices.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every choice, as written in properties.
            pub const ALL: &'static [&'static str] = &[$($text),+];

            /// The name used in properties (and metric dimensions).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("`{s}` is not one of {}", one_of(Self::ALL))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Expected for $name {
            const EXPECTED: &'static str = "must be a string";
        }
    };
}

fn one_of(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

choice!(
    /// A budget window.
    WindowName {
        /// A minute.
        Minute = "minute",
        /// An hour.
        Hour = "hour",
        /// A day.
        Day = "day",
        /// A calendar month.
        Month = "month",
    }
);

impl From<WindowName> for Window {
    fn from(w: WindowName) -> Window {
        match w {
            WindowName::Minute => Window::Minute,
            WindowName::Hour => Window::Hour,
            WindowName::Day => Window::Day,
            WindowName::Month => Window::Month,
        }
    }
}

impl From<Window> for WindowName {
    fn from(w: Window) -> WindowName {
        match w {
            Window::Minute => WindowName::Minute,
            Window::Hour => WindowName::Hour,
            Window::Day => WindowName::Day,
            Window::Month => WindowName::Month,
        }
    }
}

choice!(
    /// What happens to a request over a limit (`OnExceed`).
    OnExceedName {
        /// Refuse it (429).
        Reject = "reject",
        /// Call `FallbackModel` instead.
        Fallback = "fallback",
        /// Queued requests wait for the window to reset.
        Queue = "queue",
    }
);

choice!(
    /// `Mode`: enforce the limits or only report them.
    ModeName {
        /// Block requests over a limit.
        Enforce = "enforce",
        /// Never block.
        Shadow = "shadow",
    }
);

choice!(
    /// The kinds of `Custom::TokenAlarm`.
    AlarmKind {
        /// At `Percent` of the window's limit.
        Threshold = "threshold",
        /// The burn rate projects usage past the limit before the window ends.
        Forecast = "forecast",
        /// Usage leaves its anomaly band.
        Anomaly = "anomaly",
    }
);

choice!(
    /// What an alarm watches: tokens or USD.
    AlarmMetric {
        /// Tokens.
        Tokens = "tokens",
        /// USD.
        Usd = "usd",
    }
);

/// One limit of a `Custom::TokenBudget` (`Limits[i]`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LimitProperties {
    /// The window.
    #[serde_as(as = "Scalar")]
    pub window: WindowName,
    /// Tokens per window.
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Count>,
    /// USD per window.
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<Usd>,
}

/// A price override (`Prices[i]`), USD per million tokens.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PriceProperties {
    /// The model ID.
    pub model: String,
    /// Input tokens.
    #[serde_as(as = "Scalar")]
    pub input: PerMillion,
    /// Output tokens.
    #[serde_as(as = "Scalar")]
    pub output: PerMillion,
    /// Cache reads.
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<PerMillion>,
    /// Cache writes (five-minute TTL).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<PerMillion>,
    /// Cache writes with a one-hour TTL (`CacheWrite1h`); absent, Claude's are 2 × input and
    /// other families have none, so a request asking for one is refused under USD limits.
    #[serde_as(as = "Option<Scalar>")]
    #[serde(
        default,
        rename = "CacheWrite1h",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write_1h: Option<PerMillion>,
    /// Its prices in other tiers (`Tiers[j]`): a request asking for a tier with no price here or
    /// in the built-in book is refused under USD limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierPriceProperties>,
}

/// A model's price in one tier (`Prices[i].Tiers[j]`), USD per million tokens.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TierPriceProperties {
    /// `flex`, `priority` or `latency-optimized`.
    pub tier: String,
    /// Input tokens.
    #[serde_as(as = "Scalar")]
    pub input: PerMillion,
    /// Output tokens.
    #[serde_as(as = "Scalar")]
    pub output: PerMillion,
    /// Cache reads.
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<PerMillion>,
    /// Cache writes (five-minute TTL).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<PerMillion>,
    /// Cache writes with a one-hour TTL (`CacheWrite1h`); absent, Claude's are 2 × input and
    /// other families have none, so a request asking for one is refused under USD limits.
    #[serde_as(as = "Option<Scalar>")]
    #[serde(
        default,
        rename = "CacheWrite1h",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write_1h: Option<PerMillion>,
}

/// The lagging-indicator AWS Budget of a `Custom::TokenBudget` (`CostBudget`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CostBudgetProperties<S> {
    /// The AWS Budget's name; the provider's default is `<name>-<Application>`.
    #[serde_as(as = "NoneAsEmptyString")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_name: Option<String>,
    /// The monthly limit.
    #[serde_as(as = "Scalar")]
    pub monthly_usd: Usd,
    /// Forecast notification threshold, percent (default 100).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_percent: Option<Count>,
    /// Actual-spend notification thresholds, percent (default 80 and 100).
    #[serde_as(as = "Option<Vec<Scalar>>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_percents: Option<Vec<Count>>,
    /// SNS topic to notify (default: the stack's alert topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_arn: Option<S>,
    /// Emails to notify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
}

/// An inference profile a model is called through (`InferenceProfiles[i]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ProfileProperties<S> {
    /// The model ID.
    pub model: String,
    /// The application inference profile's ARN.
    pub arn: S,
}

/// The properties of a `Custom::TokenBudget`: an application's budget in the ledger, its
/// identities, and optionally its AWS Budget.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TokenBudgetProperties<S> {
    /// The provider function's ARN (CloudFormation always sends it; the provider ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_token: Option<S>,
    /// How long CloudFormation waits for the provider's answer, 1 to 3,600 seconds.
    #[serde_as(deserialize_as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_timeout: Option<Count>,
    /// The application.
    pub application: String,
    /// Its cost center.
    #[serde_as(as = "NoneAsEmptyString")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_center: Option<String>,
    /// Model IDs it may call (none: any).
    #[serde(default)]
    pub models: Vec<String>,
    /// Its limits, at most one per window.
    #[serde(default)]
    pub limits: Vec<LimitProperties>,
    /// What happens over a limit (default `reject`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exceed: Option<OnExceedName>,
    /// The model `OnExceed: fallback` calls instead.
    #[serde_as(as = "NoneAsEmptyString")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// Enforce or shadow (default `enforce`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeName>,
    /// Price overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<PriceProperties>,
    /// The AWS Budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_budget: Option<CostBudgetProperties<S>>,
    /// API Gateway API key IDs identifying the application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_ids: Vec<S>,
    /// SQS queues whose messages belong to the application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_queue_arns: Vec<S>,
    /// Where results of queued requests go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_queue_url: Option<S>,
    /// Inference profiles to call models through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inference_profiles: Vec<ProfileProperties<S>>,
    /// Seats: the budget each user of the application gets unless named in `Users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<UserProperties>,
    /// Seats: users with budgets of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserProperties>,
    /// Publish request metrics per user too (default `false`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_metrics: Option<Flag>,
}

/// A user's budget (`PerUser`, or an entry of `Users` with its `User`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct UserProperties {
    /// The user's name (entries of `Users` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its limits, at most one per window.
    #[serde(default)]
    pub limits: Vec<LimitProperties>,
    /// What happens over one of its limits (default `reject`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exceed: Option<OnExceedName>,
    /// The model `OnExceed: fallback` calls instead.
    #[serde_as(as = "NoneAsEmptyString")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
    /// Enforce or shadow (default `enforce`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeName>,
}

/// `true` or `false` (CloudFormation sends `"true"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl FromStr for Flag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(Flag(true)),
            "false" => Ok(Flag(false)),
            other => Err(format!("`{other}` is not `true` or `false`")),
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Expected for Flag {
    const EXPECTED: &'static str = "must be `true` or `false`";
}

/// The properties of a `Custom::TokenAlarm`: a CloudWatch alarm on an application's budget.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TokenAlarmProperties<S> {
    /// The provider function's ARN (CloudFormation always sends it; the provider ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_token: Option<S>,
    /// How long CloudFormation waits for the provider's answer, 1 to 3,600 seconds.
    #[serde_as(deserialize_as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_timeout: Option<Count>,
    /// The application (its `Custom::TokenBudget` must exist).
    pub application: String,
    /// The alarm's name; the provider's default derives from the stack's name.
    #[serde_as(as = "NoneAsEmptyString")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_name: Option<String>,
    /// The window (anomaly alarms default to `hour`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowName>,
    /// Tokens or USD (default: USD when the window has a USD limit).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<AlarmMetric>,
    /// The kind (default `threshold`).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AlarmKind>,
    /// Threshold percent, 1 to 100 (threshold alarms; default 80).
    #[serde_as(as = "Option<Scalar>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Count>,
    /// ARNs to notify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarm_actions: Vec<S>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_are_read_from_strings_and_numbers_and_written_as_strings() {
        let limit: LimitProperties =
            serde_json::from_value(json!({ "Window": "day", "Tokens": 5, "Usd": "40.5" })).unwrap();
        assert_eq!(limit.tokens, Some(Count(5)));
        assert_eq!(
            serde_json::to_value(&limit).unwrap(),
            json!({ "Window": "day", "Tokens": "5", "Usd": "40.5" })
        );
        let err = serde_json::from_value::<LimitProperties>(json!({ "Window": "week" }))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`week` is not one of `minute`, `hour`, `day`, `month`"),
            "{err}"
        );
    }
}
