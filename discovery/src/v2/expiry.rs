//! A directory with a TTL takes what it holds with it when it expires
//! (etcd v2 removes the whole subtree). The lease deletes the directory's
//! own key; the agent that wrote the TTL then deletes what was beneath it.
//! It polls the one key around the expiration rather than watching, so
//! it costs no watcher; if that agent stops first, the content stays
//! (see the README).
use std::time::Duration;

use cairn_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_server::Kv,
    request_op::Request as Op,
};

use super::node::{self, Entry};
use super::store::Backend;

/// How long after its expiration a directory is waited for (its lease
/// may outlive the v2 TTL: leases have a minimum TTL, and expiry runs on
/// the leader).
const LAG_MAX: Duration = Duration::from_secs(60);

/// Waits for the directory at `path` to expire, then deletes its content.
/// A refresh moves the wait; a write that makes it permanent ends it.
pub async fn reap_when_expired<S: Backend>(svc: S, path: String, mut expires_ns: i64) {
    loop {
        let wait = (expires_ns - node::now_ns()).max(0) as u64;
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        let deadline = tokio::time::Instant::now() + LAG_MAX;
        loop {
            let req = RangeRequest {
                key: node::key(&path),
                serializable: true,
                ..RangeRequest::default()
            };
            let kv = match Kv::range(&svc, tonic::Request::new(req)).await {
                Ok(r) => r.into_inner().kvs.pop(),
                Err(_) => None,
            };
            match kv.as_ref().and_then(|kv| Entry::decode(&kv.value)) {
                None if kv.is_none() => {
                    delete_below(&svc, &path).await;
                    return;
                }
                Some(e) if e.dir && e.expires_ns == expires_ns => {}
                Some(e) if e.dir && e.expires_ns > expires_ns => {
                    expires_ns = e.expires_ns;
                    break;
                }
                // Permanent now, a file now, or not ours.
                _ => return,
            }
            if tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Deletes everything beneath `path` while the directory is still gone.
async fn delete_below<S: Backend>(svc: &S, path: &str) {
    let (start, end) = node::subtree(path);
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: node::key(path),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::Version(0)),
        }],
        success: vec![RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: start,
                range_end: end,
                prev_kv: false,
            })),
        }],
        failure: Vec::new(),
    };
    if let Err(e) = Kv::txn(svc, tonic::Request::new(txn)).await {
        tracing::warn!(path, error = %e, "removing an expired v2 directory's content failed");
    }
}
