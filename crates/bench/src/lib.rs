//! The pieces the benchmarks share: the in-process decision path (estimate, price, reserve,
//! settle on the in-memory ledger, as the gateway does for every request) and percentiles.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use budget::config::{actual, worst_case};
use budget::estimate::input_token_bound;
use budget::{Limit, MicroUsd, PriceBook, Usage, Window};
use ledger::{Completion, Ledger, MemoryLedger, ReserveOutcome, ReserveRequest, Settlement};

/// The model every benchmark request names.
pub const MODEL: &str = "amazon.nova-micro-v1:0";

/// Limits large enough that the benchmark never hits them: the admitted path is measured.
pub fn roomy_limits() -> Vec<Limit> {
    [Window::Minute, Window::Hour, Window::Day, Window::Month]
        .into_iter()
        .map(|window| Limit {
            window,
            tokens: Some(u64::MAX / 4),
            usd: Some(MicroUsd::from_usd(1_000_000_000)),
        })
        .collect()
}

/// A Converse request body of about `chars` characters of prompt asking for `max_tokens`.
pub fn converse_body(chars: usize, max_tokens: u64) -> Vec<u8> {
    let text: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(chars)
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "messages": [{ "role": "user", "content": [{ "text": text }] }],
        "inferenceConfig": { "maxTokens": max_tokens }
    }))
    .expect("serializable")
}

/// Runs a future that completes without waiting (the in-memory ledger never does).
pub fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the in-memory ledger awaited"),
    }
}

/// One request's decision, as the gateway makes it: parse the body, bound its input tokens,
/// price the worst case, reserve it in every window, then settle to the (given) actual usage.
pub fn decide(ledger: &MemoryLedger, limits: &[Limit], body: &[u8], id: &str, now: i64) {
    let request: serde_json::Value = serde_json::from_slice(body).expect("valid body");
    decide_parsed(ledger, limits, &request, id, now);
}

/// [`decide`] from the parsed body: the gateway parses every body once for its own checks and
/// for Bedrock, so this is the cost the budget decision adds to the parse.
pub fn decide_parsed(
    ledger: &MemoryLedger,
    limits: &[Limit],
    request: &serde_json::Value,
    id: &str,
    now: i64,
) {
    let max_tokens = request["inferenceConfig"]["maxTokens"]
        .as_u64()
        .unwrap_or(1024);
    let price = PriceBook::lookup(MODEL);
    let input = input_token_bound(request);
    let charge = worst_case(price, input, max_tokens);
    let outcome = now_or_never(ledger.reserve(&ReserveRequest {
        application: "bench",
        user: None,
        user_limits: &[],
        reservation_id: id,
        limits,
        charge,
        now,
        hold_seconds: 900,
        attempt: id,
    }))
    .expect("reserve");
    let ReserveOutcome::Reserved(reservation) = outcome else {
        panic!("the benchmark's limits are never reached: {outcome:?}");
    };
    let used = actual(price, &Usage::new(input / 2, max_tokens / 2));
    now_or_never(ledger.settle(
        &reservation,
        &Settlement {
            actual: used,
            completion: Some(Completion {
                remember_seconds: 900,
                result: None,
                worst_case: None,
            }),
            now,
        },
    ))
    .expect("settle");
}

/// The `p`th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
