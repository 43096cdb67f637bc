//! Decoding the spanned YAML tree into a validated [`Spec`], collecting every error on the way.

use std::collections::{HashMap, HashSet};

use budget::estimate::PER_REQUEST_OVERHEAD;
use budget::{Limit, MicroUsd, Price, PriceBook, PriceText, PriceTier, TierPrices, Window};
use indexmap::IndexMap;

use crate::error::SpecError;
use crate::model::*;
use crate::names::{self, LOGICAL_ID, NameRule, Names};
use crate::yaml::{Kind, Node, Span};

pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "models",
    "defaults",
    "access",
    "engine",
    "alerts",
    "applications",
    "price_book",
];
pub(crate) const MODEL_KEYS: &[&str] = &["id", "price"];
pub(crate) const PRICE_KEYS: &[&str] = &[
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "tiers",
];
pub(crate) const TIER_PRICE_KEYS: &[&str] = &[
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
];
pub(crate) const DEFAULTS_KEYS: &[&str] = &["max_tokens", "on_ledger_error"];
pub(crate) const ALERTS_KEYS: &[&str] = &["emails"];
pub(crate) const APP_KEYS: &[&str] = &[
    "cost_center",
    "models",
    "limits",
    "on_exceed",
    "mode",
    "alarms",
    "cost_budget",
    "per_user",
    "users",
    "user_metrics",
];
pub(crate) const USER_KEYS: &[&str] = &["limits", "on_exceed", "mode"];
pub(crate) const LIMIT_KEYS: &[&str] = &["window", "tokens", "usd"];
pub(crate) const ON_EXCEED_KEYS: &[&str] = &["action", "model"];
pub(crate) const ALARM_KEYS: &[&str] = &["window", "metric", "percent", "forecast", "anomaly"];
pub(crate) const COST_BUDGET_KEYS: &[&str] =
    &["monthly_usd", "forecast_percent", "actual_percents"];

/// Largest token limit accepted for one window: a trillion tokens is already absurd.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000_000_000;
/// Largest USD limit accepted for one window.
pub const MAX_USD_LIMIT: MicroUsd = MicroUsd::from_usd(1_000_000_000);
/// Largest default output cap.
pub const MAX_MAX_TOKENS: u64 = 1_000_000;

/// An entry of a mapping whose key is a scalar.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
    span: Span,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }
}

struct Decoder {
    errors: Vec<SpecError>,
    /// The spec's directory: a `price_book` path is relative to it.
    base_dir: std::path::PathBuf,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The closest of `options` to `given`, when one is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    given: &str,
    options: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    options
        .into_iter()
        .map(|o| (strsim::jaro_winkler(given, o), o))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| o)
}

fn did_you_mean<'a>(given: &str, options: impl IntoIterator<Item = &'a str>) -> Option<String> {
    suggest(given, options).map(|s| format!("did you mean `{s}`?"))
}

fn one_of(options: &[&str]) -> String {
    options
        .iter()
        .map(|o| format!("`{o}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Decoder {
    fn error(&mut self, span: Span, path: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            path: path.to_string(),
            message: message.into(),
            help: None,
            span,
        });
    }

    fn error_help(
        &mut self,
        span: Span,
        path: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.errors.push(SpecError {
            path: path.to_string(),
            message: message.into(),
            help,
            span,
        });
    }

    fn mapping<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &node.kind else {
            self.error(
                node.span,
                path,
                format!("expected a mapping, found {}", node.kind_name()),
            );
            return None;
        };
        let mut fields = Fields {
            entries: Vec::with_capacity(entries.len()),
            span: node.span,
        };
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for (key, value) in entries {
            let Kind::Scalar { value: name, .. } = &key.kind else {
                self.error(
                    key.span,
                    path,
                    format!("keys must be plain names, found {}", key.kind_name()),
                );
                continue;
            };
            let key_path = join(path, name);
            if let Some(first) = seen.get(name.as_str()) {
                self.error(
                    key.span,
                    &key_path,
                    format!(
                        "duplicate key `{name}` (first defined at line {})",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name, key.span);
            if !allowed.is_empty() && !allowed.contains(&name.as_str()) {
                let help = did_you_mean(name, allowed.iter().copied())
                    .or_else(|| Some(format!("expected one of {}", one_of(allowed))));
                self.error_help(key.span, &key_path, format!("unknown key `{name}`"), help);
                continue;
            }
            fields.entries.push((name.as_str(), key, value));
        }
        Some(fields)
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, key: &str, path: &str) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.error(fields.span, path, format!("missing required key `{key}`"));
        }
        node
    }

    fn scalar<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        expected: &str,
    ) -> Option<(&'n str, bool)> {
        match &node.kind {
            Kind::Scalar { value, quoted } => Some((value.as_str(), *quoted)),
            _ => {
                self.error(
                    node.span,
                    path,
                    format!("expected {expected}, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        self.scalar(node, path, "a string")
            .map(|(s, _)| s.to_string())
    }

    fn uint(&mut self, node: &Node, path: &str) -> Option<u64> {
        let (text, _) = self.scalar(node, path, "a whole number")?;
        if text.starts_with('-') {
            self.error(node.span, path, format!("must be positive, found `{text}`"));
            return None;
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) || text.is_empty() {
            self.error(
                node.span,
                path,
                format!("expected a whole number, found `{text}`"),
            );
            return None;
        }
        match text.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(node.span, path, format!("`{text}` is too large"));
                None
            }
        }
    }

    fn positive(&mut self, node: &Node, path: &str, max: u64) -> Option<u64> {
        let v = self.uint(node, path)?;
        if v == 0 {
            self.error(node.span, path, "must be positive, found `0`");
            return None;
        }
        if v > max {
            self.error(
                node.span,
                path,
                format!("`{v}` is larger than the most allowed, `{max}`"),
            );
            return None;
        }
        Some(v)
    }

    fn usd(&mut self, node: &Node, path: &str) -> Option<MicroUsd> {
        let (text, _) = self.scalar(node, path, "an amount in USD")?;
        if text.starts_with('-') {
            self.error(node.span, path, format!("must be positive, found `{text}`"));
            return None;
        }
        match MicroUsd::parse_usd(text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(node.span, path, e.to_string());
                None
            }
        }
    }

    fn positive_usd(&mut self, node: &Node, path: &str) -> Option<MicroUsd> {
        let v = self.usd(node, path)?;
        if v == MicroUsd::ZERO {
            self.error(node.span, path, "must be positive, found `0`");
            return None;
        }
        if v > MAX_USD_LIMIT {
            self.error(
                node.span,
                path,
                format!("`{v}` USD is larger than the most allowed, `{MAX_USD_LIMIT}`"),
            );
            return None;
        }
        Some(v)
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        let (text, _) = self.scalar(node, path, "`true` or `false`")?;
        match text {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            other => {
                self.error(
                    node.span,
                    path,
                    format!("expected `true` or `false`, found `{other}`"),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let (text, _) = self.scalar(node, path, "a name")?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let help = did_you_mean(text, names.iter().copied())
            .or_else(|| Some(format!("expected one of {}", one_of(&names))));
        self.error_help(node.span, path, format!("unknown value `{text}`"), help);
        None
    }

    fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.error(
                    node.span,
                    path,
                    format!("expected a list, found {}", node.kind_name()),
                );
                None
            }
        }
    }

    fn window(&mut self, node: &Node, path: &str) -> Option<Window> {
        self.choice(
            node,
            path,
            &[
                ("minute", Window::Minute),
                ("hour", Window::Hour),
                ("day", Window::Day),
                ("month", Window::Month),
            ],
        )
    }

    fn name_rule(&mut self, span: Span, path: &str, subject: &str, rule: &NameRule, name: &str) {
        if let Some(problem) = rule.check(name) {
            self.error(span, path, format!("{subject} {problem}"));
        }
    }
}

/// Decodes and validates a spec tree.
pub(crate) fn decode(root: &Node, base_dir: &std::path::Path) -> Result<Spec, Vec<SpecError>> {
    let mut d = Decoder {
        errors: Vec::new(),
        base_dir: base_dir.to_path_buf(),
    };
    let spec = decode_spec(&mut d, root);
    let mut errors = d.errors;
    errors.sort_by_key(|e| (e.span.offset, e.path.clone()));
    errors.dedup();
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => Err(errors),
    }
}

fn decode_spec(d: &mut Decoder, root: &Node) -> Option<Spec> {
    if root.kind == Kind::Null {
        d.error(
            root.span,
            "",
            "the spec is empty; it needs at least `version`, `name`, `models` and `applications`",
        );
        return None;
    }
    let top = d.mapping(root, "", TOP_KEYS)?;

    let version = d.required(&top, "version", "").and_then(|n| {
        let v = d.uint(n, "version")?;
        if v != 1 {
            d.error(
                n.span,
                "version",
                format!("unsupported spec version `{v}`; this tokenfence reads version `1`"),
            );
            return None;
        }
        Some(1u32)
    });

    let name = d.required(&top, "name", "").and_then(|n| {
        let name = d.string(n, "name")?;
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.ends_with('-')
            && !name.contains("--");
        if !valid {
            d.error_help(
                n.span,
                "name",
                format!("`{name}` is not a valid name"),
                Some("use letters, digits and single hyphens, starting with a letter, e.g. `acme-genai`".into()),
            );
            return None;
        }
        let names = Names::new(&name);
        for (rule, derived) in [
            (&names::FUNCTION, names.function("provider")),
            (&names::TABLE, names.table()),
            (&names::TOPIC, names.topic()),
            (&names::QUEUE, names.dead_letter_queue()),
            (&names::STACK, names.budget_stack(999)),
        ] {
            d.name_rule(n.span, "name", &format!("`{name}`"), rule, &derived);
        }
        Some((name, n.span))
    });

    let defaults = match top.get("defaults") {
        None => Some(Defaults::default()),
        Some(n) => decode_defaults(d, n),
    };
    let access = match top.get("access") {
        None => Some(Access {
            rest: true,
            queue: false,
        }),
        Some(n) => decode_access(d, n),
    };
    let engine = match top.get("engine") {
        None => Some(Engine::Lambda),
        Some(n) => decode_engine(d, n),
    };
    let alerts = match top.get("alerts") {
        None => Some(Alerts::default()),
        Some(n) => decode_alerts(d, n),
    };
    let price_book = top.get("price_book").and_then(|n| {
        let file = d.string(n, "price_book")?;
        let path = d.base_dir.join(&file);
        let read = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read price book `{}`: {e}", path.display()))
            .and_then(|text| {
                budget::price::CustomBook::parse(&text)
                    .map_err(|e| format!("price book `{}`: {e}", path.display()))
            });
        match read {
            Ok(book) => Some((file, book)),
            Err(message) => {
                d.error_help(
                    n.span,
                    "price_book",
                    message,
                    Some("a file in the built-in book's format (`crates/budget/data/prices.json`), its path relative to the spec".into()),
                );
                None
            }
        }
    });
    let (models, models_ok) = match d.required(&top, "models", "") {
        Some(n) => decode_models(d, n, price_book.as_ref().map(|(_, b)| b)),
        None => (IndexMap::new(), false),
    };

    let applications = match (d.required(&top, "applications", ""), defaults, access) {
        (Some(node), Some(defaults), Some(access)) => decode_applications(
            d,
            node,
            &models,
            defaults,
            access,
            engine,
            name.as_ref().map(|(n, _)| n.as_str()),
        ),
        (Some(node), ..) => {
            // Still report the applications' own errors when a section they depend on is broken,
            // assuming the most permissive settings so that nothing is blamed on them.
            let permissive = Access {
                rest: true,
                queue: true,
            };
            decode_applications(
                d,
                node,
                &models,
                defaults.unwrap_or_default(),
                access.unwrap_or(permissive),
                engine,
                None,
            );
            None
        }
        _ => None,
    };
    let models = models_ok.then_some(models);

    Some(Spec {
        version: version?,
        name: name?.0,
        models: models?,
        defaults: defaults?,
        access: access?,
        engine: engine?,
        alerts: alerts?,
        applications: applications?,
        price_book: price_book.map(|(file, book)| PriceBookRef {
            file,
            recorded: book.recorded().to_string(),
        }),
    })
}

fn decode_defaults(d: &mut Decoder, node: &Node) -> Option<Defaults> {
    let f = d.mapping(node, "defaults", DEFAULTS_KEYS)?;
    let mut out = Some(Defaults::default());
    if let Some(n) = f.get("max_tokens") {
        match d.positive(n, "defaults.max_tokens", MAX_MAX_TOKENS) {
            Some(v) => {
                if let Some(o) = out.as_mut() {
                    o.max_tokens = v as u32;
                }
            }
            None => out = None,
        }
    }
    if let Some(n) = f.get("on_ledger_error") {
        match d.choice(
            n,
            "defaults.on_ledger_error",
            &[
                ("deny", OnLedgerError::Deny),
                ("allow", OnLedgerError::Allow),
            ],
        ) {
            Some(v) => {
                if let Some(o) = out.as_mut() {
                    o.on_ledger_error = v;
                }
            }
            None => out = None,
        }
    }
    out
}

fn decode_access(d: &mut Decoder, node: &Node) -> Option<Access> {
    let items = d.list(node, "access")?;
    if items.is_empty() {
        d.error(
            node.span,
            "access",
            "must list at least one of `rest`, `queue`",
        );
        return None;
    }
    let mut access = Access {
        rest: false,
        queue: false,
    };
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = index("access", i);
        match d.choice(item, &path, &[("rest", true), ("queue", false)]) {
            Some(is_rest) => {
                let slot = if is_rest {
                    &mut access.rest
                } else {
                    &mut access.queue
                };
                if *slot {
                    d.error(item.span, &path, "listed twice");
                    ok = false;
                }
                *slot = true;
            }
            None => ok = false,
        }
    }
    ok.then_some(access)
}

fn decode_engine(d: &mut Decoder, node: &Node) -> Option<Engine> {
    #[derive(Clone, Copy)]
    enum Raw {
        Lambda,
        Express,
    }
    match d.choice(
        node,
        "engine",
        &[
            ("lambda", Raw::Lambda),
            ("step-functions-express", Raw::Express),
        ],
    )? {
        Raw::Lambda => Some(Engine::Lambda),
        Raw::Express => Some(Engine::StepFunctionsExpress),
    }
}

fn decode_alerts(d: &mut Decoder, node: &Node) -> Option<Alerts> {
    let f = d.mapping(node, "alerts", ALERTS_KEYS)?;
    let mut alerts = Alerts::default();
    let mut ok = true;
    if let Some(n) = f.get("emails") {
        let items = d.list(n, "alerts.emails")?;
        for (i, item) in items.iter().enumerate() {
            let path = index("alerts.emails", i);
            let Some(email) = d.string(item, &path) else {
                ok = false;
                continue;
            };
            let valid = email.split_once('@').is_some_and(|(user, domain)| {
                !user.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }) && !email.contains(char::is_whitespace);
            if !valid {
                d.error(
                    item.span,
                    &path,
                    format!("`{email}` is not an email address"),
                );
                ok = false;
            } else if alerts.emails.contains(&email) {
                d.error(item.span, &path, format!("`{email}` is listed twice"));
                ok = false;
            } else {
                alerts.emails.push(email);
            }
        }
    }
    ok.then_some(alerts)
}

fn valid_alias(alias: &str) -> bool {
    alias.len() <= 64
        && alias
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && alias
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 2048
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:/_-".contains(c))
}

/// Decodes the model aliases; the map holds every alias that decoded, even when others failed,
/// so that applications are not blamed for a model section's own errors.
fn decode_models(
    d: &mut Decoder,
    node: &Node,
    book: Option<&budget::price::CustomBook>,
) -> (IndexMap<String, ModelDef>, bool) {
    let Some(f) = d.mapping(node, "models", &[]) else {
        return (IndexMap::new(), false);
    };
    if f.entries.is_empty() {
        d.error(node.span, "models", "declare at least one model alias");
        return (IndexMap::new(), false);
    }
    let mut models = IndexMap::new();
    let mut ok = true;
    let mut logical: HashMap<String, &str> = HashMap::new();
    for (alias, key, value) in &f.entries {
        let path = join("models", alias);
        if !valid_alias(alias) {
            d.error_help(key.span, &path, format!("`{alias}` is not a valid model alias"), Some("use letters, digits, `-` and `_`, starting and ending with a letter or digit, at most 64 characters".into()));
            ok = false;
            continue;
        }
        if let Some(other) = logical.insert(names::logical_id_part(alias), alias) {
            d.error(key.span, &path, format!("model aliases `{other}` and `{alias}` differ only in separators or case, so they would share CloudFormation logical IDs"));
            ok = false;
        }
        let (id_node, price) = match &value.kind {
            Kind::Scalar { .. } => (*value, None),
            Kind::Map(_) => {
                let Some(m) = d.mapping(value, &path, MODEL_KEYS) else {
                    ok = false;
                    continue;
                };
                let Some(id_node) = d.required(&m, "id", &path) else {
                    ok = false;
                    continue;
                };
                (id_node, m.get("price"))
            }
            _ => {
                d.error(
                    value.span,
                    &path,
                    format!(
                        "expected a model ID or a mapping with `id`, found {}",
                        value.kind_name()
                    ),
                );
                ok = false;
                continue;
            }
        };
        let id_path = if matches!(value.kind, Kind::Map(_)) {
            join(&path, "id")
        } else {
            path.clone()
        };
        let Some(id) = d.string(id_node, &id_path) else {
            ok = false;
            continue;
        };
        if !valid_model_id(&id) {
            d.error(
                id_node.span,
                &id_path,
                format!("`{id}` is not a model ID, inference profile ID or ARN"),
            );
            ok = false;
            continue;
        }
        // Cache prices the spec leaves out are derived by the model's family, so the ID comes first.
        let (price, own_tiers) = match price {
            None => (None, TierPrices::new()),
            Some(p) => match decode_price(d, p, &join(&path, "price"), &id) {
                Some((price, tiers)) => (Some(price), tiers),
                None => {
                    ok = false;
                    continue;
                }
            },
        };
        // The spec's own price, else its price book's (both rendered as overrides), else the
        // built-in book's.
        let price = price.or_else(|| book.and_then(|b| b.lookup(&id)));
        let price_from_spec = price.is_some();
        let price = price.or_else(|| PriceBook::lookup(&id));
        // Tier by tier likewise: the spec's own tier prices win over its book's.
        let mut tiers = book.map(|b| b.lookup_tiers(&id)).unwrap_or_default();
        tiers.extend(own_tiers);
        models.insert(
            alias.to_string(),
            ModelDef {
                id,
                price,
                price_from_spec,
                tiers,
            },
        );
    }
    (models, ok)
}

/// A `models.<alias>.price`: the standard price and the prices in the tiers it lists.
fn decode_price(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    model: &str,
) -> Option<(Price, TierPrices)> {
    let f = d.mapping(node, path, PRICE_KEYS)?;
    let price = price_fields(d, node, &f, path, model);
    let tiers = match f.get("tiers") {
        None => Some(TierPrices::new()),
        Some(n) => decode_tiers(d, n, &join(path, "tiers"), model),
    };
    Some((price?, tiers?))
}

/// `price.tiers`: `{flex|priority|latency-optimized: {input, output, cache_...?}}`.
fn decode_tiers(d: &mut Decoder, node: &Node, path: &str, model: &str) -> Option<TierPrices> {
    let f = d.mapping(node, path, &[])?;
    let names: Vec<&str> = PriceTier::ALL.iter().map(|t| t.as_str()).collect();
    let mut tiers = TierPrices::new();
    let mut ok = true;
    for (name, key, value) in &f.entries {
        let tier_path = join(path, name);
        let Some(tier) = PriceTier::from_name(name) else {
            let help = did_you_mean(name, names.iter().copied())
                .or_else(|| Some(format!("expected one of {}", one_of(&names))));
            d.error_help(
                key.span,
                &tier_path,
                format!("`{name}` is not a tier priced per token"),
                help,
            );
            ok = false;
            continue;
        };
        let price = d
            .mapping(value, &tier_path, TIER_PRICE_KEYS)
            .and_then(|t| price_fields(d, value, &t, &tier_path, model));
        match price {
            Some(price) => {
                tiers.insert(tier, price);
            }
            None => ok = false,
        }
    }
    ok.then_some(tiers)
}

/// The amounts of a price mapping, cache prices it leaves out derived by the model's family.
fn price_fields(
    d: &mut Decoder,
    node: &Node,
    f: &Fields<'_>,
    path: &str,
    model: &str,
) -> Option<Price> {
    let mut text = |key: &str, required: bool| -> Result<Option<String>, ()> {
        let Some(n) = (if required {
            d.required(f, key, path)
        } else {
            f.get(key)
        }) else {
            return if required { Err(()) } else { Ok(None) };
        };
        let p = join(path, key);
        let v = d.usd(n, &p).ok_or(())?;
        Ok(Some(v.to_string()))
    };
    let input = text("input", true);
    let output = text("output", true);
    let cache_read = text("cache_read", false);
    let cache_write = text("cache_write", false);
    let cache_write_1h = text("cache_write_1h", false);
    let (Ok(Some(input)), Ok(Some(output)), Ok(cache_read), Ok(cache_write), Ok(cache_write_1h)) =
        (input, output, cache_read, cache_write, cache_write_1h)
    else {
        return None;
    };
    let price = Price::from_usd_per_million(
        model,
        PriceText {
            input: &input,
            output: &output,
            cache_read: cache_read.as_deref(),
            cache_write: cache_write.as_deref(),
            cache_write_1h: cache_write_1h.as_deref(),
        },
    )
    .expect("amounts were validated above");
    if price.input == 0 && price.output == 0 {
        d.error(
            node.span,
            path,
            "a price of zero for both input and output makes USD limits meaningless",
        );
        return None;
    }
    Some(price)
}

/// What application decoding needs from the rest of the spec.
struct Context<'a> {
    models: &'a IndexMap<String, ModelDef>,
    defaults: Defaults,
    access: Access,
    engine: Option<Engine>,
    name: Option<&'a str>,
}

fn decode_applications(
    d: &mut Decoder,
    node: &Node,
    models: &IndexMap<String, ModelDef>,
    defaults: Defaults,
    access: Access,
    engine: Option<Engine>,
    name: Option<&str>,
) -> Option<IndexMap<String, Application>> {
    let f = d.mapping(node, "applications", &[])?;
    if f.entries.is_empty() {
        d.error(
            node.span,
            "applications",
            "declare at least one application",
        );
        return None;
    }
    let ctx = Context {
        models,
        defaults,
        access,
        engine,
        name,
    };
    let mut apps = IndexMap::new();
    let mut ok = true;
    let mut logical: HashMap<String, &str> = HashMap::new();
    for (app, key, value) in &f.entries {
        let path = join("applications", app);
        if !names::is_application_name(app) {
            d.error_help(
                key.span,
                &path,
                format!("`{app}` is not a valid application name"),
                Some(format!("use {}", names::APPLICATION_NAME_RULE)),
            );
            ok = false;
            continue;
        }
        if let Some(other) = logical.insert(names::logical_id_part(app), app) {
            d.error(key.span, &path, format!("applications `{other}` and `{app}` differ only in separators or case, so they would share CloudFormation logical IDs"));
            ok = false;
        }
        match decode_application(d, &ctx, app, key, value, &path) {
            Some(a) => {
                apps.insert(app.to_string(), a);
            }
            None => ok = false,
        }
    }
    ok.then_some(apps)
}

fn decode_application(
    d: &mut Decoder,
    ctx: &Context,
    app: &str,
    key: &Node,
    node: &Node,
    path: &str,
) -> Option<Application> {
    let errors_before = d.errors.len();
    let f = d.mapping(node, path, APP_KEYS)?;

    let cost_center = f.get("cost_center").and_then(|n| {
        let p = join(path, "cost_center");
        let cc = d.string(n, &p)?;
        let valid = !cc.is_empty() && cc.len() <= 256 && cc.chars().all(|c| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c));
        if !valid {
            d.error(n.span, &p, format!("`{cc}` is not a valid cost allocation tag value (1 to 256 letters, digits, spaces and `_.:/=+-@`)"));
            return None;
        }
        Some(cc)
    });

    let models: Vec<(String, Span)> = match f.get("models") {
        None => ctx.models.keys().map(|a| (a.clone(), f.span)).collect(),
        Some(n) => {
            let p = join(path, "models");
            let mut out = Vec::new();
            if let Some(items) = d.list(n, &p) {
                if items.is_empty() {
                    d.error(n.span, &p, "list at least one model alias, or leave `models` out to allow every declared model");
                }
                for (i, item) in items.iter().enumerate() {
                    let ip = index(&p, i);
                    let Some(alias) = d.string(item, &ip) else {
                        continue;
                    };
                    if out.iter().any(|(a, _)| *a == alias) {
                        d.error(
                            item.span,
                            &ip,
                            format!("model alias `{alias}` is listed twice"),
                        );
                    } else if !ctx.models.contains_key(&alias) {
                        let help = did_you_mean(&alias, ctx.models.keys().map(String::as_str))
                            .or_else(|| Some("declare it under `models`".into()));
                        d.error_help(
                            item.span,
                            &ip,
                            format!("unknown model alias `{alias}`"),
                            help,
                        );
                    } else {
                        out.push((alias, item.span));
                    }
                }
            }
            out
        }
    };

    let limits = match d.required(&f, "limits", path) {
        Some(n) => decode_limits(d, ctx, n, &join(path, "limits")),
        None => Vec::new(),
    };

    let on_exceed = match f.get("on_exceed") {
        None => Some(OnExceed::Reject),
        Some(n) => decode_on_exceed(d, ctx, n, &join(path, "on_exceed"), &models),
    };

    let mode = match f.get("mode") {
        None => Some(Mode::Enforce),
        Some(n) => d.choice(
            n,
            &join(path, "mode"),
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        ),
    };

    let app_fallback = match &on_exceed {
        Some(OnExceed::Fallback { model }) => Some(model.as_str()),
        _ => None,
    };
    let mut user_usd: Option<(Span, String)> = None;
    let per_user = f.get("per_user").and_then(|n| {
        decode_user(
            d,
            ctx,
            n,
            &join(path, "per_user"),
            &models,
            app_fallback,
            &mut user_usd,
        )
    });
    if ctx.engine == Some(Engine::StepFunctionsExpress) {
        for key in ["per_user", "users"] {
            if let Some(n) = f.get(key) {
                d.error_help(
                    n.span,
                    &join(path, key),
                    "seats are enforced by the Lambda engine only; the Step Functions Express engine would hold only the application's limits",
                    Some("use `engine: lambda`, or leave seats out".into()),
                );
            }
        }
    }
    let mut users = IndexMap::new();
    if let Some(n) = f.get("users") {
        let p = join(path, "users");
        if let Some(uf) = d.mapping(n, &p, &[]) {
            if uf.entries.is_empty() {
                d.error(n.span, &p, "name at least one user, or leave `users` out");
            }
            for (name, key, value) in uf.entries.iter() {
                let up = join(&p, name);
                if let Err(why) = budget::config::check_user(name) {
                    d.error(key.span, &up, why);
                    continue;
                }
                if let Some(u) =
                    decode_user(d, ctx, value, &up, &models, app_fallback, &mut user_usd)
                {
                    users.insert(name.to_string(), u);
                }
            }
        }
    }
    let user_metrics = match f.get("user_metrics") {
        None => Some(false),
        Some(n) => d.bool(n, &join(path, "user_metrics")),
    };
    if user_metrics == Some(true) && per_user.is_none() && users.is_empty() {
        let n = f.get("user_metrics").expect("set");
        d.error_help(
            n.span,
            &join(path, "user_metrics"),
            "`user_metrics` publishes metrics per user, but the application declares no `per_user` or `users`",
            Some("declare `per_user` limits, or leave `user_metrics` out".into()),
        );
    }

    // USD limits need a price for every model the application can end up calling.
    if let Some((usd_span, usd_path)) = limits
        .iter()
        .find_map(|(_, spans)| spans.usd.clone())
        .or(user_usd)
    {
        let fallback = match &on_exceed {
            Some(OnExceed::Fallback { model }) => Some(model.clone()),
            _ => None,
        };
        for alias in models.iter().map(|(a, _)| a.clone()).chain(fallback) {
            if let Some(def) = ctx.models.get(&alias)
                && def.price.is_none()
            {
                let add = format!(
                    "add `price: {{ input: ..., output: ... }}` (USD per million tokens) to `models.{alias}`"
                );
                let help = match crate::suggest_model(&def.id) {
                    Some(close) => format!("did you mean `{close}`? Otherwise {add}"),
                    None => format!("{add} (`synth prices` lists the models the book knows)"),
                };
                d.error_help(
                    usd_span,
                    &usd_path,
                    format!("a USD limit needs a price for model `{alias}` (`{}`), which the built-in price book does not know", def.id),
                    Some(help),
                );
            }
        }
    }

    let limit_values: Vec<Limit> = limits.iter().map(|(l, _)| *l).collect();
    let alarms = match f.get("alarms") {
        None => Vec::new(),
        Some(n) => decode_alarms(d, n, &join(path, "alarms"), &limit_values, ctx.name, app),
    };

    let cost_budget = f
        .get("cost_budget")
        .and_then(|n| decode_cost_budget(d, n, &join(path, "cost_budget")));

    if let Some(prefix) = ctx.name {
        let names = Names::new(prefix);
        let subject = format!("application name `{app}`");
        d.name_rule(key.span, path, &subject, &names::BUDGET, &names.budget(app));
        d.name_rule(
            key.span,
            path,
            &subject,
            &LOGICAL_ID,
            &format!(
                "{}{}",
                names::logical_id_part(app),
                names::LONGEST_LOGICAL_ID_SUFFIX
            ),
        );
        if ctx.access.queue {
            d.name_rule(
                key.span,
                path,
                &subject,
                &names::QUEUE,
                &names.requests_queue(app),
            );
            d.name_rule(
                key.span,
                path,
                &subject,
                &names::QUEUE,
                &names.results_queue(app),
            );
        }
        // Rendering gives the fallback model a profile too.
        let fallback = match &on_exceed {
            Some(OnExceed::Fallback { model }) if !models.iter().any(|(a, _)| a == model) => {
                Some((
                    model.clone(),
                    f.get("on_exceed").map_or(key.span, |n| n.span),
                ))
            }
            _ => None,
        };
        for (alias, span) in models.iter().cloned().chain(fallback) {
            let Some(def) = ctx.models.get(&alias) else {
                continue;
            };
            let profile = names.profile(app, &alias, &def.id);
            if let Some(problem) = names::PROFILE.check(&profile) {
                let at = if span == f.span { key.span } else { span };
                d.error(
                    at,
                    path,
                    format!("application `{app}` with model `{alias}` {problem}"),
                );
            }
        }
    }

    if d.errors.len() > errors_before {
        return None;
    }
    Some(Application {
        cost_center,
        models: models.into_iter().map(|(a, _)| a).collect(),
        limits: limit_values,
        on_exceed: on_exceed?,
        mode: mode?,
        alarms,
        cost_budget,
        per_user,
        users,
        user_metrics: user_metrics?,
    })
}

/// Decodes one user's budget (`per_user` or an entry of `users`). `usd` gets the first USD
/// limit's place, for the application's price check.
fn decode_user(
    d: &mut Decoder,
    ctx: &Context,
    node: &Node,
    path: &str,
    models: &[(String, Span)],
    app_fallback: Option<&str>,
    usd: &mut Option<(Span, String)>,
) -> Option<UserLimits> {
    let f = d.mapping(node, path, USER_KEYS)?;
    let limits = match d.required(&f, "limits", path) {
        Some(n) => decode_limits(d, ctx, n, &join(path, "limits")),
        None => Vec::new(),
    };
    if usd.is_none() {
        *usd = limits.iter().find_map(|(_, spans)| spans.usd.clone());
    }
    let on_exceed = match f.get("on_exceed") {
        None => Some(OnExceed::Reject),
        Some(n) => {
            let p = join(path, "on_exceed");
            match decode_on_exceed(d, ctx, n, &p, models) {
                Some(OnExceed::Fallback { model })
                    if !models.iter().any(|(a, _)| *a == model)
                        && app_fallback != Some(model.as_str()) =>
                {
                    d.error_help(
                        n.span,
                        &join(&p, "model"),
                        format!("a user's fallback must be a model the application may call, and `{model}` is not in its `models`"),
                        Some("add it to the application's `models`, or make it the application's own fallback".into()),
                    );
                    None
                }
                other => other,
            }
        }
    };
    let mode = match f.get("mode") {
        None => Some(Mode::Enforce),
        Some(n) => d.choice(
            n,
            &join(path, "mode"),
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        ),
    };
    Some(UserLimits {
        limits: limits.into_iter().map(|(l, _)| l).collect(),
        on_exceed: on_exceed?,
        mode: mode?,
    })
}

/// Where each part of a decoded limit came from, for follow-up errors.
#[derive(Default)]
struct LimitSpans {
    tokens: Option<(Span, String)>,
    usd: Option<(Span, String)>,
}

fn decode_limits(
    d: &mut Decoder,
    ctx: &Context,
    node: &Node,
    path: &str,
) -> Vec<(Limit, LimitSpans)> {
    let Some(items) = d.list(node, path) else {
        return Vec::new();
    };
    if items.is_empty() {
        d.error(node.span, path, "list at least one limit");
        return Vec::new();
    }
    let mut out: Vec<(Limit, LimitSpans)> = Vec::new();
    let smallest_request = u64::from(ctx.defaults.max_tokens) + PER_REQUEST_OVERHEAD;
    for (i, item) in items.iter().enumerate() {
        let ip = index(path, i);
        let Some(f) = d.mapping(item, &ip, LIMIT_KEYS) else {
            continue;
        };
        let window = d
            .required(&f, "window", &ip)
            .and_then(|n| d.window(n, &join(&ip, "window")));
        let mut spans = LimitSpans::default();
        let tokens = f.get("tokens").and_then(|n| {
            let p = join(&ip, "tokens");
            let v = d.positive(n, &p, MAX_TOKENS_LIMIT)?;
            if v < smallest_request {
                d.error_help(
                    n.span,
                    &p,
                    format!("a limit of `{v}` tokens can never admit a request: one reserves at least `{smallest_request}` (`defaults.max_tokens` plus request overhead)"),
                    Some("raise the limit or lower `defaults.max_tokens`".into()),
                );
                return None;
            }
            spans.tokens = Some((n.span, p));
            Some(v)
        });
        let usd = f.get("usd").and_then(|n| {
            let p = join(&ip, "usd");
            let v = d.positive_usd(n, &p)?;
            spans.usd = Some((n.span, p));
            Some(v)
        });
        if f.get("tokens").is_none() && f.get("usd").is_none() {
            d.error(item.span, &ip, "a limit needs `tokens`, `usd` or both");
            continue;
        }
        let Some(window) = window else { continue };
        if let Some((_, _)) = out.iter().find(|(l, _)| l.window == window) {
            let at = f.get("window").map_or(item.span, |n| n.span);
            d.error(at, &join(&ip, "window"), format!("a `{window}` limit is already declared; combine `tokens` and `usd` in one entry"));
            continue;
        }
        out.push((
            Limit {
                window,
                tokens,
                usd,
            },
            spans,
        ));
    }
    // A shorter window with a larger limit than a longer one can never bind: almost surely a typo.
    for (short, short_spans) in &out {
        for (long, _) in &out {
            if short.window >= long.window {
                continue;
            }
            if let (Some(s), Some(l), Some((span, p))) =
                (short.tokens, long.tokens, &short_spans.tokens)
                && s > l
            {
                d.error(*span, p, format!("the `{}` limit of `{s}` tokens is larger than the `{}` limit of `{l}`, so it can never bind", short.window, long.window));
            }
            if let (Some(s), Some(l), Some((span, p))) = (short.usd, long.usd, &short_spans.usd)
                && s > l
            {
                d.error(*span, p, format!("the `{}` limit of `{s}` USD is larger than the `{}` limit of `{l}` USD, so it can never bind", short.window, long.window));
            }
        }
    }
    out.sort_by_key(|(l, _)| l.window);
    out
}

fn decode_on_exceed(
    d: &mut Decoder,
    ctx: &Context,
    node: &Node,
    path: &str,
    models: &[(String, Span)],
) -> Option<OnExceed> {
    #[derive(Clone, Copy, PartialEq)]
    enum Action {
        Reject,
        Fallback,
        Queue,
    }
    let actions = [
        ("reject", Action::Reject),
        ("fallback", Action::Fallback),
        ("queue", Action::Queue),
    ];
    let (action_node, action_path, fields) = match &node.kind {
        Kind::Scalar { .. } => (node, path.to_string(), None),
        _ => {
            let f = d.mapping(node, path, ON_EXCEED_KEYS)?;
            let n = d.required(&f, "action", path)?;
            (n, join(path, "action"), Some(f))
        }
    };
    let action = d.choice(action_node, &action_path, &actions)?;
    let model_node = fields.as_ref().and_then(|f| f.get("model"));
    match action {
        Action::Reject => {
            if let Some(n) = model_node {
                d.error(
                    n.span,
                    &join(path, "model"),
                    "`model` only applies to `action: fallback`",
                );
                return None;
            }
            Some(OnExceed::Reject)
        }
        Action::Queue => {
            if let Some(n) = model_node {
                d.error(
                    n.span,
                    &join(path, "model"),
                    "`model` only applies to `action: fallback`",
                );
                return None;
            }
            if !ctx.access.queue {
                d.error_help(
                    action_node.span,
                    &action_path,
                    "`queue` needs the `queue` front",
                    Some("add `queue` to the top-level `access` list".into()),
                );
                return None;
            }
            Some(OnExceed::Queue)
        }
        Action::Fallback => {
            let Some(n) = model_node else {
                d.error(fields.as_ref().map_or(node.span, |f| f.span), path, "`action: fallback` needs `model`, the alias of the cheaper model to call instead");
                return None;
            };
            let mp = join(path, "model");
            let alias = d.string(n, &mp)?;
            let Some(def) = ctx.models.get(&alias) else {
                let help = did_you_mean(&alias, ctx.models.keys().map(String::as_str))
                    .or_else(|| Some("declare it under `models`".into()));
                d.error_help(
                    n.span,
                    &mp,
                    format!("fallback model `{alias}` is not declared"),
                    help,
                );
                return None;
            };
            if let Some(fallback_price) = def.price {
                let mut ok = true;
                for (other, _) in models {
                    if *other == alias {
                        continue;
                    }
                    if let Some(p) = ctx.models.get(other).and_then(|m| m.price)
                        && fallback_price.is_above(&p)
                    {
                        d.error(
                            n.span,
                            &mp,
                            format!(
                                "fallback model `{alias}` ({}/{} USD per million input/output tokens) is priced above `{other}` ({}/{}), which it replaces",
                                fallback_price.input_usd(),
                                fallback_price.output_usd(),
                                p.input_usd(),
                                p.output_usd()
                            ),
                        );
                        ok = false;
                    }
                }
                if !ok {
                    return None;
                }
            }
            Some(OnExceed::Fallback { model: alias })
        }
    }
}

fn decode_alarms(
    d: &mut Decoder,
    node: &Node,
    path: &str,
    limits: &[Limit],
    prefix: Option<&str>,
    app: &str,
) -> Vec<AlarmSpec> {
    let Some(items) = d.list(node, path) else {
        return Vec::new();
    };
    let mut out: Vec<AlarmSpec> = Vec::new();
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let ip = index(path, i);
        let Some(f) = d.mapping(item, &ip, ALARM_KEYS) else {
            continue;
        };
        let window = f
            .get("window")
            .and_then(|n| d.window(n, &join(&ip, "window")).map(|w| (w, n.span)));
        let metric = f.get("metric").and_then(|n| {
            d.choice(
                n,
                &join(&ip, "metric"),
                &[("tokens", Metric::Tokens), ("usd", Metric::Usd)],
            )
            .map(|m| (m, n.span))
        });
        let percent = f
            .get("percent")
            .and_then(|n| d.positive(n, &join(&ip, "percent"), 100).map(|p| p as u32));
        let forecast = f
            .get("forecast")
            .and_then(|n| d.bool(n, &join(&ip, "forecast")));
        let anomaly = f
            .get("anomaly")
            .and_then(|n| d.bool(n, &join(&ip, "anomaly")));
        let failed = |key: &str, decoded: bool| f.get(key).is_some() && !decoded;
        if failed("window", window.is_some())
            || failed("metric", metric.is_some())
            || failed("percent", percent.is_some())
            || failed("forecast", forecast.is_some())
            || failed("anomaly", anomaly.is_some())
        {
            continue;
        }
        let kinds = [
            percent.is_some(),
            forecast == Some(true),
            anomaly == Some(true),
        ];
        let kind = match kinds {
            [true, false, false] => AlarmKind::Threshold {
                percent: percent.unwrap_or(80),
            },
            [false, true, false] => AlarmKind::Forecast,
            [false, false, true] => AlarmKind::Anomaly,
            [false, false, false] => {
                d.error(
                    item.span,
                    &ip,
                    "an alarm needs one of `percent`, `forecast: true` or `anomaly: true`",
                );
                continue;
            }
            _ => {
                d.error(item.span, &ip, "an alarm is one of `percent`, `forecast: true` or `anomaly: true`, not several");
                continue;
            }
        };
        let window = match (window, kind) {
            (Some(w), _) => w,
            (None, AlarmKind::Anomaly) => (Window::Hour, item.span),
            (None, _) => {
                d.error(
                    item.span,
                    &ip,
                    format!("a `{}` alarm needs `window`", kind.as_str()),
                );
                continue;
            }
        };
        let limit = limits.iter().find(|l| l.window == window.0);
        let metric = match (metric, limit) {
            (Some(m), _) => m.0,
            (None, Some(l)) if l.usd.is_some() => Metric::Usd,
            (None, Some(_)) => Metric::Tokens,
            (None, None) if limits.iter().any(|l| l.usd.is_some()) => Metric::Usd,
            (None, None) => Metric::Tokens,
        };
        if !matches!(kind, AlarmKind::Anomaly) {
            let has = limit.is_some_and(|l| match metric {
                Metric::Tokens => l.tokens.is_some(),
                Metric::Usd => l.usd.is_some(),
            });
            if !has {
                d.error_help(
                    window.1,
                    &join(&ip, "window"),
                    format!("a `{}` alarm on `{}` needs a `{}` limit on the `{}` window", kind.as_str(), metric.as_str(), metric.as_str(), window.0),
                    Some("alarms are set relative to the window's limit; add the limit or change the window".into()),
                );
                continue;
            }
        }
        let alarm = AlarmSpec {
            window: window.0,
            metric,
            kind,
        };
        if !seen.insert(names::alarm_logical_id_part(&alarm)) {
            d.error(item.span, &ip, "this alarm is declared twice");
            continue;
        }
        if let Some(prefix) = prefix {
            let name = Names::new(prefix).alarm(app, &alarm);
            d.name_rule(item.span, &ip, "this alarm", &names::ALARM, &name);
        }
        out.push(alarm);
    }
    out
}

fn decode_cost_budget(d: &mut Decoder, node: &Node, path: &str) -> Option<CostBudget> {
    let f = d.mapping(node, path, COST_BUDGET_KEYS)?;
    let monthly = d
        .required(&f, "monthly_usd", path)
        .and_then(|n| d.positive_usd(n, &join(path, "monthly_usd")));
    let forecast_percent = match f.get("forecast_percent") {
        None => Some(100),
        Some(n) => d
            .positive(n, &join(path, "forecast_percent"), 1_000)
            .map(|v| v as u32),
    };
    let actual_percents = match f.get("actual_percents") {
        None => Some(vec![80, 100]),
        Some(n) => {
            let p = join(path, "actual_percents");
            let items = d.list(n, &p)?;
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match d.positive(item, &index(&p, i), 1_000) {
                    Some(v) if out.contains(&(v as u32)) => {
                        d.error(item.span, &index(&p, i), format!("`{v}` is listed twice"));
                        ok = false;
                    }
                    Some(v) => out.push(v as u32),
                    None => ok = false,
                }
            }
            // AWS Budgets allows 5 notifications per budget; one is the forecast.
            if out.len() > 4 {
                d.error(n.span, &p, format!("AWS Budgets allows 5 notifications per budget: at most 4 actual percents besides the forecast, found {}", out.len()));
                ok = false;
            }
            ok.then_some(out)
        }
    };
    Some(CostBudget {
        monthly_usd: monthly?,
        forecast_percent: forecast_percent?,
        actual_percents: actual_percents?,
    })
}
