//! etcd's alarms (NOSPACE, CORRUPT): which are raised, and what each one
//! refuses at apply time.
//!
//! Alarms are raised and cleared by `AlarmRequest` commands through the log
//! and recorded in the meta table (`alarm/` + BE(member id) + BE(type)), so
//! every member holds the same set, in the same batch as the applied index,
//! across restarts and in snapshots. What an active alarm refuses is decided
//! at apply time from that replicated set, so every member refuses the same
//! commands (etcd's `applierV3Capped` and `applierV3Corrupt`).
use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, RequestOp, TxnRequest,
};

use crate::{BackendError, MvccError, ReadView, Table, keys};

pub(crate) const PREFIX: &[u8] = b"alarm/";

/// etcd's cost estimate for the metadata of one key (`storage/quota.go`).
const KV_OVERHEAD: u64 = 256;
/// etcd's cost estimate for one lease.
const LEASE_OVERHEAD: u64 = 64;

/// A meta-table write: key, and value (`None`: delete).
pub type MetaWrite = (Vec<u8>, Option<Vec<u8>>);

fn key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.extend_from_slice(&(alarm as u32).to_be_bytes());
    k
}

/// The alarms recorded in `snap`, by member then type.
pub fn load<S: ReadView>(snap: &S) -> Result<Vec<AlarmMember>, BackendError> {
    let end = keys::prefix_end(PREFIX);
    snap.scan(Table::Meta, PREFIX, end.as_deref(), false)
        .map(|r| {
            let (k, _) = r?;
            let rest = &k[PREFIX.len()..];
            if rest.len() != 12 {
                return Err(BackendError(format!(
                    "corrupt alarm record at {k:02x?}: key is not 8 + 4 bytes"
                )));
            }
            Ok(AlarmMember {
                member_id: u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
                alarm: u32::from_be_bytes(rest[8..].try_into().expect("4 bytes")) as i32,
            })
        })
        .collect()
}

/// The meta writes of an ACTIVATE or DEACTIVATE, and etcd's answer: the
/// alarm raised (or the one already raised), the alarm cleared, or nothing.
pub fn change(active: &[AlarmMember], req: &AlarmRequest) -> (Vec<MetaWrite>, Vec<AlarmMember>) {
    let m = AlarmMember {
        member_id: req.member_id,
        alarm: req.alarm,
    };
    let present = active.contains(&m);
    match AlarmAction::try_from(req.action) {
        Ok(AlarmAction::Activate) if req.alarm != AlarmType::None as i32 => {
            if present {
                (Vec::new(), vec![m])
            } else {
                (vec![(key(m.member_id, m.alarm), Some(Vec::new()))], vec![m])
            }
        }
        Ok(AlarmAction::Deactivate) if present => {
            (vec![(key(m.member_id, m.alarm), None)], vec![m])
        }
        _ => (Vec::new(), Vec::new()),
    }
}

/// The alarms of type `alarm` (NONE: all), as `Alarm(GET)` answers.
pub fn filter(active: &[AlarmMember], alarm: i32) -> Vec<AlarmMember> {
    active
        .iter()
        .filter(|a| alarm == AlarmType::None as i32 || a.alarm == alarm)
        .copied()
        .collect()
}

pub fn response(alarms: Vec<AlarmMember>) -> AlarmResponse {
    AlarmResponse {
        header: None,
        alarms,
    }
}

/// What an active alarm refuses, as etcd's appliers do: under CORRUPT every
/// write (a read-only txn is served without the log in etcd, so it passes
/// here too); under NOSPACE a put, a txn that puts, a lease grant. Deletes,
/// compaction and lease revocation stay allowed under NOSPACE: they are how
/// an operator makes room.
pub fn refuses(active: &[AlarmMember], op: &Op) -> Option<MvccError> {
    let has = |t: AlarmType| active.iter().any(|a| a.alarm == t as i32);
    if has(AlarmType::Corrupt) {
        let refused = match op {
            Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Compaction(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_) => true,
            Op::Txn(t) => !txn_is_read_only(t),
            _ => false,
        };
        if refused {
            return Some(MvccError::Corrupt);
        }
    }
    if has(AlarmType::Nospace) && cost(op) > 0 {
        return Some(MvccError::NoSpace);
    }
    None
}

/// etcd's quota cost of a command (`BackendQuota.Cost`): what it may add to
/// the store. 0 for everything that only removes or reads.
pub fn cost(op: &Op) -> u64 {
    match op {
        Op::Put(p) => KV_OVERHEAD + (p.key.len() + p.value.len()) as u64,
        Op::Txn(t) => txn_cost(t),
        Op::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(Request::RequestPut(p)) => cost(&Op::Put(p.clone())),
                Some(Request::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) | None => true,
            Some(Request::RequestTxn(t)) => txn_is_read_only(t),
            Some(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

    fn alarm(t: AlarmType) -> Vec<AlarmMember> {
        vec![AlarmMember {
            member_id: 7,
            alarm: t as i32,
        }]
    }

    fn txn(op: Request) -> Op {
        Op::Txn(TxnRequest {
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        })
    }

    #[test]
    fn nospace_refuses_only_what_adds_data() {
        let a = alarm(AlarmType::Nospace);
        let put = PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            refuses(&a, &Op::Put(put.clone())),
            Some(MvccError::NoSpace)
        ));
        assert!(refuses(&a, &txn(Request::RequestPut(put))).is_some());
        assert!(refuses(&a, &Op::DeleteRange(DeleteRangeRequest::default())).is_none());
        assert!(refuses(&a, &txn(Request::RequestDeleteRange(Default::default()))).is_none());
        assert!(refuses(&a, &Op::Compaction(Default::default())).is_none());
        assert!(refuses(&a, &Op::LeaseRevoke(Default::default())).is_none());
        assert!(refuses(&a, &Op::LeaseGrant(Default::default())).is_some());
    }

    #[test]
    fn corrupt_refuses_every_write_but_not_reads() {
        let a = alarm(AlarmType::Corrupt);
        assert!(matches!(
            refuses(&a, &Op::DeleteRange(DeleteRangeRequest::default())),
            Some(MvccError::Corrupt)
        ));
        assert!(refuses(&a, &Op::Compaction(Default::default())).is_some());
        assert!(refuses(&a, &Op::LeaseRevoke(Default::default())).is_some());
        assert!(refuses(&a, &txn(Request::RequestRange(RangeRequest::default()))).is_none());
        assert!(refuses(&a, &txn(Request::RequestDeleteRange(Default::default()))).is_some());
    }

    #[test]
    fn activate_twice_writes_once_and_deactivate_of_nothing_is_empty() {
        let req = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 7,
            alarm: AlarmType::Nospace as i32,
        };
        let (w, r) = change(&[], &req);
        assert_eq!((w.len(), r.len()), (1, 1));
        let (w, r) = change(&alarm(AlarmType::Nospace), &req);
        assert_eq!((w.len(), r.len()), (0, 1));
        let off = AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            ..req
        };
        assert_eq!(change(&[], &off), (Vec::new(), Vec::new()));
        let none = AlarmRequest {
            alarm: AlarmType::None as i32,
            ..req
        };
        assert_eq!(change(&[], &none), (Vec::new(), Vec::new()));
    }
}
