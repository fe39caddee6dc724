//! The forwarding half of the proxy, served in-process in front of real
//! cairn members and driven with etcd-client: results equal to the
//! member's own, errors passed through, namespace confinement, failover
//! and endpoint refresh, keep-alive coalescing, and read-cache coherence.
//!
//! Needs the cairn binary (`cargo build -p cairn-agent`, or `CAIRN_BIN`).
use std::time::Duration;

use cairn_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use cairn_proxy::{Proxy, ProxyConfig};
use cairn_tests::Subject;
use cairn_tests::cluster::Cluster;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, LeaseTimeToLiveOptions,
    PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::time::Instant;
use tonic::Code;

/// Generous bound for anything that must eventually happen; exceeding it
/// fails the test (it is never the thing measured).
const EVENTUALLY: Duration = Duration::from_secs(20);

fn config(endpoints: Vec<String>) -> ProxyConfig {
    ProxyConfig {
        endpoints,
        refresh_interval: Duration::ZERO,
        ..ProxyConfig::default()
    }
}

/// Serves `proxy` on an ephemeral 127.0.0.1 port; the endpoint URL.
async fn serve(proxy: &Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(KvServer::new(proxy.clone()))
        .add_service(LeaseServer::new(proxy.clone()))
        .add_service(ClusterServer::new(proxy.clone()))
        .add_service(MaintenanceServer::new(proxy.clone()))
        .add_service(WatchServer::new(proxy.clone()));
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// A proxy built from `cfg`, served; the proxy and an etcd-client on it.
async fn start_proxy(cfg: ProxyConfig) -> (Proxy, Client) {
    let proxy = Proxy::new(cfg).unwrap();
    let ep = serve(&proxy).await;
    (proxy, client(&ep).await)
}

async fn client(ep: &str) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect([ep], Some(options)).await.unwrap()
}

fn status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn serializable() -> Option<GetOptions> {
    Some(GetOptions::new().with_serializable())
}

async fn value(c: &mut Client, key: &str, opts: Option<GetOptions>) -> Option<Vec<u8>> {
    let r = c.get(key, opts).await.unwrap();
    r.kvs().first().map(|kv| kv.value().to_vec())
}

/// key, value, create, mod, version, lease
type KvFields = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

fn kv_tuples(kvs: &[etcd_client::KeyValue]) -> Vec<KvFields> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test]
async fn requests_through_the_proxy_equal_the_members_own_answers() {
    let subject = Subject::start().await;
    let mut up = subject.client().await;
    let (proxy, mut pc) = start_proxy(config(vec![subject.endpoint()])).await;

    let put = pc
        .put("k1", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(put.prev_key().is_none());
    let put = pc
        .put("k1", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(put.prev_key().unwrap().value(), b"v1");
    pc.put("k2", "v", None).await.unwrap();
    pc.put("k3", "v", None).await.unwrap();

    let via = pc
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let direct = up
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(kv_tuples(via.kvs()), kv_tuples(direct.kvs()));
    assert_eq!(via.kvs().len(), 3);
    assert_eq!(
        via.header().unwrap().revision(),
        direct.header().unwrap().revision()
    );
    assert!(
        proxy
            .stats()
            .upstream_revision
            .load(std::sync::atomic::Ordering::Relaxed)
            >= via.header().unwrap().revision()
    );

    let txn = Txn::new()
        .when([Compare::value("k1", CompareOp::Equal, "v2")])
        .and_then([
            TxnOp::put("k4", "t", None),
            TxnOp::get("k1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::get("k4", None)])),
        ])
        .or_else([TxnOp::put("failed", "x", None)]);
    let r = pc.txn(txn).await.unwrap();
    assert!(r.succeeded());
    let ops = r.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"v2"),
        other => panic!("{other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Txn(t) => match &t.op_responses()[0] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"t"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&mut up, "k4", None).await.unwrap(), b"t");
    assert!(value(&mut up, "failed", None).await.is_none());

    let del = pc
        .delete(
            "k",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 4);
    assert_eq!(del.prev_kvs().len(), 4);
    assert_eq!(
        up.get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        0
    );

    // Cluster and maintenance: the member the proxy talks to answers.
    let members = pc.member_list().await.unwrap();
    let direct = up.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].id(), direct.members()[0].id());
    let st = pc.status().await.unwrap();
    let direct = up.status().await.unwrap();
    assert_eq!(
        st.header().unwrap().member_id(),
        direct.header().unwrap().member_id()
    );
    assert_eq!(st.leader(), direct.leader());
    let hash = pc.hash_kv(0).await.unwrap();
    assert_eq!(
        hash.header().unwrap().member_id(),
        direct.header().unwrap().member_id()
    );
}

#[tokio::test]
async fn the_members_errors_reach_the_client_unchanged() {
    let subject = Subject::start().await;
    let mut up = subject.client().await;
    let (_proxy, mut pc) = start_proxy(config(vec![subject.endpoint()])).await;

    let first = pc
        .put("c", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    pc.put("c", "2", None).await.unwrap();
    let last = pc
        .put("c", "3", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    pc.compact(last, None).await.unwrap();

    let old = Some(GetOptions::new().with_revision(first));
    let via = status(pc.get("c", old.clone()).await.unwrap_err());
    let direct = status(up.get("c", old).await.unwrap_err());
    assert_eq!(via.code(), Code::OutOfRange);
    assert_eq!(
        via.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(
        (via.code(), via.message()),
        (direct.code(), direct.message())
    );

    let future = Some(GetOptions::new().with_revision(last + 1000));
    let via = status(pc.get("c", future.clone()).await.unwrap_err());
    let direct = status(up.get("c", future).await.unwrap_err());
    assert_eq!(
        (via.code(), via.message()),
        (direct.code(), direct.message())
    );

    let no_lease = Some(PutOptions::new().with_lease(0x1234_5678));
    let via = status(pc.put("l", "v", no_lease.clone()).await.unwrap_err());
    let direct = status(up.put("l", "v", no_lease).await.unwrap_err());
    assert_eq!(via.code(), Code::NotFound);
    assert_eq!(
        (via.code(), via.message()),
        (direct.code(), direct.message())
    );

    let dup = || Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let via = status(pc.txn(dup()).await.unwrap_err());
    let direct = status(up.txn(dup()).await.unwrap_err());
    assert_eq!(
        (via.code(), via.message()),
        (direct.code(), direct.message())
    );

    let via = status(pc.put("", "v", None).await.unwrap_err());
    let direct = status(up.put("", "v", None).await.unwrap_err());
    assert_eq!(
        (via.code(), via.message()),
        (direct.code(), direct.message())
    );
}

#[tokio::test]
async fn a_namespace_confines_every_request_to_its_prefix() {
    let subject = Subject::start().await;
    let mut up = subject.client().await;
    let mut cfg = config(vec![subject.endpoint()]);
    cfg.namespace = b"ns/".to_vec();
    let (_proxy, mut pc) = start_proxy(cfg).await;

    // Keys just outside the prefix on both sides, and the prefix itself.
    up.put("nr", "below", None).await.unwrap();
    up.put("ns", "short", None).await.unwrap();
    up.put("ns/", "the prefix itself", None).await.unwrap();
    up.put("ns0", "above", None).await.unwrap();
    up.put("outside", "x", None).await.unwrap();

    pc.put("a", "1", None).await.unwrap();
    pc.put("b", "2", None).await.unwrap();
    assert_eq!(value(&mut up, "ns/a", None).await.unwrap(), b"1");
    assert!(value(&mut up, "a", None).await.is_none());

    // "\0" as range end: everything from the key to the end of the
    // namespace, never beyond it.
    let all = pc
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
    let from_b = pc
        .get("b", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(from_b.kvs().len(), 1);
    assert_eq!(from_b.kvs()[0].key(), b"b");
    let prefixed = pc
        .get("", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(prefixed.count(), 2);
    // Explicit ranges are prefixed too.
    let ranged = pc
        .get("a", Some(GetOptions::new().with_range("b")))
        .await
        .unwrap();
    assert_eq!(kv_tuples(ranged.kvs()).len(), 1);
    assert_eq!(ranged.kvs()[0].key(), b"a");

    // An empty key is refused as a member refuses it, not turned into
    // the prefix.
    let e = status(pc.put("", "v", None).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "etcdserver: key is not provided");
    assert_eq!(
        value(&mut up, "ns/", None).await.unwrap(),
        b"the prefix itself"
    );

    // prev_kv comes back stripped.
    let put = pc
        .put("a", "1b", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(put.prev_key().unwrap().key(), b"a");

    // Txn: compares and ops, nested, are prefixed; results stripped.
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "1b")])
        .and_then([
            TxnOp::put("c", "3", Some(PutOptions::new().with_prev_key())),
            TxnOp::txn(
                Txn::new()
                    .when([Compare::version("b", CompareOp::Greater, 0)])
                    .and_then([TxnOp::get("b", None)]),
            ),
        ]);
    let r = pc.txn(txn).await.unwrap();
    assert!(r.succeeded());
    match &r.op_responses()[1] {
        TxnOpResponse::Txn(t) => {
            assert!(t.succeeded());
            match &t.op_responses()[0] {
                TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].key(), b"b"),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(value(&mut up, "ns/c", None).await.unwrap(), b"3");
    assert!(value(&mut up, "c", None).await.is_none());

    // Lease keys: only the namespace's, stripped.
    let lease = pc.lease_grant(60, None).await.unwrap().id();
    pc.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    up.put("elsewhere", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let ttl = pc
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);

    // Deleting everything the client can see leaves the rest alone.
    let del = pc
        .delete(
            "\0",
            Some(DeleteOptions::new().with_from_key().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(del.deleted(), 4);
    assert!(
        del.prev_kvs()
            .iter()
            .all(|kv| !kv.key().starts_with(b"ns/"))
    );
    let rest = up
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = rest.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(
        keys,
        vec![&b"elsewhere"[..], b"nr", b"ns", b"ns/", b"ns0", b"outside"]
    );
}

#[tokio::test]
async fn a_write_goes_to_the_next_endpoint_when_the_first_cannot_be_reached() {
    let subject = Subject::start().await;
    let dead = format!("http://127.0.0.1:{}", cairn_tests::free_port());
    // No cache: its watch would find the dead endpoint first and move the
    // pool on before the write is made.
    let mut cfg = config(vec![dead.clone(), subject.endpoint()]);
    cfg.cache_entries = 0;
    let (proxy, mut pc) = start_proxy(cfg).await;
    assert_eq!(proxy.upstream().endpoints()[0], dead);

    // A write: nothing reached the dead endpoint, so it is sent on.
    pc.put("w", "1", None).await.unwrap();
    assert_eq!(proxy.upstream().endpoints()[0], subject.endpoint());
    let mut up = subject.client().await;
    assert_eq!(value(&mut up, "w", None).await.unwrap(), b"1");

    // Nothing reachable at all: Unavailable, not a hang.
    let (_p, mut nothing) = start_proxy(config(vec![
        dead,
        format!("http://127.0.0.1:{}", cairn_tests::free_port()),
    ]))
    .await;
    let e = status(nothing.put("w", "2", None).await.unwrap_err());
    assert_eq!(e.code(), Code::Unavailable);
    let e = status(nothing.get("w", None).await.unwrap_err());
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(value(&mut up, "w", None).await.unwrap(), b"1");
}

#[tokio::test]
async fn the_proxy_learns_the_members_and_survives_the_loss_of_its_endpoint() {
    let mut c = Cluster::start(cairn_tests::subject_kind(), 3, &[]).await;
    // Given only member 0, the proxy learns the others from MemberList.
    let mut cfg = config(vec![c.members[0].client_url()]);
    cfg.refresh_interval = Duration::from_millis(200);
    let (proxy, mut pc) = start_proxy(cfg).await;
    let eps = eventually_in("the proxy learns all three members", || {
        let eps = proxy.upstream().endpoints();
        async move { (eps.len() == 3).then_some(eps) }
    })
    .await;
    assert_eq!(eps[0], c.members[0].client_url());
    for m in &c.members {
        assert!(eps.contains(&m.client_url()), "{eps:?}");
    }
    pc.put("before", "1", None).await.unwrap();

    // Member 0 is not the leader (so that no election is needed and every
    // request after its loss must succeed), then it is killed.
    let leader = c.leader(EVENTUALLY).await;
    if leader == 0 {
        let target = c.member_id(1).await;
        c.client(0).await.move_leader(target).await.unwrap();
        assert_eq!(c.leader(EVENTUALLY).await, 1);
    }
    c.kill9(0);

    assert_eq!(value(&mut pc, "before", None).await.unwrap(), b"1");
    assert_eq!(
        value(&mut pc, "before", serializable()).await.unwrap(),
        b"1"
    );
    for i in 0..20 {
        let v = format!("v{i}");
        pc.put("after", v.clone(), None).await.unwrap();
        assert_eq!(value(&mut pc, "after", None).await.unwrap(), v.as_bytes());
    }
    assert_ne!(proxy.upstream().endpoints()[0], c.members[0].client_url());
    let mut up = c.client(1).await;
    assert_eq!(value(&mut up, "after", None).await.unwrap(), b"v19");
    // A refresh keeps the dead member in the list (it is still a member)
    // but not as the current endpoint.
    assert!(pc.member_list().await.unwrap().members().len() == 3);
}

#[tokio::test]
async fn keep_alives_share_renewals_and_never_answer_with_an_old_ttl() {
    use std::sync::atomic::Ordering::Relaxed;
    let subject = Subject::start().await;
    let (proxy, mut pc) = start_proxy(config(vec![subject.endpoint()])).await;
    let ep = serve(&proxy).await;
    let lease = pc.lease_grant(30, None).await.unwrap().id();

    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut c = client(&ep).await;
        streams.push(c.lease_keep_alive(lease).await.unwrap());
    }
    let before_client = proxy.stats().keepalives_client.load(Relaxed);
    let before_upstream = proxy.stats().keepalives_upstream.load(Relaxed);
    for _round in 0..5 {
        let answers = futures::future::join_all(streams.iter_mut().map(|(k, s)| async move {
            k.keep_alive().await.unwrap();
            s.message().await.unwrap().unwrap()
        }))
        .await;
        for a in answers {
            assert_eq!(a.id(), lease);
            assert!((25..=30).contains(&a.ttl()), "ttl {}", a.ttl());
        }
    }
    let client_n = proxy.stats().keepalives_client.load(Relaxed) - before_client;
    let upstream_n = proxy.stats().keepalives_upstream.load(Relaxed) - before_upstream;
    assert_eq!(client_n, 50);
    assert!(
        upstream_n < client_n && upstream_n >= 5,
        "{upstream_n} upstream renewals for {client_n} client keep-alives"
    );
    let mut up = subject.client().await;
    let ttl = up.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!((25..=30).contains(&ttl), "ttl {ttl}");

    // Revoked behind the proxy's back: the next keep-alive on an existing
    // stream answers TTL 0, as the member does, never an earlier TTL.
    up.lease_revoke(lease).await.unwrap();
    for (k, s) in streams.iter_mut().take(3) {
        k.keep_alive().await.unwrap();
        let a = s.message().await.unwrap().unwrap();
        assert_eq!(a.ttl(), 0, "a revoked lease answered with TTL {}", a.ttl());
    }
    match pc.lease_keep_alive(lease).await {
        Err(e) => assert!(e.to_string().contains("lease not found"), "{e}"),
        Ok(_) => panic!("a revoked lease was renewed through the proxy"),
    }
}

#[tokio::test]
async fn the_read_cache_follows_writes_from_anywhere() {
    use std::sync::atomic::Ordering::Relaxed;
    let subject = Subject::start().await;
    let mut up = subject.client().await;
    let mut cfg = config(vec![subject.endpoint()]);
    cfg.cache_entries = 64;
    let (proxy, mut pc) = start_proxy(cfg).await;
    eventually_in("the cache's watch is open", || {
        let open = proxy.stats().upstream_watches.load(Relaxed) >= 1
            && proxy.stats().cache_revision.load(Relaxed) > 0;
        async move { open.then_some(()) }
    })
    .await;

    pc.put("k", "v1", None).await.unwrap();
    // The cache does serve reads (once the watch has passed the write).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let hits = proxy.stats().cache_hits.load(Relaxed);
        assert_eq!(value(&mut pc, "k", serializable()).await.unwrap(), b"v1");
        if proxy.stats().cache_hits.load(Relaxed) > hits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no serializable read answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A write made directly upstream is eventually seen through the
    // proxy's cache.
    up.put("k", "v2", None).await.unwrap();
    let deadline = Instant::now() + EVENTUALLY;
    while value(&mut pc, "k", serializable()).await.unwrap() != b"v2" {
        assert!(
            Instant::now() < deadline,
            "the proxy never saw a direct write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A write through the proxy is seen by the very next serializable
    // read through it, whatever the cache held.
    for i in 0..30 {
        let v = format!("p{i}");
        assert!(value(&mut pc, "k", serializable()).await.is_some());
        let _ = pc
            .get(
                "k",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await;
        pc.put("k", v.clone(), None).await.unwrap();
        assert_eq!(
            value(&mut pc, "k", serializable()).await.unwrap(),
            v.as_bytes()
        );
        let r = pc
            .get(
                "k",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), v.as_bytes());
    }
    // Delete and txn through the proxy too.
    pc.delete("k", None).await.unwrap();
    assert!(value(&mut pc, "k", serializable()).await.is_none());
    pc.txn(Txn::new().and_then([TxnOp::put("k", "t", None)]))
        .await
        .unwrap();
    assert_eq!(value(&mut pc, "k", serializable()).await.unwrap(), b"t");
    assert!(proxy.stats().cache_hits.load(Relaxed) > 0);
}

/// A Lease service standing in for a member: renewal n (counted from 1
/// across all streams) answers TTL n, and only once the test releases it;
/// `break_next` makes the next renewal end its stream unanswered.
#[derive(Clone)]
struct FakeLease {
    renewals: std::sync::Arc<std::sync::atomic::AtomicI64>,
    streams: std::sync::Arc<std::sync::atomic::AtomicI64>,
    release: std::sync::Arc<tokio::sync::Semaphore>,
    break_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl cairn_proto::etcdserverpb::lease_server::Lease for FakeLease {
    async fn lease_grant(
        &self,
        _: tonic::Request<cairn_proto::etcdserverpb::LeaseGrantRequest>,
    ) -> Result<tonic::Response<cairn_proto::etcdserverpb::LeaseGrantResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    async fn lease_revoke(
        &self,
        _: tonic::Request<cairn_proto::etcdserverpb::LeaseRevokeRequest>,
    ) -> Result<tonic::Response<cairn_proto::etcdserverpb::LeaseRevokeResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("fake"))
    }

    type LeaseKeepAliveStream =
        cairn_proxy::BoxStream<cairn_proto::etcdserverpb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        r: tonic::Request<tonic::Streaming<cairn_proto::etcdserverpb::LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<Self::LeaseKeepAliveStream>, tonic::Status> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut input = r.into_inner();
        let me = self.clone();
        me.streams.fetch_add(1, SeqCst);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(req)) = input.message().await {
                if me.break_next.swap(false, SeqCst) {
                    let _ = tx
                        .send(Err(tonic::Status::unavailable("fake: stream broken")))
                        .await;
                    return;
                }
                let n = me.renewals.fetch_add(1, SeqCst) + 1;
                me.release.acquire().await.unwrap().forget();
                let answer = cairn_proto::etcdserverpb::LeaseKeepAliveResponse {
                    id: req.id,
                    ttl: n,
                    ..Default::default()
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        _: tonic::Request<cairn_proto::etcdserverpb::LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<cairn_proto::etcdserverpb::LeaseTimeToLiveResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("fake"))
    }

    async fn lease_leases(
        &self,
        _: tonic::Request<cairn_proto::etcdserverpb::LeaseLeasesRequest>,
    ) -> Result<tonic::Response<cairn_proto::etcdserverpb::LeaseLeasesResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("fake"))
    }
}

impl Default for FakeLease {
    fn default() -> Self {
        FakeLease {
            renewals: Default::default(),
            streams: Default::default(),
            release: std::sync::Arc::new(tokio::sync::Semaphore::new(0)),
            break_next: Default::default(),
        }
    }
}

/// Serves `fake` on an ephemeral port; its URL.
async fn serve_fake(fake: &FakeLease) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(LeaseServer::new(fake.clone()));
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// One client keep-alive stream on the proxy, as a raw gRPC client.
struct RawKeeper {
    tx: tokio::sync::mpsc::Sender<cairn_proto::etcdserverpb::LeaseKeepAliveRequest>,
    answers: tonic::Streaming<cairn_proto::etcdserverpb::LeaseKeepAliveResponse>,
}

impl RawKeeper {
    async fn open(ep: &str) -> RawKeeper {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut c = cairn_proto::etcdserverpb::lease_client::LeaseClient::connect(ep.to_string())
            .await
            .unwrap();
        let answers = c
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawKeeper { tx, answers }
    }

    async fn send(&self, id: i64) {
        self.tx
            .send(cairn_proto::etcdserverpb::LeaseKeepAliveRequest { id })
            .await
            .unwrap();
    }

    async fn answer(&mut self) -> cairn_proto::etcdserverpb::LeaseKeepAliveResponse {
        tokio::time::timeout(EVENTUALLY, self.answers.message())
            .await
            .expect("no keep-alive answer")
            .unwrap()
            .unwrap()
    }
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    eventually_in(what, || {
        let done = f();
        async move { done.then_some(()) }
    })
    .await
}

#[tokio::test]
async fn a_keep_alive_is_answered_only_by_a_renewal_sent_after_it_arrived() {
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    let fake = FakeLease::default();
    let mut cfg = config(vec![serve_fake(&fake).await]);
    cfg.cache_entries = 0;
    let proxy = Proxy::new(cfg).unwrap();
    let ep = serve(&proxy).await;
    let (mut a, mut b, mut c) = (
        RawKeeper::open(&ep).await,
        RawKeeper::open(&ep).await,
        RawKeeper::open(&ep).await,
    );

    // A's renewal (1) is sent and held by the member.
    a.send(7).await;
    wait_for("renewal 1 reaches the member", || {
        fake.renewals.load(SeqCst) == 1
    })
    .await;
    // B and C arrive while it is in flight.
    b.send(7).await;
    c.send(7).await;
    wait_for("B and C reach the proxy", || {
        proxy.stats().keepalives_client.load(Relaxed) == 3
    })
    .await;
    fake.release.add_permits(1);
    assert_eq!(a.answer().await.ttl, 1);
    // Renewal 1 was sent before B and C asked: they share renewal 2.
    wait_for("renewal 2 reaches the member", || {
        fake.renewals.load(SeqCst) == 2
    })
    .await;
    fake.release.add_permits(1);
    assert_eq!(b.answer().await.ttl, 2);
    assert_eq!(c.answer().await.ttl, 2);
    assert_eq!(proxy.stats().keepalives_upstream.load(Relaxed), 2);
    assert_eq!(
        fake.streams.load(SeqCst),
        1,
        "one upstream stream for all clients"
    );

    // The upstream stream breaks under a request: it is re-opened and the
    // request renewed there, the client's stream goes on.
    fake.break_next.store(true, SeqCst);
    fake.release.add_permits(1);
    a.send(7).await;
    assert_eq!(a.answer().await.ttl, 3);
    assert_eq!(fake.streams.load(SeqCst), 2);
    fake.release.add_permits(1);
    b.send(7).await;
    assert_eq!(b.answer().await.ttl, 4);
}

async fn eventually_in<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    cairn_tests::eventually(what, EVENTUALLY, f).await
}
