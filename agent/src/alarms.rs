//! etcd's alarms as the agent raises them: NOSPACE when a write would take
//! the MVCC tables past `--quota-backend-bytes` or the free space of the
//! data directory's filesystem below `--disk-reserve-bytes`, CORRUPT when members'
//! HashKV disagree at the same revision (at start with
//! `--initial-corrupt-check`, every `--corrupt-check-time` on the leader).
//!
//! The alarms themselves are replicated state (`cairn_mvcc::alarm`): raised
//! and cleared through the log, refused writes decided at apply time.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_mvcc::{Backend, MvccError, alarm};
use cairn_proto::cairnpb::command::Op;
use cairn_proto::cairnpb::{Command, PeerRequest, peer_request::Req};
use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType};
use prost::Message;
use tonic::Status;

use crate::api::{Api, status};
use crate::server::Server;

/// etcd's default `--quota-backend-bytes` (also what 0 means).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// `--disk-reserve-bytes`' default: room for fjall to flush its memtables
/// (8 MiB each) and merge tables once writes stop, and for the NOSPACE
/// alarm itself to go through the log. etcd has no such guard: a full
/// disk stops it with a write error (as it would stop cairn).
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 << 20;

/// How long a measured size is reused: measuring takes a lock per table,
/// and the quota is checked on every write.
const SIZE_CACHE: Duration = Duration::from_millis(50);

/// The space quota of the MVCC tables.
pub struct Quota {
    bytes: u64,
    disk_reserve_bytes: u64,
    /// When, the tables' size, the filesystem's free bytes.
    measured: Mutex<Option<(Instant, u64, Option<u64>)>>,
    /// A NOSPACE proposal from the applier's check is under way.
    raising: AtomicBool,
}

impl Quota {
    pub fn new(bytes: u64, disk_reserve_bytes: u64) -> Quota {
        Quota {
            bytes: if bytes == 0 {
                DEFAULT_QUOTA_BYTES
            } else {
                bytes
            },
            disk_reserve_bytes,
            measured: Mutex::new(None),
            raising: AtomicBool::new(false),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk_reserve_bytes
    }

    /// The tables' size and the filesystem's free bytes, measured at most
    /// every [`SIZE_CACHE`].
    pub fn measure<B: Backend>(&self, backend: &B) -> (u64, Option<u64>) {
        let mut m = self.measured.lock().expect("quota lock");
        match *m {
            Some((at, size, free)) if at.elapsed() < SIZE_CACHE => (size, free),
            _ => {
                let size = backend.size_bytes();
                let free = backend.disk_available_bytes();
                *m = Some((Instant::now(), size, free));
                (size, free)
            }
        }
    }

    /// The tables' size, measured at most every [`SIZE_CACHE`].
    pub fn size<B: Backend>(&self, backend: &B) -> u64 {
        self.measure(backend).0
    }

    /// etcd's `BackendQuota.Available`: the size plus the request's cost
    /// stays below the quota; and cairn's: the disk keeps its reserve.
    pub fn fits<B: Backend>(&self, backend: &B, cost: u64) -> bool {
        if cost == 0 {
            return true;
        }
        let (size, free) = self.measure(backend);
        size.saturating_add(cost) < self.bytes
            && free.is_none_or(|f| f >= self.disk_reserve_bytes.saturating_add(cost))
    }

    /// After a write was applied: true once when the tables have grown past
    /// the quota, so that the caller raises NOSPACE (etcd's
    /// `quotaApplierV3`, which applies the write and raises the alarm).
    pub fn exceeded_after_apply<B: Backend>(
        &self,
        backend: &B,
        op: &Op,
        active: &[AlarmMember],
    ) -> bool {
        let cost = alarm::cost(op);
        cost > 0
            && !self.fits(backend, cost)
            && !active.iter().any(|a| a.alarm == AlarmType::Nospace as i32)
            && !self.raising.swap(true, Ordering::AcqRel)
    }

    fn raised(&self) {
        self.raising.store(false, Ordering::Release);
    }
}

/// An alarm as etcd's Status lists it (gogoproto's text form of
/// `AlarmMember`, trailing space included).
pub fn describe(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name())
        .unwrap_or("UNKNOWN");
    format!("memberID:{} alarm:{} ", a.member_id, name)
}

/// What `/health` reports for the raised alarms: `ALARM NOSPACE` for the
/// first one whose type `exclude` does not name.
pub fn health_alarm(active: &[AlarmMember], exclude: Option<&String>) -> Option<String> {
    active.iter().find_map(|a| {
        let name = AlarmType::try_from(a.alarm).ok()?.as_str_name();
        (exclude.map(String::as_str) != Some(name)).then(|| format!("ALARM {name}"))
    })
}

// === impl Server ===

impl Server {
    /// Raises `alarm` for `member` through the log.
    pub async fn raise_alarm(&self, alarm: AlarmType, member: u64) -> Result<(), Status> {
        let cmd = Command {
            op: Some(Op::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: member,
                alarm: alarm as i32,
            })),
            ..Default::default()
        };
        self.node
            .propose(cmd.encode_to_vec())
            .await
            .map(|_| ())
            .map_err(status::propose)
    }

    /// etcd's `quotaKVServer`: a write that would take the tables past the
    /// quota raises NOSPACE and fails before it is proposed.
    pub async fn check_quota(&self, op: &Op) -> Result<(), Status> {
        if self.quota.fits(self.mvcc.backend(), alarm::cost(op)) {
            return Ok(());
        }
        let (size_bytes, disk_free_bytes) = self.quota.measure(self.mvcc.backend());
        tracing::warn!(
            quota_bytes = self.quota.bytes(),
            size_bytes,
            disk_free_bytes,
            disk_reserve_bytes = self.quota.disk_reserve_bytes(),
            "a write exceeds the backend quota or the disk's reserve; raising NOSPACE"
        );
        if let Err(e) = self
            .raise_alarm(AlarmType::Nospace, self.identity.member_id)
            .await
        {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(status::mvcc(MvccError::NoSpace))
    }
}

/// Raises NOSPACE whenever the applier finds the tables past the quota.
pub async fn nospace_loop(
    server: std::sync::Weak<Server>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    while rx.recv().await.is_some() {
        let Some(server) = server.upgrade() else {
            return;
        };
        tracing::warn!(
            quota_bytes = server.quota.bytes(),
            disk_reserve_bytes = server.quota.disk_reserve_bytes(),
            "the store grew past the backend quota or into the disk's reserve; raising NOSPACE"
        );
        loop {
            // Raised meanwhile (by a refused write, or the log replayed at
            // start already held it), or room made since: nothing to do.
            let active = server.mvcc.alarms();
            if active.iter().any(|a| a.alarm == AlarmType::Nospace as i32)
                || server.quota.fits(server.mvcc.backend(), 1)
            {
                break;
            }
            match server
                .raise_alarm(AlarmType::Nospace, server.identity.member_id)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "raising NOSPACE failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        server.quota.raised();
    }
}

// === corruption checks ===

/// A member's HashKV answer.
struct PeerHash {
    id: u64,
    hash: u32,
    compact_revision: i64,
    revision: i64,
}

/// Asks every other member for its HashKV at `rev`; members that cannot
/// answer (down, behind, compacted past it) are left out.
async fn peer_hashes(api: &Api, rev: i64) -> Vec<PeerHash> {
    let me = api.identity.member_id;
    let members = api.mvcc.members().unwrap_or_default();
    let mut out = Vec::new();
    for m in members.iter().filter(|m| m.id != me) {
        let req = PeerRequest {
            req: Some(Req::HashKv(rev)),
        };
        match api.peers.request(m.id, &req).await {
            Ok(resp) if resp.code == 0 => {
                if let Some(h) = resp.hash_kv {
                    out.push(PeerHash {
                        id: m.id,
                        hash: h.hash,
                        compact_revision: h.compact_revision,
                        revision: h.header.map(|h| h.revision).unwrap_or(0),
                    });
                }
            }
            Ok(resp) => tracing::info!(
                peer = format_args!("{:x}", m.id),
                revision = rev,
                "corruption check: the peer cannot hash: {}",
                resp.message
            ),
            Err(e) => tracing::info!(
                peer = format_args!("{:x}", m.id),
                "corruption check: the peer did not answer: {e}"
            ),
        }
    }
    out
}

/// etcd's initial corruption check: before serving clients, compare this
/// member's HashKV with every reachable peer's at this member's revision.
/// Differing hashes at the same compaction point stop the start.
pub async fn initial_check(api: &Api) -> Result<(), String> {
    let (hash, compact, rev) = api
        .mvcc
        .hash_kv(0)
        .map_err(|e| format!("cannot hash the local store: {e}"))?;
    let mut mismatched = Vec::new();
    // Peers may need a moment to accept this member's streams after a
    // restart: ask a few times before concluding that nobody answers.
    let mut peers = Vec::new();
    for attempt in 0..10 {
        peers = peer_hashes(api, rev).await;
        if !peers.is_empty() || attempt == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for p in &peers {
        if p.hash != hash && p.compact_revision == compact {
            tracing::warn!(
                revision = rev,
                local_hash = hash,
                peer = format_args!("{:x}", p.id),
                peer_hash = p.hash,
                "initial corruption check: the peer's hash differs"
            );
            mismatched.push(format!("{:x}", p.id));
        }
    }
    if !mismatched.is_empty() {
        return Err(format!(
            "{:x} found data inconsistency with peers ({}) at revision {rev}: \
             HashKV {hash} here differs from theirs",
            api.identity.member_id,
            mismatched.join(", ")
        ));
    }
    tracing::info!(
        revision = rev,
        peers_checked = peers.len(),
        "initial corruption check passed"
    );
    Ok(())
}

/// etcd's periodic corruption check, run by the leader every `every`: the
/// followers' HashKV at the leader's revision must equal the leader's when
/// they were compacted at the same point, and no follower may be ahead of
/// the leader. A mismatch raises CORRUPT for that follower (one per round).
pub async fn periodic_check_loop(
    api: Api,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if !api.is_leader() {
            continue;
        }
        if let Err(e) = periodic_check(&api).await {
            tracing::warn!("corruption check failed to run: {e}");
        }
    }
}

async fn periodic_check(api: &Api) -> Result<(), String> {
    let (hash, compact, rev) = api.mvcc.hash_kv(0).map_err(|e| e.to_string())?;
    let peers = peer_hashes(api, rev).await;
    let latest = api.mvcc.current_revision();
    let now_compact = api.mvcc.hash_kv(0).map_err(|e| e.to_string())?.1;
    let suspect = peers.iter().find_map(|p| {
        if p.revision > latest {
            Some((p, "its revision is ahead of the leader's"))
        } else if p.compact_revision > now_compact {
            Some((p, "its compact revision is ahead of the leader's"))
        } else if p.compact_revision == compact && p.hash != hash {
            Some((p, "its HashKV differs from the leader's"))
        } else {
            None
        }
    });
    let raised = api.mvcc.alarms();
    let already = |id: u64| {
        raised
            .iter()
            .any(|a| a.member_id == id && a.alarm == AlarmType::Corrupt as i32)
    };
    match suspect {
        Some((p, _)) if already(p.id) => Ok(()),
        Some((p, why)) => {
            tracing::error!(
                revision = rev,
                leader_hash = hash,
                peer = format_args!("{:x}", p.id),
                peer_hash = p.hash,
                peer_revision = p.revision,
                "corruption check: {why}; raising CORRUPT"
            );
            api.raise_alarm(AlarmType::Corrupt, p.id)
                .await
                .map_err(|e| e.to_string())
        }
        None => {
            tracing::debug!(
                revision = rev,
                peers_checked = peers.len(),
                "corruption check passed"
            );
            Ok(())
        }
    }
}
