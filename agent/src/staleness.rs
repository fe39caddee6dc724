//! How far this member's data is behind the leader's, for `Status`,
//! `/metrics` and `--max-stale`.
//!
//! A member that does not lead asks the leader, every probe interval, for
//! its revision and applied index (`Req::Progress`). The member is behind by
//! the leader's revision at that moment minus its own now, and it was
//! *current* at the moment it sent a probe once it has applied up to the
//! index the leader answered. "Behind in time" is the time since it was last
//! current: an upper bound on how old the data it serves can be. A member
//! cut off from the leader gets no answers, so its time grows until it
//! hears from the leader again.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::cairnpb::peer_request::Req;

use crate::api::Api;

pub struct Staleness {
    state: Mutex<State>,
}

struct State {
    started: Instant,
    /// The leader's revision at the last answered probe.
    leader_revision: i64,
    /// When this member was last known to hold everything the leader had
    /// applied.
    current_at: Option<Instant>,
    /// The last answered probe not yet caught up with: (the leader's applied
    /// index, when the probe was sent).
    pending: Option<(u64, Instant)>,
}

/// What `Status` and `/metrics` report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behind {
    pub revisions: i64,
    pub ms: u64,
}

impl Default for Staleness {
    fn default() -> Self {
        Self::new()
    }
}

impl Staleness {
    pub fn new() -> Staleness {
        Staleness {
            state: Mutex::new(State {
                started: Instant::now(),
                leader_revision: 0,
                current_at: None,
                pending: None,
            }),
        }
    }

    /// The leader answered a probe sent at `sent`.
    pub fn observe(&self, sent: Instant, leader_revision: i64, leader_applied: u64, applied: u64) {
        let mut s = self.state.lock().unwrap();
        s.leader_revision = leader_revision;
        if applied >= leader_applied {
            s.current_at = Some(sent);
            s.pending = None;
        } else {
            s.pending = Some((leader_applied, sent));
        }
    }

    /// This member leads: its data is the newest there is.
    pub fn leading(&self, revision: i64) {
        let mut s = self.state.lock().unwrap();
        s.leader_revision = revision;
        s.current_at = Some(Instant::now());
        s.pending = None;
    }

    /// How far behind this member is, given its applied index and revision
    /// now.
    pub fn behind(&self, applied: u64, revision: i64) -> Behind {
        let mut s = self.state.lock().unwrap();
        if let Some((index, sent)) = s.pending
            && applied >= index
        {
            s.current_at = Some(sent);
            s.pending = None;
        }
        let since = s.current_at.unwrap_or(s.started);
        Behind {
            revisions: (s.leader_revision - revision).max(0),
            ms: since.elapsed().as_millis() as u64,
        }
    }
}

/// How often a member probes the leader: once a second, more often when
/// `--max-stale` asks for a finer bound.
pub fn probe_interval(max_stale: Option<Duration>) -> Duration {
    let second = Duration::from_secs(1);
    match max_stale {
        Some(m) => (m / 4).clamp(Duration::from_millis(20), second),
        None => second,
    }
}

/// Probes the leader until `stop`.
pub async fn probe_loop(api: Api, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if api.is_leader() {
            api.staleness.leading(api.mvcc.current_revision());
            continue;
        }
        if !api.has_leader() {
            continue;
        }
        let sent = Instant::now();
        let answer = tokio::time::timeout(
            every.max(Duration::from_millis(500)),
            api.on_leader(Req::Progress(true)),
        )
        .await;
        if let Ok(Ok(resp)) = answer {
            let applied = api.node.status().applied_index;
            api.staleness
                .observe(sent, resp.revision, resp.commit_index, applied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_once_the_answered_index_is_applied() {
        let s = Staleness::new();
        let sent = Instant::now();
        s.observe(sent, 50, 100, 90);
        let b = s.behind(90, 40);
        assert_eq!(b.revisions, 10);
        // Not yet current: the time counts from the start.
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.behind(99, 45).ms >= 5);
        // Applying up to the leader's index makes it current as of `sent`.
        let b = s.behind(100, 50);
        assert_eq!(b.revisions, 0);
        assert!(b.ms < sent.elapsed().as_millis() as u64 + 1);
        s.leading(60);
        assert_eq!(s.behind(0, 60).revisions, 0);
        assert_eq!(s.behind(0, 55).revisions, 5);
    }
}
