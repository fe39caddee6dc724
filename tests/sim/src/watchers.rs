//! Watchers of a simulated run: each reads the events its node's store
//! serves (`Mvcc::events`, the store side of the agent's watch path: what
//! a watch replays from), from its start revision on, and moves to another
//! node when its node goes down, resuming after the last revision it got,
//! as an etcd client library does. At the end every stream is checked
//! against the committed history by `cairn-check`'s watch checker: ordered,
//! contiguous, no duplicates, the right `prev_kv`, nothing before the start
//! revision (etcd #15271 sent events from before it after a restart).

use cairn_check::watch::{self, Committed, EventKind, KeyValue, Received, Stream, WatchRange};
use cairn_proto::mvccpb;

use crate::disk::SimBackend;

pub struct Watcher {
    pub node: u64,
    pub stream: Stream,
    /// The next revision to read.
    next: i64,
}

fn kv(k: &mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: k.key.clone(),
        value: k.value.clone(),
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        lease: k.lease,
    }
}

pub fn event(e: &mvccpb::Event, prev_kv: bool) -> watch::Event {
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 {
        EventKind::Delete
    } else {
        EventKind::Put
    };
    watch::Event {
        kind,
        kv: e.kv.as_ref().map(kv).unwrap_or_default(),
        prev_kv: if prev_kv {
            e.prev_kv.as_ref().map(kv)
        } else {
            None
        },
    }
}

fn matches(range: &WatchRange, key: &[u8]) -> bool {
    match range {
        WatchRange::Key(k) => k == key,
        WatchRange::Prefix(p) => key.starts_with(p),
        WatchRange::Span { start, end } => {
            key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
        }
    }
}

impl Watcher {
    pub fn new(node: u64, range: WatchRange, start: i64, prev_kv: bool) -> Watcher {
        Watcher {
            node,
            stream: Stream::new(range, start, prev_kv),
            next: start,
        }
    }

    /// Reads what the node's store has beyond what was received.
    pub fn poll(&mut self, mvcc: &cairn_mvcc::Mvcc<SimBackend>) -> Result<(), String> {
        let current = mvcc.current_revision();
        if current < self.next {
            return Ok(());
        }
        let events = mvcc
            .events(self.next, current, usize::MAX, self.stream.prev_kv)
            .map_err(|e| format!("watch: node {}: events from {}: {e}", self.node, self.next))?;
        for e in &events {
            let key = e.kv.as_ref().map(|k| k.key.as_slice()).unwrap_or_default();
            if matches(&self.stream.range, key) {
                self.stream
                    .received
                    .push(Received::Event(event(e, self.stream.prev_kv)));
            }
        }
        self.next = current + 1;
        Ok(())
    }
}

/// Checks every stream against the store's full history.
pub fn check(watchers: &[Watcher], mvcc: &cairn_mvcc::Mvcc<SimBackend>) -> Result<usize, String> {
    let all = mvcc
        .events(1, mvcc.current_revision(), usize::MAX, true)
        .map_err(|e| format!("watch: the committed history: {e}"))?;
    let committed = Committed::new(all.iter().map(|e| event(e, true)).collect());
    let streams: Vec<Stream> = watchers.iter().map(|w| w.stream.clone()).collect();
    match watch::check(&committed, &streams) {
        Ok(r) => Ok(r.events),
        Err(v) => Err(format!("watch: {v}")),
    }
}
