use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::BudgetError;

/// An amount of money in whole micro-USD (1 USD = 1,000,000).
///
/// Money is never a float in tokenfence: amounts are parsed from decimal text exactly, and every
/// operation saturates instead of wrapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    /// Zero dollars.
    pub const ZERO: MicroUsd = MicroUsd(0);
    /// Micro-USD in one USD.
    pub const PER_USD: u64 = 1_000_000;

    /// Whole micro-dollars.
    pub const fn from_micros(micros: u64) -> Self {
        MicroUsd(micros)
    }

    /// Whole dollars, saturating.
    pub const fn from_usd(usd: u64) -> Self {
        MicroUsd(usd.saturating_mul(Self::PER_USD))
    }

    /// The amount in micro-USD.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Sum, saturating at `u64::MAX` micro-USD.
    pub const fn saturating_add(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(other.0))
    }

    /// Difference, saturating at zero.
    pub const fn saturating_sub(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_sub(other.0))
    }

    /// Parses a non-negative decimal amount of USD (`"40"`, `"40.5"`, `"0.000001"`) exactly.
    ///
    /// More than six decimal places is an error rather than a rounding: a limit of
    /// `0.0000001` USD is a mistake the user should hear about.
    pub fn parse_usd(text: &str) -> Result<MicroUsd, BudgetError> {
        parse_decimal_micros(text).map(MicroUsd)
    }
}

/// Parses a non-negative decimal with at most six fractional digits into millionths.
pub(crate) fn parse_decimal_micros(text: &str) -> Result<u64, BudgetError> {
    let invalid = || BudgetError::InvalidDecimal {
        value: text.to_string(),
    };
    let trimmed = text.trim();
    let (whole, frac) = match trimmed.split_once('.') {
        Some((w, f)) => (w, f),
        None => (trimmed, ""),
    };
    let whole = whole.strip_prefix('+').unwrap_or(whole);
    if whole.is_empty() && frac.is_empty() {
        return Err(invalid());
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > 6 {
        return Err(BudgetError::TooPrecise {
            value: text.to_string(),
        });
    }
    let too_large = || BudgetError::TooLarge {
        value: text.to_string(),
    };
    let whole_value: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut frac_value: u64 = 0;
    for i in 0..6 {
        let digit = frac_trimmed
            .as_bytes()
            .get(i)
            .map_or(0, |b| u64::from(b - b'0'));
        frac_value = frac_value * 10 + digit;
    }
    whole_value
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac_value))
        .ok_or_else(too_large)
}

/// Formats millionths as the shortest exact decimal (`40500000` -> `40.5`).
pub(crate) fn format_decimal_micros(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let frac = micros % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

impl fmt::Display for MicroUsd {
    /// Shows the amount as an exact decimal number of USD, e.g. `40.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_decimal_micros(self.0))
    }
}

impl FromStr for MicroUsd {
    type Err = BudgetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MicroUsd::parse_usd(s)
    }
}

impl Serialize for MicroUsd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for MicroUsd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(MicroUsd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(MicroUsd::parse_usd("40").unwrap(), MicroUsd(40_000_000));
        assert_eq!(MicroUsd::parse_usd("40.5").unwrap(), MicroUsd(40_500_000));
        assert_eq!(MicroUsd::parse_usd("0.000001").unwrap(), MicroUsd(1));
        assert_eq!(MicroUsd::parse_usd(".25").unwrap(), MicroUsd(250_000));
        assert_eq!(
            MicroUsd::parse_usd("1.2500000").unwrap(),
            MicroUsd(1_250_000)
        );
    }

    #[test]
    fn rejects_what_is_not_an_exact_amount() {
        assert!(matches!(
            MicroUsd::parse_usd("0.0000001"),
            Err(BudgetError::TooPrecise { .. })
        ));
        assert!(matches!(
            MicroUsd::parse_usd("-1"),
            Err(BudgetError::InvalidDecimal { .. })
        ));
        assert!(matches!(
            MicroUsd::parse_usd("1e3"),
            Err(BudgetError::InvalidDecimal { .. })
        ));
        assert!(matches!(
            MicroUsd::parse_usd(""),
            Err(BudgetError::InvalidDecimal { .. })
        ));
        assert!(matches!(
            MicroUsd::parse_usd("."),
            Err(BudgetError::InvalidDecimal { .. })
        ));
        assert!(matches!(
            MicroUsd::parse_usd("99999999999999999999"),
            Err(BudgetError::TooLarge { .. })
        ));
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            MicroUsd(u64::MAX).saturating_add(MicroUsd(1)),
            MicroUsd(u64::MAX)
        );
        assert_eq!(MicroUsd(1).saturating_sub(MicroUsd(2)), MicroUsd::ZERO);
    }

    proptest! {
        #[test]
        fn display_round_trips(micros in any::<u64>()) {
            let shown = MicroUsd(micros).to_string();
            prop_assert_eq!(MicroUsd::parse_usd(&shown).unwrap(), MicroUsd(micros));
        }
    }
}
