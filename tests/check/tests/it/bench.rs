//! How long a check takes. Ignored by default; run with
//! `cargo test --release -p cairn-check --test it -- --ignored --nocapture bench`.

use std::time::Instant;

use cairn_check::{ViolationKind, check};

use crate::random::{Shape, generate, history};

fn time(name: &str, shape: &Shape) {
    let recs = generate(0xbe7c, shape);
    let h = history(&recs);
    let t = Instant::now();
    let r = check(&h);
    let took = t.elapsed();
    let r = match r {
        Ok(r) => r,
        Err(v) => {
            assert_eq!(v.kind, ViolationKind::Inconclusive, "{name}: {v}");
            println!("{name}: inconclusive after {took:?}: {}", v.detail);
            return;
        }
    };
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
    // One hot key: the search's worst case here. 10k ops on one key with
    // 2% unknown took about 67 s (359k states, near the default budget).
    time(
        "2k ops, 1 key, ~5 concurrent, 2% unknown",
        &Shape {
            ops: 2_000,
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
