//! The single-voter node over the in-memory log: commit, apply, replies,
//! group commit, ReadIndex, restart and the fatal stop.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_raft::{
    ConfChange, ConfChangeType, ConfState, LogStore, MemLogStore, NoPeers, Node, NodeConfig,
    ProposeError, Snapshot, StateMachine,
};
use raft::Storage;

/// Appends every command to a shared list; the applied index is "durable"
/// in an atomic shared with the test, as the MVCC store's is on disk.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<AtomicU64>,
    log: Arc<Mutex<Applied>>,
}

/// (raft index, command) in apply order.
type Applied = Vec<(u64, Vec<u8>)>;

impl StateMachine for Recorder {
    type Output = (u64, usize);
    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> (u64, usize) {
        let mut log = self.log.lock().unwrap();
        assert!(
            index > self.applied.load(Ordering::SeqCst),
            "entry {index} applied twice"
        );
        log.push((index, data.to_vec()));
        self.applied.store(index, Ordering::SeqCst);
        (index, log.len())
    }
    fn apply_empty(&mut self, index: u64) {
        self.applied.store(index, Ordering::SeqCst);
    }
    fn apply_conf_change(&mut self, index: u64, _cc: &ConfChange, _cs: &ConfState) -> (u64, usize) {
        self.applied.store(index, Ordering::SeqCst);
        (index, self.log.lock().unwrap().len())
    }
    fn restore(&mut self, _snap: &Snapshot) -> Result<(), String> {
        Err("a single voter never receives a snapshot".into())
    }
    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }
}

/// The commands the state machine applied, in order.
fn commands(sm: &Recorder) -> Vec<Vec<u8>> {
    sm.log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, d)| d.clone())
        .collect()
}

fn cfg() -> NodeConfig {
    NodeConfig {
        id: 1,
        heartbeat_interval: Duration::from_millis(10),
        election_ticks: 10,
        max_pending_proposals: 10_000,
        snapshot_count: 50,
        bootstrap: vec![{
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = 1;
            cc
        }],
        on_sync: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_are_applied_in_order_and_answered() {
    let store = MemLogStore::new();
    let sm = Recorder::default();
    let node = Node::start(cfg(), store.clone(), sm.clone(), NoPeers).unwrap();
    let mut last = 0;
    for i in 0..20u8 {
        let (index, n) = node.propose(vec![i]).await.unwrap();
        assert!(index > last);
        assert_eq!(n, i as usize + 1);
        last = index;
    }
    let read = node.read_index().await.unwrap();
    assert!(read >= last);
    let st = node.status();
    assert_eq!(st.leader_id, 1);
    assert!(st.applied_index >= last);
    let data = commands(&sm);
    assert_eq!(data, (0..20u8).map(|i| vec![i]).collect::<Vec<_>>());
    node.shutdown();
    assert!(matches!(
        node.propose(vec![1]).await,
        Err(ProposeError::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_syncs_and_the_log_is_compacted() {
    let store = MemLogStore::new();
    let sm = Recorder::default();
    let node = Node::start(cfg(), store.clone(), sm.clone(), NoPeers).unwrap();
    node.propose(b"warm".to_vec()).await.unwrap();
    let before = store.synced_appends.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.propose(format!("p{i}").into_bytes()).await })
        })
        .collect();
    let mut indexes = Vec::new();
    for t in tasks {
        indexes.push(t.await.unwrap().unwrap().0);
    }
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), 500, "every proposal got its own entry");
    let syncs = store.synced_appends.load(Ordering::SeqCst) - before;
    assert!(syncs < 500, "group commit: {syncs} syncs for 500 proposals");
    // snapshot_count = 50: old entries are gone, a tail is kept
    assert!(store.first_index().unwrap() > 100);
    node.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_applies_what_was_committed_but_not_applied() {
    let store = MemLogStore::new();
    let sm = Recorder::default();
    let node = Node::start(cfg(), store.clone(), sm.clone(), NoPeers).unwrap();
    for i in 0..10u8 {
        node.propose(vec![i]).await.unwrap();
    }
    node.shutdown();
    // Forget the last three applies, as a crash before the MVCC batch
    // reached the disk would.
    let applied = sm.applied.load(Ordering::SeqCst);
    let kept: Vec<(u64, Vec<u8>)> = sm
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(i, _)| *i <= applied - 3)
        .cloned()
        .collect();
    let sm2 = Recorder {
        applied: Arc::new(AtomicU64::new(applied - 3)),
        log: Arc::new(Mutex::new(kept)),
    };
    let node = Node::start(cfg(), store.clone(), sm2.clone(), NoPeers).unwrap();
    node.read_index().await.unwrap();
    let data = commands(&sm2);
    assert_eq!(data, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
    let (_, n) = node.propose(vec![10]).await.unwrap();
    assert_eq!(n, 11);
    node.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_stops_the_node() {
    let store = MemLogStore::new();
    let node = Node::start(cfg(), store.clone(), Recorder::default(), NoPeers).unwrap();
    node.propose(b"ok".to_vec()).await.unwrap();
    store.fail_appends.store(true, Ordering::SeqCst);
    let r = node.propose(b"lost".to_vec()).await;
    assert!(matches!(r, Err(ProposeError::Stopped)), "{r:?}");
    let mut status = node.subscribe();
    let st = status
        .wait_for(|s| s.fatal.is_some())
        .await
        .unwrap()
        .clone();
    assert!(st.fatal.unwrap().contains("injected append failure"));
    assert!(matches!(
        node.propose(b"x".to_vec()).await,
        Err(ProposeError::Stopped)
    ));
    let mut s = store.clone();
    s.fail_appends.store(false, Ordering::SeqCst);
    // nothing was written for the refused proposal
    let last = s.last_index().unwrap();
    let e = s
        .entries(last, last + 1, None, raft::GetEntriesContext::empty(false))
        .unwrap();
    assert_ne!(&e[0].data[..], &b"lost"[..]);
    s.append(&[], None, false).unwrap();
}
