//! Request checks done before a request is proposed, as etcd's gRPC layer
//! does them (`checkRangeRequest`, `checkPutRequest`, `checkTxnRequest`,
//! `checkIntervals`): a request that fails here never reaches the log.
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::MvccError;

pub fn check_range(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(MvccError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// The full check of a txn: shape, op count, then put/delete overlaps.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), MvccError> {
    check_txn_shape(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_shape(r: &TxnRequest, max_ops: i64) -> Result<(), MvccError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops {
        return Err(MvccError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<(), MvccError> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(r)) => check_put(r),
        Some(Request::RequestDeleteRange(r)) => check_delete(r),
        Some(Request::RequestTxn(t)) => check_txn_shape(t, max_ops),
        None => Err(MvccError::KeyNotFound),
    }
}

/// A deleted interval `[start, end)`; `end = None` is unbounded, a point
/// delete is `[k, k\0)`.
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of_delete(r: &DeleteRangeRequest) -> Interval {
        let end = if r.range_end.is_empty() {
            let mut e = r.key.clone();
            e.push(0);
            Some(e)
        } else if r.range_end == [0] {
            None
        } else {
            Some(r.range_end.clone())
        };
        Interval {
            start: r.key.clone(),
            end,
        }
    }
    fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }
}

type Puts = std::collections::BTreeSet<Vec<u8>>;

/// etcd's `checkIntervals`: no key may be put twice or put and deleted in the
/// same txn; a nested txn's then and else branches may put the same key since
/// only one of them runs.
fn check_intervals(reqs: &[RequestOp]) -> Result<(Puts, Vec<Interval>), MvccError> {
    let mut dels: Vec<Interval> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval::of_delete(d)),
            _ => None,
        })
        .collect();
    let hit = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts = Puts::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hit(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hit(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || hit(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_and_put_over_delete_are_refused() {
        assert!(matches!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(MvccError::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(MvccError::DuplicateKey)
        ));
        assert!(check_txn(&txn(vec![del("a", "b"), put("b")], vec![]), 128).is_ok());
        assert!(check_txn(&txn(vec![del("a", ""), del("a", "")], vec![]), 128).is_ok());
        assert!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128).is_ok());
    }

    #[test]
    fn nested_branches_may_share_a_key_but_not_with_the_parent() {
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn(vec![put("k")], vec![put("k")]))),
        };
        assert!(check_txn(&txn(vec![nested.clone()], vec![]), 128).is_ok());
        assert!(matches!(
            check_txn(&txn(vec![nested, put("k")], vec![]), 128),
            Err(MvccError::DuplicateKey)
        ));
    }

    #[test]
    fn op_count_and_empty_keys() {
        let ops: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert!(matches!(
            check_txn(&txn(ops, vec![]), 128),
            Err(MvccError::TooManyOps)
        ));
        assert!(matches!(
            check_txn(&txn(vec![put("")], vec![]), 128),
            Err(MvccError::EmptyKey)
        ));
        assert!(matches!(
            check_put(&PutRequest {
                key: "a".into(),
                value: "v".into(),
                ignore_value: true,
                ..Default::default()
            }),
            Err(MvccError::ValueProvided)
        ));
    }
}
