//! How long a check takes. Ignored by default; run with
//! `cargo test --release -p cairn-check --test it -- --ignored --nocapture bench`.

use std::time::Instant;

use cairn_check::check;

use crate::random::{Shape, generate, history};

fn time(name: &str, shape: &Shape) {
    let recs = generate(0xbe7c, shape);
    let h = history(&recs);
    let t = Instant::now();
    let r = check(&h).unwrap_or_else(|v| panic!("{name}: {v}"));
    let took = t.elapsed();
    println!(
        "{name}: {} ops ({} ok, {} unknown, {} failed), {} partitions (largest {}), {} states: {took:?}",
        r.ops, r.ok, r.unknown, r.failed, r.partitions, r.largest_partition, r.states
    );
}

#[test]
#[ignore = "timing, not a check; run with --release --ignored --nocapture"]
fn bench_10k_ops() {
    time(
        "10k ops, 50 keys, ~5 concurrent, 2% unknown",
        &Shape {
            ops: 10_000,
            keys: 50,
            window: 25,
            unknown_percent: 2,
        },
    );
    time(
        "10k ops, 1 key, ~5 concurrent, 2% unknown",
        &Shape {
            ops: 10_000,
            keys: 1,
            window: 25,
            unknown_percent: 2,
        },
    );
    time(
        "10k ops, 50 keys, ~10 concurrent, 5% unknown",
        &Shape {
            ops: 10_000,
            keys: 50,
            window: 50,
            unknown_percent: 5,
        },
    );
}

#[test]
#[ignore = "debug"]
fn bench_debug() {
    for (ops, unk) in [(1000, 2), (2000, 2), (3000, 2)] {
        time(
            &format!("{ops} ops 1 key {unk}%"),
            &Shape {
                ops,
                keys: 1,
                window: 25,
                unknown_percent: unk,
            },
        );
    }
}
