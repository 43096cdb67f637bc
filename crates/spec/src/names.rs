//! The AWS names and CloudFormation logical IDs a spec produces, in one place, so that validation
//! checks exactly the names that rendering uses.

use budget::Window;

use crate::model::{AlarmKind, AlarmSpec};

/// A naming rule of one AWS resource kind.
#[derive(Debug, Clone, Copy)]
pub struct NameRule {
    /// What the name names, for messages.
    pub what: &'static str,
    /// Longest allowed name.
    pub max_len: usize,
    /// Characters allowed besides ASCII letters and digits.
    pub extra_chars: &'static str,
    /// Whether two separators may not follow each other (inference profile names).
    pub no_double_separator: bool,
}

/// Lambda function names.
pub const FUNCTION: NameRule = NameRule {
    what: "Lambda function name",
    max_len: 64,
    extra_chars: "-_",
    no_double_separator: false,
};
/// SQS queue names.
pub const QUEUE: NameRule = NameRule {
    what: "SQS queue name",
    max_len: 80,
    extra_chars: "-_",
    no_double_separator: false,
};
/// DynamoDB table names.
pub const TABLE: NameRule = NameRule {
    what: "DynamoDB table name",
    max_len: 255,
    extra_chars: "-_.",
    no_double_separator: false,
};
/// SNS topic names.
pub const TOPIC: NameRule = NameRule {
    what: "SNS topic name",
    max_len: 256,
    extra_chars: "-_",
    no_double_separator: false,
};
/// CloudWatch alarm names.
pub const ALARM: NameRule = NameRule {
    what: "CloudWatch alarm name",
    max_len: 255,
    extra_chars: "-_.",
    no_double_separator: false,
};
/// AWS Budgets names.
pub const BUDGET: NameRule = NameRule {
    what: "AWS Budgets name",
    max_len: 100,
    extra_chars: "-_.",
    no_double_separator: false,
};
/// Bedrock application inference profile names.
pub const PROFILE: NameRule = NameRule {
    what: "inference profile name",
    max_len: 64,
    extra_chars: "-_",
    no_double_separator: true,
};
/// CloudFormation stack names.
pub const STACK: NameRule = NameRule {
    what: "CloudFormation stack name",
    max_len: 128,
    extra_chars: "-",
    no_double_separator: false,
};
/// CloudFormation logical IDs.
pub const LOGICAL_ID: NameRule = NameRule {
    what: "CloudFormation logical ID",
    max_len: 255,
    extra_chars: "",
    no_double_separator: false,
};

impl NameRule {
    /// Why `name` breaks this rule, if it does.
    pub fn check(&self, name: &str) -> Option<String> {
        if name.len() > self.max_len {
            return Some(format!(
                "makes the {} `{name}` {} characters long; the limit is {}",
                self.what,
                name.len(),
                self.max_len
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && !self.extra_chars.contains(*c))
        {
            return Some(format!(
                "makes the {} `{name}`, which may not contain `{c}`",
                self.what
            ));
        }
        if self.no_double_separator {
            let seps = |c: char| !c.is_ascii_alphanumeric();
            let doubled = name
                .chars()
                .zip(name.chars().skip(1))
                .any(|(a, b)| seps(a) && seps(b));
            if doubled || name.starts_with(seps) || name.ends_with(seps) {
                return Some(format!(
                    "makes the {} `{name}`, which may not start or end with a separator or have two in a row",
                    self.what
                ));
            }
        }
        None
    }
}

/// Whether `app` is an application name: 1 to 64 letters, digits, `-` and `_`. The one rule, for
/// specs and for hand-written `Custom::TokenBudget` / `Custom::TokenAlarm` properties.
pub fn is_application_name(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= 64
        && app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// [`is_application_name`]'s rule in words.
pub const APPLICATION_NAME_RULE: &str = "1 to 64 letters, digits, `-` and `_`";

/// Names derived from a spec's `name`.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    /// The spec's `name`.
    pub prefix: &'a str,
}

impl<'a> Names<'a> {
    /// Names for a spec called `prefix`.
    pub fn new(prefix: &'a str) -> Self {
        Names { prefix }
    }

    /// The main stack: the platform, and the applications that fit in it.
    pub fn stack(&self) -> String {
        self.prefix.to_string()
    }
    /// The `n`th (1-based) budget stack: applications beyond the main stack.
    pub fn budget_stack(&self, n: usize) -> String {
        format!("{}-budgets-{n:03}", self.prefix)
    }
    /// The ledger table.
    pub fn table(&self) -> String {
        format!("{}-ledger", self.prefix)
    }
    /// A Lambda function (`provider`, `invoke`).
    pub fn function(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }
    /// The alert topic.
    pub fn topic(&self) -> String {
        format!("{}-alerts", self.prefix)
    }
    /// The dead-letter queue shared by the request queues.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}-dlq", self.prefix)
    }
    /// An application's request queue.
    pub fn requests_queue(&self, app: &str) -> String {
        format!("{}-{app}-requests", self.prefix)
    }
    /// An application's results queue.
    pub fn results_queue(&self, app: &str) -> String {
        format!("{}-{app}-results", self.prefix)
    }
    /// An application's API key and usage plan.
    pub fn api_key(&self, app: &str) -> String {
        format!("{}-{app}", self.prefix)
    }
    /// An application's AWS Budget.
    pub fn budget(&self, app: &str) -> String {
        format!("{}-{app}", self.prefix)
    }
    /// An application's inference profile for one model alias calling `model_id`.
    ///
    /// The model is part of the name: a profile's model (`ModelSource.CopyFrom`) can only be
    /// changed by replacing it, and CloudFormation cannot replace a resource whose custom name
    /// stays the same. A new model under an alias is a new name, so the update replaces it.
    pub fn profile(&self, app: &str, alias: &str, model_id: &str) -> String {
        format!(
            "{}-{app}-{alias}-{:08x}",
            self.prefix,
            stable_hash(model_id) >> 32
        )
    }
    /// An application's alarm.
    pub fn alarm(&self, app: &str, alarm: &AlarmSpec) -> String {
        let percent = match alarm.kind {
            AlarmKind::Threshold { percent } => Some(percent),
            AlarmKind::Forecast | AlarmKind::Anomaly => None,
        };
        self.alarm_of(
            app,
            alarm.window,
            alarm.metric.as_str(),
            alarm.kind.as_str(),
            percent,
        )
    }

    /// The one alarm naming rule, for rendered alarms and the provider's default `AlarmName`:
    /// `<name>-<app>-<window>-<metric>-<kind>[-<percent>]` (threshold alarms carry their percent).
    pub fn alarm_of(
        &self,
        app: &str,
        window: Window,
        metric: &str,
        kind: &str,
        percent: Option<u32>,
    ) -> String {
        let base = format!("{}-{app}-{window}-{metric}-{kind}", self.prefix);
        match percent {
            Some(percent) => format!("{base}-{percent}"),
            None => base,
        }
    }
}

/// 64-bit FNV-1a, fed in pieces: stable across platforms and releases (unlike `std`'s hasher),
/// for names and logical IDs derived from content.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    /// Feeds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The [`StableHasher`] hash of `text`.
pub fn stable_hash(text: &str) -> u64 {
    let mut h = StableHasher::default();
    h.write(text.as_bytes());
    h.finish()
}

/// A name as a PascalCase CloudFormation logical-ID fragment: `support-bot` -> `SupportBot`.
pub fn logical_id_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if upper {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    out
}

/// The logical-ID fragment of an alarm of an application.
pub fn alarm_logical_id_part(alarm: &AlarmSpec) -> String {
    let window = logical_id_part(alarm.window.as_str());
    let metric = logical_id_part(alarm.metric.as_str());
    match alarm.kind {
        AlarmKind::Threshold { percent } => format!("{window}{metric}Threshold{percent}"),
        AlarmKind::Forecast => format!("{window}{metric}Forecast"),
        AlarmKind::Anomaly => format!("{window}{metric}Anomaly"),
    }
}

/// The longest suffix rendering appends to an application's logical-ID fragment.
pub const LONGEST_LOGICAL_ID_SUFFIX: &str = "MonthTokensThreshold100Alarm";

/// Windows in order, for messages.
pub fn window_list() -> String {
    Window::ALL
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_report_length_characters_and_separators() {
        assert!(FUNCTION.check("acme-invoke").is_none());
        let long = "a".repeat(65);
        assert!(
            FUNCTION
                .check(&long)
                .unwrap()
                .contains("65 characters long; the limit is 64")
        );
        assert!(QUEUE.check("a.b").unwrap().contains("may not contain `.`"));
        assert!(PROFILE.check("acme--bot").unwrap().contains("two in a row"));
        assert!(PROFILE.check("acme-bot_x").is_none());
    }

    #[test]
    fn a_profile_is_renamed_exactly_when_its_model_changes() {
        let n = Names::new("acme");
        let lite = n.profile("bot", "fast", "amazon.nova-lite-v1:0");
        assert!(lite.starts_with("acme-bot-fast-") && lite.len() == "acme-bot-fast-".len() + 8);
        assert!(PROFILE.check(&lite).is_none());
        assert_eq!(lite, n.profile("bot", "fast", "amazon.nova-lite-v1:0"));
        assert_ne!(lite, n.profile("bot", "fast", "amazon.nova-micro-v1:0"));
        // FNV-1a's published test vector: the hash is the same on every platform and release.
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn logical_id_parts_are_pascal_case() {
        assert_eq!(logical_id_part("support-bot"), "SupportBot");
        assert_eq!(logical_id_part("nova_lite2"), "NovaLite2");
        assert_eq!(logical_id_part("a-b"), logical_id_part("aB"));
    }
}
