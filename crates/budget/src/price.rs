//! Model prices and the built-in price book.

use serde::{Deserialize, Serialize};

use crate::money::{format_decimal_micros, parse_decimal_micros};
use crate::{BudgetError, MicroUsd, Usage};

/// Prices of one model in micro-USD per million tokens, for the four kinds of token Bedrock bills.
///
/// Being per *million* tokens in micro-USD, every published price (e.g. `0.035` USD) is an exact
/// integer here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Price {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Prompt-cache reads.
    pub cache_read: u64,
    /// Prompt-cache writes with the default five-minute TTL.
    pub cache_write: u64,
    /// Prompt-cache writes with a one-hour TTL, for models that offer it (Claude: 2 × input);
    /// `None` where the book has no such price, and a request asking for one cannot be priced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<u64>,
    /// Whether cache writes whose TTL Bedrock's usage does not report are priced as one-hour
    /// writes: set by [`Price::with_one_hour_writes`] for a request that asks for one-hour cache
    /// points, never in a book or a configuration.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_hour_writes: bool,
}

impl Price {
    /// A price of `model` from USD-per-million-token decimals, deriving absent cache prices by the
    /// model's family ([`CacheRule::for_model`]), rounded up so a derived price never undercharges.
    pub fn from_usd_per_million(model: &str, text: PriceText<'_>) -> Result<Price, BudgetError> {
        let amount = |field: &'static str, value: &str| {
            parse_decimal_micros(value).map_err(|reason| BudgetError::InvalidPrice {
                field,
                reason: Box::new(reason),
            })
        };
        let optional = |field, value: Option<&str>| value.map(|v| amount(field, v)).transpose();
        let input = amount("input", text.input)?;
        let output = amount("output", text.output)?;
        let rule = CacheRule::for_model(model);
        let cache_read = optional("cache_read", text.cache_read)?.unwrap_or(rule.read.of(input));
        let cache_write =
            optional("cache_write", text.cache_write)?.unwrap_or(rule.write.of(input));
        // A one-hour write is never priced below a five-minute one, whoever wrote the price.
        let cache_write_1h = optional("cache_write_1h", text.cache_write_1h)?
            .or(rule.write_1h.map(|r| r.of(input)))
            .map(|p| p.max(cache_write));
        Ok(Price {
            input,
            output,
            cache_read,
            cache_write,
            cache_write_1h,
            one_hour_writes: false,
        })
    }

    /// The price of a request that writes one-hour cache points: the writes Bedrock's usage
    /// reports by TTL are priced at their TTL's price, and those it does not (InvokeModel's
    /// headers, families without a breakdown) at the one-hour price, the dearer. `None` when the
    /// model has no one-hour price.
    pub fn with_one_hour_writes(self) -> Option<Price> {
        self.cache_write_1h?;
        Some(Price {
            one_hour_writes: true,
            ..self
        })
    }

    /// The dearest price of any one token this price bills: output, input, cache reads or cache
    /// writes of either TTL. What a token limit costs at most.
    pub fn dearest(&self) -> u64 {
        self.output
            .max(self.input)
            .max(self.cache_read)
            .max(self.one_hour_write())
    }

    /// The one-hour write price where there is one, never below the five-minute one.
    fn one_hour_write(&self) -> u64 {
        self.cache_write_1h
            .unwrap_or(self.cache_write)
            .max(self.cache_write)
    }

    /// The price of a write whose TTL the usage does not report: the TTL the request asked for.
    fn asked_write(&self) -> u64 {
        if self.one_hour_writes {
            self.one_hour_write()
        } else {
            self.cache_write
        }
    }

    /// The exact cost of `usage`, rounded up to the next micro-dollar. Cache writes reported as
    /// one-hour writes are priced at the one-hour price, those reported as five-minute writes at
    /// the five-minute price, and the rest at the price of the TTL the request asked for; where
    /// the reports add up to more than the writes, the dearer kind is counted first.
    pub fn cost(&self, usage: &Usage) -> MicroUsd {
        let writes = usage.cache_write_tokens;
        let one_hour = usage.cache_write_1h_tokens.min(writes);
        let five_minutes = usage.cache_write_5m_tokens.min(writes - one_hour);
        let unreported = writes - one_hour - five_minutes;
        let numerator = u128::from(usage.input_tokens) * u128::from(self.input)
            + u128::from(usage.output_tokens) * u128::from(self.output)
            + u128::from(usage.cache_read_tokens) * u128::from(self.cache_read)
            + u128::from(one_hour) * u128::from(self.one_hour_write())
            + u128::from(five_minutes) * u128::from(self.cache_write)
            + u128::from(unreported) * u128::from(self.asked_write());
        let micros = numerator.div_ceil(1_000_000);
        MicroUsd(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The most a request can cost when its input is at most `input_tokens` and its output at
    /// most `max_output_tokens`: every input token is priced at the dearest input kind, because
    /// how much of the prompt is read from or written to the cache is only known afterwards.
    pub fn worst_case(&self, input_tokens: u64, max_output_tokens: u64) -> MicroUsd {
        let dearest_input = self.input.max(self.cache_read).max(self.asked_write());
        let numerator = u128::from(input_tokens) * u128::from(dearest_input)
            + u128::from(max_output_tokens) * u128::from(self.output);
        MicroUsd(u64::try_from(numerator.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }

    /// The dearer of input and output price; used to order models by cost.
    pub fn is_above(&self, other: &Price) -> bool {
        self.input > other.input || self.output > other.output
    }

    /// The input price as a USD decimal per million tokens, e.g. `0.8`.
    pub fn input_usd(&self) -> String {
        format_decimal_micros(self.input)
    }

    /// The output price as a USD decimal per million tokens.
    pub fn output_usd(&self) -> String {
        format_decimal_micros(self.output)
    }

    /// The cache-read price as a USD decimal per million tokens.
    pub fn cache_read_usd(&self) -> String {
        format_decimal_micros(self.cache_read)
    }

    /// The cache-write price as a USD decimal per million tokens.
    pub fn cache_write_usd(&self) -> String {
        format_decimal_micros(self.cache_write)
    }

    /// The one-hour cache-write price as a USD decimal per million tokens, if the model has one.
    pub fn cache_write_1h_usd(&self) -> Option<String> {
        self.cache_write_1h.map(format_decimal_micros)
    }
}

/// A price as a book, a spec or a template writes it: USD-per-million-token decimals, the cache
/// prices optional (derived by the model's family when absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceText<'a> {
    /// Input tokens, e.g. `3.00`.
    pub input: &'a str,
    /// Output tokens.
    pub output: &'a str,
    /// Prompt-cache reads.
    pub cache_read: Option<&'a str>,
    /// Prompt-cache writes with the default five-minute TTL.
    pub cache_write: Option<&'a str>,
    /// Prompt-cache writes with a one-hour TTL; absent, Claude's are 2 × input and other
    /// families have none.
    pub cache_write_1h: Option<&'a str>,
}

/// A way of calling a model that Bedrock prices differently per token from the standard
/// on-demand tier: a service tier (`serviceTier.type` in Converse, `X-Amzn-Bedrock-Service-Tier`
/// in InvokeModel) or latency-optimized inference (`performanceConfig.latency: optimized`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriceTier {
    /// The flex service tier (`flex`).
    Flex,
    /// The priority service tier (`priority`).
    Priority,
    /// Latency-optimized inference (`latency-optimized`).
    LatencyOptimized,
}

impl PriceTier {
    /// Every tier, in order.
    pub const ALL: [PriceTier; 3] = [
        PriceTier::Flex,
        PriceTier::Priority,
        PriceTier::LatencyOptimized,
    ];

    /// Its name in a price book and in `Custom::TokenBudget`'s `Tiers`.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceTier::Flex => "flex",
            PriceTier::Priority => "priority",
            PriceTier::LatencyOptimized => "latency-optimized",
        }
    }

    /// The tier a name in a price book or template names.
    pub fn from_name(name: &str) -> Option<PriceTier> {
        PriceTier::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The tier a request's service tier names (`flex`, `priority`); `None` for the standard
    /// tier (`default`) and for tiers not priced per token (`reserved`, unknown names).
    pub fn from_service_tier(value: &str) -> Option<PriceTier> {
        match value {
            "flex" => Some(PriceTier::Flex),
            "priority" => Some(PriceTier::Priority),
            _ => None,
        }
    }
}

impl std::fmt::Display for PriceTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's prices in the tiers a book lists for it (none by default), in tier order.
pub type TierPrices = std::collections::BTreeMap<PriceTier, Price>;

/// A price as a fraction of the input price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// Numerator.
    pub num: u64,
    /// Denominator.
    pub den: u64,
}

impl Ratio {
    /// `input × num / den`, rounded up.
    pub fn of(self, input: u64) -> u64 {
        input.saturating_mul(self.num).div_ceil(self.den.max(1))
    }
}

/// How a model family prices prompt-cache tokens relative to its input tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRule {
    /// Cache reads.
    pub read: Ratio,
    /// Cache writes (5-minute TTL).
    pub write: Ratio,
    /// Cache writes with a one-hour TTL, where the family offers them.
    pub write_1h: Option<Ratio>,
}

impl CacheRule {
    /// The family's rule, from the model, profile ID or ARN:
    /// - Anthropic Claude: writes 1.25 × input (one-hour writes 2 × input), reads 0.1 × input
    ///   (Anthropic's and Bedrock's pricing pages);
    /// - Amazon Nova: reads 0.25 × input ("75% less than on-demand input"), writes at the input
    ///   price (Bedrock charges Nova no cache-write premium);
    /// - any other family: both at the input price. Bedrock reports no cache tokens for models
    ///   without prompt caching, and for a family whose rule is unknown the input price never
    ///   undercharges a read; a spec can set both prices.
    pub fn for_model(model: &str) -> CacheRule {
        let id = model.rsplit_once('/').map_or(model, |(_, id)| id);
        let r = |num, den| Ratio { num, den };
        if id.contains("anthropic.") || id.contains("claude") {
            CacheRule {
                read: r(1, 10),
                write: r(5, 4),
                write_1h: Some(r(2, 1)),
            }
        } else if id.contains("amazon.nova") {
            CacheRule {
                read: r(1, 4),
                write: r(1, 1),
                write_1h: None,
            }
        } else {
            CacheRule {
                read: r(1, 1),
                write: r(1, 1),
                write_1h: None,
            }
        }
    }
}

/// The built-in price book as data (`crates/budget/data/prices.json`): dated, with its sources,
/// so updating a price is an edit of data, not of code.
const BOOK_JSON: &str = include_str!("../data/prices.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    recorded: String,
    region: String,
    tier: String,
    unit: String,
    note: String,
    sources: std::collections::BTreeMap<String, String>,
    models: Vec<EntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    model: String,
    input: String,
    output: String,
    #[serde(default)]
    cache_read: Option<String>,
    #[serde(default)]
    cache_write: Option<String>,
    #[serde(default)]
    cache_write_1h: Option<String>,
    #[serde(default)]
    regional_premium_percent: u64,
    /// Prices in other tiers, by name (`flex`, `priority`, `latency-optimized`).
    #[serde(default)]
    tiers: std::collections::BTreeMap<String, TierFile>,
    source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    input: String,
    output: String,
    #[serde(default)]
    cache_read: Option<String>,
    #[serde(default)]
    cache_write: Option<String>,
    #[serde(default)]
    cache_write_1h: Option<String>,
}

impl EntryFile {
    fn text(&self) -> PriceText<'_> {
        PriceText {
            input: &self.input,
            output: &self.output,
            cache_read: self.cache_read.as_deref(),
            cache_write: self.cache_write.as_deref(),
            cache_write_1h: self.cache_write_1h.as_deref(),
        }
    }
}

impl TierFile {
    fn text(&self) -> PriceText<'_> {
        PriceText {
            input: &self.input,
            output: &self.output,
            cache_read: self.cache_read.as_deref(),
            cache_write: self.cache_write.as_deref(),
            cache_write_1h: self.cache_write_1h.as_deref(),
        }
    }
}

/// One model of the built-in book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookEntry {
    /// The base model ID (`anthropic.claude-haiku-4-5-20251001-v1:0`).
    pub model: String,
    /// Its price in its global or in-region form; cache prices derived by the family when the
    /// book lists none.
    pub price: Price,
    /// How much more its geographic cross-region profiles (`us.`, `eu.`, ...) cost, in percent.
    pub regional_premium_percent: u64,
    /// Its prices in other tiers (flex, priority, latency-optimized), where the book lists them;
    /// the regional premium applies to them too.
    pub tiers: TierPrices,
    /// The key of the source it was read from, in [`PriceBook::sources`].
    pub source: String,
}

/// The parsed book: the file's header as read (its `models` taken) and the priced entries.
#[derive(Debug)]
struct Book {
    file: BookFile,
    entries: Vec<BookEntry>,
}

fn parse_book(text: &str) -> Result<Book, String> {
    let mut file: BookFile =
        serde_json::from_str(text).map_err(|e| format!("the price book is not valid: {e}"))?;
    let models = std::mem::take(&mut file.models);
    let mut entries = Vec::with_capacity(models.len());
    for m in models {
        if !file.sources.contains_key(&m.source) {
            return Err(format!(
                "price book: `{}` names the unknown source `{}`",
                m.model, m.source
            ));
        }
        if entries.iter().any(|e: &BookEntry| e.model == m.model) {
            return Err(format!("price book: `{}` is listed twice", m.model));
        }
        let price = Price::from_usd_per_million(&m.model, m.text())
            .map_err(|e| format!("price book: `{}`: {e}", m.model))?;
        let mut tiers = TierPrices::default();
        for (name, t) in &m.tiers {
            let tier = PriceTier::from_name(name).ok_or_else(|| {
                format!(
                    "price book: `{}` lists the unknown tier `{name}` (tiers: `flex`, `priority`, `latency-optimized`)",
                    m.model
                )
            })?;
            let price = Price::from_usd_per_million(&m.model, t.text())
                .map_err(|e| format!("price book: `{}` tier `{name}`: {e}", m.model))?;
            tiers.insert(tier, price);
        }
        entries.push(BookEntry {
            model: m.model,
            price,
            regional_premium_percent: m.regional_premium_percent,
            tiers,
            source: m.source,
        });
    }
    Ok(Book { file, entries })
}

fn book() -> &'static Book {
    &PriceBook::builtin().0
}

/// Prefixes of cross-region (system) inference profile IDs; `global.` has no regional premium.
const REGIONAL_PREFIXES: &[&str] = &["us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov."];

/// The base model ID of a model ID, inference profile ID or ARN, and whether it names a
/// geographic (regional) cross-region profile.
pub fn base_model(model: &str) -> (&str, bool) {
    let id = model.rsplit_once('/').map_or(model, |(_, id)| id);
    match REGIONAL_PREFIXES.iter().find_map(|p| id.strip_prefix(p)) {
        Some(base) => (base, true),
        None => (id.strip_prefix("global.").unwrap_or(id), false),
    }
}

/// The built-in price book: looks up a price by model ID, inference profile ID or ARN.
#[derive(Debug, Default, Clone, Copy)]
pub struct PriceBook;

impl PriceBook {
    /// The built-in book, as a book of one's own would be read.
    pub fn builtin() -> &'static CustomBook {
        static BOOK: std::sync::OnceLock<CustomBook> = std::sync::OnceLock::new();
        // The file is part of the build and parsed by a unit test; a broken one never ships.
        BOOK.get_or_init(|| CustomBook::parse(BOOK_JSON).expect("the built-in price book parses"))
    }

    /// The model IDs the built-in book prices.
    pub fn known_models() -> impl Iterator<Item = &'static str> {
        book().entries.iter().map(|e| e.model.as_str())
    }

    /// Every model of the book.
    pub fn entries() -> &'static [BookEntry] {
        Self::builtin().entries()
    }

    /// When the book's prices were read (`YYYY-MM-DD`).
    pub fn recorded() -> &'static str {
        Self::builtin().recorded()
    }

    /// The region, tier and unit the prices are for, e.g. `us-east-1`, `standard (on-demand)`,
    /// `USD per million tokens`.
    pub fn scope() -> (&'static str, &'static str, &'static str) {
        Self::builtin().scope()
    }

    /// How the book derives what it does not list.
    pub fn note() -> &'static str {
        Self::builtin().note()
    }

    /// The sources, by key.
    pub fn sources() -> &'static std::collections::BTreeMap<String, String> {
        Self::builtin().sources()
    }

    /// The built-in price of a model, inference profile or ARN, if known.
    ///
    /// `us.anthropic.claude-haiku-4-5-...` resolves to the base model with its regional premium;
    /// `arn:aws:bedrock:...:foundation-model/ID` and `.../inference-profile/ID` resolve to `ID`.
    pub fn lookup(model: &str) -> Option<Price> {
        lookup_in(book(), model, None)
    }

    /// The built-in price of a model in `tier`, if the book lists one (resolved as
    /// [`PriceBook::lookup`], regional premium included).
    pub fn lookup_tier(model: &str, tier: PriceTier) -> Option<Price> {
        lookup_in(book(), model, Some(tier))
    }
}

/// A price book of one's own, in the built-in book's format (`crates/budget/data/prices.json`:
/// dated, with sources, a source per model), for a spec's `price_book`: negotiated rates, another
/// region's prices, models the built-in book does not know.
#[derive(Debug)]
pub struct CustomBook(Book);

impl CustomBook {
    /// Reads a book; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<CustomBook, String> {
        parse_book(text).map(CustomBook)
    }

    /// When the book's prices were read, as it says.
    pub fn recorded(&self) -> &str {
        &self.0.file.recorded
    }

    /// Every model of the book.
    pub fn entries(&self) -> &[BookEntry] {
        &self.0.entries
    }

    /// The region, tier and unit the prices are for, as the book says.
    pub fn scope(&self) -> (&str, &str, &str) {
        let f = &self.0.file;
        (&f.region, &f.tier, &f.unit)
    }

    /// The book's note.
    pub fn note(&self) -> &str {
        &self.0.file.note
    }

    /// The sources, by key.
    pub fn sources(&self) -> &std::collections::BTreeMap<String, String> {
        &self.0.file.sources
    }

    /// Its price of a model, inference profile or ARN, as [`PriceBook::lookup`] reads the
    /// built-in book.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        lookup_in(&self.0, model, None)
    }

    /// Its prices of a model in every tier it lists, resolved as [`CustomBook::lookup`].
    pub fn lookup_tiers(&self, model: &str) -> TierPrices {
        entry_in(&self.0, model).map_or_else(TierPrices::new, |(entry, regional)| {
            entry
                .tiers
                .iter()
                .map(|(tier, price)| (*tier, with_premium(entry, regional, *price)))
                .collect()
        })
    }
}

/// The entry of `model` (an ID, inference profile ID or ARN) in `book`, and whether it names a
/// geographic profile.
fn entry_in<'a>(book: &'a Book, model: &str) -> Option<(&'a BookEntry, bool)> {
    let (base, regional) = base_model(model);
    let entry = book.entries.iter().find(|e| e.model == base)?;
    Some((entry, regional))
}

fn lookup_in(book: &Book, model: &str, tier: Option<PriceTier>) -> Option<Price> {
    let (entry, regional) = entry_in(book, model)?;
    let price = match tier {
        None => entry.price,
        Some(t) => *entry.tiers.get(&t)?,
    };
    Some(with_premium(entry, regional, price))
}

/// `price` with `entry`'s regional premium when called through a geographic profile.
fn with_premium(entry: &BookEntry, regional: bool, price: Price) -> Price {
    if !regional || entry.regional_premium_percent == 0 {
        return price;
    }
    let factor = 100 + entry.regional_premium_percent;
    let premium = |p: u64| p.saturating_mul(factor).div_ceil(100);
    Price {
        input: premium(price.input),
        output: premium(price.output),
        cache_read: premium(price.cache_read),
        cache_write: premium(price.cache_write),
        cache_write_1h: price.cache_write_1h.map(premium),
        one_hour_writes: price.one_hour_writes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_prices_base_models_profiles_and_arns() {
        let haiku = PriceBook::lookup("anthropic.claude-3-5-haiku-20241022-v1:0").unwrap();
        assert_eq!((haiku.input, haiku.output), (800_000, 4_000_000));
        assert_eq!((haiku.cache_write, haiku.cache_read), (1_000_000, 80_000));
        let arn = "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0";
        assert_eq!(PriceBook::lookup(arn).unwrap().input, 35_000);
        let sonnet = PriceBook::lookup("us.anthropic.claude-sonnet-4-20250514-v1:0").unwrap();
        assert_eq!(
            (sonnet.input, sonnet.cache_write, sonnet.cache_read),
            (3_000_000, 3_750_000, 300_000)
        );
        let regional = PriceBook::lookup("eu.anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
        let global = PriceBook::lookup("global.anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
        assert_eq!((regional.input, global.input), (1_100_000, 1_000_000));
        assert!(PriceBook::lookup("acme.unknown-v1").is_none());
    }

    #[test]
    fn the_book_is_dated_sourced_data() {
        assert_eq!(PriceBook::recorded(), "2026-11-27");
        assert_eq!(PriceBook::scope().0, "us-east-1");
        assert!(PriceBook::entries().len() >= 9);
        for entry in PriceBook::entries() {
            assert!(
                PriceBook::sources().iter().any(|(k, _)| *k == entry.source),
                "{} has a source",
                entry.model
            );
        }
        let bad = |text: &str| parse_book(text).unwrap_err();
        let minimal = r#"{"recorded":"d","region":"r","tier":"t","unit":"u","note":"n","sources":{"s":"x"},"models":[M]}"#;
        let with = |m: &str| minimal.replace('M', m);
        assert!(
            bad(&with(
                r#"{"model":"a","input":"1","output":"1","source":"nope"}"#
            ))
            .contains("unknown source `nope`")
        );
        assert!(
            bad(&with(
                r#"{"model":"a","input":"x","output":"1","source":"s"}"#
            ))
            .contains("`a`")
        );
        assert!(
            bad(&with(
                r#"{"model":"a","input":"1","output":"1","source":"s"},{"model":"a","input":"1","output":"1","source":"s"}"#
            ))
            .contains("twice")
        );
        assert!(
            bad(&with(
                r#"{"model":"a","input":"1","output":"1","source":"s","extra":1}"#
            ))
            .contains("unknown field")
        );
    }

    #[test]
    fn books_price_service_tiers_and_latency_optimized_inference() {
        let book = CustomBook::parse(
            r#"{"recorded":"2026-12-04","region":"us-east-1","tier":"standard","unit":"USD per million tokens","note":"n","sources":{"s":"negotiated"},"models":[
              {"model":"anthropic.claude-haiku-4-5-20251001-v1:0","input":"1","output":"5","regional_premium_percent":10,"source":"s",
               "tiers":{"flex":{"input":"0.5","output":"2.5"},"priority":{"input":"1.75","output":"8.75","cache_read":"0.175","cache_write_1h":"3.6"}}},
              {"model":"amazon.nova-pro-v1:0","input":"0.8","output":"3.2","cache_write_1h":"1.6","source":"s","tiers":{"latency-optimized":{"input":"1","output":"4"}}}]}"#,
        )
        .unwrap();
        let haiku = "anthropic.claude-haiku-4-5-20251001-v1:0";
        let flex = book.lookup_tiers(haiku)[&PriceTier::Flex];
        // A tier's cache prices the book leaves out follow the family, from the tier's input.
        assert_eq!(
            (flex.input, flex.output, flex.cache_read, flex.cache_write),
            (500_000, 2_500_000, 50_000, 625_000)
        );
        assert_eq!(flex.cache_write_1h, Some(1_000_000));
        let priority = book.lookup_tiers(haiku)[&PriceTier::Priority];
        assert_eq!((priority.input, priority.cache_read), (1_750_000, 175_000));
        // One-hour writes: as the book says, else by the family.
        assert_eq!(priority.cache_write_1h, Some(3_600_000));
        let nova_pro = book.lookup("amazon.nova-pro-v1:0").unwrap();
        assert_eq!(nova_pro.cache_write_1h, Some(1_600_000));
        assert_eq!(
            book.lookup_tiers("amazon.nova-pro-v1:0")[&PriceTier::LatencyOptimized].cache_write_1h,
            None
        );
        // Geographic profiles carry the regional premium in every tier; global ones do not.
        let regional = book.lookup_tiers(&format!("us.{haiku}"))[&PriceTier::Flex];
        assert_eq!((regional.input, regional.output), (550_000, 2_750_000));
        let global = book.lookup_tiers(&format!("global.{haiku}"))[&PriceTier::Flex];
        assert_eq!(global.input, 500_000);
        // Tiers a book does not list have no price.
        assert_eq!(
            book.lookup_tiers(haiku).get(&PriceTier::LatencyOptimized),
            None
        );
        let nova = book.lookup_tiers("amazon.nova-pro-v1:0");
        assert_eq!(
            nova.get(&PriceTier::LatencyOptimized).map(|p| p.input),
            Some(1_000_000)
        );
        assert_eq!(nova.get(&PriceTier::Flex), None);
        assert_eq!(
            nova.keys().copied().collect::<Vec<_>>(),
            vec![PriceTier::LatencyOptimized]
        );
        // The built-in book lists no tier prices (no authoritative source for them yet).
        for tier in PriceTier::ALL {
            assert!(
                PriceBook::entries()
                    .iter()
                    .all(|e| !e.tiers.contains_key(&tier))
            );
            assert!(PriceBook::lookup_tier(haiku, tier).is_none());
        }

        let minimal = r#"{"recorded":"d","region":"r","tier":"t","unit":"u","note":"n","sources":{"s":"x"},"models":[{"model":"a","input":"1","output":"1","source":"s","tiers":T}]}"#;
        let bad = |tiers: &str| parse_book(&minimal.replace('T', tiers)).unwrap_err();
        assert!(
            bad(r#"{"reserved":{"input":"1","output":"1"}}"#).contains("unknown tier `reserved`"),
            "{}",
            bad(r#"{"reserved":{"input":"1","output":"1"}}"#)
        );
        assert!(bad(r#"{"flex":{"input":"x","output":"1"}}"#).contains("`a` tier `flex`"));
        assert!(bad(r#"{"flex":{"input":"1"}}"#).contains("missing field `output`"));
    }

    #[test]
    fn service_tiers_name_their_prices() {
        assert_eq!(PriceTier::from_service_tier("flex"), Some(PriceTier::Flex));
        assert_eq!(
            PriceTier::from_service_tier("priority"),
            Some(PriceTier::Priority)
        );
        assert_eq!(PriceTier::from_service_tier("default"), None);
        assert_eq!(PriceTier::from_service_tier("reserved"), None);
        for tier in PriceTier::ALL {
            assert_eq!(PriceTier::from_name(tier.as_str()), Some(tier));
            assert_eq!(
                serde_json::to_value(tier).unwrap(),
                serde_json::json!(tier.as_str())
            );
        }
    }

    #[test]
    fn cache_prices_follow_the_family() {
        let nova = PriceBook::lookup("amazon.nova-pro-v1:0").unwrap();
        assert_eq!(
            (nova.input, nova.cache_read, nova.cache_write),
            (800_000, 200_000, 800_000)
        );
        let llama = PriceBook::lookup("meta.llama3-70b-instruct-v1:0").unwrap();
        assert_eq!(
            (llama.cache_read, llama.cache_write),
            (llama.input, llama.input)
        );
        let claude = PriceBook::lookup("anthropic.claude-3-haiku-20240307-v1:0").unwrap();
        assert_eq!((claude.cache_read, claude.cache_write), (25_000, 312_500));
        let spec = Price::from_usd_per_million(
            "amazon.nova-micro-v1:0",
            PriceText {
                input: "1",
                output: "2",
                cache_write: Some("3"),
                ..PriceText::default()
            },
        )
        .unwrap();
        assert_eq!((spec.cache_read, spec.cache_write), (250_000, 3_000_000));
    }

    #[test]
    fn one_hour_cache_writes_cost_twice_the_input_on_claude_only() {
        let sonnet = PriceBook::lookup("anthropic.claude-sonnet-4-20250514-v1:0").unwrap();
        assert_eq!(sonnet.cache_write_1h, Some(6_000_000));
        let one_hour = sonnet.with_one_hour_writes().unwrap();
        // The worst case prices every input token at the one-hour write.
        assert_eq!(
            one_hour.worst_case(1_000_000, 0),
            MicroUsd(6_000_000),
            "dearest input kind"
        );
        assert_eq!(sonnet.worst_case(1_000_000, 0), MicroUsd(3_750_000));
        // Writes whose TTL the usage does not report: at the TTL the request asked for.
        let written = Usage {
            cache_write_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(one_hour.cost(&written), MicroUsd(6_000_000));
        assert_eq!(sonnet.cost(&written), MicroUsd(3_750_000));
        // Writes it reports by TTL (`cacheDetails`): each at its TTL's price, whatever was asked.
        let split = Usage {
            cache_write_tokens: 1_000_000,
            cache_write_1h_tokens: 600_000,
            cache_write_5m_tokens: 400_000,
            ..Usage::default()
        };
        let exact = MicroUsd(600_000 * 6 + 400_000 * 15 / 4);
        assert_eq!((one_hour.cost(&split), sonnet.cost(&split)), (exact, exact));
        // Partly reported: the rest at the asked-for TTL.
        let partly = Usage {
            cache_write_5m_tokens: 400_000,
            ..written
        };
        assert_eq!(
            one_hour.cost(&partly),
            MicroUsd(600_000 * 6 + 400_000 * 15 / 4)
        );
        // Reports that add up to more than the writes count the dearer kind first.
        let over = Usage {
            cache_write_1h_tokens: 700_000,
            cache_write_5m_tokens: 700_000,
            ..written
        };
        assert_eq!(sonnet.cost(&over), MicroUsd(700_000 * 6 + 300_000 * 15 / 4));
        // Regional profiles carry the premium on one-hour writes too.
        let regional = PriceBook::lookup("us.anthropic.claude-haiku-4-5-20251001-v1:0").unwrap();
        assert_eq!(regional.cache_write_1h, Some(2_200_000));
        // Families without a one-hour price cannot be priced for one.
        let nova = PriceBook::lookup("amazon.nova-pro-v1:0").unwrap();
        assert_eq!(nova.cache_write_1h, None);
        assert!(nova.with_one_hour_writes().is_none());
        // Spec prices of a Claude model derive it from their input price, never below the
        // five-minute write the spec set.
        let written = |cache_write_1h| PriceText {
            input: "1",
            output: "2",
            cache_write: Some("5"),
            cache_write_1h,
            ..PriceText::default()
        };
        let spec = Price::from_usd_per_million("anthropic.claude-x", written(None)).unwrap();
        assert_eq!(spec.cache_write_1h, Some(5_000_000));
        // A price that names its one-hour write is taken at its word, for any family, and still
        // never below the five-minute write.
        let own = Price::from_usd_per_million("anthropic.claude-x", written(Some("6.5"))).unwrap();
        assert_eq!(own.cache_write_1h, Some(6_500_000));
        let nova = Price::from_usd_per_million("amazon.nova-pro-v1:0", written(Some("7"))).unwrap();
        let written_1m = Usage {
            cache_write_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(
            nova.with_one_hour_writes().map(|p| p.cost(&written_1m)),
            Some(MicroUsd(7_000_000))
        );
        let below =
            Price::from_usd_per_million("amazon.nova-pro-v1:0", written(Some("4"))).unwrap();
        assert_eq!(below.cache_write_1h, Some(5_000_000));
        assert!(Price::from_usd_per_million("x", written(Some("1.0000001"))).is_err());
    }

    #[test]
    fn costs_round_up_to_the_micro_dollar() {
        let nova_micro = PriceBook::lookup("amazon.nova-micro-v1:0").unwrap();
        // 1 input token at $0.035 per million is 0.035 micro-USD: charged as 1.
        assert_eq!(nova_micro.cost(&Usage::new(1, 0)), MicroUsd(1));
        // 1M input + 1M output = 0.035 + 0.14 USD exactly.
        assert_eq!(
            nova_micro.cost(&Usage::new(1_000_000, 1_000_000)),
            MicroUsd(175_000)
        );
        let cached = Usage {
            input_tokens: 10,
            output_tokens: 0,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 1_000_000,
            ..Usage::default()
        };
        let sonnet = PriceBook::lookup("anthropic.claude-sonnet-4-20250514-v1:0").unwrap();
        assert_eq!(sonnet.cost(&cached), MicroUsd(30 + 300_000 + 3_750_000));
    }

    #[test]
    fn worst_case_prices_input_at_the_dearest_kind() {
        let sonnet = PriceBook::lookup("anthropic.claude-sonnet-4-20250514-v1:0").unwrap();
        assert_eq!(
            sonnet.worst_case(1_000_000, 1_000_000),
            MicroUsd(3_750_000 + 15_000_000)
        );
        let huge = sonnet.worst_case(u64::MAX, u64::MAX);
        assert_eq!(huge, MicroUsd(u64::MAX));
    }

    #[test]
    fn spec_prices_parse_exactly() {
        let p = Price::from_usd_per_million(
            "x",
            PriceText {
                input: "3.00",
                output: "15.00",
                cache_read: Some("0.30"),
                cache_write: Some("3.75"),
                cache_write_1h: None,
            },
        )
        .unwrap();
        assert_eq!(
            p,
            Price {
                input: 3_000_000,
                output: 15_000_000,
                cache_read: 300_000,
                cache_write: 3_750_000,
                cache_write_1h: None,
                one_hour_writes: false,
            }
        );
        assert_eq!(p.input_usd(), "3");
        let tiny = PriceText {
            input: "0.0000001",
            output: "1",
            ..PriceText::default()
        };
        assert!(Price::from_usd_per_million("x", tiny).is_err());
    }
}
