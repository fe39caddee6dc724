//! The MVCC store: etcd's revisions, versions and operations.
//!
//! Layout: see [`crate::keys`]. Every applied command is one backend batch
//! holding its versions, its revision-index entries, its lease changes and
//! the meta record (current revision, applied raft index), so a crash never
//! separates them. Reads take a backend snapshot and read at one revision.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cairn_proto::cairnpb::command::Op;
use cairn_proto::cairnpb::{Command, Member};
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::response_op::Response as OpResponse;
use cairn_proto::etcdserverpb::{
    AlarmMember, AlarmResponse, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::{Event, KeyValue};
use prost::Message;

use crate::auth::{Access, AuthApplied, AuthInfo, AuthState};
use crate::keys::{self, LIVE, TOMBSTONE};
use crate::{Backend, BackendError, Batch, MvccError, ReadView, Table};

/// What applying one command produced.
#[derive(Debug)]
pub struct Applied {
    /// The response, or the deterministic etcd error the command failed with
    /// (lease not found, compacted, ...). Headers carry only `revision`.
    pub result: Result<Response, MvccError>,
    /// The store revision after this command.
    pub revision: i64,
    /// Events of this command in order, each with `prev_kv` filled when a
    /// previous version existed. Empty when nothing changed.
    pub events: Vec<Event>,
    /// Leases granted by this command: (id, ttl seconds).
    pub leases_granted: Vec<(i64, i64)>,
    /// Leases revoked by this command.
    pub leases_revoked: Vec<i64>,
    /// Remaining TTLs the leader recorded: (id, seconds; 0 = the full TTL).
    pub leases_checkpointed: Vec<(i64, i64)>,
    /// Set when this command logically compacted the store to this revision.
    pub compacted: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// A membership record changed (no revision).
    Member,
    /// The auth store changed or issued a token.
    Auth(AuthApplied),
    /// An alarm was raised or cleared (no revision).
    Alarm(AlarmResponse),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    /// granted TTL in seconds
    pub ttl: i64,
    /// The remaining TTL the leader last checkpointed (seconds; 0: none,
    /// the lease starts from its full TTL under a new leader).
    pub remaining_ttl: i64,
}

const META_CURRENT: &[u8] = b"current_revision";
const META_COMPACT: &[u8] = b"compact_revision";
const META_APPLIED: &[u8] = b"applied_index";
const META_PHYSICAL: &[u8] = b"physically_compacted";
/// Membership records: `member/` + BE(id) -> `cairnpb.Member`.
const META_MEMBER: &[u8] = b"member/";

/// Members removed from the cluster: `removed/` + BE(id) -> empty. Kept so
/// that a removed member that comes back is refused (its ID never returns).
const META_REMOVED: &[u8] = b"removed/";

fn removed_key(id: u64) -> Vec<u8> {
    let mut k = META_REMOVED.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn member_key(id: u64) -> Vec<u8> {
    let mut k = META_MEMBER.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

type MetaWrite = (Vec<u8>, Option<Vec<u8>>);

/// The writes a membership command makes. Changing a member that is not
/// recorded changes nothing (the command was decided against a state where
/// it existed; replay must agree).
fn member_change<S: ReadView>(snap: &S, op: &Op) -> Result<Vec<MetaWrite>, BackendError> {
    let load = |id: u64| -> Result<Option<Member>, BackendError> {
        snap.get(Table::Meta, &member_key(id))?
            .map(|v| Member::decode(v.as_slice()).map_err(|e| corrupt("meta", &member_key(id), e)))
            .transpose()
    };
    Ok(match op {
        Op::MemberSet(m) => vec![(member_key(m.id), Some(m.encode_to_vec()))],
        Op::MemberRemove(id) => vec![
            (member_key(*id), None),
            (removed_key(*id), Some(Vec::new())),
        ],
        Op::MemberAttributes(a) => match load(a.id)? {
            Some(mut m) => {
                m.name = a.name.clone();
                m.client_urls = a.client_urls.clone();
                vec![(member_key(m.id), Some(m.encode_to_vec()))]
            }
            None => Vec::new(),
        },
        Op::MemberPeerUrls(u) => match load(u.id)? {
            Some(mut m) => {
                m.peer_urls = u.peer_urls.clone();
                vec![(member_key(m.id), Some(m.encode_to_vec()))]
            }
            None => Vec::new(),
        },
        _ => Vec::new(),
    })
}

/// Records written per batch while restoring a snapshot.
const RESTORE_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot: {0}")]
    Format(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// After this many skipped versions of one key a scan seeks past them.
const SKIP_BEFORE_SEEK: usize = 8;

pub struct Mvcc<B: Backend> {
    backend: B,
    current: AtomicI64,
    compacted: AtomicI64,
    applied: AtomicU64,
    physical: Mutex<Physical>,
    /// The auth store as of the last applied command.
    auth: RwLock<Arc<AuthState>>,
    /// The raised alarms (the meta table's `alarm/` records).
    alarms: RwLock<Vec<AlarmMember>>,
}

/// Progress of the physical compaction towards `target`.
#[derive(Debug, Default)]
struct Physical {
    done: i64,
    target: i64,
    in_rev_table: bool,
    cursor: Vec<u8>,
    survivors: Survivors,
}

/// Which versions a compaction at revision `at` keeps: every version above
/// it, and of each key the newest version at or below it if that one is
/// live. Fed the `Kv` table in order; shared by physical compaction and
/// HashKV so both agree on what a compacted store holds.
#[derive(Debug, Default)]
struct Survivors {
    group: Vec<u8>,
    decided: bool,
}

impl Survivors {
    fn keeps(&mut self, prefix: &[u8], rev: i64, at: i64, value: &[u8]) -> bool {
        if prefix != self.group.as_slice() {
            self.group = prefix.to_vec();
            self.decided = false;
        }
        if rev > at {
            return true;
        }
        let keep = !self.decided && value.first() == Some(&LIVE);
        self.decided = true;
        keep
    }
}

/// Visits entries of `t` from `cursor` (below `end`) while `*left` allows;
/// returns where to resume, or `None` when the range is exhausted.
fn walk<S: ReadView>(
    snap: &S,
    t: Table,
    cursor: &[u8],
    end: Option<&[u8]>,
    left: &mut usize,
    mut f: impl FnMut(Vec<u8>, &[u8]) -> Result<(), BackendError>,
) -> Result<Option<Vec<u8>>, BackendError> {
    let mut resume = cursor.to_vec();
    for r in snap.scan(t, cursor, end, false) {
        if *left == 0 {
            return Ok(Some(resume));
        }
        *left -= 1;
        let (k, v) = r?;
        resume = k.clone();
        resume.push(0);
        f(k, &v)?;
    }
    Ok(None)
}

fn meta_i64<S: ReadView>(snap: &S, key: &[u8]) -> Result<Option<i64>, BackendError> {
    match snap.get(Table::Meta, key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                BackendError(format!(
                    "meta record {} is {} bytes, expected 8",
                    String::from_utf8_lossy(key),
                    v.len()
                ))
            })?;
            Ok(Some(i64::from_be_bytes(b)))
        }
    }
}

fn corrupt(what: &str, key: &[u8], e: impl std::fmt::Display) -> BackendError {
    BackendError(format!("corrupt {what} record at {key:02x?}: {e}"))
}

fn decode_kv(prefix: &[u8], raw: &[u8]) -> Result<KeyValue, BackendError> {
    let mut kv = KeyValue::decode(&raw[1..]).map_err(|e| corrupt("version", prefix, e))?;
    kv.key = keys::unescape(prefix);
    Ok(kv)
}

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let stripped = KeyValue {
        key: Vec::new(),
        ..kv.clone()
    };
    let mut out = Vec::with_capacity(1 + stripped.encoded_len());
    out.push(LIVE);
    stripped.encode(&mut out).expect("vec has room");
    out
}

fn rev_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// The upper end of a request's key range.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// `range_end` empty: just the key.
    Single,
    /// `range_end` is `"\0"`: every key from `key` on.
    Unbounded,
    Until(Vec<u8>),
}

impl End {
    fn of(range_end: &[u8]) -> End {
        match range_end {
            [] => End::Single,
            [0] => End::Unbounded,
            e => End::Until(e.to_vec()),
        }
    }
    fn contains(&self, start: &[u8], k: &[u8]) -> bool {
        match self {
            End::Single => k == start,
            End::Unbounded => k >= start,
            End::Until(e) => k >= start && k < e.as_slice(),
        }
    }
}

/// Newest version of `key` at or below `rev`, if live: (prefix, raw value).
fn lookup<S: ReadView>(snap: &S, key: &[u8], rev: i64) -> Result<Option<Vec<u8>>, BackendError> {
    let p = keys::prefix(key);
    let mut start = p.clone();
    start.extend_from_slice(&keys::rev_suffix(rev));
    let end = keys::group_end(&p);
    match snap.scan(Table::Kv, &start, Some(&end), false).next() {
        Some(r) => {
            let (_, v) = r?;
            Ok((v.first() == Some(&LIVE)).then_some(v))
        }
        None => Ok(None),
    }
}

/// Gets (prefix, raw version) of each live key; returns false to stop.
type LiveVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, BackendError> + 'a;

/// Calls `f(prefix, raw)` for every key live at `rev` in `[key, end)`, in key
/// order, until it returns false.
fn scan_live<S: ReadView>(
    snap: &S,
    key: &[u8],
    end: &End,
    rev: i64,
    f: &mut LiveVisitor<'_>,
) -> Result<(), BackendError> {
    let hi = match end {
        End::Single => {
            if let Some(raw) = lookup(snap, key, rev)? {
                f(&keys::prefix(key), &raw)?;
            }
            return Ok(());
        }
        End::Unbounded => None,
        End::Until(e) if e.as_slice() <= key => return Ok(()),
        End::Until(e) => Some(keys::prefix(e)),
    };
    let mut start = keys::prefix(key);
    'seek: loop {
        let mut group: Vec<u8> = Vec::new();
        let mut decided = false;
        let mut skipped = 0usize;
        for r in snap.scan(Table::Kv, &start, hi.as_deref(), false) {
            let (ik, v) = r?;
            let (p, krev) = keys::split_version_key(&ik)
                .ok_or_else(|| corrupt("version key", &ik, "malformed"))?;
            if p != group.as_slice() {
                group = p.to_vec();
                decided = false;
                skipped = 0;
            }
            if decided || krev > rev {
                skipped += 1;
                if skipped > SKIP_BEFORE_SEEK {
                    start = if decided {
                        keys::group_end(&group)
                    } else {
                        let mut s = group.clone();
                        s.extend_from_slice(&keys::rev_suffix(rev));
                        s
                    };
                    continue 'seek;
                }
                continue;
            }
            decided = true;
            if v.first() == Some(&LIVE) && !f(p, &v)? {
                return Ok(());
            }
        }
        return Ok(());
    }
}

/// A read view: a backend snapshot plus, inside a txn, the txn's own writes
/// (all at revision `overlay_rev`).
struct Reader<'a, S: ReadView> {
    snap: &'a S,
    overlay: Option<&'a BTreeMap<Vec<u8>, Option<KeyValue>>>,
    /// The view's current revision.
    current: i64,
    compact: i64,
}

impl<S: ReadView> Reader<'_, S> {
    /// Live key-values in range at `rev`: at most `fetch` of them decoded
    /// (none when `count_only`), and the total count.
    fn collect(
        &self,
        key: &[u8],
        end: &End,
        rev: i64,
        fetch: Option<usize>,
        count_only: bool,
    ) -> Result<(Vec<KeyValue>, i64), BackendError> {
        let overlay = self
            .overlay
            .filter(|o| rev == self.current && o.keys().any(|k| end.contains(key, k)));
        if let Some(overlay) = overlay {
            let mut all: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
            scan_live(self.snap, key, end, rev, &mut |p, raw| {
                let kv = decode_kv(p, raw)?;
                all.insert(kv.key.clone(), kv);
                Ok(true)
            })?;
            for (k, v) in overlay.iter().filter(|(k, _)| end.contains(key, k)) {
                match v {
                    Some(kv) => all.insert(k.clone(), kv.clone()),
                    None => all.remove(k),
                };
            }
            let count = all.len() as i64;
            let kvs = if count_only {
                Vec::new()
            } else {
                all.into_values()
                    .take(fetch.unwrap_or(usize::MAX))
                    .collect()
            };
            return Ok((kvs, count));
        }
        let mut kvs = Vec::new();
        let mut count = 0i64;
        let fetch = if count_only {
            0
        } else {
            fetch.unwrap_or(usize::MAX)
        };
        scan_live(self.snap, key, end, rev, &mut |p, raw| {
            count += 1;
            if kvs.len() < fetch {
                kvs.push(decode_kv(p, raw)?);
            }
            Ok(true)
        })?;
        Ok((kvs, count))
    }

    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let rev = if r.revision <= 0 {
            self.current
        } else {
            r.revision
        };
        if rev > self.current {
            return Err(MvccError::FutureRevision);
        }
        if rev < self.compact {
            return Err(MvccError::Compacted);
        }
        let mut order =
            SortOrder::try_from(r.sort_order).map_err(|_| MvccError::InvalidSortOption)?;
        let target =
            SortTarget::try_from(r.sort_target).map_err(|_| MvccError::InvalidSortOption)?;
        if order == SortOrder::None && target != SortTarget::Key {
            // etcd sorts ascending by default when a non-key target is given.
            order = SortOrder::Ascend;
        }
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let fetch =
            (r.limit > 0 && order == SortOrder::None && !filtered).then(|| r.limit as usize + 1);
        let (mut kvs, count) =
            self.collect(&r.key, &End::of(&r.range_end), rev, fetch, r.count_only)?;
        if filtered {
            kvs.retain(|kv| {
                (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                    && (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                    && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
                    && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            });
        }
        if order != SortOrder::None {
            match target {
                SortTarget::Key => {}
                SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
                SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
                SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: rev_header(self.current),
            kvs,
            more,
            count,
        })
    }
}

/// One command being applied: reads see its earlier writes.
struct Txn<'a, S: ReadView> {
    snap: &'a S,
    begin: i64,
    compact: i64,
    /// Keys written so far, at revision `begin + 1` (`None`: deleted).
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    events: Vec<Event>,
    lease_ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    leases_granted: Vec<(i64, i64)>,
    leases_revoked: Vec<i64>,
    leases_checkpointed: Vec<(i64, i64)>,
    compacted: Option<i64>,
}

impl<'a, S: ReadView> Txn<'a, S> {
    fn new(snap: &'a S, begin: i64, compact: i64) -> Self {
        Txn {
            snap,
            begin,
            compact,
            overlay: BTreeMap::new(),
            events: Vec::new(),
            lease_ops: BTreeMap::new(),
            leases_granted: Vec::new(),
            leases_revoked: Vec::new(),
            leases_checkpointed: Vec::new(),
            compacted: None,
        }
    }

    /// The revision reads see and writes get.
    fn rev(&self) -> i64 {
        if self.events.is_empty() {
            self.begin
        } else {
            self.begin + 1
        }
    }

    fn reader(&self) -> Reader<'_, S> {
        Reader {
            snap: self.snap,
            overlay: Some(&self.overlay),
            current: self.rev(),
            compact: self.compact,
        }
    }

    fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>, BackendError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        match lookup(self.snap, key, self.begin)? {
            Some(raw) => Ok(Some(decode_kv(&keys::prefix(key), &raw)?)),
            None => Ok(None),
        }
    }

    fn lease_exists(&self, id: i64) -> Result<bool, BackendError> {
        Ok(self.snap.get(Table::Lease, &keys::lease_key(id))?.is_some())
    }

    /// etcd's `checkRequestPut`, against the state before the command.
    fn precheck_put(&self, p: &PutRequest) -> Result<(), MvccError> {
        if (p.ignore_value || p.ignore_lease) && self.latest(&p.key)?.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if p.lease != 0 && !self.lease_exists(p.lease)? {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRequestPut` / `checkRequestRange`, against the state
    /// before the command.
    fn precheck(&self, op: &Request) -> Result<(), MvccError> {
        match op {
            Request::RequestPut(p) => self.precheck_put(p),
            Request::RequestRange(r) => {
                if r.revision > self.begin {
                    return Err(MvccError::FutureRevision);
                }
                if r.revision > 0 && r.revision < self.compact {
                    return Err(MvccError::Compacted);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = self.latest(&p.key)?;
        let rev = self.begin + 1;
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            (None, true) => return Err(MvccError::KeyNotFound),
            (_, false) => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            (None, true) => return Err(MvccError::KeyNotFound),
            (_, false) => p.lease,
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
        if prev_lease != 0 && prev_lease != lease {
            self.lease_ops
                .insert(keys::lease_attach_key(prev_lease, &p.key), None);
        }
        if lease != 0 {
            self.lease_ops
                .insert(keys::lease_attach_key(lease, &p.key), Some(Vec::new()));
        }
        self.overlay.insert(p.key.clone(), Some(kv.clone()));
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            header: rev_header(rev),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let (doomed, _) =
            self.reader()
                .collect(&d.key, &End::of(&d.range_end), self.rev(), None, false)?;
        let rev = self.begin + 1;
        for kv in &doomed {
            if kv.lease != 0 {
                self.lease_ops
                    .insert(keys::lease_attach_key(kv.lease, &kv.key), None);
            }
            self.overlay.insert(kv.key.clone(), None);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: Some(kv.clone()),
            });
        }
        Ok(DeleteRangeResponse {
            header: rev_header(self.rev()),
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
        })
    }

    /// etcd's `applyCompare`.
    fn compare(&self, c: &Compare) -> Result<bool, MvccError> {
        let (kvs, _) =
            self.reader()
                .collect(&c.key, &End::of(&c.range_end), self.rev(), None, false)?;
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            if target == CompareTarget::Value {
                // A missing key has no value to compare: always false.
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
    }

    /// etcd's `compareToPath`: every compare of the chosen branches,
    /// evaluated before anything is written.
    fn path(&self, t: &TxnRequest, out: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        out.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.path(nested, out)?;
            }
        }
        Ok(())
    }

    fn precheck_path(
        &self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<(), MvccError> {
        let ops = if path[*at] { &t.success } else { &t.failure };
        *at += 1;
        for op in ops {
            match &op.request {
                Some(Request::RequestTxn(nested)) => self.precheck_path(nested, path, at)?,
                Some(r) => self.precheck(r)?,
                None => return Err(MvccError::KeyNotFound),
            }
        }
        Ok(())
    }

    fn run_path(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let succeeded = path[*at];
        *at += 1;
        let ops: &[RequestOp] = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match &op.request {
                Some(Request::RequestRange(r)) => {
                    OpResponse::ResponseRange(self.reader().range(r)?)
                }
                Some(Request::RequestPut(p)) => OpResponse::ResponsePut(self.put(p)?),
                Some(Request::RequestDeleteRange(d)) => {
                    OpResponse::ResponseDeleteRange(self.delete(d)?)
                }
                Some(Request::RequestTxn(nested)) => {
                    OpResponse::ResponseTxn(self.run_path(nested, path, at)?)
                }
                None => return Err(MvccError::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            // etcd sets only the outermost txn's revision.
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.path(t, &mut path)?;
        self.precheck_path(t, &path, &mut 0)?;
        let mut resp = self.run_path(t, &path, &mut 0)?;
        resp.header = rev_header(self.rev());
        Ok(resp)
    }

    fn compaction(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        if c.revision <= self.compact {
            return Err(MvccError::Compacted);
        }
        if c.revision > self.begin {
            return Err(MvccError::FutureRevision);
        }
        self.compacted = Some(c.revision);
        Ok(CompactionResponse {
            header: rev_header(self.begin),
        })
    }

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse, MvccError> {
        if g.ttl > crate::lease::MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.lease_exists(g.id)? {
            return Err(MvccError::LeaseExists);
        }
        self.lease_ops
            .insert(keys::lease_key(g.id), Some(encode_lease(g.ttl, 0)));
        self.leases_granted.push((g.id, g.ttl));
        Ok(LeaseGrantResponse {
            header: rev_header(self.begin),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    /// Records remaining TTLs of leases that still exist (etcd's lease
    /// checkpoint). No revision: only lease records change.
    fn lease_checkpoint(
        &mut self,
        c: &LeaseCheckpointRequest,
    ) -> Result<LeaseCheckpointResponse, MvccError> {
        for cp in &c.checkpoints {
            let Some(v) = self.snap.get(Table::Lease, &keys::lease_key(cp.id))? else {
                continue; // revoked meanwhile
            };
            let lease = decode_ttl(cp.id, &v)?;
            let remaining = cp.remaining_ttl.clamp(0, lease.ttl);
            self.lease_ops.insert(
                keys::lease_key(cp.id),
                Some(encode_lease(lease.ttl, remaining)),
            );
            self.leases_checkpointed.push((cp.id, remaining));
        }
        Ok(LeaseCheckpointResponse {
            header: rev_header(self.begin),
        })
    }

    fn lease_revoke(&mut self, r: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, MvccError> {
        if !self.lease_exists(r.id)? {
            return Err(MvccError::LeaseNotFound);
        }
        // Attached keys are deleted in key order, in one revision (etcd).
        for key in lease_keys(self.snap, r.id)? {
            self.delete(&DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            })?;
            self.lease_ops
                .insert(keys::lease_attach_key(r.id, &key), None);
        }
        self.lease_ops.insert(keys::lease_key(r.id), None);
        self.leases_revoked.push(r.id);
        Ok(LeaseRevokeResponse {
            header: rev_header(self.rev()),
        })
    }

    /// The batch that makes this command durable.
    fn into_batch(self, batch: &mut Batch) -> TxnOutcome {
        let rev = self.rev();
        if rev != self.begin {
            for (k, v) in &self.overlay {
                let value = match v {
                    Some(kv) => encode_kv(kv),
                    None => vec![TOMBSTONE],
                };
                batch.put(Table::Kv, keys::version_key(k, rev), value);
            }
            for (i, e) in self.events.iter().enumerate() {
                let kv = e.kv.as_ref().expect("events carry a kv");
                let mut v = Vec::with_capacity(kv.key.len() + 1);
                v.push(if e.r#type == EventType::Put as i32 {
                    LIVE
                } else {
                    TOMBSTONE
                });
                v.extend_from_slice(&kv.key);
                batch.put(Table::Rev, keys::rev_key(rev, i as u32), v);
            }
            batch.put(
                Table::Meta,
                META_CURRENT.to_vec(),
                rev.to_be_bytes().to_vec(),
            );
        }
        for (k, v) in self.lease_ops {
            match v {
                Some(v) => batch.put(Table::Lease, k, v),
                None => batch.delete(Table::Lease, k),
            }
        }
        if let Some(c) = self.compacted {
            batch.put(Table::Meta, META_COMPACT.to_vec(), c.to_be_bytes().to_vec());
        }
        TxnOutcome {
            revision: rev,
            events: self.events,
            leases_granted: self.leases_granted,
            leases_revoked: self.leases_revoked,
            leases_checkpointed: self.leases_checkpointed,
            compacted: self.compacted,
        }
    }
}

struct TxnOutcome {
    revision: i64,
    events: Vec<Event>,
    leases_granted: Vec<(i64, i64)>,
    leases_revoked: Vec<i64>,
    leases_checkpointed: Vec<(i64, i64)>,
    compacted: Option<i64>,
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering as O;
    let ord = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.as_slice().cmp(v),
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[]),
        (t, u) => {
            let want = match u {
                Some(TargetUnion::Version(v))
                | Some(TargetUnion::CreateRevision(v))
                | Some(TargetUnion::ModRevision(v))
                | Some(TargetUnion::Lease(v)) => *v,
                _ => 0,
            };
            let have = match t {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Lease => kv.lease,
                CompareTarget::Value => unreachable!("handled above"),
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == O::Equal,
        CompareResult::NotEqual => ord != O::Equal,
        CompareResult::Greater => ord == O::Greater,
        CompareResult::Less => ord == O::Less,
    }
}

/// The auth store's records in the meta table.
fn load_auth<S: ReadView>(snap: &S) -> Result<AuthState, BackendError> {
    use crate::auth::{META_AUTH_ENABLED, META_AUTH_REVISION, META_AUTH_ROLE, META_AUTH_USER};
    use cairn_proto::authpb::{Role, User};
    let enabled = snap
        .get(Table::Meta, META_AUTH_ENABLED)?
        .is_some_and(|v| v.first() == Some(&1));
    let revision =
        match snap.get(Table::Meta, META_AUTH_REVISION)? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                corrupt("meta", META_AUTH_REVISION, "auth revision is not 8 bytes")
            })?),
            None => 1,
        };
    type Records = Vec<(Vec<u8>, Vec<u8>)>;
    let scan = |prefix: &[u8]| -> Result<Records, BackendError> {
        let end = keys::prefix_end(prefix);
        snap.scan(Table::Meta, prefix, end.as_deref(), false)
            .collect()
    };
    let users = scan(META_AUTH_USER)?
        .into_iter()
        .map(|(k, v)| User::decode(v.as_slice()).map_err(|e| corrupt("meta", &k, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let roles = scan(META_AUTH_ROLE)?
        .into_iter()
        .map(|(k, v)| Role::decode(v.as_slice()).map_err(|e| corrupt("meta", &k, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthState::from_parts(enabled, revision, users, roles))
}

/// etcd's apply-time permission checks (`authApplierV3`): writes need WRITE
/// on their keys, reads inside a txn and compares READ, `prev_kv` READ, and
/// attaching to or revoking a lease WRITE on every key the lease holds
/// (unless the caller is an admin).
fn check_permissions<S: ReadView>(
    auth: &AuthState,
    ai: &AuthInfo,
    snap: &S,
    op: Option<&Op>,
) -> Result<(), MvccError> {
    if !auth.enabled || ai.is_internal() {
        return Ok(());
    }
    let lease_puts = |id: i64| -> Result<(), MvccError> {
        if id == 0 || auth.check_admin(ai).is_ok() {
            return Ok(());
        }
        for k in lease_keys(snap, id)? {
            auth.check(ai, &k, &[], Access::Write)?;
        }
        Ok(())
    };
    let put = |p: &PutRequest| -> Result<(), MvccError> {
        auth.check(ai, &p.key, &[], Access::Write)?;
        lease_puts(p.lease)?;
        if p.prev_kv {
            auth.check(ai, &p.key, &[], Access::Read)?;
        }
        Ok(())
    };
    let delete = |d: &DeleteRangeRequest| -> Result<(), MvccError> {
        auth.check(ai, &d.key, &d.range_end, Access::Write)?;
        if d.prev_kv {
            auth.check(ai, &d.key, &d.range_end, Access::Read)?;
        }
        Ok(())
    };
    fn txn(
        t: &TxnRequest,
        auth: &AuthState,
        ai: &AuthInfo,
        put: &dyn Fn(&PutRequest) -> Result<(), MvccError>,
        delete: &dyn Fn(&DeleteRangeRequest) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        for c in &t.compare {
            auth.check(ai, &c.key, &c.range_end, Access::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Request::RequestRange(r)) => {
                    auth.check(ai, &r.key, &r.range_end, Access::Read)?
                }
                Some(Request::RequestPut(p)) => put(p)?,
                Some(Request::RequestDeleteRange(d)) => delete(d)?,
                Some(Request::RequestTxn(t)) => txn(t, auth, ai, put, delete)?,
                None => {}
            }
        }
        Ok(())
    }
    match op {
        Some(Op::Put(p)) => put(p),
        Some(Op::DeleteRange(d)) => delete(d),
        Some(Op::Txn(t)) => txn(t, auth, ai, &put, &delete),
        Some(Op::LeaseRevoke(r)) => lease_puts(r.id),
        _ => Ok(()),
    }
}

fn lease_keys<S: ReadView>(snap: &S, id: i64) -> Result<Vec<Vec<u8>>, BackendError> {
    let p = keys::lease_attach_prefix(id);
    let end = keys::prefix_end(&p);
    snap.scan(Table::Lease, &p, end.as_deref(), false)
        .map(|r| r.map(|(k, _)| k[p.len()..].to_vec()))
        .collect()
}

/// What a committed command changes in the store's memory besides its
/// writes.
struct Effects {
    auth: Option<AuthState>,
    alarms_changed: bool,
    compacted: Option<i64>,
}

/// A snapshot with writes not yet committed on top: what a command applied
/// in a batch reads (the commands before it in the batch included).
struct Layered<'a, S: ReadView> {
    base: &'a S,
    /// Per table (in [`Table::ALL`] order); `None`: deleted.
    pending: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; 4],
}

impl<'a, S: ReadView> Layered<'a, S> {
    fn new(base: &'a S) -> Self {
        Layered {
            base,
            pending: Default::default(),
        }
    }

    fn slot(t: Table) -> usize {
        Table::ALL.iter().position(|x| *x == t).expect("listed")
    }

    /// Adds a command's writes (later writes of a key replace earlier ones).
    fn absorb(&mut self, batch: Batch) {
        for (t, k, v) in batch.ops {
            self.pending[Self::slot(t)].insert(k, v);
        }
    }

    /// Every pending write, each key once.
    fn into_batch(self) -> Batch {
        let mut b = Batch::default();
        for (t, writes) in Table::ALL.into_iter().zip(self.pending) {
            for (k, v) in writes {
                b.ops.push((t, k, v));
            }
        }
        b
    }
}

impl<S: ReadView> ReadView for Layered<'_, S> {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        match self.pending[Self::slot(t)].get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(t, key),
        }
    }

    fn scan<'b>(
        &'b self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
    ) -> crate::backend::ScanIter<'b> {
        use std::ops::Bound;
        let base = self.base.scan(t, start, end, reverse);
        if end.is_some_and(|e| e <= start) {
            return base;
        }
        let hi = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self.pending[Self::slot(t)].range::<[u8], _>((Bound::Included(start), hi));
        let mine: Vec<PendingWrite<'b>> = if reverse {
            range.rev().map(|(k, v)| (k.as_slice(), v)).collect()
        } else {
            range.map(|(k, v)| (k.as_slice(), v)).collect()
        };
        if mine.is_empty() {
            return base;
        }
        Box::new(Merged {
            base: base.peekable(),
            mine: mine.into_iter().peekable(),
            reverse,
        })
    }
}

/// A pending write as a scan meets it (`None`: a delete).
type PendingWrite<'b> = (&'b [u8], &'b Option<Vec<u8>>);

/// A base scan with pending writes merged in, in the scan's order.
struct Merged<'b, I: Iterator> {
    base: std::iter::Peekable<I>,
    mine: std::iter::Peekable<std::vec::IntoIter<PendingWrite<'b>>>,
    reverse: bool,
}

impl<'b, I> Iterator for Merged<'b, I>
where
    I: Iterator<Item = Result<crate::backend::KvPair, BackendError>>,
{
    type Item = Result<crate::backend::KvPair, BackendError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering as O;
        loop {
            let order = match (self.base.peek(), self.mine.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => return self.base.next(),
                (None, Some(_)) => O::Greater,
                (Some(Ok((bk, _))), Some((mk, _))) => {
                    let o = bk.as_slice().cmp(mk);
                    if self.reverse { o.reverse() } else { o }
                }
            };
            match order {
                O::Less => return self.base.next(),
                O::Equal | O::Greater => {
                    if order == O::Equal {
                        self.base.next();
                    }
                    let (k, v) = self.mine.next().expect("peeked");
                    if let Some(v) = v {
                        return Some(Ok((k.to_vec(), v.clone())));
                    }
                }
            }
        }
    }
}

// === impl Mvcc ===

impl<B: Backend> Mvcc<B> {
    /// Opens the store, loading current/compact revision and applied index.
    pub fn open(backend: B) -> Result<Self, MvccError> {
        let snap = backend.snapshot();
        let current = meta_i64(&snap, META_CURRENT)?.unwrap_or(1);
        let compact = meta_i64(&snap, META_COMPACT)?.unwrap_or(0);
        let applied = meta_i64(&snap, META_APPLIED)?.unwrap_or(0) as u64;
        let physical = meta_i64(&snap, META_PHYSICAL)?.unwrap_or(0);
        let auth = load_auth(&snap)?;
        let alarms = crate::alarm::load(&snap)?;
        drop(snap);
        Ok(Mvcc {
            auth: RwLock::new(Arc::new(auth)),
            backend,
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compact),
            applied: AtomicU64::new(applied),
            physical: Mutex::new(Physical {
                done: physical,
                ..Default::default()
            }),
            alarms: RwLock::new(alarms),
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The raised alarms, by member then type.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.read().expect("alarms lock").clone()
    }

    /// Latest revision (1 on an empty store, as etcd).
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// Revision of the last compaction (0 when none).
    pub fn compact_revision(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Raft index of the last applied command (0 when none).
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// A snapshot consistent with the returned (current, compact) revisions:
    /// it holds everything up to `current` and nothing compaction removed
    /// that a read at or above `compact` needs.
    fn view(&self) -> (B::Snapshot, i64, i64) {
        let current = self.current_revision();
        let snap = self.backend.snapshot();
        let compact = self.compact_revision();
        (snap, current, compact)
    }

    /// Range with every etcd option. `header.revision` is set; other header
    /// fields are the caller's.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let (snap, current, compact) = self.view();
        Reader {
            snap: &snap,
            overlay: None,
            current,
            compact,
        }
        .range(req)
    }

    /// Applies one committed command. Called by one thread in log order.
    /// `Err` only for storage failures (fatal).
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<Applied, BackendError> {
        let snap = self.backend.snapshot();
        let (applied, batch, effects) =
            self.apply_on(&snap, self.current_revision(), index, cmd)?;
        self.commit_applied(batch, index)?;
        self.take_effects(effects)?;
        self.current.store(applied.revision, Ordering::Release);
        Ok(applied)
    }

    /// Whether [`Mvcc::apply_many`] takes this command: one that changes
    /// only keys and their revisions (put, delete, txn), nothing that later
    /// commands read from the store's memory (auth, alarms, compaction,
    /// leases, membership).
    pub fn batchable(cmd: &Command) -> bool {
        matches!(cmd.op, Some(Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_)))
    }

    /// Applies consecutive committed commands, all [`Mvcc::batchable`], as
    /// one atomic write together with the last one's index: each sees the
    /// ones before it (through the batch not yet written), and readers see
    /// none of them until all are in. The same results, revisions and
    /// events as applying them one by one; one storage commit instead of
    /// one per command. Called by one thread in log order.
    pub fn apply_many(&self, cmds: &[(u64, &Command)]) -> Result<Vec<Applied>, BackendError> {
        let Some(&(last, _)) = cmds.last() else {
            return Ok(Vec::new());
        };
        let snap = self.backend.snapshot();
        let mut view = Layered::new(&snap);
        let mut revision = self.current_revision();
        let mut out = Vec::with_capacity(cmds.len());
        for (index, cmd) in cmds {
            assert!(
                Self::batchable(cmd),
                "apply_many takes key commands only (entry {index})"
            );
            let (applied, batch, effects) = self.apply_on(&view, revision, *index, cmd)?;
            debug_assert!(effects.is_none(), "key commands have no store-wide effects");
            view.absorb(batch);
            revision = applied.revision;
            out.push(applied);
        }
        self.commit_applied(view.into_batch(), last)?;
        self.current.store(revision, Ordering::Release);
        Ok(out)
    }

    /// One command against `view` at revision `begin`: its result, the
    /// writes it makes and what changes in memory once they are committed.
    fn apply_on<V: ReadView>(
        &self,
        view: &V,
        begin: i64,
        index: u64,
        cmd: &Command,
    ) -> Result<(Applied, Batch, Option<Effects>), BackendError> {
        let snap = view;
        let mut txn = Txn::new(snap, begin, self.compact_revision());
        let mut member_writes = Vec::new();
        let auth = self.auth();
        let caller = AuthInfo {
            user: cmd.username.clone(),
            revision: cmd.auth_revision,
        };
        let mut new_auth = None;
        // An alarm refuses first (etcd's capped/corrupt appliers wrap the
        // auth applier), then permissions.
        let refused = cmd
            .op
            .as_ref()
            .and_then(|op| crate::alarm::refuses(&self.alarms(), op))
            .map(Err)
            .unwrap_or_else(|| check_permissions(&auth, &caller, snap, cmd.op.as_ref()));
        let result = match refused {
            Err(e) => Err(e),
            Ok(()) => match &cmd.op {
                Some(Op::Alarm(a)) => {
                    let (writes, changed) = crate::alarm::change(&self.alarms(), a);
                    member_writes = writes;
                    Ok(Response::Alarm(crate::alarm::response(changed)))
                }
                Some(Op::Put(p)) => txn
                    .precheck_put(p)
                    .and_then(|()| txn.put(p))
                    .map(Response::Put),
                Some(Op::DeleteRange(d)) => txn.delete(d).map(Response::DeleteRange),
                Some(Op::Txn(t)) => txn.txn(t).map(Response::Txn),
                Some(Op::Compaction(c)) => txn.compaction(c).map(Response::Compaction),
                Some(Op::LeaseGrant(g)) => txn.lease_grant(g).map(Response::LeaseGrant),
                Some(Op::LeaseRevoke(r)) => txn.lease_revoke(r).map(Response::LeaseRevoke),
                Some(Op::LeaseCheckpoint(c)) => {
                    txn.lease_checkpoint(c).map(Response::LeaseCheckpoint)
                }
                Some(
                    Op::MemberSet(_)
                    | Op::MemberRemove(_)
                    | Op::MemberAttributes(_)
                    | Op::MemberPeerUrls(_),
                ) => member_change(snap, cmd.op.as_ref().expect("matched"))
                    .map(|w| {
                        member_writes = w;
                        Response::Member
                    })
                    .map_err(MvccError::Backend),
                Some(Op::Auth(a)) => {
                    let mut next = (*auth).clone();
                    match a.op.as_ref() {
                        None => Err(MvccError::KeyNotFound),
                        Some(op) => next
                            .apply(op, &caller, index)
                            .map(|(out, writes)| {
                                member_writes = writes;
                                new_auth = Some(next);
                                Response::Auth(out)
                            })
                            .map_err(MvccError::Auth),
                    }
                }
                None => Err(MvccError::KeyNotFound),
            },
        };
        let result = match result {
            Err(MvccError::Backend(e)) => return Err(e),
            r => r,
        };
        let mut batch = Batch::default();
        let outcome = if result.is_ok() {
            txn.into_batch(&mut batch)
        } else {
            // A refused command changes nothing but the applied index.
            Txn::new(snap, begin, 0).into_batch(&mut batch)
        };
        for (k, v) in member_writes {
            match v {
                Some(v) => batch.put(Table::Meta, k, v),
                None => batch.delete(Table::Meta, k),
            }
        }
        let alarm_changed = matches!(cmd.op, Some(Op::Alarm(_))) && !batch.is_empty();
        let effects = (new_auth.is_some() || alarm_changed || outcome.compacted.is_some())
            .then_some(Effects {
                auth: new_auth,
                alarms_changed: alarm_changed,
                compacted: outcome.compacted,
            });
        Ok((
            Applied {
                result,
                revision: outcome.revision,
                events: outcome.events,
                leases_granted: outcome.leases_granted,
                leases_revoked: outcome.leases_revoked,
                leases_checkpointed: outcome.leases_checkpointed,
                compacted: outcome.compacted,
            },
            batch,
            effects,
        ))
    }

    /// What a committed command changes in the store's memory.
    fn take_effects(&self, effects: Option<Effects>) -> Result<(), BackendError> {
        let Some(e) = effects else { return Ok(()) };
        if let Some(a) = e.auth {
            *self.auth.write().expect("auth lock") = Arc::new(a);
        }
        if e.alarms_changed {
            *self.alarms.write().expect("alarms lock") =
                crate::alarm::load(&self.backend.snapshot())?;
        }
        if let Some(c) = e.compacted {
            self.compacted.store(c, Ordering::Release);
        }
        Ok(())
    }

    /// Records `index` as applied for a raft entry that carries no command.
    pub fn mark_applied(&self, index: u64) -> Result<(), BackendError> {
        self.commit_applied(Batch::default(), index)
    }

    /// Commits `batch` together with the record of `index` as applied. Not
    /// fsynced: the raft log holds the command durably and shares the
    /// backend's journal, so a lost apply is replayed at start.
    fn commit_applied(&self, mut batch: Batch, index: u64) -> Result<(), BackendError> {
        batch.put(
            Table::Meta,
            META_APPLIED.to_vec(),
            (index as i64).to_be_bytes().to_vec(),
        );
        self.backend.commit(batch, false)?;
        self.applied.store(index, Ordering::Release);
        Ok(())
    }

    /// Events with revision in `[from, to]`, in revision order, at most
    /// `limit` revisions' worth (whole revisions only). `prev_kv` filled when
    /// `with_prev_kv`. `Compacted` when `from` is below the compaction point.
    pub fn events(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>, MvccError> {
        let (snap, _, compact) = self.view();
        if from < compact {
            return Err(MvccError::Compacted);
        }
        let mut out = Vec::new();
        if to < from || limit == 0 {
            return Ok(out);
        }
        let mut revs = 0usize;
        let mut last_rev = 0;
        let end = keys::rev_start(to.saturating_add(1));
        for r in snap.scan(Table::Rev, &keys::rev_start(from), Some(&end), false) {
            let (k, v) = r?;
            let rev = keys::split_rev_key(&k).ok_or_else(|| corrupt("revision", &k, "short"))?;
            if rev != last_rev {
                if revs == limit {
                    break;
                }
                revs += 1;
                last_rev = rev;
            }
            let (&tag, key) = v
                .split_first()
                .ok_or_else(|| corrupt("revision", &k, "empty"))?;
            let prefix = keys::prefix(key);
            let kv = if tag == LIVE {
                match snap.get(Table::Kv, &keys::version_key(key, rev))? {
                    Some(raw) => decode_kv(&prefix, &raw)?,
                    None => continue, // removed by compaction
                }
            } else {
                KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev,
                    ..Default::default()
                }
            };
            let prev_kv = if with_prev_kv {
                lookup(&snap, key, rev - 1)?
                    .map(|raw| decode_kv(&prefix, &raw))
                    .transpose()?
            } else {
                None
            };
            out.push(Event {
                r#type: if tag == LIVE {
                    EventType::Put as i32
                } else {
                    EventType::Delete as i32
                },
                kv: Some(kv),
                prev_kv,
            });
        }
        Ok(out)
    }

    /// Removes versions made unreachable by the last logical compaction, at
    /// most `budget` entries examined per call. Returns true when nothing is
    /// left to do.
    pub fn compact_physical(&self, budget: usize) -> Result<bool, BackendError> {
        let target = self.compact_revision();
        let mut st = self.physical.lock().expect("physical compaction lock");
        if st.done >= target {
            return Ok(true);
        }
        if st.target != target {
            *st = Physical {
                done: st.done,
                target,
                ..Default::default()
            };
        }
        let snap = self.backend.snapshot();
        let mut batch = Batch::default();
        let mut left = budget;
        let mut done = false;
        if !st.in_rev_table {
            let Physical {
                cursor, survivors, ..
            } = &mut *st;
            let next = walk(&snap, Table::Kv, cursor, None, &mut left, |ik, v| {
                let (p, krev) = keys::split_version_key(&ik)
                    .ok_or_else(|| corrupt("version key", &ik, "malformed"))?;
                if !survivors.keeps(p, krev, target, v) {
                    batch.delete(Table::Kv, ik);
                }
                Ok(())
            })?;
            match next {
                Some(next) => st.cursor = next,
                None => {
                    st.in_rev_table = true;
                    st.cursor.clear();
                }
            }
        }
        if st.in_rev_table && left > 0 {
            // Revision-index entries below the compaction point: no watch
            // can start there any more.
            let end = keys::rev_start(target);
            let next = walk(
                &snap,
                Table::Rev,
                &st.cursor,
                Some(&end),
                &mut left,
                |k, _| {
                    batch.delete(Table::Rev, k);
                    Ok(())
                },
            )?;
            match next {
                Some(next) => st.cursor = next,
                None => done = true,
            }
        }
        if done {
            batch.put(
                Table::Meta,
                META_PHYSICAL.to_vec(),
                target.to_be_bytes().to_vec(),
            );
        }
        if !batch.is_empty() {
            self.backend.commit(batch, false)?;
        }
        if done {
            st.done = target;
        }
        Ok(done)
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>, BackendError> {
        let snap = self.backend.snapshot();
        snap.get(Table::Lease, &keys::lease_key(id))?
            .map(|v| decode_ttl(id, &v))
            .transpose()
    }

    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, BackendError> {
        lease_keys(&self.backend.snapshot(), id)
    }

    pub fn leases(&self) -> Result<Vec<LeaseInfo>, BackendError> {
        let snap = self.backend.snapshot();
        snap.scan(Table::Lease, b"l", Some(b"m"), false)
            .map(|r| {
                let (k, v) = r?;
                let id: [u8; 8] = k
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("lease", &k, "short key"))?;
                decode_ttl(u64::from_be_bytes(id) as i64, &v)
            })
            .collect()
    }

    /// etcd's HashKV: (hash, compact_revision, hash_revision). `rev = 0`
    /// hashes at the current revision. The hash covers the versions a read
    /// at or below `hash_revision` can see, so it does not depend on how far
    /// physical compaction got; `compact_revision` is -1 before the first
    /// compaction, as etcd reports it.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let (snap, current, compact) = self.view();
        if rev > 0 && rev <= compact {
            return Err(MvccError::Compacted);
        }
        if rev > current {
            return Err(MvccError::FutureRevision);
        }
        let at = if rev <= 0 { current } else { rev };
        let hash = hash_kv_of(snap.scan(Table::Kv, &[], None, false), at, compact)?;
        Ok((hash, if compact == 0 { -1 } else { compact }, at))
    }

    /// Makes a store just restored from a snapshot the start of a new
    /// cluster (`cairn snapshot restore`): the old membership, removed
    /// members and alarms are dropped, `members` recorded, the applied index
    /// set to 0 (the new cluster's log starts over), and, as etcdutl's
    /// `--bump-revision` and `--mark-compacted` do, the revision raised by
    /// `bump` and marked compacted.
    pub fn prepare_restored(
        &self,
        members: &[Member],
        bump: i64,
        mark_compacted: bool,
    ) -> Result<(), BackendError> {
        let snap = self.backend.snapshot();
        let mut batch = Batch::default();
        for prefix in [META_MEMBER, META_REMOVED, crate::alarm::PREFIX] {
            let end = keys::prefix_end(prefix);
            for r in snap.scan(Table::Meta, prefix, end.as_deref(), false) {
                batch.delete(Table::Meta, r?.0);
            }
        }
        for m in members {
            batch.put(Table::Meta, member_key(m.id), m.encode_to_vec());
        }
        let current = self.current_revision() + bump.max(0);
        batch.put(
            Table::Meta,
            META_CURRENT.to_vec(),
            current.to_be_bytes().to_vec(),
        );
        if mark_compacted {
            batch.put(
                Table::Meta,
                META_COMPACT.to_vec(),
                current.to_be_bytes().to_vec(),
            );
        }
        batch.put(
            Table::Meta,
            META_APPLIED.to_vec(),
            0i64.to_be_bytes().to_vec(),
        );
        self.backend.commit(batch, true)?;
        self.current.store(current, Ordering::Release);
        if mark_compacted {
            self.compacted.store(current, Ordering::Release);
        }
        self.applied.store(0, Ordering::Release);
        *self.alarms.write().expect("alarms lock") = Vec::new();
        Ok(())
    }

    /// Hash of the data tables (Maintenance.Hash).
    pub fn hash_all(&self) -> Result<u32, BackendError> {
        let snap = self.backend.snapshot();
        let mut h = crc32fast::Hasher::new();
        for t in [Table::Kv, Table::Rev, Table::Lease] {
            h.update(t.name().as_bytes());
            for r in snap.scan(t, &[], None, false) {
                let (k, v) = r?;
                h.update(&k);
                h.update(&v);
            }
        }
        Ok(h.finalize())
    }

    /// The auth store as of the last applied command.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().expect("auth lock").clone()
    }

    /// The recorded members, by id.
    pub fn members(&self) -> Result<Vec<Member>, BackendError> {
        let snap = self.backend.snapshot();
        let end = keys::prefix_end(META_MEMBER);
        snap.scan(Table::Meta, META_MEMBER, end.as_deref(), false)
            .map(|r| {
                let (k, v) = r?;
                Member::decode(v.as_slice()).map_err(|e| corrupt("meta", &k, e))
            })
            .collect()
    }

    /// The IDs of the members removed from the cluster.
    pub fn removed_members(&self) -> Result<Vec<u64>, BackendError> {
        let snap = self.backend.snapshot();
        let end = keys::prefix_end(META_REMOVED);
        snap.scan(Table::Meta, META_REMOVED, end.as_deref(), false)
            .map(|r| {
                let (k, _) = r?;
                k[META_REMOVED.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("meta", &k, "removed member key is not 8 bytes"))
            })
            .collect()
    }

    /// Replaces the whole store by the content of a snapshot stream (the
    /// format of [`Mvcc::snapshot_chunks`]). Not atomic: the caller keeps
    /// the stream until this returns and redoes the restore after a crash.
    /// Must not run concurrently with `apply`.
    pub fn restore(&self, mut r: impl std::io::Read) -> Result<(), RestoreError> {
        let io = |e: std::io::Error| RestoreError::Format(format!("read: {e}"));
        let mut magic = [0u8; 10];
        r.read_exact(&mut magic).map_err(io)?;
        if &magic != b"CAIRNSNAP1" {
            return Err(RestoreError::Format(
                "not a cairn snapshot (bad magic)".into(),
            ));
        }
        // Drop everything first.
        let snap = self.backend.snapshot();
        for t in Table::ALL {
            let mut batch = Batch::default();
            for kv in snap.scan(t, &[], None, false) {
                batch.delete(t, kv?.0);
                if batch.ops.len() >= RESTORE_BATCH {
                    self.backend.commit(std::mem::take(&mut batch), false)?;
                }
            }
            self.backend.commit(batch, false)?;
        }
        drop(snap);
        let mut batch = Batch::default();
        let mut bytes = 0usize;
        loop {
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag).map_err(io)?;
            if tag[0] == 0xFF {
                break;
            }
            let t = *Table::ALL
                .get(tag[0] as usize)
                .ok_or_else(|| RestoreError::Format(format!("unknown table {}", tag[0])))?;
            let mut read_part = || -> Result<Vec<u8>, RestoreError> {
                let mut len = [0u8; 4];
                r.read_exact(&mut len).map_err(io)?;
                let len = u32::from_be_bytes(len) as usize;
                if len > 64 << 20 {
                    return Err(RestoreError::Format(format!("record of {len} bytes")));
                }
                let mut v = vec![0u8; len];
                r.read_exact(&mut v).map_err(io)?;
                Ok(v)
            };
            let k = read_part()?;
            let v = read_part()?;
            bytes += k.len() + v.len();
            batch.put(t, k, v);
            if batch.ops.len() >= RESTORE_BATCH || bytes >= 16 << 20 {
                self.backend.commit(std::mem::take(&mut batch), false)?;
                bytes = 0;
            }
        }
        self.backend.commit(batch, true)?;
        let snap = self.backend.snapshot();
        let current = meta_i64(&snap, META_CURRENT)?.unwrap_or(1);
        let compact = meta_i64(&snap, META_COMPACT)?.unwrap_or(0);
        let applied = meta_i64(&snap, META_APPLIED)?.unwrap_or(0) as u64;
        let physical = meta_i64(&snap, META_PHYSICAL)?.unwrap_or(0);
        *self.auth.write().expect("auth lock") = Arc::new(load_auth(&snap)?);
        self.current.store(current, Ordering::Release);
        self.compacted.store(compact, Ordering::Release);
        self.applied.store(applied, Ordering::Release);
        *self.physical.lock().expect("physical lock") = Physical {
            done: physical,
            ..Default::default()
        };
        *self.alarms.write().expect("alarms lock") = crate::alarm::load(&snap)?;
        Ok(())
    }

    /// The whole store as a stream of chunks of about `chunk_bytes`, read
    /// from one snapshot (Maintenance.Snapshot). Format: the magic
    /// `CAIRNSNAP1`, then records `table u8 | klen u32 | key | vlen u32 | value`,
    /// then `0xFF` and zero padding to a multiple of 512 bytes.
    pub fn snapshot_chunks(&self, chunk_bytes: usize) -> SnapshotChunks<B::Snapshot> {
        SnapshotChunks {
            snap: self.backend.snapshot(),
            table: 0,
            cursor: Vec::new(),
            chunk_bytes: chunk_bytes.max(64),
            started: false,
            done: false,
            emitted: 0,
        }
    }
}

/// What a raft membership change records in the store: the member's record
/// (carried in the conf change's context; `id` and `is_learner` from the
/// change itself) or its removal. One function for the agent's applier and
/// the simulator's, so both apply membership the same way.
pub fn conf_change_command(
    node_id: u64,
    remove: bool,
    learner: bool,
    context: &[u8],
) -> Result<Command, prost::DecodeError> {
    let op = if remove {
        Op::MemberRemove(node_id)
    } else {
        let mut m = Member::decode(context)?;
        m.id = node_id;
        m.is_learner = learner;
        Op::MemberSet(m)
    };
    Ok(Command {
        op: Some(op),
        ..Default::default()
    })
}

/// HashKV over the `Kv` table's records in key order: the versions a read
/// at or below `at` can see once compacted at `compact`. Shared by
/// [`Mvcc::hash_kv`] and the snapshot tools, which hash a snapshot file's
/// records without a store.
pub fn hash_kv_of(
    records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), BackendError>>,
    at: i64,
    compact: i64,
) -> Result<u32, BackendError> {
    let mut h = crc32fast::Hasher::new();
    h.update(b"kv");
    let mut survivors = Survivors::default();
    for r in records {
        let (ik, v) = r?;
        let (p, krev) =
            keys::split_version_key(&ik).ok_or_else(|| corrupt("version key", &ik, "malformed"))?;
        if krev > at || !survivors.keeps(p, krev, compact, &v) {
            continue;
        }
        h.update(&ik);
        h.update(&v);
    }
    Ok(h.finalize())
}

/// The snapshot's meta records that say where it stands: (current revision,
/// compact revision), from `meta` records (key, value).
pub fn snapshot_revisions<'a>(
    meta: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(i64, i64), BackendError> {
    let mut current = 1;
    let mut compact = 0;
    for (k, v) in meta {
        let read = || -> Result<i64, BackendError> {
            v.try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| corrupt("meta", k, "not 8 bytes"))
        };
        if k == META_CURRENT {
            current = read()?;
        } else if k == META_COMPACT {
            compact = read()?;
        }
    }
    Ok((current, compact))
}

/// A lease record: BE(ttl), then BE(remaining TTL) once checkpointed.
fn encode_lease(ttl: i64, remaining: i64) -> Vec<u8> {
    let mut v = ttl.to_be_bytes().to_vec();
    if remaining > 0 {
        v.extend_from_slice(&remaining.to_be_bytes());
    }
    v
}

fn decode_ttl(id: i64, v: &[u8]) -> Result<LeaseInfo, BackendError> {
    let field = |b: &[u8]| i64::from_be_bytes(b.try_into().expect("8 bytes"));
    match v.len() {
        8 => Ok(LeaseInfo {
            id,
            ttl: field(v),
            remaining_ttl: 0,
        }),
        16 => Ok(LeaseInfo {
            id,
            ttl: field(&v[..8]),
            remaining_ttl: field(&v[8..]),
        }),
        n => Err(corrupt(
            "lease",
            &id.to_be_bytes(),
            format!("record of {n} bytes (expected 8 or 16)"),
        )),
    }
}

/// Iterator over a snapshot's chunks; see [`Mvcc::snapshot_chunks`].
pub struct SnapshotChunks<S: ReadView> {
    snap: S,
    table: usize,
    cursor: Vec<u8>,
    chunk_bytes: usize,
    started: bool,
    done: bool,
    emitted: usize,
}

impl<S: ReadView> Iterator for SnapshotChunks<S> {
    type Item = Result<Vec<u8>, BackendError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(self.chunk_bytes + 64);
        if !self.started {
            out.extend_from_slice(b"CAIRNSNAP1");
            self.started = true;
        }
        while self.table < Table::ALL.len() && out.len() < self.chunk_bytes {
            let t = Table::ALL[self.table];
            let mut exhausted = true;
            for r in self.snap.scan(t, &self.cursor, None, false) {
                let (k, v) = match r {
                    Ok(kv) => kv,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                };
                out.push(self.table as u8);
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(&k);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(&v);
                self.cursor = k;
                self.cursor.push(0);
                if out.len() >= self.chunk_bytes {
                    exhausted = false;
                    break;
                }
            }
            if exhausted {
                self.table += 1;
                self.cursor.clear();
            }
        }
        if self.table >= Table::ALL.len() {
            self.done = true;
            // An end marker, then zeros to a multiple of 512 bytes: etcd's
            // clients check that a snapshot is whole pages plus the SHA-256
            // the server appends.
            out.push(0xFF);
            let total = self.emitted + out.len();
            out.resize(out.len() + (512 - total % 512) % 512, 0);
        }
        self.emitted += out.len();
        Some(Ok(out))
    }
}
