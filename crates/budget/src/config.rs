//! An application's budget configuration, as the provider writes it to the ledger and the gateway
//! reads it back. Limits change at runtime by rewriting this record; no code is redeployed.

use serde::{Deserialize, Serialize};

use crate::{Charge, Limit, Price, PriceBook, PriceTier, Usage};

/// What happens to a request that would exceed a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ExceedAction {
    /// Answer 429 with `Retry-After`.
    #[default]
    Reject,
    /// Reserve and call a cheaper model instead.
    Fallback {
        /// The fallback's model ID.
        model: String,
    },
    /// Async requests return to the queue until the window resets (sync requests are rejected).
    Queue,
}

/// Enforce, or evaluate and report only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// Block requests over a limit.
    #[default]
    Enforce,
    /// Never block; report what would have happened.
    Shadow,
}

impl EnforcementMode {
    /// Its name in properties, `/usage` and reports: `enforce` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementMode::Enforce => "enforce",
            EnforcementMode::Shadow => "shadow",
        }
    }
}

/// A price override for one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// Model ID.
    pub model: String,
    /// Its price.
    pub price: Price,
    /// Its prices in other tiers (flex, priority, latency-optimized), where given.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tiers: std::collections::BTreeMap<PriceTier, Price>,
}

/// The application inference profile through which the gateway calls a model, for cost allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceProfile {
    /// Model ID as requested.
    pub model: String,
    /// Profile ARN to call instead.
    pub arn: String,
}

/// One application's budget configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// The application.
    pub application: String,
    /// Cost allocation tag value.
    #[serde(default)]
    pub cost_center: Option<String>,
    /// Model IDs the application may call; empty means any model the gateway knows.
    #[serde(default)]
    pub models: Vec<String>,
    /// Limits, one per window.
    pub limits: Vec<Limit>,
    /// What happens over a limit.
    pub on_exceed: ExceedAction,
    /// Enforce or shadow.
    pub mode: EnforcementMode,
    /// Price overrides; other models use the built-in book.
    #[serde(default)]
    pub prices: Vec<ModelPrice>,
    /// Inference profiles to call models through.
    #[serde(default)]
    pub inference_profiles: Vec<InferenceProfile>,
    /// Where async results go.
    #[serde(default)]
    pub results_queue_url: Option<String>,
    /// Bumped on every change, for caches and `Fn::GetAtt ConfigVersion`.
    #[serde(default)]
    pub version: u64,
    /// Who declared it (`STACK_ID/LOGICAL_ID` for a `Custom::TokenBudget`), so that two stacks
    /// cannot silently share one application's budget.
    #[serde(default)]
    pub owner: Option<String>,
    /// The request that last wrote it, so that a retried request changes nothing.
    #[serde(default)]
    pub applied_request: Option<String>,
    /// The budget every user of the application gets unless named in `users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<UserBudget>,
    /// Users with budgets of their own, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub users: std::collections::BTreeMap<String, UserBudget>,
    /// The API Gateway API keys of the application: the REST API's authorizer hands a seat's
    /// call to the first one's usage plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_ids: Vec<String>,
    /// Publish request metrics per user as well (CloudWatch bills each custom metric).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub user_metrics: bool,
}

/// One user's budget inside an application: held in the same atomic step as the application's,
/// so neither can be exceeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBudget {
    /// Limits, one per window.
    pub limits: Vec<Limit>,
    /// What happens when one of these limits is hit.
    #[serde(default)]
    pub on_exceed: ExceedAction,
    /// Enforce or shadow these limits.
    #[serde(default)]
    pub mode: EnforcementMode,
}

impl BudgetConfig {
    /// The price of `model`: the override if any, else the built-in book.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        self.override_of(model)
            .map(|p| p.price)
            .or_else(|| PriceBook::lookup(model))
    }

    fn override_of(&self, model: &str) -> Option<&ModelPrice> {
        self.prices.iter().find(|p| p.model == model)
    }

    /// The price of `model` in `tier` (`None`: the standard tier): the override's price in that
    /// tier if it lists one, else the built-in book's.
    pub fn price_in(&self, model: &str, tier: Option<PriceTier>) -> Option<Price> {
        let Some(tier) = tier else {
            return self.price_of(model);
        };
        self.override_of(model)
            .and_then(|p| p.tiers.get(&tier).copied())
            .or_else(|| PriceBook::lookup_tier(model, tier))
    }

    /// Whether the application may call `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// Whether any limit is in USD (then every model called needs a price).
    pub fn has_usd_limit(&self) -> bool {
        self.limits.iter().any(|l| l.usd.is_some())
    }

    /// The budget of `user`: its own if named, else the application's default per user; `None`
    /// when the application limits neither (the user then meets only the application's limits).
    pub fn user_budget(&self, user: &str) -> Option<&UserBudget> {
        self.users.get(user).or(self.per_user.as_ref())
    }

    /// Whether any limit, the application's or a user's, is in USD.
    pub fn has_any_usd_limit(&self) -> bool {
        self.has_usd_limit()
            || self
                .per_user
                .iter()
                .chain(self.users.values())
                .any(|u| u.limits.iter().any(|l| l.usd.is_some()))
    }

    /// The ARN to call `model` through, if a profile is configured.
    pub fn profile_for(&self, model: &str) -> Option<&str> {
        self.inference_profiles
            .iter()
            .find(|p| p.model == model)
            .map(|p| p.arn.as_str())
    }
}

/// Checks a user name: 1 to 64 letters, digits and `._@+-` (an email address fits). It becomes
/// part of ledger keys and of `invoke serve --api-key KEY=APP/USER`, so `/`, `#` and spaces are
/// refused.
pub fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > 64 {
        return Err(format!(
            "a user name needs 1 to 64 characters; `{user}` has {}",
            user.chars().count()
        ));
    }
    if let Some(c) = user
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@+-".contains(*c)))
    {
        return Err(format!(
            "user name `{user}` may hold only letters, digits and `._@+-`, not `{}`",
            c.escape_default()
        ));
    }
    Ok(())
}

/// The worst case of a request: its input bound and output cap, priced at the dearest input kind.
/// Without a price the cost is zero, which is only allowed when no limit is in USD.
pub fn worst_case(price: Option<Price>, input_bound: u64, max_output: u64) -> Charge {
    let tokens = input_bound.saturating_add(max_output);
    Charge::new(
        tokens,
        price.map_or(crate::MicroUsd::ZERO, |p| {
            p.worst_case(input_bound, max_output)
        }),
    )
}

/// What a request actually used, priced.
pub fn actual(price: Option<Price>, usage: &Usage) -> Charge {
    Charge::new(
        usage.total_tokens(),
        price.map_or(crate::MicroUsd::ZERO, |p| p.cost(usage)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MicroUsd, Window};

    #[test]
    fn round_trips_through_json_and_resolves_prices() {
        let config = BudgetConfig {
            application: "bot".into(),
            cost_center: None,
            models: vec!["amazon.nova-micro-v1:0".into()],
            limits: vec![Limit {
                window: Window::Day,
                tokens: Some(10),
                usd: Some(MicroUsd(5)),
            }],
            on_exceed: ExceedAction::Fallback { model: "x".into() },
            mode: EnforcementMode::Shadow,
            prices: vec![ModelPrice {
                model: "x".into(),
                price: Price {
                    input: 1,
                    output: 2,
                    cache_read: 0,
                    cache_write: 1,
                    cache_write_1h: None,
                    one_hour_writes: false,
                },
                tiers: [(
                    PriceTier::Flex,
                    Price {
                        input: 1,
                        output: 1,
                        cache_read: 0,
                        cache_write: 1,
                        cache_write_1h: None,
                        one_hour_writes: false,
                    },
                )]
                .into(),
            }],
            inference_profiles: vec![],
            results_queue_url: None,
            version: 3,
            owner: Some("stack/Logical".into()),
            applied_request: None,
            per_user: Some(UserBudget {
                limits: vec![Limit {
                    window: Window::Day,
                    tokens: Some(5),
                    usd: None,
                }],
                ..UserBudget::default()
            }),
            users: [(
                "alice".to_string(),
                UserBudget {
                    limits: vec![],
                    on_exceed: ExceedAction::Reject,
                    mode: EnforcementMode::Shadow,
                },
            )]
            .into(),
            user_metrics: true,
            api_key_ids: vec!["k1".into()],
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<BudgetConfig>(&json).unwrap(), config);
        assert_eq!(config.price_of("x").unwrap().output, 2);
        assert!(json.contains(r#""tiers":{"flex":"#), "{json}");
        assert_eq!(config.price_in("x", None).unwrap().output, 2);
        assert_eq!(
            config.price_in("x", Some(PriceTier::Flex)).unwrap().output,
            1
        );
        assert_eq!(config.price_in("x", Some(PriceTier::Priority)), None);
        // Without an override, a tier's price is the built-in book's, which lists none yet.
        assert_eq!(
            config.price_in("amazon.nova-micro-v1:0", Some(PriceTier::Flex)),
            None
        );
        assert_eq!(
            config.price_of("amazon.nova-micro-v1:0").unwrap().input,
            35_000
        );
        assert!(config.allows("amazon.nova-micro-v1:0") && !config.allows("x"));
        assert!(config.has_usd_limit());
        assert_eq!(
            config.user_budget("alice").unwrap().mode,
            EnforcementMode::Shadow
        );
        assert_eq!(config.user_budget("bob").unwrap().limits[0].tokens, Some(5));
        // Written before seats existed: no user budgets.
        let old: BudgetConfig = serde_json::from_str(
            r#"{"application":"a","limits":[],"on_exceed":{"action":"reject"},"mode":"enforce"}"#,
        )
        .unwrap();
        assert!(old.user_budget("bob").is_none() && old.users.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("per_user"));
    }

    #[test]
    fn worst_case_and_actual_charges() {
        // Nova's cache writes cost no more than its input, so input is the dearest kind.
        let p = PriceBook::lookup("amazon.nova-micro-v1:0");
        assert_eq!(
            worst_case(p, 1_000_000, 1_000_000),
            Charge::new(2_000_000, MicroUsd(35_000 + 140_000))
        );
        // Claude's cache writes are dearer (1.25 x input): every input token is priced at them.
        let claude = PriceBook::lookup("anthropic.claude-3-haiku-20240307-v1:0");
        assert_eq!(
            worst_case(claude, 1_000_000, 1_000_000),
            Charge::new(2_000_000, MicroUsd(312_500 + 1_250_000))
        );
        assert_eq!(
            actual(p, &Usage::new(1_000_000, 0)),
            Charge::new(1_000_000, MicroUsd(35_000))
        );
        assert_eq!(worst_case(None, 1, 2), Charge::new(3, MicroUsd::ZERO));
    }
}
