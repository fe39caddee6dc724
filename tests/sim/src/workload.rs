//! The clients of a simulated run: each has at most one request out, sent
//! to one node (switching on failure), as a client library with one
//! connection does. Every request and what came back is recorded for the
//! linearizability checker.

use cairn_proto::cairnpb::{Command, command::Op};
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use rand::Rng;
use rand::rngs::StdRng;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    /// Put `value` if the key's mod revision is `expect` (0: absent).
    Cas {
        key: String,
        expect: i64,
        value: String,
    },
    LeaseGrant {
        id: i64,
    },
    LeaseRevoke {
        id: i64,
    },
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Put {
        revision: i64,
    },
    Get {
        value: Option<String>,
        mod_revision: i64,
        revision: i64,
    },
    Delete {
        deleted: i64,
        revision: i64,
    },
    /// When not succeeded, what the failure branch's get read.
    Cas {
        succeeded: bool,
        revision: i64,
        value: Option<String>,
        mod_revision: i64,
    },
    LeaseGrant {
        revision: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    /// Refused before it could take effect (no leader, lease not found).
    Failed(String),
    /// No answer (timeout, the node crashed): it may or may not have
    /// taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub req: Req,
    /// Simulated milliseconds.
    pub invoked: u64,
    pub completed: u64,
    pub outcome: Outcome,
}

/// Picks the next request of a client.
pub fn next_request(
    rng: &mut StdRng,
    client: usize,
    seq: u64,
    keys: usize,
    leases: &[i64],
    last_mod: &dyn Fn(&str) -> i64,
) -> Req {
    let key = format!("k{}", rng.random_range(0..keys));
    let value = format!("c{client}-{seq}");
    match rng.random_range(0..100) {
        0..35 => Req::Put {
            key,
            value,
            lease: 0,
        },
        35..65 => Req::Get { key },
        65..72 => Req::Delete { key },
        72..88 => {
            let expect = last_mod(&key);
            Req::Cas { key, expect, value }
        }
        88..93 if std::env::var_os("SIM_NO_LEASES").is_none() => Req::LeaseGrant {
            id: ((client as i64) << 32) | seq as i64,
        },
        93..97 if !leases.is_empty() => Req::Put {
            key,
            value,
            lease: leases[rng.random_range(0..leases.len())],
        },
        _ if !leases.is_empty() => Req::LeaseRevoke {
            id: leases[rng.random_range(0..leases.len())],
        },
        _ => Req::Get { key },
    }
}

/// The command a write proposes (None for a read).
pub fn command(req: &Req) -> Option<Command> {
    let op = match req {
        Req::Put { key, value, lease } => Op::Put(PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
            lease: *lease,
            ..Default::default()
        }),
        Req::Get { .. } => return None,
        Req::Delete { key } => Op::DeleteRange(DeleteRangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        }),
        Req::Cas { key, expect, value } => Op::Txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone().into_bytes(),
                target_union: Some(TargetUnion::ModRevision(*expect)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })),
            }],
        }),
        Req::LeaseGrant { id } => Op::LeaseGrant(LeaseGrantRequest { ttl: 3600, id: *id }),
        Req::LeaseRevoke { id } => Op::LeaseRevoke(LeaseRevokeRequest { id: *id }),
    };
    Some(Command {
        op: Some(op),
        ..Default::default()
    })
}

/// Reads what a write's apply returned into an outcome.
pub fn write_outcome(req: &Req, out: Result<cairn_mvcc::Response, String>) -> Outcome {
    use cairn_mvcc::Response as R;
    let rev = |h: &Option<cairn_proto::etcdserverpb::ResponseHeader>| {
        h.as_ref().map(|h| h.revision).unwrap_or(0)
    };
    match (req, out) {
        (_, Err(e)) => Outcome::Failed(e),
        (Req::Put { .. }, Ok(R::Put(p))) => Outcome::Put {
            revision: rev(&p.header),
        },
        (Req::Delete { .. }, Ok(R::DeleteRange(d))) => Outcome::Delete {
            deleted: d.deleted,
            revision: rev(&d.header),
        },
        (Req::Cas { .. }, Ok(R::Txn(t))) => {
            use cairn_proto::etcdserverpb::response_op::Response as Op;
            let read = t.responses.first().and_then(|r| match &r.response {
                Some(Op::ResponseRange(r)) => r.kvs.first().cloned(),
                _ => None,
            });
            Outcome::Cas {
                succeeded: t.succeeded,
                revision: rev(&t.header),
                value: read
                    .as_ref()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                mod_revision: read.map(|kv| kv.mod_revision).unwrap_or(0),
            }
        }
        (Req::LeaseGrant { .. }, Ok(R::LeaseGrant(g))) => Outcome::LeaseGrant {
            revision: rev(&g.header),
        },
        (Req::LeaseRevoke { .. }, Ok(R::LeaseRevoke(r))) => Outcome::LeaseRevoke {
            revision: rev(&r.header),
        },
        (req, Ok(other)) => Outcome::Failed(format!("{req:?} answered by {other:?}")),
    }
}

/// A linearizable read's answer from the store at the read point.
pub fn read_outcome(key: &str, mvcc: &cairn_mvcc::Mvcc<crate::disk::SimBackend>) -> Outcome {
    match mvcc.range(&RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }) {
        Ok(r) => {
            let kv = r.kvs.first();
            Outcome::Get {
                value: kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                mod_revision: kv.map(|kv| kv.mod_revision).unwrap_or(0),
                revision: r.header.map(|h| h.revision).unwrap_or(0),
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
