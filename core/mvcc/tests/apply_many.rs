//! `Mvcc::apply_many` (the agent's batched apply) against `Mvcc::apply` one
//! command at a time: the same answers, revisions, events and store.
use cairn_mvcc::{Applied, MemBackend, Mvcc};
use cairn_proto::cairnpb::Command;
use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use proptest::prelude::*;

fn key(k: u8) -> Vec<u8> {
    vec![b'k', k]
}

fn put(k: u8, v: u8, prev_kv: bool, ignore_value: bool) -> PutRequest {
    PutRequest {
        key: key(k),
        value: if ignore_value { Vec::new() } else { vec![v; 3] },
        prev_kv,
        ignore_value,
        ..Default::default()
    }
}

fn delete(k: u8, end: Option<u8>, prev_kv: bool) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key(k),
        range_end: end.map(key).unwrap_or_default(),
        prev_kv,
    }
}

fn op() -> impl Strategy<Value = Op> {
    let put_s = (
        0u8..6,
        any::<u8>(),
        any::<bool>(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(k, v, p, i)| put(k, v, p, i));
    let del_s =
        (0u8..6, proptest::option::of(0u8..7), any::<bool>()).prop_map(|(k, e, p)| delete(k, e, p));
    let txn_s =
        (0u8..6, 0i64..3, put_s.clone(), del_s.clone(), 0u8..6).prop_map(|(a, v, p, d, r)| {
            Op::Txn(TxnRequest {
                compare: vec![Compare {
                    key: key(a),
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Version as i32,
                    target_union: Some(TargetUnion::Version(v)),
                    ..Default::default()
                }],
                success: vec![
                    RequestOp {
                        request: Some(Request::RequestPut(p)),
                    },
                    RequestOp {
                        request: Some(Request::RequestRange(RangeRequest {
                            key: key(r),
                            range_end: key(6),
                            ..Default::default()
                        })),
                    },
                ],
                failure: vec![RequestOp {
                    request: Some(Request::RequestDeleteRange(d)),
                }],
            })
        });
    prop_oneof![
        5 => put_s.prop_map(Op::Put),
        2 => del_s.prop_map(Op::DeleteRange),
        2 => txn_s,
        // Not batchable: they end a run.
        1 => (0i64..30).prop_map(|r| Op::Compaction(CompactionRequest { revision: r, physical: false })),
        1 => (1i64..5).prop_map(|id| Op::LeaseGrant(LeaseGrantRequest { id, ttl: 60 })),
    ]
}

fn cmd(op: Op) -> Command {
    Command {
        op: Some(op),
        ..Default::default()
    }
}

/// Everything a caller sees of an applied command.
fn seen(a: &Applied) -> String {
    format!(
        "{:?} rev {} events {:?} granted {:?} compacted {:?}",
        a.result, a.revision, a.events, a.leases_granted, a.compacted
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn batched_apply_matches_one_by_one(
        ops in proptest::collection::vec(op(), 1..50),
        cuts in proptest::collection::vec(1usize..8, 1..50),
    ) {
        let one = Mvcc::open(MemBackend::default()).unwrap();
        let many = Mvcc::open(MemBackend::default()).unwrap();
        let cmds: Vec<Command> = ops.into_iter().map(cmd).collect();
        let mut want = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            want.push(seen(&one.apply(i as u64 + 1, c).unwrap()));
        }
        // The same commands in runs of random length, as the applier cuts
        // them: consecutive batchable commands together, others alone.
        let mut got = Vec::new();
        let mut i = 0;
        let mut cut = cuts.iter().cycle();
        while i < cmds.len() {
            if !Mvcc::<MemBackend>::batchable(&cmds[i]) {
                got.push(seen(&many.apply(i as u64 + 1, &cmds[i]).unwrap()));
                i += 1;
                continue;
            }
            let limit = *cut.next().unwrap();
            let n = cmds[i..]
                .iter()
                .take(limit)
                .take_while(|c| Mvcc::<MemBackend>::batchable(c))
                .count();
            let run: Vec<(u64, &Command)> =
                (i..i + n).map(|j| (j as u64 + 1, &cmds[j])).collect();
            let before = many.current_revision();
            let applied = many.apply_many(&run).unwrap();
            prop_assert_eq!(applied.len(), n);
            // Nothing of the run is visible before it is all in; all of it after.
            prop_assert!(applied.last().unwrap().revision >= before);
            got.extend(applied.iter().map(seen));
            i += n;
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(many.current_revision(), one.current_revision());
        prop_assert_eq!(many.compact_revision(), one.compact_revision());
        prop_assert_eq!(many.applied_index(), one.applied_index());
        prop_assert_eq!(many.applied_index(), cmds.len() as u64);
        prop_assert_eq!(many.hash_kv(0).unwrap(), one.hash_kv(0).unwrap());
        // Every revision still readable reads the same, and the event
        // history (what watchers replay) is the same.
        let current = one.current_revision();
        for rev in one.compact_revision().max(1)..=current {
            let r = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: rev,
                ..Default::default()
            };
            prop_assert_eq!(
                format!("{:?}", many.range(&r).map(|x| x.kvs)),
                format!("{:?}", one.range(&r).map(|x| x.kvs))
            );
        }
        let from = one.compact_revision().max(1);
        prop_assert_eq!(
            format!("{:?}", many.events(from, current, usize::MAX, true)),
            format!("{:?}", one.events(from, current, usize::MAX, true))
        );
    }
}

#[test]
fn a_run_sees_its_own_writes() {
    let m = Mvcc::open(MemBackend::default()).unwrap();
    let cmds = [
        cmd(Op::Put(put(1, 7, false, false))),
        cmd(Op::Put(put(1, 0, true, true))),
        cmd(Op::DeleteRange(delete(0, Some(3), true))),
        cmd(Op::Put(put(1, 9, true, false))),
    ];
    let run: Vec<(u64, &Command)> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64 + 1, c))
        .collect();
    let out = m.apply_many(&run).unwrap();
    let revs: Vec<i64> = out.iter().map(|a| a.revision).collect();
    assert_eq!(revs, vec![2, 3, 4, 5]);
    // The second put kept the first one's value (ignore_value) and saw it
    // as its previous version.
    let second = &out[1].events[0];
    assert_eq!(second.kv.as_ref().unwrap().value, vec![7; 3]);
    assert_eq!(second.kv.as_ref().unwrap().version, 2);
    assert_eq!(second.prev_kv.as_ref().unwrap().mod_revision, 2);
    // The delete found the key the run wrote; the last put recreated it.
    assert_eq!(out[2].events.len(), 1);
    let last = out[3].events[0].kv.as_ref().unwrap();
    assert_eq!((last.create_revision, last.version), (5, 1));
    assert_eq!(m.current_revision(), 5);
    assert_eq!(m.applied_index(), 4);
}
