//! The driver: one OS thread owns the `RawNode`, the log store and the state
//! machine. Callers talk to it through a bounded queue; everything that
//! arrives while the thread is busy is proposed together and made durable by
//! one synced append (group commit).
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeV2, EntryType};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::{oneshot, watch};

use crate::{ConfState, Entry, LogStore, NodeConfig, NodeStatus, ProposeError, StateMachine};

/// Most queued requests taken in one turn of the loop.
const MAX_BATCH: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

enum Msg<O> {
    Propose { data: Vec<u8>, tx: Reply<O> },
    Read { tx: Reply<u64> },
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("log storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

impl From<crate::StorageError> for StartError {
    fn from(e: crate::StorageError) -> Self {
        StartError::Storage(e.0)
    }
}

/// Handle to a running consensus node. Cheap to clone.
pub struct Node<O> {
    inner: Arc<Inner<O>>,
}

impl<O> Clone for Node<O> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<O> {
    tx: SyncSender<Msg<O>>,
    status: watch::Receiver<NodeStatus>,
    thread: Mutex<Option<JoinHandle<()>>>,
    request_timeout: Duration,
}

impl<O: Send + 'static> Node<O> {
    /// Starts the node on its own thread. A store with no configuration is
    /// bootstrapped as a one-voter cluster of `cfg.id`, which then elects
    /// itself at once.
    pub fn start<S, M>(cfg: NodeConfig, mut store: S, sm: M) -> Result<Node<O>, StartError>
    where
        S: LogStore,
        M: StateMachine<Output = O>,
    {
        let state = store.initial_state()?;
        let mut conf = state.conf_state.clone();
        if conf.voters.is_empty() && conf.learners.is_empty() {
            conf = ConfState::default();
            conf.voters = vec![cfg.id];
            store.set_conf_state(&conf)?;
        }
        let applied = sm.applied_index().min(state.hard_state.commit);
        let rcfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks.max(2),
            heartbeat_tick: 1,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        rcfg.validate()?;
        let mut raw = RawNode::new(&rcfg, store, &crate::log::logger())?;
        if conf.voters == [cfg.id] {
            raw.campaign()?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_pending_proposals.max(1));
        let (status_tx, status_rx) = watch::channel(NodeStatus {
            id: cfg.id,
            applied_index: sm.applied_index(),
            ..Default::default()
        });
        let request_timeout =
            Duration::from_secs(5) + 2 * cfg.heartbeat_interval * cfg.election_ticks.max(2) as u32;
        let nonce = boot_nonce();
        let mut driver = Driver {
            raw,
            sm,
            rx,
            status: status_tx,
            cfg,
            nonce,
            next_id: 1,
            waiters: HashMap::new(),
            reads_unsent: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_waiting_apply: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("cairn-raft".into())
            .spawn(move || driver.run())
            .map_err(|e| StartError::Storage(format!("cannot start the raft thread: {e}")))?;
        Ok(Node {
            inner: Arc::new(Inner {
                tx,
                status: status_rx,
                thread: Mutex::new(Some(thread)),
                request_timeout,
            }),
        })
    }

    /// Replicates `data` and returns what the state machine made of it once
    /// it is committed, durable and applied.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Propose { data, tx })?;
        self.wait(rx).await
    }

    /// A linearizable read point: returns once everything committed before
    /// the call is applied here (ReadIndex).
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Read { tx })?;
        self.wait(rx).await
    }

    fn send(&self, m: Msg<O>) -> Result<(), ProposeError> {
        self.inner.tx.try_send(m).map_err(|e| match e {
            TrySendError::Full(_) => ProposeError::TooManyRequests,
            TrySendError::Disconnected(_) => ProposeError::Stopped,
        })
    }

    async fn wait<T>(
        &self,
        rx: oneshot::Receiver<Result<T, ProposeError>>,
    ) -> Result<T, ProposeError> {
        match tokio::time::timeout(self.inner.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout),
        }
    }

    pub fn status(&self) -> NodeStatus {
        self.inner.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<NodeStatus> {
        self.inner.status.clone()
    }

    /// Stops the driver after the work already queued; waits for it.
    pub fn shutdown(&self) {
        let _ = self.inner.tx.send(Msg::Shutdown);
        let handle = self.inner.thread.lock().expect("thread lock").take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

/// Distinguishes this process's proposals from entries proposed before a
/// restart that are replayed from the log.
fn boot_nonce() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish().to_be_bytes()
}

fn parse_conf_change<M: protobuf::Message>(e: &Entry) -> Result<M, String> {
    M::parse_from_bytes(&e.data)
        .map_err(|err| format!("raft entry {} is not a conf change: {err}", e.index))
}

struct Driver<S: LogStore, M: StateMachine> {
    raw: RawNode<S>,
    sm: M,
    rx: Receiver<Msg<M::Output>>,
    status: watch::Sender<NodeStatus>,
    cfg: NodeConfig,
    nonce: [u8; 8],
    next_id: u64,
    waiters: HashMap<u64, Reply<M::Output>>,
    reads_unsent: Vec<Reply<u64>>,
    reads_in_flight: HashMap<u64, Vec<Reply<u64>>>,
    reads_waiting_apply: Vec<(u64, Vec<Reply<u64>>)>,
}

impl<S: LogStore, M: StateMachine> Driver<S, M> {
    fn run(&mut self) {
        let tick = self.cfg.heartbeat_interval.max(Duration::from_millis(1));
        let mut next_tick = Instant::now() + tick;
        let outcome = loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    if !self.handle(m) {
                        break Ok(());
                    }
                    let mut stop = false;
                    for _ in 0..MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(m) => {
                                if !self.handle(m) {
                                    stop = true;
                                    break;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                stop = true;
                                break;
                            }
                        }
                    }
                    if stop {
                        break Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick += tick;
                if next_tick < now {
                    next_tick = now + tick;
                }
            }
            // A leader answers ReadIndex only once it has committed an entry
            // of its own term; raft-rs silently drops earlier requests.
            let can_read =
                self.raw.raft.state != StateRole::Leader || self.raw.raft.commit_to_current_term();
            if !self.reads_unsent.is_empty() && can_read {
                let id = self.take_id();
                self.raw.read_index(self.context(id));
                self.reads_in_flight
                    .insert(id, std::mem::take(&mut self.reads_unsent));
            }
            if let Err(e) = self.on_ready() {
                break Err(e);
            }
            self.publish(None);
        };
        let fatal = outcome.err();
        if let Some(e) = &fatal {
            tracing::error!(error = %e, "raft node stopped on a storage failure");
        }
        self.fail_all(ProposeError::Stopped);
        self.publish(fatal);
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn context(&self, id: u64) -> Vec<u8> {
        let mut c = self.nonce.to_vec();
        c.extend_from_slice(&id.to_be_bytes());
        c
    }

    fn id_of(&self, ctx: &[u8]) -> Option<u64> {
        if ctx.len() != 16 || ctx[..8] != self.nonce {
            return None;
        }
        Some(u64::from_be_bytes(ctx[8..].try_into().ok()?))
    }

    /// Returns false to stop.
    fn handle(&mut self, m: Msg<M::Output>) -> bool {
        match m {
            Msg::Shutdown => return false,
            Msg::Propose { data, tx } => {
                if self.waiters.len() >= self.cfg.max_pending_proposals {
                    let _ = tx.send(Err(ProposeError::TooManyRequests));
                } else if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = tx.send(Err(ProposeError::NoLeader));
                } else {
                    let id = self.take_id();
                    match self.raw.propose(self.context(id), data) {
                        Ok(()) => {
                            self.waiters.insert(id, tx);
                        }
                        Err(raft::Error::ProposalDropped) => {
                            let _ = tx.send(Err(ProposeError::NoLeader));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "proposal refused by raft");
                            let _ = tx.send(Err(ProposeError::NoLeader));
                        }
                    }
                }
            }
            Msg::Read { tx } => {
                if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = tx.send(Err(ProposeError::NoLeader));
                } else {
                    self.reads_unsent.push(tx);
                }
            }
        }
        true
    }

    fn on_ready(&mut self) -> Result<(), String> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // Messages to peers come with the replicated cluster; a single voter
        // has none to send.
        let _ = rd.take_messages();
        if !rd.snapshot().is_empty() {
            return Err("installing a raft snapshot is not supported by a single member".into());
        }
        if let Some(ss) = rd.ss()
            && ss.raft_state != StateRole::Leader
        {
            // Reads in flight were for a leadership this node no longer has.
            for (_, waiters) in self.reads_in_flight.drain() {
                for w in waiters {
                    let _ = w.send(Err(ProposeError::LeaderChanged));
                }
            }
        }
        // Entries and hard state are durable before anything that depends on
        // them: their application, and any reply.
        if !rd.entries().is_empty() || rd.hs().is_some() {
            let sync = rd.must_sync();
            self.raw
                .mut_store()
                .append(rd.entries(), rd.hs(), sync)
                .map_err(|e| e.to_string())?;
        }
        self.apply(rd.take_committed_entries())?;
        for rs in rd.take_read_states() {
            if let Some(id) = self.id_of(&rs.request_ctx)
                && let Some(waiters) = self.reads_in_flight.remove(&id)
            {
                self.reads_waiting_apply.push((rs.index, waiters));
            }
        }
        let _ = rd.take_persisted_messages();
        let mut light = self.raw.advance(rd);
        if light.commit_index().is_some() {
            let hs = self.raw.raft.hard_state();
            self.raw
                .mut_store()
                .append(&[], Some(&hs), false)
                .map_err(|e| e.to_string())?;
        }
        let _ = light.take_messages();
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.answer_reads();
        self.maybe_compact()
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        for e in entries {
            if e.index <= self.sm.applied_index() {
                continue; // already applied before a restart
            }
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => self.sm.apply_empty(e.index),
                EntryType::EntryNormal => {
                    let out = self.sm.apply(e.index, e.term, &e.data);
                    if let Some(id) = self.id_of(&e.context)
                        && let Some(w) = self.waiters.remove(&id)
                    {
                        let _ = w.send(Ok(out));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cs = if e.get_entry_type() == EntryType::EntryConfChange {
                        self.raw
                            .apply_conf_change(&parse_conf_change::<ConfChange>(&e)?)
                    } else {
                        self.raw
                            .apply_conf_change(&parse_conf_change::<ConfChangeV2>(&e)?)
                    }
                    .map_err(|err| err.to_string())?;
                    self.set_conf_state(&cs)?;
                    self.sm.apply_empty(e.index);
                }
            }
        }
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), String> {
        self.raw
            .mut_store()
            .set_conf_state(cs)
            .map_err(|e| e.to_string())
    }

    fn answer_reads(&mut self) {
        let applied = self.sm.applied_index();
        self.reads_waiting_apply.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(*index));
            }
            false
        });
    }

    /// Drops applied entries once more than `snapshot_count` have piled up,
    /// keeping a tail for members that lag a little.
    fn maybe_compact(&mut self) -> Result<(), String> {
        let applied = self.sm.applied_index();
        let first = self.raw.store().first_index().map_err(|e| e.to_string())?;
        let count = self.cfg.snapshot_count.max(1);
        if applied >= first + count {
            let keep = (count / 2).min(5000);
            let to = applied - keep;
            if to >= first {
                self.raw
                    .mut_store()
                    .compact(to)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn fail_all(&mut self, e: ProposeError) {
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(e.clone()));
        }
        let reads = self
            .reads_unsent
            .drain(..)
            .chain(self.reads_in_flight.drain().flat_map(|(_, w)| w))
            .chain(self.reads_waiting_apply.drain(..).flat_map(|(_, w)| w));
        for w in reads.collect::<Vec<_>>() {
            let _ = w.send(Err(e.clone()));
        }
    }

    fn publish(&self, fatal: Option<String>) {
        let r = &self.raw.raft;
        let next = NodeStatus {
            id: self.cfg.id,
            leader_id: if fatal.is_some() { 0 } else { r.leader_id },
            term: r.term,
            commit_index: r.raft_log.committed,
            applied_index: self.sm.applied_index(),
            fatal,
        };
        self.status.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }
}
