//! Three nodes in one process over an in-memory network the test can cut:
//! bootstrap from the same conf changes, proposals through followers,
//! failover when the leader is cut off, catch-up by snapshot after the log
//! was compacted, membership changes.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_raft::{
    ConfChange, ConfChangeType, ConfState, MemLogStore, Message, MessageType, Node, NodeConfig,
    ProposeError, Snapshot, StateMachine, Transport,
};

/// Commands in apply order; the snapshot content is this list.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
    restores: Arc<AtomicU64>,
}

impl Recorder {
    fn encode(&self) -> Vec<u8> {
        let log = self.log.lock().unwrap();
        let mut out = self.applied.load(Ordering::SeqCst).to_be_bytes().to_vec();
        for c in log.iter() {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }
    fn commands(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().clone()
    }
}

impl StateMachine for Recorder {
    type Output = usize;
    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> usize {
        let mut log = self.log.lock().unwrap();
        assert!(index > self.applied.load(Ordering::SeqCst), "applied twice");
        log.push(data.to_vec());
        self.applied.store(index, Ordering::SeqCst);
        log.len()
    }
    fn apply_empty(&mut self, index: u64) {
        self.applied.store(index, Ordering::SeqCst);
    }
    fn apply_conf_change(&mut self, index: u64, _cc: &ConfChange, _cs: &ConfState) -> usize {
        self.applied.store(index, Ordering::SeqCst);
        self.log.lock().unwrap().len()
    }
    fn restore(&mut self, snap: &Snapshot) -> Result<(), String> {
        let d = &snap.data[..];
        let applied = u64::from_be_bytes(d[..8].try_into().unwrap());
        let mut log = Vec::new();
        let mut rest = &d[8..];
        while !rest.is_empty() {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            log.push(rest[4..4 + n].to_vec());
            rest = &rest[4 + n..];
        }
        if applied < snap.get_metadata().index {
            return Err("snapshot content older than its index".into());
        }
        *self.log.lock().unwrap() = log;
        self.applied.store(applied, Ordering::SeqCst);
        self.restores.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }
}

/// The network: delivers by stepping the receiving node; drops messages
/// from or to a cut node. A snapshot carries the sender's content.
#[derive(Clone, Default)]
struct Net {
    nodes: Arc<Mutex<HashMap<u64, Node<usize>>>>,
    sms: Arc<Mutex<HashMap<u64, Recorder>>>,
    cut: Arc<Mutex<HashSet<u64>>>,
    /// How many more ReadIndex requests to lose.
    lose_reads: Arc<Mutex<u32>>,
}

struct Link(Net);

impl Transport for Link {
    fn send(&mut self, msgs: Vec<Message>) {
        let net = &self.0;
        for mut m in msgs {
            let cut = net.cut.lock().unwrap();
            if cut.contains(&m.from) || cut.contains(&m.to) {
                continue;
            }
            drop(cut);
            if m.get_msg_type() == MessageType::MsgReadIndex {
                let mut lose = net.lose_reads.lock().unwrap();
                if *lose > 0 {
                    *lose -= 1;
                    continue;
                }
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let content = net.sms.lock().unwrap()[&m.from].encode();
                m.mut_snapshot().data = content.into();
            }
            let node = net.nodes.lock().unwrap().get(&m.to).cloned();
            if let Some(n) = node {
                n.step(m);
            }
        }
    }
}

fn add(id: u64, ty: ConfChangeType) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(ty);
    cc.node_id = id;
    cc
}

fn config(id: u64, bootstrap: &[u64]) -> NodeConfig {
    NodeConfig {
        id,
        heartbeat_interval: Duration::from_millis(10),
        election_ticks: 10,
        max_pending_proposals: 10_000,
        snapshot_count: 40,
        bootstrap: bootstrap
            .iter()
            .map(|i| add(*i, ConfChangeType::AddNode))
            .collect(),
        on_sync: None,
    }
}

fn start(net: &Net, id: u64, bootstrap: &[u64]) -> Node<usize> {
    let sm = Recorder::default();
    net.sms.lock().unwrap().insert(id, sm.clone());
    let node = Node::start(
        config(id, bootstrap),
        MemLogStore::new(),
        sm,
        Link(net.clone()),
    )
    .unwrap();
    net.nodes.lock().unwrap().insert(id, node.clone());
    node
}

async fn leader_among(net: &Net, ids: &[u64]) -> u64 {
    for _ in 0..500 {
        let nodes = net.nodes.lock().unwrap().clone();
        for id in ids {
            let st = nodes[id].status();
            if st.leader_id == *id {
                // every live node agrees
                if ids.iter().all(|o| nodes[o].status().leader_id == *id) {
                    return *id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader among {ids:?}");
}

async fn converge(net: &Net, ids: &[u64]) -> Vec<Vec<u8>> {
    for _ in 0..500 {
        let sms = net.sms.lock().unwrap().clone();
        let first = sms[&ids[0]].commands();
        if ids.iter().all(|i| sms[i].commands() == first) {
            return first;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sms = net.sms.lock().unwrap().clone();
    let lens: Vec<usize> = ids.iter().map(|i| sms[i].commands().len()).collect();
    panic!("state machines did not converge: {lens:?}");
}

fn node(net: &Net, id: u64) -> Node<usize> {
    net.nodes.lock().unwrap()[&id].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up_by_snapshot() {
    let net = Net::default();
    let ids = [1, 2, 3];
    for id in ids {
        start(&net, id, &ids);
    }
    let leader = leader_among(&net, &ids).await;

    // Every node takes proposals; followers' go through the leader.
    for round in 0..5u8 {
        for id in ids {
            node(&net, id).propose(vec![round, id as u8]).await.unwrap();
        }
    }
    let all = converge(&net, &ids).await;
    assert_eq!(all.len(), 15);

    // Cut the leader off: the other two elect a new one and go on.
    net.cut.lock().unwrap().insert(leader);
    let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
    let new_leader = leader_among(&net, &rest).await;
    assert_ne!(new_leader, leader);
    // The cut-off leader steps down (check quorum) and refuses writes.
    let old = node(&net, leader);
    let mut st = old.subscribe();
    tokio::time::timeout(
        Duration::from_secs(5),
        st.wait_for(|s| s.leader_id != leader),
    )
    .await
    .expect("the isolated leader steps down")
    .unwrap();
    let r = old.propose(b"minority".to_vec()).await;
    assert!(
        matches!(r, Err(ProposeError::NoLeader) | Err(ProposeError::Timeout)),
        "{r:?}"
    );
    // Enough writes that the log is compacted past what the old leader has.
    for i in 0..200u32 {
        node(&net, rest[i as usize % 2])
            .propose(i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    net.cut.lock().unwrap().clear();
    let all = converge(&net, &ids).await;
    assert_eq!(all.len(), 215);
    assert!(!all.contains(&b"minority".to_vec()));
    let restores = net.sms.lock().unwrap()[&leader]
        .restores
        .load(Ordering::SeqCst);
    assert!(restores >= 1, "the lagging node caught up by snapshot");
    for id in ids {
        node(&net, id).shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_as_learners_are_promoted_and_removed() {
    let net = Net::default();
    start(&net, 1, &[1]);
    leader_among(&net, &[1]).await;
    for i in 0..100u32 {
        node(&net, 1)
            .propose(i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    // Node 2 joins: it starts empty and learns everything from the leader.
    node(&net, 1)
        .propose_conf_change(add(2, ConfChangeType::AddLearnerNode))
        .await
        .unwrap();
    start(&net, 2, &[]);
    converge(&net, &[1, 2]).await;
    let st = node(&net, 2).status();
    assert_eq!(st.learners, vec![2]);
    // Promote it, then add a third voter the same way.
    node(&net, 1)
        .propose_conf_change(add(2, ConfChangeType::AddNode))
        .await
        .unwrap();
    node(&net, 1)
        .propose_conf_change(add(3, ConfChangeType::AddNode))
        .await
        .unwrap();
    start(&net, 3, &[]);
    assert_eq!(leader_among(&net, &[1, 2, 3]).await, 1);
    node(&net, 3).propose(b"via 3".to_vec()).await.unwrap();
    converge(&net, &[1, 2, 3]).await;
    let mut voters = node(&net, 3).status().voters;
    voters.sort();
    assert_eq!(voters, vec![1, 2, 3]);

    // Leadership moves to 2 on request.
    node(&net, 1)
        .transfer_leader(2, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(leader_among(&net, &[1, 2, 3]).await, 2);

    // Remove node 1: it notices and says so.
    node(&net, 2)
        .propose_conf_change(add(1, ConfChangeType::RemoveNode))
        .await
        .unwrap();
    let mut st = node(&net, 1).subscribe();
    tokio::time::timeout(Duration::from_secs(5), st.wait_for(|s| s.removed))
        .await
        .expect("the removed node learns it was removed")
        .unwrap();
    node(&net, 2).propose(b"after".to_vec()).await.unwrap();
    converge(&net, &[2, 3]).await;
    for id in [1, 2, 3] {
        node(&net, id).shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_read_index_request_is_sent_again() {
    let net = Net::default();
    let ids = [1, 2, 3];
    for id in ids {
        start(&net, id, &ids);
    }
    let leader = leader_among(&net, &ids).await;
    node(&net, leader).propose(b"x".to_vec()).await.unwrap();
    let follower = ids.into_iter().find(|i| *i != leader).unwrap();
    // The follower's request to the leader is lost twice; the read must
    // still complete (without the retry it fails with Timeout once the
    // request timeout passes).
    *net.lose_reads.lock().unwrap() = 2;
    let index = node(&net, follower).read_index().await.unwrap();
    assert!(index >= 1);
    assert_eq!(*net.lose_reads.lock().unwrap(), 0, "no request was lost");
}
