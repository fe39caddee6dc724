//! Recently applied events, shared by every watch stream.
//!
//! The applier publishes each revision's events here in order. Streams that
//! are caught up read them from this bounded ring; a stream that fell behind
//! further than the ring reaches reads from the store instead
//! (`Mvcc::events`). Either way a stream only ever holds the events of the
//! step it is sending, so a slow reader costs no memory.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cairn_proto::mvccpb::Event;
use prost::Message;
use tokio::sync::watch;

use crate::limits;

pub type RevisionEvents = (i64, Arc<Vec<Event>>);

pub struct WatchHub {
    ring: Mutex<Ring>,
    revision: watch::Sender<i64>,
}

struct Ring {
    entries: VecDeque<(i64, Arc<Vec<Event>>, usize)>,
    /// Every event with a revision >= this is in `entries`.
    covered_from: i64,
    bytes: usize,
}

// === impl WatchHub ===

impl WatchHub {
    pub fn new(current_revision: i64) -> Self {
        WatchHub {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                covered_from: current_revision + 1,
                bytes: 0,
            }),
            revision: watch::channel(current_revision).0,
        }
    }

    /// Called by the applier, in revision order.
    pub fn publish(&self, revision: i64, events: Vec<Event>) {
        let size: usize = events.iter().map(|e| e.encoded_len()).sum();
        {
            let mut ring = self.ring.lock().expect("hub lock");
            ring.entries.push_back((revision, Arc::new(events), size));
            ring.bytes += size;
            while ring.entries.len() > limits::WATCH_RING_REVISIONS
                || (ring.bytes > limits::WATCH_RING_BYTES && ring.entries.len() > 1)
            {
                let (rev, _, sz) = ring.entries.pop_front().expect("non-empty");
                ring.bytes -= sz;
                ring.covered_from = rev + 1;
            }
        }
        self.revision.send_replace(revision);
    }

    /// After a snapshot replaced the store: nothing in the ring is known to
    /// be complete any more; watchers read what they miss from the store.
    pub fn reset(&self, revision: i64) {
        {
            let mut ring = self.ring.lock().expect("hub lock");
            ring.entries.clear();
            ring.bytes = 0;
            ring.covered_from = revision + 1;
        }
        self.revision.send_replace(revision);
    }

    /// The newest revision whose events have been published.
    pub fn current(&self) -> i64 {
        *self.revision.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Events of revisions in `[from, to]`, or `None` when the ring no longer
    /// holds all of them and the caller must read the store.
    pub fn get(&self, from: i64, to: i64) -> Option<Vec<RevisionEvents>> {
        let ring = self.ring.lock().expect("hub lock");
        if from < ring.covered_from {
            return None;
        }
        let start = ring.entries.partition_point(|(rev, _, _)| *rev < from);
        Some(
            ring.entries
                .iter()
                .skip(start)
                .take_while(|(rev, _, _)| *rev <= to)
                .map(|(rev, evs, _)| (*rev, evs.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn ev(rev: i64) -> Vec<Event> {
        vec![Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }]
    }

    #[test]
    fn ring_serves_covered_revisions_and_refuses_older_ones() {
        let hub = WatchHub::new(1);
        for rev in 2..=(limits::WATCH_RING_REVISIONS as i64 + 11) {
            hub.publish(rev, ev(rev));
        }
        assert!(
            hub.get(2, 20).is_none(),
            "evicted revisions must go to the store"
        );
        let last = limits::WATCH_RING_REVISIONS as i64 + 11;
        let got = hub.get(last - 2, last).expect("recent revisions are held");
        assert_eq!(
            got.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![last - 2, last - 1, last]
        );
        assert_eq!(hub.current(), last);
    }
}
