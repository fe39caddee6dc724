//! The simulation loop: one simulated millisecond per step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_mvcc::Mvcc;
use cairn_proto::cairnpb::Member;
use cairn_raft::{
    Answer, ConfChange, ConfChangeType, ManualNode, Message, MessageType, NodeConfig, Transport,
};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot::error::TryRecvError;

use crate::disk::{self, Disk, Journal, SimLog};
use crate::invariants::{ApplyOrder, Committed, ElectionSafety, Revisions, StateHash};
use crate::machine::{self, Machine, Observer, Output};
use crate::watchers::Watcher;
use crate::workload::{self, Outcome, Record, Req};
use cairn_check::watch::WatchRange;

/// Milliseconds between raft ticks (etcd's `--heartbeat-interval`).
const TICK_MS: u64 = 10;
/// Election timeout in ticks (etcd's 1000 ms over 100 ms, scaled).
const ELECTION_TICKS: usize = 10;
/// A request with no answer after this long is recorded as unknown.
const REQUEST_TIMEOUT_MS: u64 = 1500;

#[derive(Debug, Clone)]
pub struct Config {
    pub nodes: usize,
    /// Simulated milliseconds of load and faults; then the cluster heals
    /// and runs until every node has applied everything.
    pub duration_ms: u64,
    pub clients: usize,
    pub keys: usize,
    /// Entries kept before the log is compacted (etcd's `--snapshot-count`):
    /// low, so that lagging nodes catch up by snapshot.
    pub snapshot_count: u64,
    /// Probability (per mille) that a message is lost.
    pub loss_permille: u32,
    /// Message delay range, milliseconds.
    pub delay_ms: (u64, u64),
    /// Mean milliseconds between two faults (0: no faults).
    pub fault_every_ms: u64,
    /// Membership changes among the faults.
    pub membership: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 3,
            duration_ms: 6_000,
            clients: 4,
            keys: 4,
            snapshot_count: 60,
            loss_permille: 10,
            delay_ms: (1, 8),
            fault_every_ms: 400,
            membership: true,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub ops: usize,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_unknown: usize,
    pub entries_committed: u64,
    pub entries_applied: u64,
    pub revisions: i64,
    pub terms_with_leader: usize,
    pub state_hashes_compared: u64,
    pub messages: u64,
    pub messages_lost: u64,
    pub snapshots_sent: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub answers_checked: usize,
    pub watch_events_checked: usize,
    pub history_states: u64,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at {} ms: {}\n  replay: cargo run -p cairn-sim --release -- --seed {}",
            self.seed, self.at_ms, self.what, self.seed
        )
    }
}

/// Raft messages a node sent, collected after each step.
#[derive(Clone, Default)]
struct Outbox(Arc<Mutex<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.lock().expect("outbox").extend(msgs);
    }
}

type Node = ManualNode<SimLog, Machine, Outbox>;

struct Slot {
    id: u64,
    disk: Disk,
    outbox: Outbox,
    node: Option<Node>,
    /// Down until then (crashed); `None` for a running or removed node.
    restart_at: Option<u64>,
    /// Removed from the cluster: never restarted.
    removed: bool,
    /// Ticks on (now + phase) % TICK_MS == 0, so nodes do not tick together.
    phase: u64,
    /// Was seen in the leader's configuration.
    joined: bool,
    /// A new member not in the configuration by then was never added (its
    /// addition was lost with a leader change): it is dropped.
    join_by: u64,
}

enum Pending {
    Write(Answer<Output>),
    Read(Answer<u64>, String),
}

struct Client {
    node: u64,
    busy: Option<(Req, u64, Pending)>,
    next_at: u64,
    seq: u64,
    leases: Vec<i64>,
}

struct Packet {
    from: u64,
    to: u64,
    msg: Message,
}

struct Sim {
    cfg: Config,
    rng: StdRng,
    now: u64,
    base: Instant,
    slots: Vec<Slot>,
    net: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    /// Directed links cut: (from, to) until the given time.
    cut: BTreeMap<(u64, u64), u64>,
    clients: Vec<Client>,
    watchers: Vec<Watcher>,
    history: Vec<Record>,
    /// Last mod revision each key was seen with (for CAS requests).
    last_mod: BTreeMap<String, i64>,
    observer: Observer,
    election: ElectionSafety,
    committed: Committed,
    apply_order: ApplyOrder,
    revisions: Revisions,
    state_hash: StateHash,
    report: Report,
    next_fault: u64,
    /// The id the next added member gets.
    next_id: u64,
    /// A member removed whose replacement is still to be added:
    /// (removed id, new id, given up at).
    pending_add: Option<(u64, u64, u64)>,
}

/// Runs one seed.
pub fn run(seed: u64, cfg: &Config) -> Result<Report, Failure> {
    let mut sim = Sim::new(seed, cfg.clone());
    // A panic in a node (raft-rs asserts on a log it finds lost or
    // corrupted) fails the seed like a broken invariant.
    let out = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_all())) {
        Ok(out) => out,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            // raft-rs's own check that a follower kept what it acknowledged.
            let why = if msg.contains("to_commit") && msg.contains("out of range") {
                " (the follower's log lost entries it had acknowledged)"
            } else {
                ""
            };
            Err(format!("a node panicked: {msg}{why}"))
        }
    };
    match out {
        Ok(()) => {
            let mut r = sim.report.clone();
            r.seed = seed;
            Ok(r)
        }
        Err(what) => Err(Failure {
            seed,
            at_ms: sim.now,
            what,
        }),
    }
}

fn member(id: u64) -> Member {
    Member {
        id,
        name: format!("n{id}"),
        peer_urls: vec![format!("sim://n{id}")],
        client_urls: vec![format!("sim://n{id}")],
        is_learner: false,
    }
}

fn conf_change(id: u64, ty: ConfChangeType) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.set_change_type(ty);
    cc.node_id = id;
    if ty != ConfChangeType::RemoveNode {
        cc.context = member(id).encode_to_vec().into();
    }
    cc
}

impl Sim {
    fn new(seed: u64, cfg: Config) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let slots = (1..=cfg.nodes as u64)
            .map(|id| Slot {
                id,
                disk: Arc::new(Mutex::new(Journal::default())),
                outbox: Outbox::default(),
                node: None,
                restart_at: Some(0),
                removed: false,
                phase: rng.random_range(0..TICK_MS),
                joined: true,
                join_by: 0,
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                node: rng.random_range(1..=cfg.nodes as u64),
                busy: None,
                next_at: rng.random_range(0..50),
                seq: 0,
                leases: Vec::new(),
            })
            .collect();
        Sim {
            next_id: cfg.nodes as u64 + 1,
            cfg,
            rng,
            now: 0,
            base: Instant::now(),
            slots,
            net: BTreeMap::new(),
            seq: 0,
            cut: BTreeMap::new(),
            clients,
            watchers: Vec::new(),
            history: Vec::new(),
            last_mod: BTreeMap::new(),
            observer: Arc::default(),
            election: ElectionSafety::default(),
            committed: Committed::default(),
            apply_order: ApplyOrder::default(),
            revisions: Revisions::default(),
            state_hash: StateHash::default(),
            report: Report::default(),
            next_fault: 0,
            pending_add: None,
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn run_all(&mut self) -> Result<(), String> {
        self.next_fault = self.fault_gap();
        // Watchers from the first revision: the whole key space with
        // prev_kv, and one key without. A third joins mid-run.
        let n = self.cfg.nodes as u64;
        let (a, b) = (self.rng.random_range(1..=n), self.rng.random_range(1..=n));
        self.watchers
            .push(Watcher::new(a, WatchRange::Prefix(b"k".to_vec()), 1, true));
        self.watchers
            .push(Watcher::new(b, WatchRange::Key(b"k0".to_vec()), 1, false));
        let third_at = self.rng.random_range(0..self.cfg.duration_ms.max(1));
        while self.now < self.cfg.duration_ms {
            if self.now == third_at
                && let Some(s) = self.slots.iter().find(|s| s.node.is_some())
            {
                // From a few revisions back, as a client resuming does.
                let current = s
                    .node
                    .as_ref()
                    .expect("running")
                    .state_machine()
                    .mvcc
                    .current_revision();
                let start = (current - self.rng.random_range(0..10)).max(1);
                self.watchers.push(Watcher::new(
                    s.id,
                    WatchRange::Prefix(b"k".to_vec()),
                    start,
                    true,
                ));
            }
            if self.cfg.fault_every_ms > 0 && self.now >= self.next_fault {
                self.fault()?;
                self.next_fault = self.now + self.fault_gap();
            }
            self.step(true)?;
        }
        // Heal: every link up, every node back, no loss; let the clients'
        // last requests finish and every member catch up.
        self.cut.clear();
        for s in &mut self.slots {
            if s.node.is_none() && !s.removed {
                s.restart_at = Some(self.now);
            }
        }
        let heal_until = self.now + 30_000;
        loop {
            self.step(false)?;
            if self.converged() || self.now >= heal_until {
                break;
            }
        }
        if !self.converged() {
            return Err(format!(
                "no convergence 30 s after healing: {}",
                self.describe()
            ));
        }
        self.final_checks()
    }

    fn fault_gap(&mut self) -> u64 {
        if self.cfg.fault_every_ms == 0 {
            return u64::MAX;
        }
        self.rng.random_range(1..=2 * self.cfg.fault_every_ms)
    }

    fn live_ids(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.node.is_some())
            .map(|s| s.id)
            .collect()
    }

    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    fn count(&mut self, what: &'static str) {
        *self.report.faults.entry(what).or_default() += 1;
        self.trace(what);
    }

    /// SIM_TRACE=1: prints what happens (debugging a seed).
    fn trace(&self, what: &str) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("[{} ms] {what} | {}", self.now, self.describe());
        }
    }

    /// One fault, chosen by the seed.
    fn fault(&mut self) -> Result<(), String> {
        let members: Vec<u64> = self
            .slots
            .iter()
            .filter(|s| !s.removed)
            .map(|s| s.id)
            .collect();
        let pick = members[self.rng.random_range(0..members.len())];
        self.trace(&format!("fault on n{pick}"));
        let heal = self.now + self.rng.random_range(200..2_000);
        match self.rng.random_range(0..100) {
            0..25 => {
                // Cut off both ways.
                for &o in &members {
                    if o != pick {
                        self.cut.insert((pick, o), heal);
                        self.cut.insert((o, pick), heal);
                    }
                }
                self.count("partition");
            }
            25..35 => {
                let others: Vec<u64> = members.iter().copied().filter(|&o| o != pick).collect();
                let o = others[self.rng.random_range(0..others.len())];
                if self.rng.random_bool(0.5) {
                    self.cut.insert((pick, o), heal);
                } else {
                    self.cut.insert((o, pick), heal);
                }
                self.count("one-way partition");
            }
            35..65 => {
                if self.crash(pick) {
                    self.count("crash");
                }
            }
            65..72 => {
                if let Some(s) = self.slot(pick)
                    && s.node.is_some()
                {
                    s.disk.lock().expect("disk").fail_next_sync = true;
                    self.count("fsync failure");
                }
            }
            72..85 => {
                let now = self.instant();
                let leader = self
                    .slots
                    .iter()
                    .find(|s| s.node.as_ref().is_some_and(|n| n.is_leader()))
                    .map(|s| s.id);
                if let Some(l) = leader {
                    let others: Vec<u64> = members.iter().copied().filter(|&o| o != l).collect();
                    let to = others[self.rng.random_range(0..others.len())];
                    if let Some(n) = self.slot(l).and_then(|s| s.node.as_mut()) {
                        n.transfer_leader(to, now);
                        self.count("leader transfer");
                    }
                }
            }
            85..92 if self.cfg.membership => self.member_change()?,
            _ => {
                // A burst of loss: every link of one node drops for a while
                // (kept short; the steady loss rate applies anyway).
                for &o in &members {
                    if o != pick && self.rng.random_bool(0.5) {
                        self.cut.insert((o, pick), self.now + 100);
                    }
                }
                self.count("loss burst");
            }
        }
        Ok(())
    }

    /// Crashes `id`: its process is gone, its disk keeps what a crash
    /// keeps. Returns false when it was not running.
    fn crash(&mut self, id: u64) -> bool {
        let restart = self.now + self.rng.random_range(50..1_500);
        let Some(i) = self.slots.iter().position(|s| s.id == id) else {
            return false;
        };
        let Some(n) = self.slots[i].node.as_ref() else {
            return false;
        };
        let before = (
            raft::Storage::last_index(n.log_store()).unwrap_or(0),
            n.commit_index(),
        );
        self.slots[i].node = None;
        self.slots[i].outbox.0.lock().expect("outbox").clear();
        self.slots[i]
            .disk
            .lock()
            .expect("disk")
            .crash(&mut self.rng);
        self.slots[i].restart_at = Some(restart);
        let (log, _, _) = disk::open(&self.slots[i].disk);
        self.trace(&format!(
            "n{id} crashed: log last {} commit {} before; last {} commit {} on disk",
            before.0,
            before.1,
            raft::Storage::last_index(&log).unwrap_or(0),
            raft::Storage::initial_state(&log)
                .map(|s| s.hard_state.commit)
                .unwrap_or(0)
        ));
        true
    }

    /// Removes a member (not the last voters' quorum) and adds a new one
    /// as a learner; the learner is promoted once it caught up.
    fn member_change(&mut self) -> Result<(), String> {
        let leader = self
            .slots
            .iter()
            .position(|s| s.node.as_ref().is_some_and(|n| n.is_leader()));
        let Some(li) = leader else { return Ok(()) };
        let st = self.slots[li].node.as_ref().expect("leader").status();
        // A learner that caught up is promoted first.
        if let Some(&l) = st.learners.first() {
            let caught_up = self
                .slots
                .iter()
                .find(|s| s.id == l)
                .and_then(|s| s.node.as_ref())
                .is_some_and(|n| n.status().applied_index + 5 >= st.commit_index);
            if caught_up {
                self.propose_conf_change(li, conf_change(l, ConfChangeType::AddNode));
                self.count("learner promoted");
            }
            return Ok(());
        }
        if st.voters.len() < self.cfg.nodes {
            return Ok(());
        }
        // Remove a follower, add a fresh node as a learner.
        let followers: Vec<u64> = st.voters.iter().copied().filter(|&v| v != st.id).collect();
        let gone = followers[self.rng.random_range(0..followers.len())];
        self.propose_conf_change(li, conf_change(gone, ConfChangeType::RemoveNode));
        let id = self.next_id;
        self.next_id += 1;
        // The add goes in once the removal applied (one change at a time):
        // proposed from the step loop below.
        self.pending_add = Some((gone, id, self.now + 3_000));
        self.count("member removed");
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> Result<(), String> {
        let id = self.slots[i].id;
        let bootstrap = if id <= self.cfg.nodes as u64 {
            (1..=self.cfg.nodes as u64)
                .map(|m| conf_change(m, ConfChangeType::AddNode))
                .collect()
        } else {
            Vec::new()
        };
        let (log, backend, restoring) = disk::open(&self.slots[i].disk);
        let mvcc = Mvcc::open(backend).map_err(|e| format!("node {id}: opening the store: {e}"))?;
        if let Some(data) = restoring {
            machine::restore(&mvcc, data)
                .map_err(|e| format!("node {id}: redoing a restore: {e}"))?;
        }
        let sm = Machine::new(id, mvcc, self.observer.clone());
        let cfg = NodeConfig {
            id,
            heartbeat_interval: Duration::from_millis(TICK_MS),
            election_ticks: ELECTION_TICKS,
            max_pending_proposals: 1024,
            snapshot_count: self.cfg.snapshot_count,
            bootstrap,
            on_sync: None,
        };
        let nonce: [u8; 8] = self.rng.random();
        let timeout = ELECTION_TICKS + self.rng.random_range(0..ELECTION_TICKS);
        let node = ManualNode::start(cfg, log, sm, self.slots[i].outbox.clone(), nonce, timeout)
            .map_err(|e| format!("node {id}: restart refused: {e}"))?;
        // Its log is compared again from what is committed in it now.
        self.committed.reset(id, 0);
        self.slots[i].node = Some(node);
        self.slots[i].restart_at = None;
        Ok(())
    }

    /// One simulated millisecond.
    fn step(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        self.report.steps += 1;
        let now = self.instant();
        // Restarts.
        for i in 0..self.slots.len() {
            if self.slots[i].restart_at.is_some_and(|t| t <= self.now) && !self.slots[i].removed {
                self.start_node(i)?;
            }
        }
        self.cut.retain(|_, until| *until > self.now);
        // Deliveries.
        let due: Vec<(u64, u64)> = self
            .net
            .range(..(self.now + 1, 0))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let p = self.net.remove(&k).expect("listed");
            let lost = self.cut.contains_key(&(p.from, p.to))
                || (faults && self.rng.random_range(0..1000) < self.cfg.loss_permille);
            let snapshot = p.msg.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = !lost
                && match self.slot(p.to).and_then(|s| s.node.as_mut()) {
                    Some(n) => {
                        n.step(p.msg, now);
                        true
                    }
                    None => false,
                };
            if !delivered {
                self.report.messages_lost += 1;
            }
            if snapshot && let Some(n) = self.slot(p.from).and_then(|s| s.node.as_mut()) {
                n.report_snapshot(p.to, delivered, now);
            }
        }
        // Ticks.
        for s in &mut self.slots {
            if (self.now + s.phase).is_multiple_of(TICK_MS)
                && let Some(n) = s.node.as_mut()
            {
                n.tick();
            }
        }
        // Clients.
        self.clients_step(faults)?;
        // Every node does what its input calls for.
        for i in 0..self.slots.len() {
            let Some(n) = self.slots[i].node.as_mut() else {
                continue;
            };
            if let Err(e) = n.process(now) {
                // A storage failure stops the node, as it stops the agent;
                // it is restarted (and its disk crashed) later.
                let id = self.slots[i].id;
                let _ = e;
                self.crash(id);
                self.count("stopped on storage failure");
            }
        }
        self.route()?;
        self.membership_step()?;
        self.check()?;
        self.poll_clients()?;
        self.poll_watchers()?;
        Ok(())
    }

    fn poll_watchers(&mut self) -> Result<(), String> {
        let running = self.live_ids();
        for w in 0..self.watchers.len() {
            let node = self.watchers[w].node;
            match self
                .slots
                .iter()
                .find(|s| s.id == node)
                .and_then(|s| s.node.as_ref())
            {
                Some(n) => self.watchers[w].poll(&n.state_machine().mvcc)?,
                // Its node is gone: the client library reconnects elsewhere
                // and resumes after the last revision it received.
                None if !running.is_empty() => {
                    self.watchers[w].node = running[self.rng.random_range(0..running.len())];
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Sends what the nodes sent, with delays; a snapshot carries the
    /// sender's store as its content, as the agent streams it.
    fn route(&mut self) -> Result<(), String> {
        for i in 0..self.slots.len() {
            let msgs = std::mem::take(&mut *self.slots[i].outbox.0.lock().expect("outbox"));
            let from = self.slots[i].id;
            for mut msg in msgs {
                self.report.messages += 1;
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    let Some(n) = self.slots[i].node.as_ref() else {
                        continue;
                    };
                    let mut data = Vec::new();
                    for chunk in n.state_machine().mvcc.snapshot_chunks(1 << 16) {
                        data.extend(chunk.map_err(|e| format!("node {from}: snapshot: {e}"))?);
                    }
                    msg.mut_snapshot().data = data.into();
                    self.report.snapshots_sent += 1;
                }
                let (lo, hi) = self.cfg.delay_ms;
                let at = self.now + self.rng.random_range(lo..=hi);
                self.seq += 1;
                let to = msg.to;
                self.net.insert((at, self.seq), Packet { from, to, msg });
            }
        }
        Ok(())
    }

    /// Proposes a membership change on the leader at slot `li`; its outcome
    /// shows in the configuration, so the answer is not awaited.
    fn propose_conf_change(&mut self, li: usize, cc: ConfChange) {
        let now = self.instant();
        if let Some(n) = self.slots[li].node.as_mut() {
            drop(n.propose_conf_change(cc, now));
        }
    }

    fn leader(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.node.as_ref().is_some_and(|n| n.is_leader()))
    }

    /// Completes a member change and retires removed members.
    fn membership_step(&mut self) -> Result<(), String> {
        let Some(li) = self.leader() else {
            return Ok(());
        };
        let st = self.slots[li].node.as_ref().expect("leader").status();
        let in_conf = |id: u64| st.voters.contains(&id) || st.learners.contains(&id);
        if let Some((gone, _, give_up)) = self.pending_add
            && in_conf(gone)
            && self.now >= give_up
        {
            // The removal was lost with a leader change.
            self.pending_add = None;
        }
        if let Some((gone, new, _)) = self.pending_add
            && !in_conf(gone)
        {
            self.propose_conf_change(li, conf_change(new, ConfChangeType::AddLearnerNode));
            self.slots.push(Slot {
                id: new,
                disk: Arc::new(Mutex::new(Journal::default())),
                outbox: Outbox::default(),
                node: None,
                restart_at: Some(self.now + 1),
                removed: false,
                phase: self.rng.random_range(0..TICK_MS),
                joined: false,
                join_by: self.now + 5_000,
            });
            self.pending_add = None;
            self.count("learner added");
        }
        for s in &mut self.slots {
            if s.removed {
                continue;
            }
            if in_conf(s.id) {
                s.joined = true;
            } else if s.joined || self.now > s.join_by {
                // The operator stops a removed member's agent.
                s.removed = true;
                s.node = None;
                s.restart_at = None;
            }
        }
        Ok(())
    }

    fn clients_step(&mut self, faults: bool) -> Result<(), String> {
        let now = self.instant();
        let running: Vec<u64> = self.live_ids();
        for c in 0..self.clients.len() {
            let cl = &self.clients[c];
            if cl.busy.is_some() || cl.next_at > self.now || !faults {
                continue;
            }
            if !running.contains(&cl.node) {
                if !running.is_empty() {
                    self.clients[c].node = running[self.rng.random_range(0..running.len())];
                }
                continue;
            }
            let seq = self.clients[c].seq;
            self.clients[c].seq += 1;
            let last_mod = self.last_mod.clone();
            let req = workload::next_request(
                &mut self.rng,
                c,
                seq,
                self.cfg.keys,
                &self.clients[c].leases,
                &|k| last_mod.get(k).copied().unwrap_or(0),
            );
            let node_id = self.clients[c].node;
            let node = self
                .slots
                .iter_mut()
                .find(|s| s.id == node_id)
                .and_then(|s| s.node.as_mut())
                .expect("running");
            let pending = match workload::command(&req) {
                Some(cmd) => Pending::Write(node.propose(cmd.encode_to_vec(), now)),
                None => {
                    let Req::Get { key } = &req else {
                        unreachable!("only gets read")
                    };
                    Pending::Read(node.read_index(now), key.clone())
                }
            };
            self.clients[c].busy = Some((req, self.now, pending));
        }
        Ok(())
    }

    fn poll_clients(&mut self) -> Result<(), String> {
        for c in 0..self.clients.len() {
            let node_id = self.clients[c].node;
            let Some((req, invoked, pending)) = self.clients[c].busy.as_mut() else {
                continue;
            };
            let timed_out = self.now >= *invoked + REQUEST_TIMEOUT_MS;
            let outcome = match pending {
                Pending::Write(rx) => match rx.try_recv() {
                    Ok(Ok(out)) => Some(workload::write_outcome(req, out)),
                    Ok(Err(cairn_raft::ProposeError::Stopped)) => Some(Outcome::Unknown),
                    Ok(Err(e)) => Some(Outcome::Failed(e.to_string())),
                    Err(TryRecvError::Closed) => Some(Outcome::Unknown),
                    Err(TryRecvError::Empty) => timed_out.then_some(Outcome::Unknown),
                },
                Pending::Read(rx, key) => match rx.try_recv() {
                    Ok(Ok(_index)) => {
                        let key = key.clone();
                        match self
                            .slots
                            .iter()
                            .find(|s| s.id == node_id)
                            .and_then(|s| s.node.as_ref())
                        {
                            Some(n) => Some(workload::read_outcome(&key, &n.state_machine().mvcc)),
                            None => Some(Outcome::Unknown),
                        }
                    }
                    Ok(Err(e)) => Some(Outcome::Failed(e.to_string())),
                    Err(TryRecvError::Closed) => Some(Outcome::Unknown),
                    Err(TryRecvError::Empty) => timed_out.then_some(Outcome::Unknown),
                },
            };
            let Some(outcome) = outcome else { continue };
            let (req, invoked, _) = self.clients[c].busy.take().expect("busy");
            match (&req, &outcome) {
                (Req::Put { key, .. }, Outcome::Put { revision }) => {
                    self.last_mod.insert(key.clone(), *revision);
                }
                (
                    Req::Cas { key, .. },
                    Outcome::Cas {
                        succeeded,
                        revision,
                        mod_revision,
                        ..
                    },
                ) => {
                    let m = if *succeeded { *revision } else { *mod_revision };
                    self.last_mod.insert(key.clone(), m);
                }
                (Req::Get { key }, Outcome::Get { mod_revision, .. }) => {
                    self.last_mod.insert(key.clone(), *mod_revision);
                }
                (Req::LeaseGrant { id }, Outcome::LeaseGrant { .. }) => {
                    self.clients[c].leases.push(*id);
                }
                (Req::LeaseRevoke { id }, _) => self.clients[c].leases.retain(|l| l != id),
                _ => {}
            }
            match &outcome {
                Outcome::Failed(_) => self.report.ops_failed += 1,
                Outcome::Unknown => self.report.ops_unknown += 1,
                _ => self.report.ops_ok += 1,
            }
            if matches!(outcome, Outcome::Failed(_) | Outcome::Unknown) {
                let running = self.live_ids();
                if !running.is_empty() {
                    self.clients[c].node = running[self.rng.random_range(0..running.len())];
                }
            }
            self.history.push(Record {
                client: c,
                req,
                invoked,
                completed: self.now,
                outcome,
            });
            self.clients[c].next_at = self.now + self.rng.random_range(0..20);
        }
        Ok(())
    }

    /// The per-step invariants.
    fn check(&mut self) -> Result<(), String> {
        let applied = std::mem::take(&mut *self.observer.lock().expect("observer"));
        for a in &applied {
            self.apply_order.applied(a)?;
            self.revisions.applied(a)?;
            self.state_hash.applied(a)?;
        }
        for s in &self.slots {
            let Some(n) = s.node.as_ref() else { continue };
            if n.is_leader() {
                self.election.leader(n.term(), s.id)?;
            }
            let first = raft::Storage::first_index(n.log_store()).unwrap_or(1);
            let from = (self.committed.checked(s.id) + 1).max(first);
            for i in from..=n.commit_index() {
                if let Some(e) = n.entry(i) {
                    self.committed.entry(s.id, &e)?;
                }
            }
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        if self.pending_add.is_some() || self.clients.iter().any(|c| c.busy.is_some()) {
            return false;
        }
        let Some(li) = self.leader() else {
            return false;
        };
        let leader = self.slots[li].node.as_ref().expect("leader");
        let commit = leader.commit_index();
        // Everything in the leader's log committed, including an entry of
        // its own term (until then, entries of earlier terms it holds are
        // not known committed).
        let last = raft::Storage::last_index(leader.log_store()).unwrap_or(0);
        if commit != last || leader.entry(commit).is_none_or(|e| e.term != leader.term()) {
            return false;
        }
        self.slots.iter().filter(|s| !s.removed).all(|s| {
            s.node
                .as_ref()
                .is_some_and(|n| n.status().applied_index == commit)
        })
    }

    fn describe(&self) -> String {
        let busy = self.clients.iter().filter(|c| c.busy.is_some()).count();
        let nodes = self
            .slots
            .iter()
            .map(|s| match &s.node {
                Some(n) => {
                    let st = n.status();
                    format!(
                        "n{}: term {} leader {} commit {} applied {}",
                        s.id, st.term, st.leader_id, st.commit_index, st.applied_index
                    )
                }
                None if s.removed => format!("n{}: removed", s.id),
                None => format!("n{}: down", s.id),
            })
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "{nodes}; member change pending: {:?}; clients waiting: {busy}",
            self.pending_add
        )
    }

    /// Once converged: the same key space everywhere, and a linearizable
    /// client history.
    fn final_checks(&mut self) -> Result<(), String> {
        crate::history::dump_if_asked(&self.history);
        let mut hashes = Vec::new();
        for s in &self.slots {
            if let Some(n) = &s.node {
                let h = n
                    .state_machine()
                    .mvcc
                    .hash_kv(0)
                    .map_err(|e| format!("n{}: hash_kv: {e}", s.id))?;
                hashes.push((s.id, h.0, h.2));
            }
        }
        if hashes
            .windows(2)
            .any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2))
        {
            return Err(format!("HashKV differs after convergence: {hashes:?}"));
        }
        self.report.ops = self.history.len();
        self.report.entries_committed = self.committed.highest();
        self.report.entries_applied = self.apply_order.applied;
        self.report.revisions = self.revisions.highest();
        self.report.terms_with_leader = self.election.terms();
        self.report.state_hashes_compared = self.state_hash.compared;
        if let Ok(key) = std::env::var("SIM_DUMP")
            && let Some(n) = self.slots.iter().find_map(|s| s.node.as_ref())
        {
            // The key's versions as the store holds them.
            let mvcc = &n.state_machine().mvcc;
            let mut last = None;
            for rev in 1..=mvcc.current_revision() {
                let r = mvcc.range(&cairn_proto::etcdserverpb::RangeRequest {
                    key: key.clone().into_bytes(),
                    revision: rev,
                    ..Default::default()
                });
                let now = r.ok().and_then(|r| r.kvs.first().cloned()).map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.mod_revision,
                        kv.lease,
                    )
                });
                if now != last {
                    eprintln!("store: at revision {rev} {key} = {now:?}");
                    last = now;
                }
            }
        }
        if let Some(n) = self.slots.iter().find_map(|s| s.node.as_ref()) {
            self.report.answers_checked =
                crate::invariants::answers::check(&self.history, &n.state_machine().mvcc)?;
        }
        if let Some(n) = self.slots.iter().find_map(|s| s.node.as_ref()) {
            self.report.watch_events_checked =
                crate::watchers::check(&self.watchers, &n.state_machine().mvcc)?;
        }
        self.report.history_states = crate::history::check(&self.history)?;
        Ok(())
    }
}
