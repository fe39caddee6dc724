//! A consensus node driven by its caller: no thread and no clock of its
//! own. It is the same driver as [`crate::Node`] (the same request
//! handling, persistence order, apply and ReadIndex code); only the loop
//! around it differs. The deterministic simulator runs several of these in
//! one thread on a simulated clock, so that one seed replays exactly.
//!
//! Raft's election timeout is the one source of randomness in raft-rs; a
//! `ManualNode` takes a fixed timeout (chosen by the caller's seeded random
//! generator) so that nothing random is left outside the seed.
use std::time::Instant;

use raft::StateRole;
use tokio::sync::{oneshot, watch};

use crate::node::{Driver, Msg};
use crate::{
    ConfChange, Entry, LogStore, Message, NodeConfig, NodeStatus, ProposeError, StartError,
    StateMachine, Transport,
};

/// The answer to a request, to poll with `try_recv`. Closed when the node
/// crashed or stopped before answering.
pub type Answer<T> = oneshot::Receiver<Result<T, ProposeError>>;

pub struct ManualNode<S: LogStore, M: StateMachine, T: Transport> {
    driver: Driver<S, M, T>,
    /// Kept so the driver's queue stays open; requests go straight in.
    _status: watch::Receiver<NodeStatus>,
    fatal: Option<String>,
}

impl<S: LogStore, M: StateMachine, T: Transport> ManualNode<S, M, T> {
    /// Opens the node over `store` and `sm` (bootstrapping an empty store
    /// from `cfg.bootstrap`, as [`crate::Node::start`] does). `nonce` tells
    /// this incarnation's proposals apart from replayed ones; the election
    /// timeout is fixed at `election_timeout` ticks (at least
    /// `cfg.election_ticks`).
    pub fn start(
        cfg: NodeConfig,
        store: S,
        sm: M,
        transport: T,
        nonce: [u8; 8],
        election_timeout: usize,
    ) -> Result<Self, StartError> {
        let (_tx, rx) = std::sync::mpsc::sync_channel(1);
        let ticks = cfg.election_ticks.max(2);
        let timeout = election_timeout.max(ticks);
        let (driver, status) = Driver::new(cfg, store, sm, transport, rx, nonce, |c| {
            c.min_election_tick = timeout;
            c.max_election_tick = timeout + 1;
        })?;
        Ok(ManualNode {
            driver,
            _status: status,
            fatal: None,
        })
    }

    fn input(&mut self, m: Msg<M::Output>, now: Instant) {
        if self.fatal.is_none() {
            self.driver.handle(m, now);
        }
    }

    /// Proposes a command; answered once it is committed and applied here.
    pub fn propose(&mut self, data: Vec<u8>, now: Instant) -> Answer<M::Output> {
        let (tx, rx) = oneshot::channel();
        self.input(Msg::Propose { data, tx }, now);
        rx
    }

    /// Asks for a linearizable read point (ReadIndex).
    pub fn read_index(&mut self, now: Instant) -> Answer<u64> {
        let (tx, rx) = oneshot::channel();
        self.input(Msg::Read { tx }, now);
        rx
    }

    pub fn propose_conf_change(&mut self, cc: ConfChange, now: Instant) -> Answer<M::Output> {
        let (tx, rx) = oneshot::channel();
        self.input(Msg::ConfChange { cc, tx }, now);
        rx
    }

    /// A message from a peer.
    pub fn step(&mut self, m: Message, now: Instant) {
        self.input(Msg::Step(Box::new(m)), now);
    }

    pub fn transfer_leader(&mut self, to: u64, now: Instant) {
        self.input(Msg::Transfer(to), now);
    }

    pub fn report_unreachable(&mut self, id: u64, now: Instant) {
        self.input(Msg::Unreachable(id), now);
    }

    pub fn report_snapshot(&mut self, to: u64, ok: bool, now: Instant) {
        self.input(Msg::SnapshotDone { to, ok }, now);
    }

    /// One heartbeat interval passed.
    pub fn tick(&mut self) {
        if self.fatal.is_none() {
            self.driver.raw.tick();
        }
    }

    /// Runs what the input so far calls for: persist, send, apply, answer.
    /// A storage failure stops the node for good (as [`crate::Node`] does):
    /// every waiting request fails and the error is returned.
    pub fn process(&mut self, now: Instant) -> Result<(), String> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        if let Err(e) = self.driver.process(now) {
            self.driver.fail_all(ProposeError::Stopped);
            self.fatal = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    pub fn status(&self) -> NodeStatus {
        self.driver.status_now(self.fatal.clone())
    }

    pub fn is_leader(&self) -> bool {
        self.fatal.is_none() && self.driver.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.driver.raw.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.driver.raw.raft.raft_log.committed
    }

    /// The entry at `index` in this node's log (stored or not yet), if it
    /// is still there.
    pub fn entry(&self, index: u64) -> Option<Entry> {
        let log = &self.driver.raw.raft.raft_log;
        log.slice(
            index,
            index + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .ok()
        .and_then(|mut v| v.pop())
    }

    pub fn state_machine(&self) -> &M {
        &self.driver.sm
    }

    pub fn state_machine_mut(&mut self) -> &mut M {
        &mut self.driver.sm
    }

    pub fn log_store(&self) -> &S {
        &self.driver.raw.store().inner
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.driver.transport
    }
}
