//! How many messages proposals cost. Three `ManualNode`s (the agent's
//! driver, stepped by the test) over a network the test delivers by hand:
//! proposals taken in one turn of the driver reach the leader as one
//! `MsgPropose` and each follower as one `MsgAppend`, and are applied in
//! the order they were proposed, every one answered.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_raft::{
    Answer, ConfChange, ConfChangeType, ConfState, ManualNode, MemLogStore, Message, MessageType,
    NodeConfig, Snapshot, StateMachine, Transport,
};

#[derive(Default)]
struct Log {
    applied: u64,
    commands: Vec<Vec<u8>>,
}

impl StateMachine for Log {
    type Output = usize;
    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> usize {
        self.applied = index;
        self.commands.push(data.to_vec());
        self.commands.len()
    }
    fn apply_empty(&mut self, index: u64) {
        self.applied = index;
    }
    fn apply_conf_change(&mut self, index: u64, _cc: &ConfChange, _cs: &ConfState) -> usize {
        self.applied = index;
        self.commands.len()
    }
    fn restore(&mut self, _snap: &Snapshot) -> Result<(), String> {
        Err("this test never snapshots".into())
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
}

#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.lock().unwrap().extend(msgs);
    }
}

type Node = ManualNode<MemLogStore, Log, Outbox>;

struct Cluster {
    nodes: Vec<Node>,
    outboxes: Vec<Outbox>,
    now: Instant,
}

impl Cluster {
    fn new() -> Cluster {
        let mut nodes = Vec::new();
        let mut outboxes = Vec::new();
        for id in 1..=3u64 {
            let cfg = NodeConfig {
                id,
                heartbeat_interval: Duration::from_millis(10),
                election_ticks: 10,
                max_pending_proposals: 10_000,
                snapshot_count: 10_000,
                bootstrap: (1..=3)
                    .map(|i| {
                        let mut cc = ConfChange::default();
                        cc.set_change_type(ConfChangeType::AddNode);
                        cc.node_id = i;
                        cc
                    })
                    .collect(),
                on_sync: None,
            };
            let out = Outbox::default();
            // Node 1 times out first and becomes the leader.
            let timeout = if id == 1 { 10 } else { 1000 };
            let node = ManualNode::start(
                cfg,
                MemLogStore::new(),
                Log::default(),
                out.clone(),
                [id as u8; 8],
                timeout,
            )
            .expect("starts");
            nodes.push(node);
            outboxes.push(out);
        }
        Cluster {
            nodes,
            outboxes,
            now: Instant::now(),
        }
    }

    fn take(&self, id: u64) -> Vec<Message> {
        std::mem::take(&mut *self.outboxes[id as usize - 1].0.lock().unwrap())
    }

    /// Processes every node and delivers every message until none is left.
    fn settle(&mut self) {
        let now = self.now;
        for _ in 0..1000 {
            for n in &mut self.nodes {
                n.process(now).expect("processes");
            }
            let mut any = false;
            for from in 1..=3u64 {
                for m in self.take(from) {
                    any = true;
                    let to = m.to as usize - 1;
                    self.nodes[to].step(m, now);
                }
            }
            if !any {
                return;
            }
        }
        panic!("messages kept flowing");
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Node 1 elected, its first entry committed and known to all.
    fn elect(&mut self) {
        let now = self.now;
        for _ in 0..20 {
            self.node(1).tick();
            self.node(1).process(now).expect("processes");
            self.settle();
            if self.node(1).is_leader() {
                break;
            }
        }
        assert!(self.node(1).is_leader(), "node 1 never became leader");
        // A heartbeat carries the commit index to the followers.
        self.node(1).tick();
        self.node(1).process(now).expect("processes");
        self.settle();
        let committed = self.node(1).commit_index();
        for id in 2..=3 {
            assert_eq!(self.node(id).commit_index(), committed, "node {id} behind");
        }
    }

    /// Checks that the leader (node 1) sent each follower exactly one
    /// append, carrying `entries` entries, and delivers what it sent.
    fn deliver_one_append_each(&mut self, entries: usize) {
        let sent = self.take(1);
        for to in [2, 3] {
            let appends: Vec<&Message> = sent
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgAppend && m.to == to)
                .collect();
            assert_eq!(appends.len(), 1, "one append to {to}, got {sent:?}");
            assert_eq!(appends[0].entries.len(), entries);
        }
        let now = self.now;
        for m in sent {
            let to = m.to as usize - 1;
            self.nodes[to].step(m, now);
        }
    }

    /// `n` proposals taken by node `id` in one turn of its driver.
    fn propose(&mut self, id: u64, tag: &str, n: usize) -> Vec<Answer<usize>> {
        let now = self.now;
        let answers = (0..n)
            .map(|i| {
                self.node(id)
                    .propose(format!("{tag}-{i}").into_bytes(), now)
            })
            .collect();
        self.node(id).process(now).expect("processes");
        answers
    }
}

fn answered(answers: Vec<Answer<usize>>) -> Vec<usize> {
    answers
        .into_iter()
        .map(|mut a| a.try_recv().expect("answered").expect("proposal succeeded"))
        .collect()
}

#[test]
fn proposals_taken_together_travel_as_one_message() {
    let mut c = Cluster::new();
    let now = c.now;
    c.elect();

    // A follower: one MsgPropose to the leader with all ten.
    let answers = c.propose(2, "f", 10);
    let sent = c.take(2);
    let proposes: Vec<&Message> = sent
        .iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgPropose)
        .collect();
    assert_eq!(proposes.len(), 1, "one MsgPropose, got {sent:?}");
    assert_eq!(proposes[0].to, 1);
    assert_eq!(proposes[0].entries.len(), 10);
    for m in sent {
        c.node(1).step(m, now);
    }
    c.node(1).process(now).expect("processes");
    // The leader: one append per follower carrying all ten.
    c.deliver_one_append_each(10);
    c.settle();
    // The follower learns the commit index with the next append or heartbeat.
    c.node(1).tick();
    c.node(1).process(now).expect("processes");
    c.settle();
    assert_eq!(answered(answers), (1..=10).collect::<Vec<_>>());

    // The leader's own: one append per follower with all ten.
    let answers = c.propose(1, "l", 10);
    c.deliver_one_append_each(10);
    c.settle();
    assert_eq!(answered(answers), (11..=20).collect::<Vec<_>>());

    // Applied everywhere in the order proposed.
    let want: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("f-{i}"))
        .chain((0..10).map(|i| format!("l-{i}")))
        .map(String::into_bytes)
        .collect();
    c.node(1).tick();
    c.node(1).process(now).expect("processes");
    c.settle();
    for id in 1..=3 {
        assert_eq!(c.node(id).state_machine().commands, want, "node {id}");
    }
}

#[test]
fn proposals_raft_drops_are_all_refused() {
    let mut c = Cluster::new();
    let now = c.now;
    c.elect();
    // A leader handing over drops proposals: every one of the turn fails.
    c.node(1).transfer_leader(2, now);
    c.node(1).process(now).expect("processes");
    let answers = c.propose(1, "x", 3);
    for mut a in answers {
        assert!(a.try_recv().expect("answered").is_err());
    }
    let appended = c
        .take(1)
        .into_iter()
        .filter(|m| m.get_msg_type() == MessageType::MsgAppend)
        .map(|m| m.entries.len())
        .sum::<usize>();
    assert_eq!(appended, 0, "dropped proposals were sent");
}

#[test]
fn followers_hear_of_a_commit_from_the_next_append_or_once_nothing_is_in_flight() {
    let mut c = Cluster::new();
    let now = c.now;
    c.elect();
    let start = c.node(1).commit_index();
    let appends = |sent: &[Message], empty: bool| {
        sent.iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgAppend && m.entries.is_empty() == empty)
            .cloned()
            .collect::<Vec<_>>()
    };
    // Two runs of proposals on their way to the followers at once.
    let a = c.propose(1, "a", 5);
    let sent_a = c.take(1);
    let b = c.propose(1, "b", 5);
    let sent_b = c.take(1);
    // The followers take and acknowledge the first run: it commits, and
    // nothing is sent for that alone while the second run is out.
    for m in sent_a {
        c.node(m.to).step(m, now);
    }
    for id in [2, 3] {
        c.node(id).process(now).expect("processes");
        for m in c.take(id) {
            c.node(1).step(m, now);
        }
    }
    c.node(1).process(now).expect("processes");
    assert_eq!(c.node(1).commit_index(), start + 5);
    assert_eq!(answered(a).len(), 5);
    let sent = c.take(1);
    assert!(appends(&sent, true).is_empty(), "sent {sent:?}");
    // The next proposals' appends carry the new commit index.
    let cc = c.propose(1, "c", 3);
    let sent_c = c.take(1);
    let with_entries = appends(&sent_c, false);
    assert_eq!(with_entries.len(), 2, "sent {sent_c:?}");
    assert!(with_entries.iter().all(|m| m.commit == start + 5));
    for m in sent_b.into_iter().chain(sent_c) {
        c.node(m.to).step(m, now);
    }
    for id in [2, 3] {
        c.node(id).process(now).expect("processes");
        assert_eq!(c.node(id).commit_index(), start + 5, "node {id}");
    }
    // Both runs acknowledged: the commit index reaches the end of the log
    // and each follower is told at once, with no heartbeat.
    for id in [2, 3] {
        for m in c.take(id) {
            c.node(1).step(m, now);
        }
    }
    c.node(1).process(now).expect("processes");
    assert_eq!(c.node(1).commit_index(), start + 13);
    assert_eq!(answered(b).len(), 5);
    assert_eq!(answered(cc).len(), 3);
    let sent = c.take(1);
    let told = appends(&sent, true);
    assert_eq!(told.len(), 2, "one to each follower: {sent:?}");
    for m in told {
        assert_eq!(m.commit, start + 13);
        c.node(m.to).step(m, now);
    }
    for id in [2, 3] {
        c.node(id).process(now).expect("processes");
        assert_eq!(c.node(id).commit_index(), start + 13, "node {id}");
        assert_eq!(c.node(id).state_machine().commands.len(), 13, "node {id}");
    }
}
