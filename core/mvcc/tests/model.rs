//! The store against a model that keeps every revision's full state.
use std::collections::BTreeMap;

use cairn_mvcc::{MemBackend, Mvcc, MvccError, Response};
use cairn_proto::cairnpb::Command;
use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::request_op::Request;
use cairn_proto::etcdserverpb::response_op::Response as OpResponse;
use cairn_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use cairn_proto::mvccpb::KeyValue;
use proptest::prelude::*;

type State = BTreeMap<Vec<u8>, KeyValue>;

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8, Option<u8>),
    /// txn: if version(a) == v then put a, else delete range b..
    Cas(u8, i64, u8),
    Compact(i64),
    Read(u8, Option<u8>, i64, i64),
}

fn key(k: u8) -> Vec<u8> {
    // include a 0 byte in some keys to exercise escaping
    if k.is_multiple_of(3) {
        vec![b'k', 0, k]
    } else {
        vec![b'k', k]
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..8, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..8, proptest::option::of(0u8..9)).prop_map(|(k, e)| Step::Delete(k, e)),
        2 => (0u8..8, 0i64..3, 0u8..8).prop_map(|(a, v, b)| Step::Cas(a, v, b)),
        1 => (0i64..40).prop_map(Step::Compact),
        3 => (0u8..8, proptest::option::of(0u8..9), 0i64..40, 0i64..4).prop_map(|(k, e, r, l)| Step::Read(k, e, r, l)),
    ]
}

fn in_range(k: &[u8], start: &[u8], end: &Option<Vec<u8>>) -> bool {
    match end {
        None => k == start,
        Some(e) => k >= start && k < e.as_slice(),
    }
}

struct Model {
    history: Vec<State>, // index = revision; history[1] = empty
    compact: i64,
}

impl Model {
    fn cur(&self) -> i64 {
        self.history.len() as i64 - 1
    }
    fn state(&self) -> &State {
        self.history.last().unwrap()
    }
}

fn apply<B: cairn_mvcc::Backend>(m: &Mvcc<B>, idx: &mut u64, op: Op) -> cairn_mvcc::Applied {
    *idx += 1;
    m.apply(
        *idx,
        &Command {
            op: Some(op),
            ..Default::default()
        },
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn store_matches_model(steps in proptest::collection::vec(step(), 1..60)) {
        let m = Mvcc::open(MemBackend::default()).unwrap();
        let mut model = Model { history: vec![State::new(), State::new()], compact: 0 };
        let mut idx = 0;
        for s in steps {
            match s {
                Step::Put(k, v) => {
                    let a = apply(&m, &mut idx, Op::Put(PutRequest { key: key(k), value: vec![v], ..Default::default() }));
                    let mut st = model.state().clone();
                    let rev = model.cur() + 1;
                    let prev = st.get(&key(k)).cloned();
                    st.insert(key(k), KeyValue { key: key(k), value: vec![v], mod_revision: rev,
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        version: prev.as_ref().map_or(1, |p| p.version + 1), lease: 0 });
                    model.history.push(st);
                    prop_assert_eq!(a.revision, rev);
                    prop_assert_eq!(a.events.len(), 1);
                    prop_assert_eq!(&a.events[0].prev_kv, &prev);
                }
                Step::Delete(k, e) => {
                    let end = e.map(key);
                    let a = apply(&m, &mut idx, Op::DeleteRange(DeleteRangeRequest { key: key(k), range_end: end.clone().unwrap_or_default(), prev_kv: true }));
                    let mut st = model.state().clone();
                    let doomed: Vec<KeyValue> = st.values().filter(|kv| in_range(&kv.key, &key(k), &end)).cloned().collect();
                    for kv in &doomed { st.remove(&kv.key); }
                    let Ok(Response::DeleteRange(r)) = a.result else { panic!("delete failed") };
                    prop_assert_eq!(&r.prev_kvs, &doomed);
                    if !doomed.is_empty() { model.history.push(st); }
                    prop_assert_eq!(a.revision, model.cur());
                }
                Step::Cas(ka, v, kb) => {
                    let txn = TxnRequest {
                        compare: vec![Compare { key: key(ka), target: CompareTarget::Version as i32, result: CompareResult::Equal as i32, target_union: Some(TargetUnion::Version(v)), range_end: vec![] }],
                        success: vec![
                            RequestOp { request: Some(Request::RequestPut(PutRequest { key: key(ka), value: b"cas".to_vec(), ..Default::default() })) },
                            RequestOp { request: Some(Request::RequestRange(RangeRequest { key: key(ka), ..Default::default() })) },
                        ],
                        failure: vec![RequestOp { request: Some(Request::RequestDeleteRange(DeleteRangeRequest { key: key(kb), ..Default::default() })) }],
                    };
                    let a = apply(&m, &mut idx, Op::Txn(txn));
                    let mut st = model.state().clone();
                    let version = st.get(&key(ka)).map_or(0, |kv| kv.version);
                    let Ok(Response::Txn(r)) = a.result else { panic!("txn failed") };
                    prop_assert_eq!(r.succeeded, version == v);
                    if version == v {
                        let rev = model.cur() + 1;
                        let prev = st.get(&key(ka)).cloned();
                        let kv = KeyValue { key: key(ka), value: b"cas".to_vec(), mod_revision: rev,
                            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                            version: prev.as_ref().map_or(1, |p| p.version + 1), lease: 0 };
                        st.insert(key(ka), kv.clone());
                        model.history.push(st);
                        // the read inside the txn sees the txn's own put
                        let Some(OpResponse::ResponseRange(rr)) = &r.responses[1].response else { panic!() };
                        prop_assert_eq!(&rr.kvs, &vec![kv]);
                        prop_assert_eq!(rr.header.unwrap().revision, rev);
                    } else if st.remove(&key(kb)).is_some() {
                        model.history.push(st);
                    }
                    prop_assert_eq!(r.header.unwrap().revision, model.cur());
                }
                Step::Compact(rev) => {
                    let a = apply(&m, &mut idx, Op::Compaction(CompactionRequest { revision: rev, physical: false }));
                    if rev <= model.compact {
                        prop_assert!(matches!(a.result, Err(MvccError::Compacted)));
                    } else if rev > model.cur() {
                        prop_assert!(matches!(a.result, Err(MvccError::FutureRevision)));
                    } else {
                        prop_assert!(a.result.is_ok());
                        model.compact = rev;
                        // HashKV covers what a compacted store holds, so it
                        // is the same before and after the old versions go.
                        let before = m.hash_kv(0).unwrap();
                        while !m.compact_physical(3).unwrap() {}
                        prop_assert_eq!(m.hash_kv(0).unwrap(), before);
                    }
                }
                Step::Read(k, e, rev, limit) => {
                    let end = e.map(key);
                    let req = RangeRequest { key: key(k), range_end: end.clone().unwrap_or_default(), revision: rev, limit, ..Default::default() };
                    let got = m.range(&req);
                    if rev > model.cur() {
                        prop_assert!(matches!(got, Err(MvccError::FutureRevision)));
                        continue;
                    }
                    if rev > 0 && rev < model.compact {
                        prop_assert!(matches!(got, Err(MvccError::Compacted)));
                        continue;
                    }
                    let at = if rev == 0 { model.cur() } else { rev };
                    let want: Vec<KeyValue> = model.history[at as usize].values().filter(|kv| in_range(&kv.key, &key(k), &end)).cloned().collect();
                    let got = got.unwrap();
                    prop_assert_eq!(got.count, want.len() as i64);
                    let n = if limit > 0 { (limit as usize).min(want.len()) } else { want.len() };
                    prop_assert_eq!(&got.kvs, &want[..n].to_vec());
                    prop_assert_eq!(got.more, n < want.len());
                    prop_assert_eq!(got.header.unwrap().revision, model.cur());
                }
            }
            prop_assert_eq!(m.current_revision(), model.cur());
        }
        // replay every event from the compaction point and rebuild the state
        let from = model.compact.max(1);
        let events = m.events(from, model.cur(), usize::MAX, true).unwrap();
        let mut st = model.history[(from - 1).max(1) as usize].clone();
        if from > 1 {
            // start from the state at `from - 1` as the model knows it
            st = model.history[(from - 1) as usize].clone();
        }
        for e in &events {
            let kv = e.kv.clone().unwrap();
            prop_assert!(kv.mod_revision >= from);
            // At the compaction revision itself the previous version may be
            // gone (etcd then sends no prev_kv either).
            if kv.mod_revision > model.compact || e.prev_kv.is_some() {
                prop_assert_eq!(&e.prev_kv, &st.get(&kv.key).cloned(), "prev_kv of {:?}", kv);
            }
            if e.r#type == 0 { st.insert(kv.key.clone(), kv); } else { st.remove(&kv.key); }
        }
        prop_assert_eq!(&st, model.state());
    }
}

#[test]
fn leases_attach_and_revoke_deletes_keys() {
    let m = Mvcc::open(MemBackend::default()).unwrap();
    let mut idx = 0;
    let a = apply(
        &m,
        &mut idx,
        Op::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 7 }),
    );
    assert_eq!(a.revision, 1, "grant does not bump the revision");
    assert_eq!(a.leases_granted, vec![(7, 10)]);
    let a = apply(
        &m,
        &mut idx,
        Op::Put(PutRequest {
            key: b"x".to_vec(),
            lease: 8,
            ..Default::default()
        }),
    );
    assert!(matches!(a.result, Err(MvccError::LeaseNotFound)));
    assert_eq!(a.revision, 1);
    for k in [b"b".to_vec(), b"a".to_vec()] {
        apply(
            &m,
            &mut idx,
            Op::Put(PutRequest {
                key: k,
                lease: 7,
                ..Default::default()
            }),
        );
    }
    assert_eq!(m.lease_keys(7).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    // moving a key to no lease detaches it
    apply(
        &m,
        &mut idx,
        Op::Put(PutRequest {
            key: b"b".to_vec(),
            ignore_value: true,
            ..Default::default()
        }),
    );
    assert_eq!(m.lease_keys(7).unwrap(), vec![b"a".to_vec()]);
    let a = apply(&m, &mut idx, Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }));
    assert_eq!(a.revision, 5);
    assert_eq!(a.events.len(), 1);
    assert_eq!(a.leases_revoked, vec![7]);
    assert!(m.lease(7).unwrap().is_none());
    let r = m
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].key, b"b");
    let a = apply(&m, &mut idx, Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }));
    assert!(matches!(a.result, Err(MvccError::LeaseNotFound)));
    assert_eq!(m.applied_index(), idx);
}

#[test]
fn reopen_keeps_revisions_and_sorting_works() {
    let backend = std::sync::Arc::new(MemBackend::default());
    struct Shared(std::sync::Arc<MemBackend>);
    impl cairn_mvcc::Backend for Shared {
        type Snapshot = <MemBackend as cairn_mvcc::Backend>::Snapshot;
        fn snapshot(&self) -> Self::Snapshot {
            self.0.snapshot()
        }
        fn commit(&self, b: cairn_mvcc::Batch, d: bool) -> Result<(), cairn_mvcc::BackendError> {
            self.0.commit(b, d)
        }
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
    }
    let m = Mvcc::open(Shared(backend.clone())).unwrap();
    let mut idx = 0;
    for (k, v) in [("c", "1"), ("a", "3"), ("b", "2"), ("a", "4")] {
        apply(
            &m,
            &mut idx,
            Op::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
        );
    }
    drop(m);
    let m = Mvcc::open(Shared(backend)).unwrap();
    assert_eq!(m.current_revision(), 5);
    assert_eq!(m.applied_index(), 4);
    let r = m
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            sort_order: 2,
            sort_target: 4,
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    let keys: Vec<_> = r
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect();
    assert_eq!(keys, ["a", "b"], "descending by value: a=4, b=2, c=1");
    assert!(r.more);
    assert_eq!(r.count, 3);
    let r = m
        .range(&RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            min_mod_revision: 4,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.kvs.len(), 2);
    let chunks: Vec<Vec<u8>> = m.snapshot_chunks(64).map(|c| c.unwrap()).collect();
    assert!(chunks.len() > 1 && chunks[0].starts_with(b"CAIRNSNAP1"));
    assert_eq!(chunks.iter().map(Vec::len).sum::<usize>() % 512, 0);
}

#[test]
fn many_versions_of_one_key_read_at_every_revision() {
    let m = Mvcc::open(MemBackend::default()).unwrap();
    let mut idx = 0;
    for i in 0..30u8 {
        for k in [b"a", b"b"] {
            apply(
                &m,
                &mut idx,
                Op::Put(PutRequest {
                    key: k.to_vec(),
                    value: vec![i],
                    ..Default::default()
                }),
            );
        }
    }
    for rev in 2..=m.current_revision() {
        let r = m
            .range(&RangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                revision: rev,
                ..Default::default()
            })
            .unwrap();
        let a_puts = (rev - 2) / 2 + 1; // a is written at even revisions
        let b_puts = (rev - 1) / 2; // b at odd revisions from 3
        assert_eq!(r.kvs[0].version, a_puts, "a at {rev}");
        assert_eq!(r.kvs.len() as i64, 1 + (b_puts > 0) as i64, "at {rev}");
        if b_puts > 0 {
            assert_eq!(r.kvs[1].value, vec![(b_puts - 1) as u8]);
        }
    }
}

#[test]
fn membership_records_and_removed_members() {
    use cairn_proto::cairnpb::{Member, MemberPeerUrls};
    let m = Mvcc::open(MemBackend::default()).unwrap();
    let mut idx = 0;
    for id in [1u64, 2, 3] {
        apply(
            &m,
            &mut idx,
            Op::MemberSet(Member {
                id,
                peer_urls: vec![format!("http://127.0.0.1:{id}")],
                ..Default::default()
            }),
        );
    }
    apply(
        &m,
        &mut idx,
        Op::MemberPeerUrls(MemberPeerUrls {
            id: 2,
            peer_urls: vec!["http://localhost:2".into()],
        }),
    );
    apply(&m, &mut idx, Op::MemberRemove(3));
    let members: Vec<(u64, Vec<String>)> = m
        .members()
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.peer_urls))
        .collect();
    assert_eq!(
        members,
        vec![
            (1, vec!["http://127.0.0.1:1".to_string()]),
            (2, vec!["http://localhost:2".to_string()])
        ]
    );
    assert_eq!(m.removed_members().unwrap(), vec![3]);
    // Updating a removed member's URLs changes nothing.
    apply(
        &m,
        &mut idx,
        Op::MemberPeerUrls(MemberPeerUrls {
            id: 3,
            peer_urls: vec!["http://x:3".into()],
        }),
    );
    assert_eq!(m.members().unwrap().len(), 2);
}

#[test]
fn lease_checkpoints_record_remaining_ttl_without_a_revision() {
    use cairn_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};
    let m = Mvcc::open(MemBackend::default()).unwrap();
    let mut idx = 0;
    apply(
        &m,
        &mut idx,
        Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 }),
    );
    let rev = m.current_revision();
    let checkpoint = |cps: &[(i64, i64)]| {
        Op::LeaseCheckpoint(LeaseCheckpointRequest {
            checkpoints: cps
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        })
    };
    // Unknown leases are skipped; a remaining TTL is capped at the TTL.
    let a = apply(&m, &mut idx, checkpoint(&[(7, 40), (8, 10)]));
    assert_eq!(a.leases_checkpointed, vec![(7, 40)]);
    assert_eq!(m.current_revision(), rev);
    let l = m.lease(7).unwrap().unwrap();
    assert_eq!((l.ttl, l.remaining_ttl), (60, 40));
    apply(&m, &mut idx, checkpoint(&[(7, 600)]));
    assert_eq!(m.leases().unwrap()[0].remaining_ttl, 60);
    // 0: back to the full TTL (a renewal).
    apply(&m, &mut idx, checkpoint(&[(7, 0)]));
    assert_eq!(m.lease(7).unwrap().unwrap().remaining_ttl, 0);
}
