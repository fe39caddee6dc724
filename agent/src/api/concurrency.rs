//! The queue behind Lock and Election: what etcd's client-side
//! `concurrency` package does (`mutex.go`, `election.go`, `key.go`), done
//! inside the member over its own proposals and watch hub.
//!
//! A lock (or election) named `N` is the set of keys under `N/`. Each
//! contender puts `N/<lease in hex>` under its lease, with a txn that only
//! creates it (`create_revision == 0`), so a contender's place in the queue
//! is its key's create revision. The owner is the key with the lowest create
//! revision. A waiter watches only the key just before its own (the newest
//! one created before it): when that key is deleted it looks again, so one
//! release wakes one waiter, not all of them.
//!
//! Fencing: the owner's key has the lowest create revision under the
//! prefix, and a key created later has a higher one, so the create revision
//! of the owner's key strictly increases from one holder to the next; so does
//! the revision of the header a holder gets at acquisition (at or after its
//! predecessor's deletion). Either is a fencing token. A waiter whose own key
//! disappears (its lease expired or was revoked, or someone deleted it) stops
//! waiting with an error instead of reporting an ownership it no longer has
//! (etcd's `ErrSessionExpired`, Jepsen's etcd 3.4.3 finding).
use cairn_mvcc::auth::AuthInfo;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse, request_op, response_op,
};
use cairn_proto::mvccpb::{KeyValue, event::EventType};
use tonic::Status;

use super::Api;

/// The TTL of the lease etcd's session grants when a Lock or Campaign names
/// no lease (`concurrency.defaultSessionTTL`); nothing keeps it alive.
pub const SESSION_TTL_S: i64 = 60;

/// One contender's place in a queue.
#[derive(Debug, Clone)]
pub struct Slot {
    pub key: Vec<u8>,
    /// The key's create revision: its place in the queue, and the fencing
    /// token once it owns the lock.
    pub rev: i64,
    pub lease: i64,
}

/// What putting oneself in the queue found.
pub struct Queued {
    pub slot: Slot,
    /// The header of the txn that queued (or found) the key.
    pub header: ResponseHeader,
    /// No older key is in the queue: the slot owns it already.
    pub owner: bool,
    /// The key was there already (same lease) with this value.
    pub existing_value: Option<Vec<u8>>,
}

/// `<prefix><lease in hex>`, as etcd formats a lease ID (`%x` of an int64).
pub fn slot_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    [prefix, hex.as_bytes()].concat()
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    cairn_mvcc::keys::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

/// The key under `prefix` with the lowest create revision (etcd's
/// `WithFirstCreate`).
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The newest key under `prefix` created at or before `max_create`
/// (etcd's `WithLastCreate` + `WithMaxCreateRev`): the one to wait for.
fn last_created_before(prefix: &[u8], max_create: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create,
        serializable: true,
        ..Default::default()
    }
}

fn one_key(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        serializable: true,
        ..Default::default()
    }
}

fn create_rev_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    }))
}

fn range_op(r: RangeRequest) -> RequestOp {
    op(request_op::Request::RequestRange(r))
}

/// The `i`th answer of a txn, as a range answer.
fn range_answer(resp: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    match resp.responses.get(i)?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}

// === impl Api ===

impl Api {
    /// The lease a Lock or Campaign runs under: the one given, or (for 0) a
    /// fresh lease of [`SESSION_TTL_S`], as etcd's server-side session does.
    pub(crate) async fn session_lease(&self, lease: i64, who: &AuthInfo) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .lease_grant(
                LeaseGrantRequest {
                    ttl: SESSION_TTL_S,
                    id: 0,
                },
                who,
            )
            .await?;
        Ok(granted.id)
    }

    /// Puts `<prefix><lease>` in the queue (or finds it there: the same
    /// lease queues once) and reads who owns the queue, in one txn.
    pub(crate) async fn enqueue(
        &self,
        prefix: &[u8],
        lease: i64,
        value: &[u8],
        who: &AuthInfo,
    ) -> Result<Queued, Status> {
        let key = slot_key(prefix, lease);
        let txn = TxnRequest {
            compare: vec![create_rev_is(&key, 0)],
            success: vec![put_op(&key, value, lease), range_op(first_created(prefix))],
            failure: vec![range_op(one_key(&key)), range_op(first_created(prefix))],
        };
        let resp = self.txn(txn, who).await?;
        let header = resp.header.unwrap_or_default();
        let (rev, existing_value) = if resp.succeeded {
            (header.revision, None)
        } else {
            let kv = range_answer(&resp, 0)
                .and_then(|r| r.kvs.first())
                .ok_or_else(|| super::status::internal("queued key vanished inside its txn"))?;
            (kv.create_revision, Some(kv.value.clone()))
        };
        let owner = range_answer(&resp, 1)
            .and_then(|r| r.kvs.first())
            .is_none_or(|kv| kv.create_revision == rev);
        Ok(Queued {
            slot: Slot { key, rev, lease },
            header,
            owner,
            existing_value,
        })
    }

    /// Waits until `slot` is the oldest key under `prefix` (etcd's
    /// `waitDeletes`), then confirms with a linearizable read that the slot
    /// still exists and returns that read's header. Fails with
    /// `status::session_expired` as soon as the slot's own key is gone.
    pub(crate) async fn wait_turn(
        &self,
        prefix: &[u8],
        slot: &Slot,
        what: &str,
    ) -> Result<ResponseHeader, Status> {
        // Subscribed before the first read: no revision can slip between.
        let mut revisions = self.hub.subscribe();
        loop {
            if self.own_key(slot)?.is_none() {
                return Err(super::status::session_expired(what));
            }
            let before = self
                .mvcc
                .range(&last_created_before(prefix, slot.rev - 1))
                .map_err(super::status::mvcc)?;
            let Some(pred) = before.kvs.first() else {
                break;
            };
            let seen = before.header.map(|h| h.revision).unwrap_or_default();
            self.wait_deleted(&mut revisions, seen, &[&pred.key, &slot.key])
                .await?;
        }
        // A member that is behind may not have applied the revocation of
        // our lease yet: confirm at a linearizable point.
        self.linearizable_barrier().await?;
        let Some(_) = self.own_key(slot)? else {
            return Err(super::status::session_expired(what));
        };
        Ok(self.header(self.mvcc.current_revision()))
    }

    /// The slot's key if it still is the one queued (same create revision).
    fn own_key(&self, slot: &Slot) -> Result<Option<KeyValue>, Status> {
        let r = self
            .mvcc
            .range(&one_key(&slot.key))
            .map_err(super::status::mvcc)?;
        Ok(r.kvs.into_iter().find(|kv| kv.create_revision == slot.rev))
    }

    /// Returns once an event after revision `seen` may have deleted one of
    /// `keys` (certainly when the hub's ring no longer covers what came
    /// after `seen`: the caller then looks at the store again).
    async fn wait_deleted(
        &self,
        revisions: &mut tokio::sync::watch::Receiver<i64>,
        seen: i64,
        keys: &[&[u8]],
    ) -> Result<(), Status> {
        let mut from = seen + 1;
        loop {
            let current = *revisions.borrow_and_update();
            if current >= from {
                let Some(revs) = self.hub.get(from, current) else {
                    return Ok(());
                };
                let deleted = revs.iter().flat_map(|(_, evs)| evs.iter()).any(|e| {
                    e.r#type == EventType::Delete as i32
                        && e.kv.as_ref().is_some_and(|kv| keys.contains(&&kv.key[..]))
                });
                if deleted {
                    return Ok(());
                }
                from = current + 1;
            }
            revisions
                .changed()
                .await
                .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        }
    }

    /// Deletes `slot`'s key if it is still the one queued: cleanup of a
    /// wait that failed or was abandoned, so the queue does not stall
    /// behind it until its lease expires.
    pub(crate) async fn withdraw(&self, slot: &Slot, who: &AuthInfo) {
        let txn = TxnRequest {
            compare: vec![create_rev_is(&slot.key, slot.rev)],
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: slot.key.clone(),
                    ..Default::default()
                },
            ))],
            failure: Vec::new(),
        };
        if let Err(e) = self.txn(txn, who).await {
            tracing::warn!(key = %String::from_utf8_lossy(&slot.key), error = %e,
                "withdrawing an abandoned lock or campaign key failed; its lease will remove it");
        }
    }

    /// Runs a queue-then-wait operation in its own task, so that a client
    /// going away cannot interrupt it half way: `queue` (the proposals that
    /// put the caller in the queue) always runs to its end; when the
    /// caller's future is dropped while `wait` runs, the task stops waiting.
    /// Whenever the operation fails or is abandoned after queueing, the
    /// queued key is withdrawn (as etcd's server does on a canceled
    /// context), so the queue does not stall behind it.
    pub(crate) async fn detached<Q, T, F1, Fut1, F2, Fut2>(
        &self,
        who: AuthInfo,
        queue: F1,
        wait: F2,
    ) -> Result<T, Status>
    where
        Q: Send + 'static,
        T: Send + 'static,
        F1: FnOnce(Api) -> Fut1 + Send + 'static,
        Fut1: std::future::Future<Output = Result<(Slot, Q), Status>> + Send + 'static,
        F2: FnOnce(Api, Slot, Q) -> Fut2 + Send + 'static,
        Fut2: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    {
        let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
        let api = self.clone();
        let task = tokio::spawn(async move {
            let (slot, q) = queue(api.clone()).await?;
            let out = tokio::select! {
                biased;
                _ = &mut gone_rx => Err(Status::cancelled("context canceled")),
                out = wait(api.clone(), slot.clone(), q) => out,
            };
            if out.is_err() {
                api.withdraw(&slot, &who).await;
            }
            out
        });
        // Dropped with this future (the client went away): tells the task.
        let _gone = gone_tx;
        task.await
            .map_err(|e| super::status::internal(format!("lock task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_are_etcds_lease_hex() {
        assert_eq!(slot_key(b"l/", 0x694d7a4c6f5e7c1b), b"l/694d7a4c6f5e7c1b");
        assert_eq!(slot_key(b"l/", 10), b"l/a");
        assert_eq!(slot_key(b"l/", -1), b"l/-1");
    }
}
