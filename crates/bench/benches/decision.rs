//! Criterion: the in-process decision (parse, estimate, price, reserve in four windows, settle)
//! on the in-memory ledger, one request at a time. `bench decision` adds percentiles and the
//! contended case.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ledger::MemoryLedger;

fn decision(c: &mut Criterion) {
    let ledger = MemoryLedger::new();
    let limits = bench::roomy_limits();
    let now = 1_795_801_683;
    let mut group = c.benchmark_group("decision");
    for (name, chars, max_tokens) in [("small", 200, 128), ("large", 8_000, 1_024)] {
        let body = bench::converse_body(chars, max_tokens);
        let n = AtomicU64::new(0);
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| {
                let id = n.fetch_add(1, Ordering::Relaxed).to_string();
                bench::decide(&ledger, &limits, &body, &id, now)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
