//! Lease service: grant, keep-alive, time-to-live, list, revoke, expiry.

use std::time::{Duration, Instant};

use etcd_client::{GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};
use tonic::Code;

use crate::{assert_grpc_error, rev, start};

#[tokio::test]
async fn grant_ids_ttls_and_errors() {
    let (_s, mut c) = start().await;
    let g = c.lease_grant(60, None).await.unwrap();
    assert!(g.id() > 0, "server-chosen ids are positive: {}", g.id());
    assert_eq!((g.ttl(), g.error()), (60, ""));
    // Granting is not a KV write.
    assert_eq!(rev(g.header()), 1);

    let g = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(12345)))
        .await
        .unwrap();
    assert_eq!((g.id(), g.ttl()), (12345, 30));
    assert_grpc_error(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(12345)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );

    // A TTL below the minimum (1.5 × election timeout = 2 s) is raised.
    let g = c.lease_grant(1, None).await.unwrap();
    assert_eq!(g.ttl(), 2);
    let ttl = c.lease_time_to_live(g.id(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 2);

    // The maximum TTL is 9e9 s.
    assert_eq!(
        c.lease_grant(9_000_000_000, None).await.unwrap().ttl(),
        9_000_000_000
    );
    assert_grpc_error(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );

    assert_grpc_error(
        c.lease_revoke(999_999).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // TimeToLive of an unknown lease is not an error: TTL -1.
    let ttl = c.lease_time_to_live(999_999, None).await.unwrap();
    assert_eq!((ttl.id(), ttl.ttl(), ttl.granted_ttl()), (999_999, -1, 0));
    assert!(ttl.keys().is_empty());
}

#[tokio::test]
async fn keepalive_time_to_live_and_list() {
    let (_s, mut c) = start().await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    let other = c
        .lease_grant(100, Some(LeaseGrantOptions::new().with_id(7)))
        .await
        .unwrap()
        .id();
    c.put("b", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();

    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!((ttl.id(), ttl.granted_ttl()), (id, 60));
    assert!((55..=60).contains(&ttl.ttl()), "ttl {}", ttl.ttl());
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
    // Without with_keys, no keys.
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert!(ttl.keys().is_empty());

    let (mut keeper, mut stream) = c.lease_keep_alive(id).await.unwrap();
    assert_eq!(keeper.id(), id);
    for _ in 0..3 {
        keeper.keep_alive().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("keepalive response")
            .unwrap()
            .expect("stream open");
        assert_eq!((resp.id(), resp.ttl()), (id, 60));
        assert_eq!(rev(resp.header()), 3);
    }

    // A keep-alive for an unknown lease answers TTL 0, which etcd-client
    // (reading the first response itself) turns into this error.
    match c.lease_keep_alive(424242).await {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
        other => panic!("expected TTL 0 for an unknown lease, got {other:?}"),
    }

    let list = c.leases().await.unwrap();
    let mut ids: Vec<i64> = list.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    let mut want = vec![id, other];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn revoke_deletes_attached_keys_in_one_revision() {
    let (_s, mut c) = start().await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    for k in ["l/a", "l/b", "l/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap(); // 2, 3, 4
    }
    c.put("l/free", "v", None).await.unwrap(); // 5
    let r = c.lease_revoke(id).await.unwrap();
    assert_eq!(rev(r.header()), 6);
    let g = c
        .get("l/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(rev(g.header()), 6);
    assert_eq!(g.kvs().len(), 1);
    assert_eq!(g.kvs()[0].key(), b"l/free");
    // History: all three deletions are at revision 6.
    let mut w = c
        .watch(
            "l/",
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(6),
            ),
        )
        .await
        .unwrap();
    let mut deletes = Vec::new();
    while deletes.len() < 3 {
        let resp = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in resp.events() {
            let kv = e.kv().unwrap();
            deletes.push((
                e.event_type(),
                String::from_utf8_lossy(kv.key()).to_string(),
                kv.mod_revision(),
            ));
        }
    }
    let d = etcd_client::EventType::Delete;
    assert_eq!(
        deletes,
        [
            (d, "l/a".to_string(), 6),
            (d, "l/b".to_string(), 6),
            (d, "l/c".to_string(), 6)
        ]
    );

    assert_grpc_error(
        c.lease_revoke(id).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_grpc_error(
        c.put("x", "v", Some(PutOptions::new().with_lease(id)))
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Revoking a lease with no keys does not bump the revision.
    let empty = c.lease_grant(60, None).await.unwrap().id();
    let r = c.lease_revoke(empty).await.unwrap();
    assert_eq!(rev(r.header()), 6);
    assert!(c.leases().await.unwrap().leases().is_empty());
}

#[tokio::test]
async fn expiry_deletes_keys() {
    let (_s, mut c) = start().await;
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("exp/a", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap(); // 2
    c.put("exp/b", "v", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap(); // 3
    let started = Instant::now();
    loop {
        let g = c
            .get("exp/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        if g.kvs().is_empty() {
            // Both keys went at one revision.
            assert_eq!(rev(g.header()), 4);
            break;
        }
        assert_eq!(g.kvs().len(), 2, "keys of one lease expire together");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "lease with TTL 2 not expired after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not before its TTL.
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    assert!(c.leases().await.unwrap().leases().is_empty());
}

#[tokio::test]
async fn key_moves_between_leases() {
    let (_s, mut c) = start().await;
    let first = c.lease_grant(60, None).await.unwrap().id();
    let second = c.lease_grant(60, None).await.unwrap().id();
    c.put("k", "1", Some(PutOptions::new().with_lease(first)))
        .await
        .unwrap(); // 2
    c.put("k", "2", Some(PutOptions::new().with_lease(second)))
        .await
        .unwrap(); // 3
    let keys_of = |ttl: etcd_client::LeaseTimeToLiveResponse| ttl.keys().to_vec();
    let with_keys = || Some(LeaseTimeToLiveOptions::new().with_keys());
    assert!(keys_of(c.lease_time_to_live(first, with_keys()).await.unwrap()).is_empty());
    assert_eq!(
        keys_of(c.lease_time_to_live(second, with_keys()).await.unwrap()),
        [b"k".to_vec()]
    );
    // Revoking the old lease leaves the key alone and writes nothing.
    let r = c.lease_revoke(first).await.unwrap();
    assert_eq!(rev(r.header()), 3);
    let g = c.get("k", None).await.unwrap();
    assert_eq!(
        (g.kvs()[0].value(), g.kvs()[0].lease()),
        (&b"2"[..], second)
    );
    // Deleting the key detaches it from its lease.
    c.delete("k", None).await.unwrap(); // 4
    assert!(keys_of(c.lease_time_to_live(second, with_keys()).await.unwrap()).is_empty());
    let r = c.lease_revoke(second).await.unwrap();
    assert_eq!(rev(r.header()), 4);
}
