use serde::{Deserialize, Serialize};

use crate::MicroUsd;

/// Tokens used (or reserved) by one request, by the kinds Bedrock bills separately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens not served from or written to the prompt cache.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache, whatever their TTL.
    pub cache_write_tokens: u64,
    /// Of `cache_write_tokens`, those Bedrock reported as written with the five-minute TTL
    /// (Converse's `cacheDetails`, Anthropic's `cache_creation.ephemeral_5m_input_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_5m_tokens: u64,
    /// Of `cache_write_tokens`, those Bedrock reported as written with the one-hour TTL. Writes
    /// of neither kind are priced at the TTL the request asked for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Plain input and output tokens, no cache.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
        }
    }

    /// Every token of every kind, saturating: what token limits count.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }
}

/// What a request counts against a window: tokens and money together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Charge {
    /// Tokens of every kind.
    pub tokens: u64,
    /// Cost.
    pub cost: MicroUsd,
}

impl Charge {
    /// Nothing.
    pub const ZERO: Charge = Charge {
        tokens: 0,
        cost: MicroUsd::ZERO,
    };

    /// A charge of `tokens` and `cost`.
    pub const fn new(tokens: u64, cost: MicroUsd) -> Self {
        Charge { tokens, cost }
    }

    /// Sum, saturating.
    pub const fn saturating_add(self, other: Charge) -> Charge {
        Charge {
            tokens: self.tokens.saturating_add(other.tokens),
            cost: self.cost.saturating_add(other.cost),
        }
    }

    /// Difference, saturating at zero in each component.
    pub const fn saturating_sub(self, other: Charge) -> Charge {
        Charge {
            tokens: self.tokens.saturating_sub(other.tokens),
            cost: self.cost.saturating_sub(other.cost),
        }
    }
}
