//! Default AWS account quotas a spec can outgrow. They are per account and Region, shared with
//! everything else in the account, and adjustable in Service Quotas; a deploy that crosses one
//! fails part-way, so `validate` and `render` warn before it.

use crate::model::{OnExceed, Spec};

/// One default account quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountQuota {
    /// The service, as Service Quotas lists it.
    pub service: &'static str,
    /// The quota's name in Service Quotas.
    pub name: &'static str,
    /// Its code in Service Quotas (`aws service-quotas request-service-quota-increase`), when it
    /// can be increased there.
    pub code: Option<&'static str>,
    /// The default value.
    pub default: usize,
}

/// API Gateway usage plans: one per application on the REST front.
pub const USAGE_PLANS: AccountQuota = AccountQuota {
    service: "Amazon API Gateway",
    name: "Usage plans per account per Region",
    code: Some("L-E8693075"),
    default: 300,
};

/// API Gateway API keys: one per application on the REST front. Not adjustable.
pub const API_KEYS: AccountQuota = AccountQuota {
    service: "Amazon API Gateway",
    name: "API keys per account per Region",
    code: None,
    default: 10_000,
};

/// Bedrock application inference profiles: one per application and model it can call.
pub const INFERENCE_PROFILES: AccountQuota = AccountQuota {
    service: "Amazon Bedrock",
    name: "Inference profiles per account",
    code: Some("L-40EC9882"),
    default: 1_000,
};

/// A quota the spec needs more of than the default allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaWarning {
    /// The quota.
    pub quota: AccountQuota,
    /// How many the spec needs.
    pub needed: usize,
}

impl std::fmt::Display for QuotaWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = &self.quota;
        write!(
            f,
            "the spec needs {} of {}'s `{}`, whose default is {} (shared with the rest of the account and Region); ",
            self.needed, q.service, q.name, q.default
        )?;
        match q.code {
            Some(code) => write!(
                f,
                "request an increase before deploying (Service Quotas code `{code}`)"
            ),
            None => write!(
                f,
                "it cannot be increased, so split the applications across accounts or Regions"
            ),
        }
    }
}

/// How many of each quota `spec` renders into.
pub fn needs(spec: &Spec) -> Vec<(AccountQuota, usize)> {
    let apps = spec.applications.len();
    let rest = if spec.access.rest { apps } else { 0 };
    let profiles = spec
        .applications
        .values()
        .map(|a| {
            let fallback = match &a.on_exceed {
                OnExceed::Fallback { model } if !a.models.contains(model) => 1,
                _ => 0,
            };
            a.models.len() + fallback
        })
        .sum();
    vec![
        (USAGE_PLANS, rest),
        (API_KEYS, rest),
        (INFERENCE_PROFILES, profiles),
    ]
}

/// The default quotas `spec` would exceed.
pub fn warnings(spec: &Spec) -> Vec<QuotaWarning> {
    needs(spec)
        .into_iter()
        .filter(|(quota, needed)| *needed > quota.default)
        .map(|(quota, needed)| QuotaWarning { quota, needed })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(apps: usize, models_each: usize) -> Spec {
        let mut yaml = String::from("version: 1\nname: q\nmodels:\n");
        for m in 0..models_each {
            yaml.push_str(&format!("  m{m}: amazon.nova-lite-v1:0\n"));
        }
        yaml.push_str("applications:\n");
        for a in 0..apps {
            yaml.push_str(&format!(
                "  app{a}:\n    limits: [{{ window: day, tokens: 100000 }}]\n"
            ));
        }
        crate::parse("q.yaml", &yaml).unwrap()
    }

    #[test]
    fn warns_past_each_default_and_only_then() {
        assert_eq!(warnings(&spec_with(300, 3)), vec![]);
        let over = warnings(&spec_with(301, 4));
        assert_eq!(
            over,
            vec![
                QuotaWarning {
                    quota: USAGE_PLANS,
                    needed: 301
                },
                QuotaWarning {
                    quota: INFERENCE_PROFILES,
                    needed: 1204
                },
            ]
        );
        assert_eq!(
            over[0].to_string(),
            "the spec needs 301 of Amazon API Gateway's `Usage plans per account per Region`, whose default is 300 (shared with the rest of the account and Region); request an increase before deploying (Service Quotas code `L-E8693075`)"
        );
        let keys = QuotaWarning {
            quota: API_KEYS,
            needed: 10_001,
        };
        assert!(keys.to_string().ends_with(
            "it cannot be increased, so split the applications across accounts or Regions"
        ));
    }

    #[test]
    fn a_fallback_model_outside_the_list_needs_a_profile_too() {
        let yaml = "version: 1\nname: q\nmodels:\n  a: amazon.nova-lite-v1:0\n  b: amazon.nova-micro-v1:0\napplications:\n  x:\n    models: [a]\n    limits: [{ window: day, tokens: 100000 }]\n    on_exceed: { action: fallback, model: b }\n";
        let spec = crate::parse("q.yaml", yaml).unwrap();
        assert!(needs(&spec).contains(&(INFERENCE_PROFILES, 2)));
    }
}
