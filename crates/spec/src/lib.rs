//! The tokenfence spec: a YAML file declaring applications, model aliases, limits and alerts.
//!
//! [`parse`] reads and validates a spec and reports every problem at once, each with
//! `file:line:col`, its YAML path and a hint. [`json_schema`] describes the format for editors.

mod decode;
mod error;
pub mod model;
pub mod names;
pub mod quotas;
mod schema;
pub mod yaml;

pub use decode::{MAX_MAX_TOKENS, MAX_TOKENS_LIMIT, MAX_USD_LIMIT};
pub use error::{SpecError, SpecErrors};
pub use model::*;
pub use schema::json_schema;

/// The built-in price book's model ID closest to `model` (an ID, inference profile ID or ARN),
/// when it is within a typo of it: a few edits, not merely a model of the same family (Claude
/// Sonnet 4 is no suggestion for Sonnet 4.5: its price may differ).
pub fn suggest_model(model: &str) -> Option<&'static str> {
    let (base, _) = budget::price::base_model(model);
    let most = (base.len() / 12).max(2);
    budget::PriceBook::known_models()
        .map(|m| (strsim::levenshtein(base, m), m))
        .filter(|(edits, _)| *edits <= most)
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, m)| m)
}

/// Parses and validates the spec in `source`; `file` names it in error messages, and a
/// `price_book` it names is read relative to `file`'s directory.
pub fn parse(file: &str, source: &str) -> Result<Spec, SpecErrors> {
    let fail = |mut errors: Vec<SpecError>| {
        for e in &mut errors {
            e.span = within(source, e.span);
        }
        SpecErrors {
            file: file.to_string(),
            errors,
        }
    };
    let root = yaml::load(source).map_err(|e| {
        fail(vec![SpecError {
            path: String::new(),
            message: format!("invalid YAML: {}", e.message),
            help: None,
            span: e.span,
        }])
    })?;
    let base_dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    decode::decode(&root, base_dir).map_err(fail)
}

/// `span`, or the end of the file when the YAML scanner places it past the end (it reports the end
/// of a file without a final line break on a line after the last): an editor can go to it.
fn within(source: &str, span: yaml::Span) -> yaml::Span {
    let lines = source.replace("\r\n", "\n").matches(['\r', '\n']).count() + 1;
    if span.offset <= source.len() && span.line <= lines {
        return span;
    }
    let last = source
        .rfind(['\r', '\n'])
        .map_or(source, |i| &source[i + 1..]);
    yaml::Span {
        offset: source.len(),
        len: 0,
        line: lines,
        col: last.chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_keys(schema: &serde_json::Value, def: Option<&str>) -> Vec<String> {
        let node = match def {
            None => schema,
            Some(d) => &schema["$defs"][d],
        };
        let mut keys: Vec<String> = node["properties"]
            .as_object()
            .expect("an object schema")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn errors_at_the_end_of_a_file_without_a_final_break_point_into_it() {
        let errors = parse("s.yaml", "{ version: 1").unwrap_err();
        let e = &errors.errors[0];
        assert_eq!(
            (e.span.line, e.span.col, e.span.offset),
            (1, 13, 12),
            "{e:?}"
        );
        assert!(errors.to_string().starts_with("s.yaml:1:13: invalid YAML"));
    }

    #[test]
    fn schema_and_decoder_know_the_same_keys() {
        let s = json_schema();
        assert_eq!(schema_keys(&s, None), sorted(decode::TOP_KEYS));
        assert_eq!(
            schema_keys(&s, Some("ModelFull")),
            sorted(decode::MODEL_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("PriceSchema")),
            sorted(decode::PRICE_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("TierPriceSchema")),
            sorted(decode::TIER_PRICE_KEYS)
        );
        let tiers: Vec<&str> = budget::PriceTier::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(schema_keys(&s, Some("TiersSchema")), sorted(&tiers));
        assert_eq!(
            schema_keys(&s, Some("DefaultsSchema")),
            sorted(decode::DEFAULTS_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("AlertsSchema")),
            sorted(decode::ALERTS_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("ApplicationSchema")),
            sorted(decode::APP_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("LimitSchema")),
            sorted(decode::LIMIT_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("OnExceedFull")),
            sorted(decode::ON_EXCEED_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("AlarmSchema")),
            sorted(decode::ALARM_KEYS)
        );
        assert_eq!(
            schema_keys(&s, Some("CostBudgetSchema")),
            sorted(decode::COST_BUDGET_KEYS)
        );
    }
}
