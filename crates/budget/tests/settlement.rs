//! The hard cap's arithmetic: for every model of the built-in book (and its geographic profile),
//! with and without one-hour cache writes (reported by TTL or not), settling any usage within a
//! request's bounds never costs more than the request reserved. (The input bound covers fresh,
//! cached and cache-written input together; the output cap bounds the output.)

use budget::config::{actual, worst_case};
use budget::{PriceBook, Usage};
use proptest::prelude::*;

fn priced_models() -> Vec<String> {
    PriceBook::known_models()
        .flat_map(|m| [m.to_string(), format!("us.{m}"), format!("global.{m}")])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn settlement_never_exceeds_the_reservation(
        model in proptest::sample::select(priced_models()),
        one_hour in any::<bool>(),
        input_bound in 0u64..2_000_000,
        max_output in 0u64..200_000,
        split in (0u64..=100, 0u64..=100, 0u64..=100),
        output_share in 0u64..=100,
        reported in (0u64..=100, 0u64..=100),
    ) {
        let book = PriceBook::lookup(&model).expect("a book model is priced");
        let price = if one_hour { book.with_one_hour_writes().unwrap_or(book) } else { book };
        let reserved = worst_case(Some(price), input_bound, max_output);
        // Any division of at most `input_bound` input tokens into fresh, read and written.
        let (a, b, c) = split;
        let parts = (a + b + c).max(1);
        let writes = input_bound * c / parts;
        // Writes Bedrock reports by TTL, any part of them: one-hour writes only where the
        // request asked for them (the TTL is the request's).
        let (five_minutes, one_hour_share) = reported;
        let cache_write_1h_tokens = if one_hour { writes * one_hour_share / 100 } else { 0 };
        let usage = Usage {
            input_tokens: input_bound * a / parts,
            cache_read_tokens: input_bound * b / parts,
            cache_write_tokens: writes,
            cache_write_1h_tokens,
            cache_write_5m_tokens: (writes - cache_write_1h_tokens) * five_minutes / 100,
            output_tokens: max_output * output_share / 100,
        };
        let settled = actual(Some(price), &usage);
        prop_assert!(settled.tokens <= reserved.tokens, "{settled:?} > {reserved:?}");
        prop_assert!(settled.cost <= reserved.cost, "{model}: {usage:?} costs {settled:?} > {reserved:?}");
    }
}
