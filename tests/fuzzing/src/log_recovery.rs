//! Raft log recovery: a data directory built from arbitrary bytes
//! (`cairn_store::fuzzing` describes the two input shapes) is opened as
//! the agent opens it at start. It must open or be refused with an error;
//! what opens must hand raft only entries that decode, sit at their own
//! index and agree with the cached terms, and raft must accept the
//! recovered state as the agent's node does at start.
use cairn_store::Db;
use raft::{GetEntriesContext, RawNode, Storage};

pub fn log_recovery(data: &[u8]) {
    // In memory where there is a tmpfs: every open fsyncs.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    if cairn_store::fuzzing::build_dir(dir.path(), data).is_err() {
        return;
    }
    let Ok(db) = Db::open(dir.path()) else {
        return;
    };
    let log = db.raft_log();
    let first = log.first_index().expect("first index");
    let last = log.last_index().expect("last index");
    assert!(
        first >= 1 && last + 1 >= first,
        "log bounds {first}..={last}"
    );
    let state = log.initial_state().expect("initial state");
    assert!(
        state.hard_state.commit <= last,
        "commit {} beyond the log's end {last}",
        state.hard_state.commit
    );
    // Every entry open accepted reads back, at its own index, with the
    // term open cached. Bounded: an input can name a log of any length.
    let high = (last + 1).min(first.saturating_add(4096));
    for index in first..high {
        let got = log
            .entries(index, index + 1, None, GetEntriesContext::empty(false))
            .unwrap_or_else(|e| panic!("entry {index} of {first}..={last} unreadable: {e}"));
        let [e] = got.as_slice() else {
            panic!("entries({index}) gave {} entries", got.len());
        };
        assert_eq!(
            e.index, index,
            "entry stored at {index} says index {}",
            e.index
        );
        assert_eq!(
            Some(e.term),
            log.term(index).ok(),
            "entry {index}: stored term and cached term differ"
        );
    }
    // What the agent does next: raft loads the state (and panics on a hard
    // state outside the log).
    let cfg = raft::Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 1,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let _ = RawNode::new(&cfg, log, &logger);
}
