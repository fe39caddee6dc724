//! `cairn-sim`: runs the deterministic simulator over many seeds (the soak
//! run), or replays one.
//!
//!     cargo run -p cairn-sim --release -- --seeds 2000          # seeds 0..2000
//!     cargo run -p cairn-sim --release -- --seeds 500 --from 10000
//!     cargo run -p cairn-sim --release -- --seed 1234           # replay one
//!     cargo run -p cairn-sim --release -- --seeds 100 --ms 20000  # longer runs

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut from = 0u64;
    let mut count = 100u64;
    let mut cfg = cairn_sim::Config::default();
    while let Some(a) = args.next() {
        let mut val = |name: &str| -> u64 {
            match args.next().map(|v| v.parse::<u64>()) {
                Some(Ok(v)) => v,
                _ => {
                    eprintln!("cairn-sim: {name} needs a number");
                    std::process::exit(2);
                }
            }
        };
        match a.as_str() {
            "--seed" => {
                from = val("--seed");
                count = 1;
            }
            "--seeds" => count = val("--seeds"),
            "--from" => from = val("--from"),
            "--ms" => cfg.duration_ms = val("--ms"),
            "--nodes" => cfg.nodes = val("--nodes") as usize,
            "--clients" => cfg.clients = val("--clients") as usize,
            "--no-membership" => cfg.membership = false,
            other => {
                eprintln!(
                    "cairn-sim: unknown argument {other:?} (see the doc comment in tests/sim/src/main.rs)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let started = std::time::Instant::now();
    let mut total = cairn_sim::Report::default();
    let mut failures = 0;
    for seed in from..from + count {
        match cairn_sim::run(seed, &cfg) {
            Ok(r) => {
                if count == 1 {
                    println!("{r:#?}");
                }
                total.ops += r.ops;
                total.answers_checked += r.answers_checked;
                total.watch_events_checked += r.watch_events_checked;
                total.ops_unknown += r.ops_unknown;
                total.entries_committed += r.entries_committed;
                total.messages += r.messages;
                total.snapshots_sent += r.snapshots_sent;
                for (k, v) in r.faults {
                    *total.faults.entry(k).or_default() += v;
                }
            }
            Err(f) => {
                failures += 1;
                eprintln!("{f}");
            }
        }
    }
    println!(
        "seeds {from}..{}: {} failed; {} client operations checked for linearizability ({} unknown outcomes), \
         {} answers checked against the stored history, {} watch events checked, \
         {} entries committed, {} messages, {} snapshots sent, faults {:?}; {:.1} s",
        from + count,
        failures,
        total.ops,
        total.ops_unknown,
        total.answers_checked,
        total.watch_events_checked,
        total.entries_committed,
        total.messages,
        total.snapshots_sent,
        total.faults,
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
