use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Charge, MicroUsd, Window};

/// A limit on one window: tokens, USD, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limit {
    /// The window the limit applies to.
    pub window: Window,
    /// Most tokens (all kinds) in one occurrence of the window.
    pub tokens: Option<u64>,
    /// Most spend in one occurrence of the window.
    pub usd: Option<MicroUsd>,
}

/// Which quantity of a limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMetric {
    /// Tokens.
    Tokens,
    /// Micro-USD.
    Usd,
}

impl fmt::Display for LimitMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitMetric::Tokens => "tokens",
            LimitMetric::Usd => "usd",
        })
    }
}

/// A request that does not fit in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exceeded {
    /// The window.
    pub window: Window,
    /// Tokens or USD.
    pub metric: LimitMetric,
    /// The limit, in tokens or micro-USD.
    pub limit: u64,
    /// Already used or reserved in this occurrence, same unit.
    pub used: u64,
    /// What the request asked for, same unit.
    pub requested: u64,
}

impl Limit {
    /// Whether `request` fits on top of `used` (settled plus reserved) in this window.
    ///
    /// Fits means `used + request <= limit`, computed without overflow.
    pub fn admits(&self, used: Charge, request: Charge) -> Result<(), Exceeded> {
        let exceeded = |metric, limit: u64, used: u64, requested: u64| Exceeded {
            window: self.window,
            metric,
            limit,
            used,
            requested,
        };
        if let Some(limit) = self.tokens
            && !fits(used.tokens, request.tokens, limit)
        {
            return Err(exceeded(
                LimitMetric::Tokens,
                limit,
                used.tokens,
                request.tokens,
            ));
        }
        if let Some(limit) = self.usd
            && !fits(used.cost.0, request.cost.0, limit.0)
        {
            return Err(exceeded(
                LimitMetric::Usd,
                limit.0,
                used.cost.0,
                request.cost.0,
            ));
        }
        Ok(())
    }

    /// The highest usage (in tokens, micro-USD) a counter may hold before `request` is added, for
    /// a store that can only compare one attribute with a constant (DynamoDB conditions).
    pub fn ceiling_before(&self, request: Charge) -> (Option<u64>, Option<u64>) {
        (
            self.tokens.map(|l| l.saturating_sub(request.tokens)),
            self.usd.map(|l| l.0.saturating_sub(request.cost.0)),
        )
    }

    /// Whether any request could ever fit: a request larger than the limit never can.
    pub fn can_ever_admit(&self, request: Charge) -> bool {
        self.admits(Charge::ZERO, request).is_ok()
    }
}

fn fits(used: u64, requested: u64, limit: u64) -> bool {
    used.checked_add(requested)
        .is_some_and(|total| total <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> Limit {
        Limit {
            window: Window::Day,
            tokens: Some(1_000),
            usd: Some(MicroUsd(500)),
        }
    }

    #[test]
    fn admits_up_to_and_including_the_limit() {
        assert!(
            limit()
                .admits(
                    Charge::new(900, MicroUsd(400)),
                    Charge::new(100, MicroUsd(100))
                )
                .is_ok()
        );
        let err = limit()
            .admits(Charge::new(901, MicroUsd(0)), Charge::new(100, MicroUsd(0)))
            .unwrap_err();
        assert_eq!(
            (err.metric, err.limit, err.used, err.requested),
            (LimitMetric::Tokens, 1_000, 901, 100)
        );
        let err = limit()
            .admits(Charge::new(0, MicroUsd(401)), Charge::new(1, MicroUsd(100)))
            .unwrap_err();
        assert_eq!(err.metric, LimitMetric::Usd);
    }

    #[test]
    fn overflow_never_admits() {
        let l = Limit {
            window: Window::Minute,
            tokens: Some(u64::MAX),
            usd: None,
        };
        assert!(
            l.admits(
                Charge::new(u64::MAX, MicroUsd(0)),
                Charge::new(1, MicroUsd(0))
            )
            .is_err()
        );
    }

    #[test]
    fn ceilings_are_limit_minus_request() {
        assert_eq!(
            limit().ceiling_before(Charge::new(100, MicroUsd(600))),
            (Some(900), Some(0))
        );
        assert!(!limit().can_ever_admit(Charge::new(1_001, MicroUsd(0))));
    }
}
