//! The v2 operations, each a client of the v3 API (any role's services:
//! the member's own or the proxy's). A write reads what it depends on,
//! decides as etcd v2 would, and commits one v3 txn guarded by the
//! revisions it read; a guard that fails means something changed in
//! between, and the write starts over. So a v2 write is one v3 revision,
//! replicated through raft like any v3 write.
use cairn_proto::etcdserverpb::{
    self as pb, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request as Op,
};
use cairn_proto::mvccpb::KeyValue;
use cairn_proto::service::StreamCalls;
use pb::cluster_server::Cluster;
use pb::kv_server::Kv;
use pb::lease_server::Lease;
use tonic::Status;

use super::error::{Code, V2Error};
use super::node::{self, Entry, Event, Node, WriteKind};
use super::request::KeyRequest;

/// What the v2 API needs of a role's services.
pub trait Backend: Kv + Lease + Cluster + StreamCalls {}
impl<T: Kv + Lease + Cluster + StreamCalls> Backend for T {}

/// How many times a write starts over when its guards fail.
const WRITE_ATTEMPTS: usize = 32;

/// A successful write's or read's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub event: Event,
    /// `X-Etcd-Index`.
    pub index: i64,
}

impl Answer {
    /// etcd answers 201 to a create, and to a set that replaced nothing.
    pub fn created(&self) -> bool {
        self.event.action == "create"
            || (self.event.action == "set" && self.event.prev_node.is_none())
    }
}

/// A store error that is not a v2 error document.
pub fn internal(s: &Status) -> V2Error {
    V2Error::request(Code::RaftInternal, s.message().to_string())
}

/// One v3 key as read: the kv (for guards), and the v2 node it holds
/// (`None` when missing, not written by v2, or expired).
#[derive(Debug, Clone, Default)]
pub struct Slot {
    pub kv: Option<KeyValue>,
    pub entry: Option<Entry>,
}

impl Slot {
    fn node(&self, path: &str, now: i64) -> Option<Node> {
        let (kv, e) = (self.kv.as_ref()?, self.entry.as_ref()?);
        Some(Node::of(path, e, kv.mod_revision, now))
    }

    /// A txn compare that holds while the key is as read.
    fn guard(&self, key: Vec<u8>) -> Compare {
        match &self.kv {
            Some(kv) => cmp(
                key,
                CompareTarget::Mod,
                TargetUnion::ModRevision(kv.mod_revision),
            ),
            None => cmp(key, CompareTarget::Version, TargetUnion::Version(0)),
        }
    }
}

fn cmp(key: Vec<u8>, target: CompareTarget, value: TargetUnion) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(value),
    }
}

/// Reads at one revision: the first read fixes it.
struct Reader<'a, S> {
    svc: &'a S,
    rev: i64,
    serializable: bool,
    now: i64,
}

impl<S: Backend> Reader<'_, S> {
    async fn range(&mut self, key: Vec<u8>, range_end: Vec<u8>) -> Result<Vec<KeyValue>, V2Error> {
        let req = RangeRequest {
            key,
            range_end,
            revision: self.rev,
            serializable: self.serializable || self.rev != 0,
            ..RangeRequest::default()
        };
        let resp = Kv::range(self.svc, tonic::Request::new(req))
            .await
            .map_err(|s| internal(&s))?
            .into_inner();
        if self.rev == 0 {
            self.rev = resp.header.map(|h| h.revision).unwrap_or(0);
        }
        Ok(resp.kvs)
    }

    async fn get(&mut self, path: &str) -> Result<Slot, V2Error> {
        let kv = self.range(node::key(path), Vec::new()).await?.pop();
        let entry = kv
            .as_ref()
            .and_then(|kv| Entry::decode(&kv.value))
            .filter(|e| !e.expired(self.now));
        Ok(Slot { kv, entry })
    }

    /// Every v2 node beneath `path`, sorted by path.
    async fn below(&mut self, path: &str) -> Result<Vec<(String, Entry, i64)>, V2Error> {
        let (start, end) = node::subtree(path);
        let kvs = self.range(start, end).await?;
        Ok(kvs
            .into_iter()
            .filter_map(|kv| {
                let p = node::path_of(&kv.key)?;
                let e = Entry::decode(&kv.value)?;
                Some((p, e, kv.mod_revision))
            })
            .collect())
    }

    /// Walks the ancestors of `path`: a file among them is 104; a missing
    /// one is 100 unless `create` (then it is returned, to be created).
    async fn walk(&mut self, path: &str, create: bool) -> Result<Vec<(String, Slot)>, V2Error> {
        let mut out = Vec::new();
        for a in node::ancestors(path) {
            let slot = self.get(&a).await?;
            match &slot.entry {
                Some(e) if !e.dir => return Err(V2Error::new(Code::NotDir, a, self.rev)),
                None if !create => return Err(V2Error::new(Code::KeyNotFound, a, self.rev)),
                _ => {}
            }
            out.push((a, slot));
        }
        Ok(out)
    }
}

/// The v2 keys API over a role's v3 services.
#[derive(Clone)]
pub struct Store<S> {
    pub svc: S,
}

enum Outcome {
    Done(Box<Answer>),
    /// A guard failed: read again and start over.
    Retry,
}

impl<S: Backend> Store<S> {
    pub fn new(svc: S) -> Self {
        Store { svc }
    }

    fn reader(&self, serializable: bool) -> Reader<'_, S> {
        Reader {
            svc: &self.svc,
            rev: 0,
            serializable,
            now: node::now_ns(),
        }
    }

    /// `GET` without `wait`: serializable unless `quorum=true`.
    pub async fn get(&self, r: &KeyRequest) -> Result<Answer, V2Error> {
        let mut rd = self.reader(!r.quorum);
        let now = rd.now;
        let mut node = if r.path == "/" {
            // Fixes the revision; the root has no key of its own.
            rd.get("/").await?;
            Node {
                dir: true,
                ..Node::default()
            }
        } else {
            let slot = rd.get(&r.path).await?;
            let Some(node) = slot.node(&r.path, now) else {
                rd.walk(&r.path, false).await?;
                return Err(V2Error::new(Code::KeyNotFound, &r.path, rd.rev));
            };
            node
        };
        if node.dir {
            let below = rd.below(&r.path).await?;
            let kids = node::children(&r.path, &below, r.recursive, now);
            // Sorted by key whether asked or not (etcd's order is random
            // without `sorted`).
            // Go omits an empty `nodes`.
            node.nodes = (!kids.is_empty()).then_some(kids);
        }
        Ok(Answer {
            event: Event {
                action: "get".into(),
                node,
                prev_node: None,
            },
            index: rd.rev,
        })
    }

    /// `PUT`, `POST` and `DELETE`.
    pub async fn write(&self, method: &str, r: &KeyRequest) -> Result<Answer, V2Error> {
        for _ in 0..WRITE_ATTEMPTS {
            let outcome = match method {
                "POST" => self.try_create(r, true).await?,
                "DELETE" => self.try_delete(r).await?,
                _ => self.try_put(r).await?,
            };
            if let Outcome::Done(a) = outcome {
                return Ok(*a);
            }
        }
        Err(V2Error::request(
            Code::RaftInternal,
            "the key kept changing while this write was prepared",
        ))
    }

    async fn try_put(&self, r: &KeyRequest) -> Result<Outcome, V2Error> {
        match r.prev_exist {
            Some(true) if r.prev_index == 0 && r.prev_value.is_none() => self.try_update(r).await,
            Some(true) => self.try_cas(r).await,
            Some(false) => self.try_create(r, false).await,
            None if r.prev_index > 0 || r.prev_value.is_some() => self.try_cas(r).await,
            None => self.try_set(r).await,
        }
    }

    async fn try_set(&self, r: &KeyRequest) -> Result<Outcome, V2Error> {
        let mut rd = self.reader(true);
        let now = rd.now;
        if r.path == "/" {
            rd.get("/").await?;
            return Err(V2Error::new(Code::RootReadOnly, "/", rd.rev));
        }
        let slot = rd.get(&r.path).await?;
        let parents = rd.walk(&r.path, true).await?;
        let mut value = r.value.clone();
        if r.refresh {
            match &slot.entry {
                None => return Err(V2Error::new(Code::KeyNotFound, &r.path, rd.rev)),
                Some(e) => value = e.value.clone(),
            }
        }
        if slot.entry.as_ref().is_some_and(|e| e.dir) {
            return Err(V2Error::new(Code::NotFile, &r.path, rd.rev));
        }
        let kind = if r.refresh {
            WriteKind::Refresh
        } else {
            WriteKind::Set
        };
        let entry = Entry {
            dir: r.dir && !r.refresh,
            kind,
            expires_ns: 0,
            created: 0,
            value: if r.dir { String::new() } else { value },
        };
        self.commit(&r.path, &slot, &parents, entry, r.ttl, "set", now)
            .await
    }

    async fn try_create(&self, r: &KeyRequest, unique: bool) -> Result<Outcome, V2Error> {
        let mut rd = self.reader(true);
        let now = rd.now;
        let mut path = r.path.clone();
        if unique {
            // The name is the next index as this member sees it: equal to
            // the createdIndex unless another write lands first (then
            // still unique and ordered).
            rd.get(&r.path).await?;
            let name = format!("{:020}", rd.rev + 1);
            path = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
        }
        if path == "/" {
            rd.get("/").await?;
            return Err(V2Error::new(Code::RootReadOnly, "/", rd.rev));
        }
        let slot = rd.get(&path).await?;
        let parents = rd.walk(&path, true).await?;
        if slot.entry.is_some() {
            return Err(V2Error::new(Code::NodeExist, &path, rd.rev));
        }
        let entry = Entry {
            dir: r.dir,
            kind: WriteKind::Create,
            expires_ns: 0,
            created: 0,
            value: if r.dir {
                String::new()
            } else {
                r.value.clone()
            },
        };
        self.commit(&path, &slot, &parents, entry, r.ttl, "create", now)
            .await
    }

    async fn try_update(&self, r: &KeyRequest) -> Result<Outcome, V2Error> {
        let mut rd = self.reader(true);
        let now = rd.now;
        if r.path == "/" {
            rd.get("/").await?;
            return Err(V2Error::new(Code::RootReadOnly, "/", rd.rev));
        }
        let slot = rd.get(&r.path).await?;
        let Some(old) = slot.entry.clone() else {
            rd.walk(&r.path, false).await?;
            return Err(V2Error::new(Code::KeyNotFound, &r.path, rd.rev));
        };
        if old.dir && !r.value.is_empty() {
            return Err(V2Error::new(Code::NotFile, &r.path, rd.rev));
        }
        let created = slot
            .node(&r.path, now)
            .map(|n| n.created_index)
            .unwrap_or(0);
        let entry = Entry {
            dir: old.dir,
            kind: if r.refresh {
                WriteKind::Refresh
            } else {
                WriteKind::Update
            },
            expires_ns: 0,
            created,
            value: if r.refresh {
                old.value
            } else {
                r.value.clone()
            },
        };
        self.commit(&r.path, &slot, &[], entry, r.ttl, "update", now)
            .await
    }

    async fn try_cas(&self, r: &KeyRequest) -> Result<Outcome, V2Error> {
        let mut rd = self.reader(true);
        let now = rd.now;
        if r.path == "/" {
            rd.get("/").await?;
            return Err(V2Error::new(Code::RootReadOnly, "/", rd.rev));
        }
        let slot = rd.get(&r.path).await?;
        let old = self.compared(&mut rd, &slot, r).await?;
        let created = slot
            .node(&r.path, now)
            .map(|n| n.created_index)
            .unwrap_or(0);
        let entry = Entry {
            dir: false,
            kind: if r.refresh {
                WriteKind::Refresh
            } else {
                WriteKind::CompareAndSwap
            },
            expires_ns: 0,
            created,
            value: if r.refresh {
                old.value
            } else {
                r.value.clone()
            },
        };
        self.commit(&r.path, &slot, &[], entry, r.ttl, "compareAndSwap", now)
            .await
    }

    /// The checks of compare-and-swap and compare-and-delete: the node is a
    /// file and matches `prevValue` and `prevIndex`.
    async fn compared(
        &self,
        rd: &mut Reader<'_, S>,
        slot: &Slot,
        r: &KeyRequest,
    ) -> Result<Entry, V2Error> {
        let (Some(kv), Some(old)) = (&slot.kv, &slot.entry) else {
            rd.walk(&r.path, false).await?;
            return Err(V2Error::new(Code::KeyNotFound, &r.path, rd.rev));
        };
        if old.dir {
            return Err(V2Error::new(Code::NotFile, &r.path, rd.rev));
        }
        let index_ok = r.prev_index == 0 || r.prev_index as i64 == kv.mod_revision;
        let pv = r.prev_value.as_deref().unwrap_or("");
        let value_ok = pv.is_empty() || pv == old.value;
        let cause = match (value_ok, index_ok) {
            (true, true) => return Ok(old.clone()),
            (false, true) => format!("[{pv} != {}]", old.value),
            (true, false) => format!("[{} != {}]", r.prev_index, kv.mod_revision),
            (false, false) => format!(
                "[{pv} != {}] [{} != {}]",
                old.value, r.prev_index, kv.mod_revision
            ),
        };
        Err(V2Error::new(Code::TestFailed, cause, rd.rev))
    }

    /// Writes `entry` at `path` (creating the missing `parents`), with a
    /// new lease when it has a TTL; guarded by what was read.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        path: &str,
        slot: &Slot,
        parents: &[(String, Slot)],
        mut entry: Entry,
        ttl: Option<u64>,
        action: &str,
        now: i64,
    ) -> Result<Outcome, V2Error> {
        let prev_node = slot.node(path, now);
        let mut lease = 0;
        if let Some(ttl) = ttl {
            entry.expires_ns = now.saturating_add((ttl as i64).saturating_mul(1_000_000_000));
            lease = self.grant(ttl).await?;
        }
        let mut compare = vec![slot.guard(node::key(path))];
        let mut success = Vec::new();
        for (p, s) in parents {
            compare.push(s.guard(node::key(p)));
            if s.entry.is_none() {
                let dir = Entry {
                    dir: true,
                    kind: WriteKind::Implicit,
                    expires_ns: 0,
                    created: 0,
                    value: String::new(),
                };
                success.push(put(node::key(p), dir.encode(), 0));
            }
        }
        success.push(put(node::key(path), entry.encode(), lease));
        let txn = TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let resp = match Kv::txn(&self.svc, tonic::Request::new(txn)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                self.revoke(lease);
                return Err(internal(&s));
            }
        };
        if !resp.succeeded {
            self.revoke(lease);
            return Ok(Outcome::Retry);
        }
        // The old version's lease holds no key now.
        if let Some(kv) = &slot.kv {
            self.revoke(kv.lease);
        }
        if entry.dir && entry.expires_ns != 0 {
            tokio::spawn(super::expiry::reap_when_expired(
                self.svc.clone(),
                path.to_string(),
                entry.expires_ns,
            ));
        }
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        let node = Node::of(path, &entry, rev, now);
        Ok(Outcome::Done(Box::new(Answer {
            event: Event {
                action: action.into(),
                node,
                prev_node,
            },
            index: rev,
        })))
    }

    async fn try_delete(&self, r: &KeyRequest) -> Result<Outcome, V2Error> {
        let mut rd = self.reader(true);
        let now = rd.now;
        if r.path == "/" {
            rd.get("/").await?;
            return Err(V2Error::new(Code::RootReadOnly, "/", rd.rev));
        }
        let slot = rd.get(&r.path).await?;
        let cad = r.prev_index > 0 || r.prev_value.is_some();
        let old = if cad {
            self.compared(&mut rd, &slot, r).await?
        } else {
            match &slot.entry {
                Some(e) => e.clone(),
                None => {
                    rd.walk(&r.path, false).await?;
                    return Err(V2Error::new(Code::KeyNotFound, &r.path, rd.rev));
                }
            }
        };
        let key = node::key(&r.path);
        let mut compare = vec![slot.guard(key.clone())];
        let mut success = vec![RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            })),
        }];
        if old.dir {
            if !r.dir && !r.recursive {
                return Err(V2Error::new(Code::NotFile, &r.path, rd.rev));
            }
            let (start, end) = node::subtree(&r.path);
            if !r.recursive {
                let below = rd.below(&r.path).await?;
                if below.iter().any(|(_, e, _)| !e.expired(now)) {
                    return Err(V2Error::new(Code::DirNotEmpty, &r.path, rd.rev));
                }
                // Still empty when the delete applies.
                compare.push(Compare {
                    result: CompareResult::Less as i32,
                    target: CompareTarget::Create as i32,
                    key: start.clone(),
                    range_end: end.clone(),
                    target_union: Some(TargetUnion::CreateRevision(1)),
                });
            }
            success.push(RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: start,
                    range_end: end,
                    prev_kv: false,
                })),
            });
        }
        let txn = TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let resp = Kv::txn(&self.svc, tonic::Request::new(txn))
            .await
            .map_err(|s| internal(&s))?
            .into_inner();
        if !resp.succeeded {
            return Ok(Outcome::Retry);
        }
        if let Some(kv) = &slot.kv {
            self.revoke(kv.lease);
        }
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        let prev = slot.node(&r.path, now);
        let node = Node {
            key: Some(r.path.clone()),
            dir: old.dir,
            modified_index: rev,
            created_index: prev.as_ref().map(|n| n.created_index).unwrap_or(0),
            ..Node::default()
        };
        Ok(Outcome::Done(Box::new(Answer {
            event: Event {
                action: if cad { "compareAndDelete" } else { "delete" }.into(),
                node,
                prev_node: prev,
            },
            index: rev,
        })))
    }

    async fn grant(&self, ttl: u64) -> Result<i64, V2Error> {
        let req = LeaseGrantRequest {
            ttl: ttl.clamp(1, i64::MAX as u64) as i64,
            id: 0,
        };
        Lease::lease_grant(&self.svc, tonic::Request::new(req))
            .await
            .map(|r| r.into_inner().id)
            .map_err(|s| internal(&s))
    }

    /// Revokes a lease no key needs any more, in the background.
    fn revoke(&self, lease: i64) {
        if lease == 0 {
            return;
        }
        let svc = self.svc.clone();
        tokio::spawn(async move {
            let req = LeaseRevokeRequest { id: lease };
            if let Err(e) = Lease::lease_revoke(&svc, tonic::Request::new(req)).await {
                tracing::debug!(lease, error = %e, "revoking a v2 node's old lease");
            }
        });
    }
}

fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..PutRequest::default()
        })),
    }
}
