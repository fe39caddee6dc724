//! Maintenance and Cluster services.

use etcd_client::{AlarmAction, AlarmType, CompactionOptions};

use crate::{rev, start};

#[tokio::test]
async fn status_fields() {
    let (_s, mut c) = start().await;
    c.put("a", "1", None).await.unwrap();
    c.put("b", "2", None).await.unwrap();
    let st = c.status().await.unwrap();
    let header = st.header().expect("header");
    assert_eq!(header.revision(), 3);
    assert_ne!(header.member_id(), 0);
    assert_ne!(header.cluster_id(), 0);
    assert!(header.raft_term() >= 1);
    // A single member leads itself.
    assert_eq!(st.leader(), header.member_id());
    assert_eq!(st.raft_term(), header.raft_term());
    // Version strings differ between implementations; they are x.y.z.
    let parts: Vec<&str> = st.version().split('.').collect();
    assert_eq!(parts.len(), 3, "version {:?}", st.version());
    assert!(
        parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "{:?}",
        st.version()
    );
    assert!(st.db_size() > 0);
    assert!(st.raft_used_db_size() > 0);
    assert!(st.raft_used_db_size() <= st.db_size());
    // The puts went through the log: index and applied index cover them.
    assert!(st.raft_index() >= 3, "raft_index {}", st.raft_index());
    assert!(st.raft_applied_index() >= 3);
    assert!(st.raft_applied_index() <= st.raft_index());
    assert!(st.errors().is_empty());
    assert!(!st.is_learner());
}

#[tokio::test]
async fn member_list_has_us() {
    let (s, mut c) = start().await;
    // A member publishes its client URLs through the log once it runs
    // (etcd's publish); its name is known from --initial-cluster before
    // that. Wait for the published entry.
    let resp = cairn_tests::eventually(
        "the member's client URLs published",
        std::time::Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move {
                let r = c.member_list().await.unwrap();
                r.members()
                    .iter()
                    .all(|m| !m.name().is_empty() && !m.client_urls().is_empty())
                    .then_some(r)
            }
        },
    )
    .await;
    let members = resp.members();
    assert_eq!(members.len(), 1);
    let m = &members[0];
    assert_eq!(m.name(), "n1");
    assert_eq!(m.peer_urls(), [s.peer_url()]);
    assert_eq!(m.client_urls(), [s.endpoint()]);
    assert!(!m.is_learner());
    let header = resp.header().unwrap();
    assert_eq!(m.id(), header.member_id());
    let st = c.status().await.unwrap();
    assert_eq!(st.header().unwrap().cluster_id(), header.cluster_id());
}

#[tokio::test]
async fn hash_kv_stable_across_reads() {
    let (s, mut c) = start().await;
    // hash_revision arrived in etcd 3.5; 3.4 leaves it 0.
    let hash_rev = |want: i64| if s.is_etcd() { 0 } else { want };
    for i in 0..10 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap(); // 2..=11
    }
    let h1 = c.hash_kv(0).await.unwrap();
    assert_eq!(h1.hash_revision(), hash_rev(11));
    // Before any compaction etcd reports compact_revision -1.
    assert_eq!(h1.compact_version(), -1);
    assert_eq!(rev(h1.header()), 11);
    c.get("k1", None).await.unwrap();
    c.txn(etcd_client::Txn::new()).await.unwrap();
    let h2 = c.hash_kv(0).await.unwrap();
    assert_eq!(h1.hash(), h2.hash());
    // A hash at an explicit revision equals the latest one while nothing changed.
    assert_eq!(c.hash_kv(11).await.unwrap().hash(), h1.hash());

    c.put("k1", "changed", None).await.unwrap(); // 12
    let h3 = c.hash_kv(0).await.unwrap();
    assert_ne!(h3.hash(), h1.hash());
    assert_eq!(h3.hash_revision(), hash_rev(12));
    assert_eq!(rev(h3.header()), 12);
    // Hashing up to an old revision gives the old hash.
    assert_eq!(c.hash_kv(11).await.unwrap().hash(), h1.hash());

    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    crate::assert_grpc_error(
        c.hash_kv(100).await,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    crate::assert_grpc_error(
        c.hash_kv(3).await,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let h4 = c.hash_kv(0).await.unwrap();
    assert_eq!(h4.compact_version(), 5);
    assert_eq!(h4.hash_revision(), hash_rev(12));
}

#[tokio::test]
async fn alarms_defragment_snapshot() {
    let (_s, mut c) = start().await;
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(alarms.alarms().is_empty());

    for i in 0..100 {
        c.put(format!("k{i:03}"), vec![b'v'; 1000], None)
            .await
            .unwrap();
    }
    c.delete("k00", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    c.defragment().await.unwrap();
    // Data survives a defragmentation.
    let r = c
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.count(), 90);
    assert_eq!(rev(r.header()), 102);

    let mut stream = c.snapshot().await.unwrap();
    let mut total = 0usize;
    let mut last_remaining = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        total += chunk.blob().len();
        last_remaining = Some(chunk.remaining_bytes());
    }
    assert!(
        total > 90 * 1000,
        "snapshot of {total} bytes holds 90 KB of values"
    );
    assert_eq!(last_remaining, Some(0));
}
