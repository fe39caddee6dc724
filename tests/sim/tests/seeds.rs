//! The simulator over a fixed set of seeds (what CI runs; the soak run is
//! `cargo run -p cairn-sim --release -- --seeds 5000`), and the rig tests:
//! bugs planted in the real code must be caught.

use cairn_sim::{Config, Report, run};

fn seeds() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .map(|s| s.parse().expect("SIM_SEEDS is a number"))
        .unwrap_or(24)
}

#[test]
fn fixed_seeds_keep_every_invariant_and_a_linearizable_history() {
    let cfg = Config::default();
    let mut ops = 0;
    let mut unknown = 0;
    let mut faults = 0;
    let mut snapshots = 0;
    let n = seeds();
    for seed in 0..n {
        match run(seed, &cfg) {
            Ok(r) => {
                ops += r.ops;
                unknown += r.ops_unknown;
                faults += r.faults.values().sum::<u64>();
                snapshots += r.snapshots_sent;
                assert!(
                    r.ops_ok > 0,
                    "seed {seed}: no client request succeeded: {r:?}"
                );
                assert!(r.entries_committed > 0, "seed {seed}: nothing committed");
            }
            Err(f) => panic!("{f}"),
        }
    }
    println!(
        "{n} seeds: {ops} client operations checked ({unknown} with unknown outcome), \
         {faults} faults, {snapshots} snapshots sent"
    );
    assert!(faults > n, "the runs injected almost no faults");
    assert!(snapshots > 0, "no member ever caught up by snapshot");
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = Config {
        duration_ms: 3_000,
        ..Config::default()
    };
    let a: Report = run(42, &cfg).unwrap_or_else(|f| panic!("{f}"));
    let b: Report = run(42, &cfg).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    let c: Report = run(43, &cfg).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        format!("{a:?}"),
        format!("{c:?}"),
        "two seeds gave the same run: the seed does not drive it"
    );
}

/// The rig itself: each bug planted in the real consensus code
/// (`core/raft/src/planted.rs`) must make some seed fail, and the failure
/// must name the invariant that caught it.
#[cfg(feature = "planted-bugs")]
mod rig {
    use cairn_raft::planted::{Bug, plant};
    use cairn_sim::{Config, Failure, run};

    /// Runs seeds until one fails (at most `limit`).
    fn first_failure(bug: Bug, limit: u64) -> Option<Failure> {
        plant(Some(bug));
        let cfg = Config::default();
        let found = (0..limit).find_map(|seed| run(seed, &cfg).err());
        plant(None);
        found
    }

    fn caught(bug: Bug, expect: &[&str]) {
        let f = first_failure(bug, 200).unwrap_or_else(|| panic!("{bug:?} was not caught"));
        println!("{bug:?} caught: {f}");
        // The same seed without the bug passes: the bug made the failure.
        if let Err(clean) = run(f.seed, &Config::default()) {
            panic!("seed {} fails without {bug:?} too: {clean}", f.seed);
        }
        assert!(
            expect.iter().any(|e| f.what.contains(e)),
            "{bug:?} was caught by an unexpected check: {f}"
        );
    }

    #[test]
    fn acknowledging_before_fsync_is_caught() {
        caught(
            Bug::AckBeforeFsync,
            // raft-rs itself asserts when a follower's log lost entries the
            // leader knows it acknowledged ("... log corrupted, truncated,
            // or lost?"): that is the lost write seen from inside.
            &[
                "committed entry changed",
                "linearizab",
                "apply order",
                "revisions",
                "answers",
                "lost entries it had acknowledged",
            ],
        );
    }

    #[test]
    fn applying_an_entry_twice_after_restart_is_caught() {
        caught(Bug::ApplyTwice, &["apply order"]);
    }

    #[test]
    fn a_local_read_on_a_deposed_leader_is_caught() {
        caught(Bug::LocalRead, &["linearizab"]);
    }
}
