//! The client request path: an etcd v3 request decoded from arbitrary
//! bytes (protobuf as gRPC carries it, or JSON as the `/v3` gateway does),
//! checked as the API layer checks it, and, when the checks pass, applied
//! as the raft log would apply it to a small in-memory store.
//!
//! Input: one selector byte (bit 0: JSON instead of protobuf; the rest
//! picks the message), then the encoded message.
use cairn_mvcc::{MemBackend, Mvcc, alarm, validate};
use cairn_proto::cairnpb::Command;
use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::{
    AlarmRequest, AuthUserAddRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest,
};

/// The messages, in selector order.
pub const MESSAGES: &[&str] = &[
    "RangeRequest",
    "PutRequest",
    "DeleteRangeRequest",
    "TxnRequest",
    "CompactionRequest",
    "LeaseGrantRequest",
    "LeaseRevokeRequest",
    "WatchRequest",
    "AlarmRequest",
    "AuthUserAddRequest",
    // cairn's own log entry payload, as a follower decodes it
    "Command",
];

/// etcd's `--max-txn-ops` default.
const MAX_TXN_OPS: usize = 128;

fn decode<M>(json: bool, body: &[u8]) -> Option<M>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    if json {
        serde_json::from_slice(body).ok()
    } else {
        M::decode(body).ok()
    }
}

/// A store holding a few keys, a lease and a compaction, so that requests
/// find something to read, compare, delete and watch.
fn store() -> Mvcc<MemBackend> {
    let mvcc = Mvcc::open(MemBackend::default()).expect("empty store opens");
    let mut index = 0;
    let mut apply = |op: Op| {
        index += 1;
        let cmd = Command {
            op: Some(op),
            ..Default::default()
        };
        mvcc.apply(index, &cmd).expect("in-memory apply");
    };
    apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 }));
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3"), ("c/d", "4")] {
        apply(Op::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            lease: if k == "b" { 7 } else { 0 },
            ..Default::default()
        }));
    }
    apply(Op::Compaction(CompactionRequest {
        revision: 2,
        physical: false,
    }));
    mvcc
}

/// Applies `op` as the applier would once it is committed, then reads back.
fn apply(op: Op) {
    let _ = alarm::cost(&op);
    let mvcc = store();
    let before = mvcc.current_revision();
    let cmd = Command {
        op: Some(op),
        ..Default::default()
    };
    let applied = mvcc.apply(100, &cmd).expect("in-memory apply");
    assert!(
        applied.revision >= before,
        "revision went back: {before} -> {}",
        applied.revision
    );
    let _ = mvcc.compact_physical(1000);
    let _ = mvcc.events(mvcc.compact_revision(), applied.revision, 1000, true);
    let _ = mvcc.hash_kv(0);
}

pub fn request(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let json = selector & 1 == 1;
    match (selector >> 1) as usize % MESSAGES.len() {
        0 => {
            if let Some(r) = decode::<RangeRequest>(json, body)
                && validate::check_range(&r).is_ok()
            {
                let _ = store().range(&r);
            }
        }
        1 => {
            if let Some(r) = decode::<PutRequest>(json, body)
                && validate::check_put(&r).is_ok()
            {
                apply(Op::Put(r));
            }
        }
        2 => {
            if let Some(r) = decode::<DeleteRangeRequest>(json, body)
                && validate::check_delete(&r).is_ok()
            {
                apply(Op::DeleteRange(r));
            }
        }
        3 => {
            if let Some(r) = decode::<TxnRequest>(json, body)
                && validate::check_txn(&r, MAX_TXN_OPS).is_ok()
            {
                apply(Op::Txn(r));
            }
        }
        4 => {
            if let Some(r) = decode::<CompactionRequest>(json, body) {
                apply(Op::Compaction(r));
            }
        }
        5 => {
            if let Some(r) = decode::<LeaseGrantRequest>(json, body) {
                apply(Op::LeaseGrant(r));
            }
        }
        6 => {
            if let Some(r) = decode::<LeaseRevokeRequest>(json, body) {
                apply(Op::LeaseRevoke(r));
            }
        }
        7 => {
            let _ = decode::<WatchRequest>(json, body);
        }
        8 => {
            if let Some(r) = decode::<AlarmRequest>(json, body) {
                apply(Op::Alarm(r));
            }
        }
        9 => {
            let _ = decode::<AuthUserAddRequest>(json, body);
        }
        _ => {
            if let Ok(Command { op: Some(op), .. }) = <Command as prost::Message>::decode(body) {
                apply(op);
            }
        }
    }
}
