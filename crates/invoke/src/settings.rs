//! Gateway settings from the Lambda environment (written by `synth render`) or from a spec (`serve`).

use std::collections::BTreeMap;

use budget::config::{BudgetConfig, EnforcementMode, ExceedAction, ModelPrice, UserBudget};
use spec::{Mode, OnExceed, OnLedgerError, Spec};

use crate::Error;
use crate::gateway::{LedgerFailurePolicy, Settings};

/// Settings and table name from environment variables (`TOKENFENCE_*`), read through `var`.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<(Settings, String), Error> {
    const TABLE: &str = "TOKENFENCE_TABLE";
    const MODELS: &str = "TOKENFENCE_MODELS";
    const MAX_TOKENS: &str = "TOKENFENCE_DEFAULT_MAX_TOKENS";
    const ON_LEDGER_ERROR: &str = "TOKENFENCE_ON_LEDGER_ERROR";
    let table = var(TABLE).ok_or_else(|| Error::setting(TABLE, "is not set"))?;
    let mut settings = Settings::default();
    if let Some(models) = var(MODELS) {
        settings.models = serde_json::from_str::<BTreeMap<String, String>>(&models)
            .map_err(|e| Error::setting(MODELS, format!("is not a JSON object of strings: {e}")))?;
    }
    if let Some(max) = var(MAX_TOKENS) {
        settings.default_max_tokens = max.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::setting(MAX_TOKENS, format!("is `{max}`, not a positive integer"))
        })?;
    }
    if let Some(policy) = var(ON_LEDGER_ERROR) {
        settings.on_ledger_error = match policy.as_str() {
            "deny" => LedgerFailurePolicy::Deny,
            "allow" => LedgerFailurePolicy::Allow,
            other => {
                return Err(Error::setting(
                    ON_LEDGER_ERROR,
                    format!("is `{other}`, not `deny` or `allow`"),
                ));
            }
        };
    }
    Ok((settings, table))
}

/// Settings from a spec.
pub fn from_spec(spec: &Spec) -> Settings {
    Settings {
        models: spec
            .models
            .iter()
            .map(|(alias, def)| (alias.clone(), def.id.clone()))
            .collect(),
        default_max_tokens: spec.defaults.max_tokens,
        on_ledger_error: match spec.defaults.on_ledger_error {
            OnLedgerError::Deny => LedgerFailurePolicy::Deny,
            OnLedgerError::Allow => LedgerFailurePolicy::Allow,
        },
        ..Settings::default()
    }
}

/// The budget configuration of one application of a spec, as the provider would write it.
pub fn budget_from_spec(spec: &Spec, application: &str) -> Option<BudgetConfig> {
    let app = spec.applications.get(application)?;
    let id = |alias: &str| spec.models[alias].id.clone();
    let mut aliases: Vec<&str> = app.models.iter().map(String::as_str).collect();
    if let OnExceed::Fallback { model } = &app.on_exceed {
        aliases.push(model);
    }
    Some(BudgetConfig {
        application: application.to_string(),
        cost_center: app.cost_center.clone(),
        models: app.models.iter().map(|a| id(a)).collect(),
        limits: app.limits.clone(),
        on_exceed: exceed_action(spec, &app.on_exceed),
        mode: enforcement(app.mode),
        prices: aliases
            .iter()
            .filter_map(|a| {
                let def = &spec.models[*a];
                def.price
                    .filter(|_| def.price_from_spec)
                    .map(|price| ModelPrice {
                        model: def.id.clone(),
                        price,
                        tiers: def.tiers.clone(),
                    })
            })
            .collect(),
        inference_profiles: Vec::new(),
        results_queue_url: None,
        version: 1,
        owner: Some(format!("spec:{}", spec.name)),
        applied_request: None,
        per_user: app.per_user.as_ref().map(|u| user_budget(spec, u)),
        users: app
            .users
            .iter()
            .map(|(name, u)| (name.clone(), user_budget(spec, u)))
            .collect(),
        user_metrics: app.user_metrics,
        api_key_ids: Vec::new(),
    })
}

fn exceed_action(spec: &Spec, on_exceed: &OnExceed) -> ExceedAction {
    match on_exceed {
        OnExceed::Reject => ExceedAction::Reject,
        OnExceed::Fallback { model } => ExceedAction::Fallback {
            model: spec.models[model].id.clone(),
        },
        OnExceed::Queue => ExceedAction::Queue,
    }
}

fn enforcement(mode: Mode) -> EnforcementMode {
    match mode {
        Mode::Enforce => EnforcementMode::Enforce,
        Mode::Shadow => EnforcementMode::Shadow,
    }
}

fn user_budget(spec: &Spec, user: &spec::UserLimits) -> UserBudget {
    UserBudget {
        limits: user.limits.clone(),
        on_exceed: exceed_action(spec, &user.on_exceed),
        mode: enforcement(user.mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_variables_synth_renders() {
        let vars = |k: &str| match k {
            "TOKENFENCE_TABLE" => Some("t".to_string()),
            "TOKENFENCE_MODELS" => Some(r#"{"haiku":"anthropic.x"}"#.to_string()),
            "TOKENFENCE_DEFAULT_MAX_TOKENS" => Some("77".to_string()),
            "TOKENFENCE_ON_LEDGER_ERROR" => Some("allow".to_string()),
            _ => None,
        };
        let (settings, table) = from_env(vars).unwrap();
        assert_eq!(table, "t");
        assert_eq!(settings.models["haiku"], "anthropic.x");
        assert_eq!(settings.default_max_tokens, 77);
        assert_eq!(settings.on_ledger_error, LedgerFailurePolicy::Allow);
        assert_eq!(
            from_env(|k| (k == "TOKENFENCE_TABLE")
                .then(|| "t".into())
                .or((k == "TOKENFENCE_ON_LEDGER_ERROR").then(|| "maybe".into())))
            .unwrap_err()
            .to_string(),
            "`TOKENFENCE_ON_LEDGER_ERROR` is `maybe`, not `deny` or `allow`"
        );
        assert_eq!(
            from_env(|_| None).unwrap_err().to_string(),
            "`TOKENFENCE_TABLE` is not set"
        );
    }
}
