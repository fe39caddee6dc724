//! KV service: Range, Put, DeleteRange, Txn, Compact.

use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

use crate::{assert_grpc_error, rev, start, status_of};

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).to_string())
        .collect()
}

/// (key, value, create_revision, mod_revision, version, lease)
fn kv_tuple(kv: &KeyValue) -> (String, String, i64, i64, i64, i64) {
    (
        String::from_utf8_lossy(kv.key()).to_string(),
        String::from_utf8_lossy(kv.value()).to_string(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

fn t(k: &str, v: &str, c: i64, m: i64, ver: i64, l: i64) -> (String, String, i64, i64, i64, i64) {
    (k.into(), v.into(), c, m, ver, l)
}

#[tokio::test]
async fn put_get_and_revisions() {
    let (_s, mut c) = start().await;
    // An empty store is at revision 1; the first write makes revision 2.
    let r = c.get("foo", None).await.unwrap();
    assert_eq!(rev(r.header()), 1);
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    assert!(!r.more());

    let p = c.put("foo", "bar", None).await.unwrap();
    assert_eq!(rev(p.header()), 2);
    assert!(p.prev_key().is_none());

    let r = c.get("foo", None).await.unwrap();
    assert_eq!(rev(r.header()), 2);
    assert_eq!(r.count(), 1);
    assert_eq!(kv_tuple(&r.kvs()[0]), t("foo", "bar", 2, 2, 1, 0));

    // put, put, delete, put: version counts within one life of the key.
    assert_eq!(rev(c.put("foo", "baz", None).await.unwrap().header()), 3);
    let r = c.get("foo", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("foo", "baz", 2, 3, 2, 0));
    let d = c.delete("foo", None).await.unwrap();
    assert_eq!((rev(d.header()), d.deleted()), (4, 1));
    assert!(c.get("foo", None).await.unwrap().kvs().is_empty());
    assert_eq!(rev(c.put("foo", "again", None).await.unwrap().header()), 5);
    let r = c.get("foo", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("foo", "again", 5, 5, 1, 0));

    // Binary keys and values, and an empty value.
    c.put(vec![0u8, 255, 1], vec![7u8, 0, 9], None)
        .await
        .unwrap();
    let r = c.get(vec![0u8, 255, 1], None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), &[7u8, 0, 9]);
    c.put("empty", "", None).await.unwrap();
    let r = c.get("empty", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("empty", "", 7, 7, 1, 0));
}

#[tokio::test]
async fn old_revisions_future_and_compacted() {
    let (_s, mut c) = start().await;
    for i in 1..=5 {
        c.put("k", format!("v{i}"), None).await.unwrap(); // revisions 2..=6
    }
    let r = c
        .get("k", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    // The header carries the current revision, the kv the historical one.
    assert_eq!(rev(r.header()), 6);
    assert_eq!(kv_tuple(&r.kvs()[0]), t("k", "v2", 2, 3, 2, 0));
    let r = c
        .get("k", Some(GetOptions::new().with_revision(1)))
        .await
        .unwrap();
    assert!(r.kvs().is_empty());

    assert_grpc_error(
        c.get("k", Some(GetOptions::new().with_revision(7))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );

    let cr = c
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(rev(cr.header()), 6);
    assert_grpc_error(
        c.get("k", Some(GetOptions::new().with_revision(3))).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // The compaction revision itself stays readable.
    let r = c
        .get("k", Some(GetOptions::new().with_revision(4)))
        .await
        .unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("k", "v3", 2, 4, 3, 0));
    // Compacting again at or below the compacted revision, or in the future.
    assert_grpc_error(
        c.compact(4, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_grpc_error(
        c.compact(100, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Compaction is not a write.
    assert_eq!(rev(c.get("k", None).await.unwrap().header()), 6);
}

async fn fill_abc(c: &mut etcd_client::Client) {
    // revisions: a=2, b=3, c=4, b again=5, d=6, e=7 ; "ab" = 8
    for (k, v) in [
        ("a", "3"),
        ("b", "1"),
        ("c", "2"),
        ("b", "4"),
        ("d", "0"),
        ("e", "5"),
        ("ab", "9"),
    ] {
        c.put(k, v, None).await.unwrap();
    }
}

#[tokio::test]
async fn ranges_prefix_from_key_limit_count() {
    let (_s, mut c) = start().await;
    fill_abc(&mut c).await;

    let r = c
        .get("a", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["a", "ab"]);
    assert_eq!(r.count(), 2);

    let r = c
        .get("b", Some(GetOptions::new().with_range("d")))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["b", "c"]);

    let r = c
        .get("c", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["c", "d", "e"]);

    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["a", "ab", "b", "c", "d", "e"]);

    // limit: more and count ignore the limit.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["a", "ab"]);
    assert!(r.more());
    assert_eq!(r.count(), 6);
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_limit(6)))
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 6);
    assert!(!r.more());

    // keys_only: no values, everything else kept.
    let r = c
        .get("b", Some(GetOptions::new().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("b", "", 3, 5, 2, 0));

    // count_only: no kvs.
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 6);
    assert!(!r.more());

    // A range with nothing in it, and an inverted range.
    let r = c
        .get("x", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count()), (0, 0));
    let r = c
        .get("d", Some(GetOptions::new().with_range("b")))
        .await
        .unwrap();
    assert_eq!((r.kvs().len(), r.count()), (0, 0));

    // Serializable reads see the same data.
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 6);
    assert_eq!(rev(r.header()), 8);
}

#[tokio::test]
async fn sort_orders_and_targets() {
    let (_s, mut c) = start().await;
    fill_abc(&mut c).await;
    let all = |target, order| GetOptions::new().with_all_keys().with_sort(target, order);
    let cases: Vec<(SortTarget, SortOrder, Vec<&str>)> = vec![
        (
            SortTarget::Key,
            SortOrder::Ascend,
            vec!["a", "ab", "b", "c", "d", "e"],
        ),
        (
            SortTarget::Key,
            SortOrder::Descend,
            vec!["e", "d", "c", "b", "ab", "a"],
        ),
        (
            SortTarget::Key,
            SortOrder::None,
            vec!["a", "ab", "b", "c", "d", "e"],
        ),
        (
            SortTarget::Value,
            SortOrder::Ascend,
            vec!["d", "c", "a", "b", "e", "ab"],
        ),
        (
            SortTarget::Value,
            SortOrder::Descend,
            vec!["ab", "e", "b", "a", "c", "d"],
        ),
        (
            SortTarget::Create,
            SortOrder::Ascend,
            vec!["a", "b", "c", "d", "e", "ab"],
        ),
        (
            SortTarget::Create,
            SortOrder::Descend,
            vec!["ab", "e", "d", "c", "b", "a"],
        ),
        (
            SortTarget::Mod,
            SortOrder::Ascend,
            vec!["a", "c", "b", "d", "e", "ab"],
        ),
        (
            SortTarget::Mod,
            SortOrder::Descend,
            vec!["ab", "e", "d", "b", "c", "a"],
        ),
    ];
    for (target, order, want) in cases {
        let r = c.get("", Some(all(target, order))).await.unwrap();
        assert_eq!(keys(r.kvs()), want, "sort {target:?} {order:?}");
    }
    // Version: b has version 2, every other key 1; ties keep key order.
    let r = c
        .get("", Some(all(SortTarget::Version, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs())[0], "b");
    let r = c
        .get("", Some(all(SortTarget::Version, SortOrder::Ascend)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs())[5], "b");

    // Sorting happens before the limit.
    let r = c
        .get(
            "",
            Some(all(SortTarget::Key, SortOrder::Descend).with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["e", "d"]);
    assert!(r.more());
    assert_eq!(r.count(), 6);
}

#[tokio::test]
async fn revision_filters() {
    let (_s, mut c) = start().await;
    fill_abc(&mut c).await;
    let all = || GetOptions::new().with_all_keys();
    let cases: Vec<(GetOptions, Vec<&str>)> = vec![
        (all().with_min_mod_revision(5), vec!["ab", "b", "d", "e"]),
        (all().with_max_mod_revision(4), vec!["a", "c"]),
        (all().with_min_create_revision(4), vec!["ab", "c", "d", "e"]),
        (all().with_max_create_revision(3), vec!["a", "b"]),
        (
            all().with_min_mod_revision(4).with_max_mod_revision(6),
            vec!["b", "c", "d"],
        ),
    ];
    for (options, want) in cases {
        let r = c.get("", Some(options.clone())).await.unwrap();
        assert_eq!(keys(r.kvs()), want, "{options:?}");
        // count is taken before the filters.
        assert_eq!(r.count(), 6, "{options:?}");
    }
}

#[tokio::test]
async fn put_options_and_errors() {
    let (_s, mut c) = start().await;
    c.put("k", "v1", None).await.unwrap(); // 2
    let p = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(rev(p.header()), 3);
    assert_eq!(kv_tuple(p.prev_key().unwrap()), t("k", "v1", 2, 2, 1, 0));
    // prev_kv of a new key is absent.
    let p = c
        .put("new", "x", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(p.prev_key().is_none());

    // ignore_value keeps the value and bumps the version.
    let p = c
        .put("k", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap();
    assert_eq!(rev(p.header()), 5);
    let r = c.get("k", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("k", "v2", 2, 5, 3, 0));

    assert_grpc_error(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_grpc_error(
        c.put("k", "x", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_grpc_error(
        c.put("missing", "x", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    assert_grpc_error(
        c.put(
            "k",
            "x",
            Some(PutOptions::new().with_ignore_lease().with_lease(5)),
        )
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_grpc_error(
        c.put("k", "x", Some(PutOptions::new().with_lease(12345)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_grpc_error(
        c.put("", "x", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_grpc_error(
        c.get("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_grpc_error(
        c.delete("", None).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    // Failed requests do not write.
    assert_eq!(rev(c.get("k", None).await.unwrap().header()), 5);

    // ignore_lease keeps the key's lease.
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("leased", "a", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("leased", "b", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let r = c.get("leased", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("leased", "b", 6, 7, 2, lease));
    // A plain put detaches it.
    c.put("leased", "c", None).await.unwrap();
    let r = c.get("leased", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("leased", "c", 6, 8, 3, 0));
}

#[tokio::test]
async fn delete_prev_kv_and_noop() {
    let (_s, mut c) = start().await;
    fill_abc(&mut c).await; // up to revision 8
    let d = c
        .delete(
            "a",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((rev(d.header()), d.deleted()), (9, 2));
    let prev: Vec<_> = d.prev_kvs().iter().map(kv_tuple).collect();
    assert_eq!(prev, [t("a", "3", 2, 2, 1, 0), t("ab", "9", 8, 8, 1, 0)]);
    // Both deletions happened at one revision.
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["b", "c", "d", "e"]);

    // Without prev_kv, no prev_kvs.
    let d = c.delete("b", None).await.unwrap();
    assert_eq!((rev(d.header()), d.deleted()), (10, 1));
    assert!(d.prev_kvs().is_empty());

    // Deleting nothing does not bump the revision.
    let d = c
        .delete("zzz", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!((rev(d.header()), d.deleted()), (10, 0));
    let d = c
        .delete("c", Some(DeleteOptions::new().with_range("d")))
        .await
        .unwrap();
    assert_eq!((rev(d.header()), d.deleted()), (11, 1));
    let d = c
        .delete("", Some(DeleteOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!((rev(d.header()), d.deleted()), (12, 2));
    assert_eq!(rev(c.put("z", "1", None).await.unwrap().header()), 13);
}

#[tokio::test]
async fn txn_compare_targets_and_results() {
    let (_s, mut c) = start().await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put("k", "m", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 2: create=2 mod=2 version=1 value=m
    c.put("k", "m", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap(); // 3: mod=3 version=2
    use CompareOp::*;
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("k", Equal, 2), true),
        (Compare::version("k", Greater, 1), true),
        (Compare::version("k", Less, 2), false),
        (Compare::version("k", NotEqual, 2), false),
        (Compare::create_revision("k", Equal, 2), true),
        (Compare::create_revision("k", Less, 3), true),
        (Compare::create_revision("k", Greater, 2), false),
        (Compare::mod_revision("k", Equal, 3), true),
        (Compare::mod_revision("k", NotEqual, 3), false),
        (Compare::mod_revision("k", Greater, 2), true),
        (Compare::value("k", Equal, "m"), true),
        (Compare::value("k", Greater, "l"), true),
        (Compare::value("k", Less, "ma"), true),
        (Compare::value("k", NotEqual, "m"), false),
        (Compare::lease("k", Equal, lease), true),
        (Compare::lease("k", NotEqual, 0), true),
        (Compare::lease("k", Equal, 0), false),
        // A missing key has version, create and mod revision 0 and lease 0.
        (Compare::version("nope", Equal, 0), true),
        (Compare::create_revision("nope", Equal, 0), true),
        (Compare::mod_revision("nope", Less, 1), true),
        (Compare::lease("nope", Equal, 0), true),
        // ...but a value compare on a missing key is false, whatever the op.
        (Compare::value("nope", Equal, ""), false),
        (Compare::value("nope", NotEqual, "x"), false),
    ];
    for (compare, want) in cases {
        let resp = c.txn(Txn::new().when(vec![compare.clone()])).await.unwrap();
        assert_eq!(resp.succeeded(), want, "{compare:?}");
        // A txn without writes does not bump the revision.
        assert_eq!(rev(resp.header()), 3, "{compare:?}");
    }
    // Compares are ANDed.
    let resp = c
        .txn(Txn::new().when(vec![
            Compare::version("k", Equal, 2),
            Compare::value("k", Equal, "x"),
        ]))
        .await
        .unwrap();
    assert!(!resp.succeeded());
}

#[tokio::test]
async fn txn_results_and_headers() {
    let (_s, mut c) = start().await;
    c.put("a", "1", None).await.unwrap(); // 2
    c.put("b", "2", None).await.unwrap(); // 3
    let resp = c
        .txn(
            Txn::new()
                .when(vec![Compare::value("a", CompareOp::Equal, "1")])
                .and_then(vec![
                    TxnOp::put("c", "3", Some(PutOptions::new().with_prev_key())),
                    TxnOp::put("a", "10", Some(PutOptions::new().with_prev_key())),
                    TxnOp::get("a", None),
                    TxnOp::delete("b", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("", Some(GetOptions::new().with_all_keys())),
                ])
                .or_else(vec![TxnOp::put("failed", "1", None)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    // All writes of one txn share one revision.
    assert_eq!(rev(resp.header()), 4);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 5);
    match &ops[0] {
        TxnOpResponse::Put(p) => {
            assert!(p.prev_key().is_none());
            // etcd fills only the revision of headers inside a txn.
            let h = p.header().expect("inner header");
            assert_eq!(
                (h.revision(), h.cluster_id(), h.member_id(), h.raft_term()),
                (4, 0, 0, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    match &ops[1] {
        TxnOpResponse::Put(p) => {
            assert_eq!(kv_tuple(p.prev_key().unwrap()), t("a", "1", 2, 2, 1, 0))
        }
        other => panic!("{other:?}"),
    }
    match &ops[2] {
        // Reads inside the txn see its earlier writes.
        TxnOpResponse::Get(g) => {
            assert_eq!(kv_tuple(&g.kvs()[0]), t("a", "10", 2, 4, 2, 0));
            assert_eq!(rev(g.header()), 4);
        }
        other => panic!("{other:?}"),
    }
    match &ops[3] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(kv_tuple(&d.prev_kvs()[0]), t("b", "2", 3, 3, 1, 0));
        }
        other => panic!("{other:?}"),
    }
    match &ops[4] {
        TxnOpResponse::Get(g) => assert_eq!(keys(g.kvs()), ["a", "c"]),
        other => panic!("{other:?}"),
    }
    assert!(c.get("failed", None).await.unwrap().kvs().is_empty());

    // The failure branch runs when a compare fails.
    let resp = c
        .txn(
            Txn::new()
                .when(vec![Compare::value("a", CompareOp::Equal, "1")])
                .and_then(vec![TxnOp::put("ok", "1", None)])
                .or_else(vec![TxnOp::put("failed", "1", None), TxnOp::get("a", None)]),
        )
        .await
        .unwrap();
    assert!(!resp.succeeded());
    assert_eq!(rev(resp.header()), 5);
    match &resp.op_responses()[1] {
        TxnOpResponse::Get(g) => assert_eq!(kv_tuple(&g.kvs()[0]), t("a", "10", 2, 4, 2, 0)),
        other => panic!("{other:?}"),
    }
    assert!(c.get("ok", None).await.unwrap().kvs().is_empty());

    // An empty txn succeeds and does not write.
    let resp = c.txn(Txn::new()).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(rev(resp.header()), 5);
    // A txn whose ops are all reads does not bump the revision.
    let resp = c
        .txn(Txn::new().and_then(vec![TxnOp::get("a", None), TxnOp::get("c", None)]))
        .await
        .unwrap();
    assert_eq!(rev(resp.header()), 5);
    // A delete of nothing inside a txn does not bump it either.
    let resp = c
        .txn(Txn::new().and_then(vec![TxnOp::delete("nothing", None)]))
        .await
        .unwrap();
    assert_eq!(rev(resp.header()), 5);
}

#[tokio::test]
async fn txn_compare_over_range_and_nested() {
    let (_s, mut c) = start().await;
    c.put("p/a", "1", None).await.unwrap(); // 2
    c.put("p/b", "1", None).await.unwrap(); // 3
    c.put("q", "2", None).await.unwrap(); // 4
    let resp = c
        .txn(Txn::new().when(vec![
            Compare::value("p/", CompareOp::Equal, "1").with_prefix(),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    let resp = c
        .txn(Txn::new().when(vec![
            Compare::value("p/", CompareOp::Equal, "1").with_range("r"),
        ]))
        .await
        .unwrap();
    assert!(!resp.succeeded(), "q has value 2");
    let resp = c
        .txn(Txn::new().when(vec![
            Compare::mod_revision("p/", CompareOp::Less, 4).with_prefix(),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    let resp = c
        .txn(Txn::new().when(vec![
            Compare::mod_revision("p/", CompareOp::Less, 3).with_prefix(),
        ]))
        .await
        .unwrap();
    assert!(!resp.succeeded());

    // A nested txn: its writes share the outer revision.
    let inner = Txn::new()
        .when(vec![Compare::value("q", CompareOp::Equal, "2")])
        .and_then(vec![
            TxnOp::put("inner", "yes", None),
            TxnOp::get("q", None),
        ])
        .or_else(vec![TxnOp::put("inner", "no", None)]);
    let resp = c
        .txn(Txn::new().and_then(vec![TxnOp::put("outer", "1", None), TxnOp::txn(inner)]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(rev(resp.header()), 5);
    match &resp.op_responses()[1] {
        TxnOpResponse::Txn(nested) => {
            assert!(nested.succeeded());
            let ops = nested.op_responses();
            assert_eq!(ops.len(), 2);
            match &ops[1] {
                TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"2"),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    let r = c.get("inner", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("inner", "yes", 5, 5, 1, 0));
}

#[tokio::test]
async fn txn_errors() {
    let (_s, mut c) = start().await;
    c.put("a", "1", None).await.unwrap();
    assert_grpc_error(
        c.txn(Txn::new().and_then(vec![TxnOp::put("x", "1", None), TxnOp::put("x", "2", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // A put and a delete covering the same key also conflict.
    assert_grpc_error(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("x", "1", None),
            TxnOp::delete("w", Some(DeleteOptions::new().with_range("z"))),
        ]))
        .await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    // The same key in the two branches is fine.
    let resp = c
        .txn(
            Txn::new()
                .and_then(vec![TxnOp::put("x", "1", None)])
                .or_else(vec![TxnOp::put("x", "2", None)]),
        )
        .await
        .unwrap();
    assert_eq!(rev(resp.header()), 3);

    let ops: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let resp = c.txn(Txn::new().and_then(ops)).await.unwrap();
    assert_eq!(rev(resp.header()), 4);
    assert_eq!(
        c.get("k", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .unwrap()
            .count(),
        128
    );
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    assert_grpc_error(
        c.txn(Txn::new().and_then(ops)).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    assert_grpc_error(
        c.txn(Txn::new().and_then(vec![TxnOp::put("", "1", None)]))
            .await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_grpc_error(
        c.txn(Txn::new().and_then(vec![TxnOp::put(
            "l",
            "1",
            Some(PutOptions::new().with_lease(999)),
        )]))
        .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Nothing above wrote.
    assert_eq!(rev(c.get("a", None).await.unwrap().header()), 4);
}

#[tokio::test]
async fn request_too_large() {
    let (_s, mut c) = start().await;
    // etcd's default --max-request-bytes is 1.5 MiB; gRPC accepts messages up
    // to that plus 512 KiB of overhead (2 MiB), and refuses bigger ones
    // before etcd sees them.
    let big = vec![b'x'; 2 * 1024 * 1024];
    // The message counts the encoded PutRequest: value + key + field tags.
    assert_grpc_error(
        c.put("big", big, None).await,
        Code::ResourceExhausted,
        "grpc: received message larger than max (2097162 vs. 2097152)",
    );
    // Between 1.5 and 2 MiB etcd itself refuses the request.
    let medium = vec![b'x'; 1024 * 1024 + 700 * 1024];
    assert_grpc_error(
        c.put("medium", medium, None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // 1 MiB is fine.
    let ok = vec![b'x'; 1024 * 1024];
    let p = c.put("ok", ok, None).await.unwrap();
    assert_eq!(rev(p.header()), 2);
    let r = c.get("ok", None).await.unwrap();
    assert_eq!(r.kvs()[0].value().len(), 1024 * 1024);
}

#[tokio::test]
async fn compaction_physical_removes_history() {
    let (_s, mut c) = start().await;
    c.put("k", "1", None).await.unwrap(); // 2
    c.put("k", "2", None).await.unwrap(); // 3
    c.delete("k", None).await.unwrap(); // 4
    c.put("other", "x", None).await.unwrap(); // 5
    let cr = c
        .compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(rev(cr.header()), 5);
    for old in 2..5 {
        assert_grpc_error(
            c.get("k", Some(GetOptions::new().with_revision(old))).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
    let r = c
        .get("", Some(GetOptions::new().with_all_keys().with_revision(5)))
        .await
        .unwrap();
    assert_eq!(keys(r.kvs()), ["other"]);
    // Writes continue from the same revision counter.
    assert_eq!(rev(c.put("k", "3", None).await.unwrap().header()), 6);
    let r = c.get("k", None).await.unwrap();
    assert_eq!(kv_tuple(&r.kvs()[0]), t("k", "3", 6, 6, 1, 0));
}

#[tokio::test]
async fn range_stream() {
    let (s, c) = start().await;
    let mut kv = c.kv_client();
    for i in 0..10 {
        kv.put(format!("s/{i}"), "v", None).await.unwrap();
    }
    let result = kv
        .get_stream("s/", Some(GetOptions::new().with_prefix()))
        .await;
    if s.is_etcd() {
        // RangeStream arrived in etcd 3.7; 3.4 does not know the method.
        assert_eq!(status_of(result.map(|_| ())).code(), Code::Unimplemented);
        return;
    }
    let mut stream = result.unwrap();
    let mut all = Vec::new();
    let mut last = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        all.extend(keys(chunk.kvs()));
        last = Some(chunk);
    }
    let last = last.expect("at least one chunk");
    assert_eq!(last.count(), 10);
    assert!(!last.more());
    assert_eq!(rev(last.header()), 11);
    let want: Vec<String> = (0..10).map(|i| format!("s/{i}")).collect();
    assert_eq!(all, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_and_swap_is_atomic() {
    let (s, mut c) = start().await;
    c.put("counter", "0", None).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = s.client().await;
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 25 {
                let r = c.get("counter", None).await.unwrap();
                let kv = &r.kvs()[0];
                let n: u64 = kv.value_str().unwrap().parse().unwrap();
                let resp = c
                    .txn(
                        Txn::new()
                            .when(vec![Compare::mod_revision(
                                "counter",
                                CompareOp::Equal,
                                kv.mod_revision(),
                            )])
                            .and_then(vec![TxnOp::put("counter", format!("{}", n + 1), None)]),
                    )
                    .await
                    .unwrap();
                if resp.succeeded() {
                    done += 1;
                } else {
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = c.get("counter", None).await.unwrap();
    // Every successful swap wrote exactly once; failed ones wrote nothing.
    assert_eq!(kv_tuple(&r.kvs()[0]), t("counter", "100", 2, 102, 101, 0));
    assert_eq!(rev(r.header()), 102);
}
