//! Watch coalescing, served in-process in front of real cairn members and
//! driven with etcd-client: identical watches share one upstream watcher
//! (checked on the member's own gauges) while every client gets exactly the
//! events after its created revision; filters and prev_kv per client;
//! progress requests and notifications; cancel; history and compaction;
//! namespace stripping; a SIGKILLed upstream; a client that stops reading.
//!
//! Needs the cairn binary (`cargo build -p cairn-agent`, or `CAIRN_BIN`).
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use cairn_proto::etcdserverpb::{kv_server::KvServer, watch_server::WatchServer};
use cairn_proxy::{Proxy, ProxyConfig};
use cairn_tests::cluster::Cluster;
use cairn_tests::{Kind, Subject, SubjectOptions, http_request};
use etcd_client::{
    Client, ConnectOptions, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};
use tokio::time::Instant;

/// Generous bound for anything that must eventually happen; exceeding it
/// fails the test (it is never the thing measured).
const EVENTUALLY: Duration = Duration::from_secs(20);

/// One test at a time: each drives members, a proxy and clients hard
/// enough that, run side by side on two cores, a client that stops reading
/// was seen not to fill its queue before the test looked.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(endpoints: Vec<String>) -> ProxyConfig {
    ProxyConfig {
        endpoints,
        // No read cache: its own upstream watch would blur the gauges.
        cache_entries: 0,
        refresh_interval: Duration::ZERO,
        ..ProxyConfig::default()
    }
}

/// Serves `proxy` (Watch and KV) on an ephemeral 127.0.0.1 port; its URL.
async fn serve(proxy: &Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(KvServer::new(proxy.clone()))
        .add_service(WatchServer::new(proxy.clone()));
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

async fn client(ep: &str) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(10));
    Client::connect([ep], Some(options)).await.unwrap()
}

/// A proxy on `endpoints`, served; the proxy and its URL.
async fn start_proxy(cfg: ProxyConfig) -> (Proxy, String) {
    let proxy = Proxy::new(cfg).unwrap();
    let ep = serve(&proxy).await;
    (proxy, ep)
}

/// A gauge from a member's `/metrics`.
fn metric(client_port: u16, name: &str) -> f64 {
    let (code, body) = http_request(("127.0.0.1", client_port), "GET", "/metrics", None);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// (upstream watchers, upstream watch streams) on the member at `port`.
fn upstream_gauges(port: u16) -> (f64, f64) {
    (
        metric(port, "etcd_debugging_mvcc_watcher"),
        metric(port, "etcd_debugging_mvcc_watch_stream"),
    )
}

/// The next response on `s`, failing the test after `EVENTUALLY`.
async fn next(s: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(EVENTUALLY, s.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream error")
        .expect("watch stream open")
}

/// Opens a watcher on an existing stream; its id and created revision.
async fn add_watch(s: &mut WatchStream, key: &str, opts: Option<WatchOptions>) -> (i64, i64) {
    s.watch(key, opts).await.unwrap();
    created(s).await
}

/// [`add_watch`] on a stream whose other watchers may receive events
/// meanwhile: those are added to `got`.
async fn add_watch_among(
    s: &mut WatchStream,
    key: &str,
    got: &mut BTreeMap<i64, Vec<i64>>,
) -> (i64, i64) {
    s.watch(key, None).await.unwrap();
    loop {
        let r = next(s).await;
        if r.created() {
            assert!(!r.canceled(), "watch refused: {}", brief(&r));
            return (r.watch_id(), r.header().unwrap().revision());
        }
        assert!(!r.canceled(), "unexpected {}", brief(&r));
        got.entry(r.watch_id()).or_default().extend(revs(&r));
    }
}

async fn created(s: &mut WatchStream) -> (i64, i64) {
    let r = next(s).await;
    assert!(r.created(), "expected a created response: {}", brief(&r));
    assert!(!r.canceled(), "watch refused: {}", brief(&r));
    (r.watch_id(), r.header().unwrap().revision())
}

/// A response in a line (values can be large).
fn brief(r: &WatchResponse) -> String {
    format!(
        "watch {} created={} canceled={} ({:?}) compact={} header={:?} events at {:?}",
        r.watch_id(),
        r.created(),
        r.canceled(),
        r.cancel_reason(),
        r.compact_revision(),
        r.header().map(|h| h.revision()),
        revs(r)
    )
}

fn revs(r: &WatchResponse) -> Vec<i64> {
    r.events()
        .iter()
        .map(|e| e.kv().unwrap().mod_revision())
        .collect()
}

/// Reads `s` until every watcher in `want` has exactly its expected
/// revisions (in order); anything else (a foreign watch id, an extra or
/// repeated event, a cancel) fails the test.
async fn expect_events(s: &mut WatchStream, want: &BTreeMap<i64, Vec<i64>>) {
    expect_more_events(s, want, BTreeMap::new()).await
}

/// [`expect_events`] when `got` were already received.
async fn expect_more_events(
    s: &mut WatchStream,
    want: &BTreeMap<i64, Vec<i64>>,
    mut got: BTreeMap<i64, Vec<i64>>,
) {
    for id in want.keys() {
        got.entry(*id).or_default();
    }
    while got.iter().any(|(id, v)| v.len() < want[id].len()) {
        let r = next(s).await;
        assert!(!r.canceled() && !r.created(), "unexpected {}", brief(&r));
        let seen = got
            .get_mut(&r.watch_id())
            .unwrap_or_else(|| panic!("events for unknown watch {}", r.watch_id()));
        seen.extend(revs(&r));
        let id = r.watch_id();
        assert!(
            want[&id].starts_with(&got[&id]),
            "watch {id}: got {:?}, want {:?}",
            got[&id],
            want[&id]
        );
    }
    assert_eq!(&got, want, "events per watch id");
}

/// Asks for progress and reads the answer, which must be the next response
/// (so nothing was pending); its revision.
async fn progress(s: &mut WatchStream) -> i64 {
    s.request_progress().await.unwrap();
    let r = next(s).await;
    assert!(
        r.events().is_empty() && !r.created() && !r.canceled() && r.watch_id() == -1,
        "expected a progress answer: {}",
        brief(&r)
    );
    r.header().unwrap().revision()
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_watches_share_one_upstream_watcher_and_each_gets_exactly_its_events() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::start().await;
    let port = subject.client_port();
    let mut up = subject.client().await;
    let (proxy, ep) = start_proxy(config(vec![subject.endpoint()])).await;
    let before = upstream_gauges(port);

    // 100 watchers on "w": 10 streams over two client connections, with a
    // write after each stream so later joiners join a group that moved on.
    let conns = [client(&ep).await, client(&ep).await];
    let mut streams = Vec::new();
    let mut acked = Vec::new();
    for i in 0..10 {
        let mut c = conns[i % 2].clone();
        let mut s = c.watch("w", None).await.unwrap();
        let mut ids = vec![created(&mut s).await];
        // A joiner may be created at a revision the group has not passed
        // yet (below a write already acknowledged); the watchers before it
        // may then get that write's event first.
        let mut early = BTreeMap::new();
        for _ in 1..10 {
            ids.push(add_watch_among(&mut s, "w", &mut early).await);
        }
        streams.push((s, ids, early));
        acked.push(put(&mut up, "w", &format!("j{i}")).await);
    }
    assert_eq!(proxy.stats().client_watchers.load(Relaxed), 100);
    assert_eq!(proxy.stats().upstream_watches.load(Relaxed), 1);
    let shared = upstream_gauges(port);
    assert_eq!(
        shared,
        (before.0 + 1.0, before.1 + 1.0),
        "100 identical watches must share one upstream watcher on one stream"
    );

    for n in 0..20 {
        acked.push(put(&mut up, "w", &format!("v{n}")).await);
        put(&mut up, "other", "x").await;
    }
    let last = *acked.last().unwrap();
    for (s, ids, early) in &mut streams {
        let want: BTreeMap<i64, Vec<i64>> = ids
            .iter()
            .map(|&(id, created)| (id, acked.iter().copied().filter(|r| *r > created).collect()))
            .collect();
        // Every watcher of a stream was created before that stream's own
        // write, so it gets that one and all later ones.
        assert!(want.values().all(|v| v.len() >= 21), "{want:?}");
        expect_more_events(s, &want, std::mem::take(early)).await;
        // Nothing more is pending: the progress answer comes next.
        assert!(progress(s).await >= last);
    }
    assert_eq!(upstream_gauges(port), shared, "still one upstream watcher");

    // Cancel: each client watcher is answered; the last one out releases
    // the upstream watcher and its stream.
    for (s, ids, _) in &mut streams {
        for &(id, _) in ids.iter() {
            s.cancel(id).await.unwrap();
            let r = next(s).await;
            assert!(r.canceled() && r.watch_id() == id, "{}", brief(&r));
        }
    }
    assert_eq!(proxy.stats().client_watchers.load(Relaxed), 0);
    eventually_in("the upstream watcher is released", || async {
        (upstream_gauges(port) == before).then_some(())
    })
    .await;
    assert_eq!(proxy.stats().upstream_watches.load(Relaxed), 0);

    // A closed client stream removes its watchers the same way.
    let mut c = conns[0].clone();
    let mut s = c.watch("w", None).await.unwrap();
    created(&mut s).await;
    add_watch(&mut s, "w", None).await;
    assert_eq!(upstream_gauges(port), shared);
    drop(s);
    eventually_in("a closed stream's watchers are removed", || async {
        (upstream_gauges(port) == before && proxy.stats().client_watchers.load(Relaxed) == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_and_prev_kv_are_applied_per_client() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::start().await;
    let port = subject.client_port();
    let mut up = subject.client().await;
    let (_proxy, ep) = start_proxy(config(vec![subject.endpoint()])).await;
    let before = upstream_gauges(port);
    let mut c = client(&ep).await;

    let prefix = || WatchOptions::new().with_prefix().with_prev_key();
    let mut s = c.watch("f/", Some(prefix())).await.unwrap();
    let (all, _) = created(&mut s).await;
    let (no_put, _) = add_watch(
        &mut s,
        "f/",
        Some(prefix().with_filters([WatchFilterType::NoPut])),
    )
    .await;
    let mut s2 = c
        .watch(
            "f/",
            Some(prefix().with_filters([WatchFilterType::NoDelete])),
        )
        .await
        .unwrap();
    let (no_delete, _) = created(&mut s2).await;
    // Filters do not split the group; prev_kv does.
    assert_eq!(upstream_gauges(port).0, before.0 + 1.0);
    let (plain, _) = add_watch(&mut s2, "f/", Some(WatchOptions::new().with_prefix())).await;
    assert_eq!(upstream_gauges(port).0, before.0 + 2.0);

    // One revision with two puts, an overwrite, a delete.
    let txn = Txn::new().and_then([TxnOp::put("f/a", "1", None), TxnOp::put("f/b", "1", None)]);
    let r1 = c.txn(txn).await.unwrap().header().unwrap().revision();
    let r2 = put(&mut up, "f/a", "2").await;
    let r3 = up
        .delete("f/b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    put(&mut up, "g", "outside").await;

    // (type, key, value, prev value) per watcher, one response per revision.
    type Seen = Vec<(i64, Vec<(EventType, String, String, Option<String>)>)>;
    async fn read(s: &mut WatchStream, n: usize) -> BTreeMap<i64, Seen> {
        let mut out: BTreeMap<i64, Seen> = BTreeMap::new();
        for _ in 0..n {
            let r = next(s).await;
            let rev = revs(&r);
            assert!(
                rev.windows(2).all(|w| w[0] == w[1]),
                "one revision: {rev:?}"
            );
            let evs = r
                .events()
                .iter()
                .map(|e| {
                    let kv = e.kv().unwrap();
                    (
                        e.event_type(),
                        kv.key_str().unwrap().to_string(),
                        kv.value_str().unwrap().to_string(),
                        e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
                    )
                })
                .collect();
            out.entry(r.watch_id()).or_default().push((rev[0], evs));
        }
        out
    }
    use EventType::{Delete, Put};
    let s1 = read(&mut s, 3 + 1).await;
    let s2r = read(&mut s2, 2 + 3).await;
    let one = |v: &str| v.to_string();
    let both_put = vec![
        (Put, one("f/a"), one("1"), None),
        (Put, one("f/b"), one("1"), None),
    ];
    assert_eq!(
        s1[&all],
        vec![
            (r1, both_put.clone()),
            (r2, vec![(Put, one("f/a"), one("2"), Some(one("1")))]),
            (r3, vec![(Delete, one("f/b"), one(""), Some(one("1")))]),
        ]
    );
    assert_eq!(
        s1[&no_put],
        vec![(r3, vec![(Delete, one("f/b"), one(""), Some(one("1")))])]
    );
    assert_eq!(
        s2r[&no_delete],
        vec![
            (r1, both_put.clone()),
            (r2, vec![(Put, one("f/a"), one("2"), Some(one("1")))]),
        ]
    );
    assert_eq!(
        s2r[&plain],
        vec![
            (r1, both_put),
            (r2, vec![(Put, one("f/a"), one("2"), None)]),
            (r3, vec![(Delete, one("f/b"), one(""), None)]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_requests_wait_for_every_group_of_the_stream() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::start_with(SubjectOptions {
        extra_args: vec![
            "--experimental-watch-progress-notify-interval".into(),
            "300ms".into(),
        ],
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await;
    let mut up = subject.client().await;
    let (_proxy, ep) = start_proxy(config(vec![subject.endpoint()])).await;
    let mut c = client(&ep).await;

    // A stream with no watchers: the cluster's current revision.
    let rev0 = put(&mut up, "a", "0").await;
    let mut empty = c.watch("zz", None).await.unwrap();
    let (id, _) = created(&mut empty).await;
    empty.cancel(id).await.unwrap();
    assert!(next(&mut empty).await.canceled());
    assert!(progress(&mut empty).await >= rev0);

    // Three groups feed one stream: two shared, one with history.
    let mut s = c.watch("a", None).await.unwrap();
    let (wa, ca) = created(&mut s).await;
    let (wb, cb) = add_watch(&mut s, "b", None).await;
    let (wh, _) = add_watch(
        &mut s,
        "a",
        Some(WatchOptions::new().with_start_revision(rev0)),
    )
    .await;
    // Another stream shares the "a" group and asks concurrently.
    let mut other = c.watch("a", None).await.unwrap();
    let (wo, co) = created(&mut other).await;

    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    let mut seen_o = Vec::new();
    for round in 0..10 {
        let ra = put(&mut up, "a", &format!("{round}")).await;
        let rb = put(&mut up, "b", &format!("{round}")).await;
        // Asked right after the acknowledged writes: the answer covers
        // them, and their events come first.
        s.request_progress().await.unwrap();
        other.request_progress().await.unwrap();
        let mut answered = None;
        while answered.is_none() {
            let r = next(&mut s).await;
            if r.watch_id() == -1 {
                answered = Some(r.header().unwrap().revision());
                continue;
            }
            assert!(r.events().len() == 1, "{}", brief(&r));
            match r.watch_id() {
                id if id == wa => assert_eq!(revs(&r), [ra]),
                id if id == wb => {
                    assert_eq!(revs(&r), [rb]);
                    seen_b.push(rb);
                }
                id if id == wh => seen_a.extend(revs(&r)),
                _ => panic!("{}", brief(&r)),
            }
        }
        let answered = answered.unwrap();
        assert!(answered >= rb, "progress {answered} before the write {rb}");
        assert_eq!(seen_a.last(), Some(&ra), "history watch behind the answer");
        assert_eq!(seen_b.last(), Some(&rb), "events after the answer");
        let r = next(&mut other).await;
        assert_eq!((r.watch_id(), revs(&r)), (wo, vec![ra]));
        seen_o.push(ra);
        assert!(progress_answer(&mut other).await >= ra);
    }
    assert!(ca < seen_o[0] && cb < seen_b[0] && co < seen_o[0]);
    assert_eq!(seen_a[0], rev0, "history from the start revision");
    assert_eq!(&seen_a[1..], &seen_o[..], "history then live events");

    // progress_notify: the client is told how far it has everything,
    // never ahead of an event it has not been sent.
    let mut n = c
        .watch("n", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let (wn, _) = created(&mut n).await;
    let rn = put(&mut up, "n", "1").await;
    let r = next(&mut n).await;
    assert_eq!((r.watch_id(), revs(&r)), (wn, vec![rn]));
    let later = put(&mut up, "elsewhere", "1").await;
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let r = next(&mut n).await;
        assert!(r.events().is_empty() && r.watch_id() == wn, "{}", brief(&r));
        if r.header().unwrap().revision() >= later {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress notification past {later}"
        );
    }
}

/// The next response must be a progress answer; its revision.
async fn progress_answer(s: &mut WatchStream) -> i64 {
    let r = next(s).await;
    assert!(
        r.watch_id() == -1 && r.events().is_empty(),
        "expected a progress answer: {}",
        brief(&r)
    );
    r.header().unwrap().revision()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_watches_replay_and_a_compacted_start_is_canceled() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::start().await;
    let mut up = subject.client().await;
    let (_proxy, ep) = start_proxy(config(vec![subject.endpoint()])).await;
    let mut c = client(&ep).await;
    let mut revs_h = Vec::new();
    for n in 0..5 {
        revs_h.push(put(&mut up, "h", &n.to_string()).await);
    }
    // Two watchers with the same start revision: each replays all of it.
    let history = || Some(WatchOptions::new().with_start_revision(revs_h[1]));
    let mut s = c.watch("h", history()).await.unwrap();
    let (w1, _) = created(&mut s).await;
    let mut s2 = c.watch("h", history()).await.unwrap();
    let (w2, _) = created(&mut s2).await;
    let live = put(&mut up, "h", "live").await;
    let mut want: Vec<i64> = revs_h[1..].to_vec();
    want.push(live);
    expect_events(&mut s, &BTreeMap::from([(w1, want.clone())])).await;
    expect_events(&mut s2, &BTreeMap::from([(w2, want)])).await;
    assert!(progress(&mut s).await >= live);
    assert!(progress(&mut s2).await >= live);

    up.compact(live, None).await.unwrap();
    let mut old = c
        .watch("h", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut r = next(&mut old).await;
    if r.created() && !r.canceled() {
        r = next(&mut old).await;
    }
    assert!(r.canceled(), "{}", brief(&r));
    assert_eq!(r.compact_revision(), live);
    // The stream stays usable, and the canceled watcher is gone from it.
    let (_, _) = add_watch(&mut old, "h", None).await;
    let after = put(&mut up, "h", "after").await;
    let r = next(&mut old).await;
    assert_eq!(revs(&r), [after]);
    assert!(progress(&mut old).await >= after);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_is_prefixed_upstream_and_stripped_from_events() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::start().await;
    let mut up = subject.client().await;
    let (_proxy, ep) = start_proxy(ProxyConfig {
        namespace: b"tenant/".to_vec(),
        ..config(vec![subject.endpoint()])
    })
    .await;
    let mut c = client(&ep).await;
    let mut s = c
        .watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_prev_key()),
        )
        .await
        .unwrap();
    let (all, _) = created(&mut s).await;
    let (one, _) = add_watch(&mut s, "k", Some(WatchOptions::new().with_prev_key())).await;
    put(&mut up, "outside", "x").await;
    let r1 = put(&mut up, "tenant/k", "1").await;
    put(&mut up, "tenant0", "next to the prefix").await;
    let r2 = c
        .put("k", "2", Some(PutOptions::new()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // (key, value, prev (key, value)) per watch id.
    type Seen = Vec<(String, String, Option<(String, String)>)>;
    let mut got: BTreeMap<i64, Seen> = BTreeMap::new();
    while got.values().map(Vec::len).sum::<usize>() < 4 {
        let r = next(&mut s).await;
        for e in r.events() {
            let kv = e.kv().unwrap();
            got.entry(r.watch_id()).or_default().push((
                kv.key_str().unwrap().into(),
                kv.value_str().unwrap().into(),
                e.prev_kv()
                    .map(|p| (p.key_str().unwrap().into(), p.value_str().unwrap().into())),
            ));
        }
    }
    let want = vec![
        ("k".to_string(), "1".to_string(), None),
        ("k".into(), "2".into(), Some(("k".into(), "1".into()))),
    ];
    assert_eq!(got[&all], want);
    assert_eq!(got[&one], want);
    assert!(progress(&mut s).await >= r2.max(r1));
}

/// Writes `n` values of `key` through `c`, retrying each until it is
/// acknowledged; returns (acknowledged revisions, values of attempts that
/// failed and may or may not have been applied).
async fn write_through(mut c: Client, key: &str, n: usize) -> (Vec<i64>, HashSet<String>) {
    let mut acked = Vec::new();
    let mut unknown = HashSet::new();
    for i in 0..n {
        let deadline = Instant::now() + EVENTUALLY;
        for attempt in 0.. {
            let v = format!("{i}.{attempt}");
            match tokio::time::timeout(Duration::from_secs(3), c.put(key, v.clone(), None)).await {
                Ok(Ok(r)) => {
                    acked.push(r.header().unwrap().revision());
                    break;
                }
                _ => {
                    unknown.insert(v);
                    assert!(Instant::now() < deadline, "write {i} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    (acked, unknown)
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_members_lose_and_repeat_no_event() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(Kind::Cairn, 3, &[]).await;
    // The proxy starts on a follower; the leader is killed first (a leader
    // change under a healthy endpoint), then, back, the proxy's endpoint.
    let leader = c.leader(EVENTUALLY).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let third = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let url = |c: &Cluster, i: usize| c.members[i].client_url();
    let endpoints = [follower, leader, third].map(|i| url(&c, i)).to_vec();
    let (proxy, ep) = start_proxy(config(endpoints)).await;
    let pc = client(&ep).await;
    // A member may hold watchers of its own: count only ours.
    let base: Vec<f64> = (0..3)
        .map(|i| metric(c.members[i].client_port, "etcd_debugging_mvcc_watcher"))
        .collect();
    let before = base[follower];

    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = pc.clone().watch("k", None).await.unwrap();
        let mut ids = vec![created(&mut s).await];
        for _ in 1..5 {
            ids.push(add_watch(&mut s, "k", None).await);
        }
        streams.push((s, ids));
    }
    let watchers =
        |c: &Cluster, i: usize| metric(c.members[i].client_port, "etcd_debugging_mvcc_watcher");
    assert_eq!(watchers(&c, follower) - before, 1.0);
    // (revision, value) per watch id, per stream.
    let mut seen: Vec<BTreeMap<i64, Vec<(i64, String)>>> = streams
        .iter()
        .map(|(_, ids)| ids.iter().map(|&(id, _)| (id, Vec::new())).collect())
        .collect();
    let mut acked = Vec::new();
    let mut unknown = HashSet::new();
    for (victim, writers) in [(leader, [follower, third]), (follower, [leader, third])] {
        // Writes go to the members that stay, before, during and after
        // the kill.
        let writer = Client::connect(
            writers.map(|i| url(&c, i)),
            Some(ConnectOptions::new().with_timeout(Duration::from_secs(3))),
        )
        .await
        .unwrap();
        let writes = tokio::spawn(write_through(writer, "k", 40));
        // Kill once events are flowing.
        let flowing = seen[0].values().next().unwrap().len() + 10;
        while seen[0].values().next().unwrap().len() < flowing {
            let r = next(&mut streams[0].0).await;
            record(&mut seen[0], &r);
        }
        c.kill9(victim);
        let (a, u) = writes.await.unwrap();
        acked.extend(a);
        unknown.extend(u);
        if victim == leader {
            // The watch on the follower lived through the leader change.
            assert_eq!(proxy.upstream().endpoints()[0], url(&c, follower));
            assert_eq!(watchers(&c, follower) - before, 1.0);
            c.restart(leader).await;
        }
    }

    for (i, (s, ids)) in streams.iter_mut().enumerate() {
        let want: BTreeMap<i64, Vec<i64>> = ids
            .iter()
            .map(|&(id, created)| (id, acked.iter().copied().filter(|r| *r > created).collect()))
            .collect();
        let acked_seen = |v: &Vec<(i64, String)>| -> Vec<i64> {
            v.iter()
                .map(|(r, _)| *r)
                .filter(|r| acked.contains(r))
                .collect()
        };
        while seen[i]
            .iter()
            .any(|(id, v)| acked_seen(v).len() < want[id].len())
        {
            let r = next(s).await;
            record(&mut seen[i], &r);
        }
        for (id, v) in &seen[i] {
            let got: Vec<i64> = v.iter().map(|(r, _)| *r).collect();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "stream {i} watch {id}: repeated or out of order: {got:?}"
            );
            for (r, val) in v {
                assert!(
                    acked.contains(r) || unknown.contains(val),
                    "stream {i} watch {id}: event {r}={val} was never written"
                );
            }
            assert_eq!(
                acked_seen(v),
                want[id],
                "stream {i} watch {id}: lost events"
            );
        }
    }
    // Still one upstream watcher, now on the restarted member.
    assert_eq!(proxy.upstream().endpoints()[0], url(&c, leader));
    // (the restarted member holds its own watchers again, as before)
    cairn_tests::eventually("one upstream watcher on the others", EVENTUALLY, || {
        let n = watchers(&c, leader) + watchers(&c, third) - base[leader] - base[third];
        async move { (n == 1.0).then_some(()) }
    })
    .await;
    assert_eq!(proxy.stats().upstream_watches.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_loses_its_watcher_not_the_group() {
    let _serial = SERIAL.lock().await;
    let subject = Subject::start().await;
    let up = subject.client().await;
    let (proxy, ep) = start_proxy(config(vec![subject.endpoint()])).await;
    // Separate connections: HTTP/2 flow control of the idle client must
    // not hold back the reader's connection.
    let mut idle = client(&ep).await.watch("s", None).await.unwrap();
    let (idle_id, _) = created(&mut idle).await;
    let mut reader = client(&ep).await.watch("s", None).await.unwrap();
    let (reader_id, _) = created(&mut reader).await;

    // The reader drains its stream all along.
    let n = 2000;
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < n {
            let r = next(&mut reader).await;
            assert_eq!(r.watch_id(), reader_id, "{}", brief(&r));
            got.extend(revs(&r));
        }
        (reader, got)
    });
    // Big values fill the idle client's windows and queues quickly.
    let value = "x".repeat(8 * 1024);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut c = up.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..n / 4 {
                revs.push(put(&mut c, "s", &format!("{t}.{i}.{value}")).await);
            }
            revs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    let (mut reader, got) = reading.await.unwrap();
    assert_eq!(got, acked, "the reader lost or repeated events");
    assert!(progress(&mut reader).await >= *acked.last().unwrap());
    // The idle client's watcher goes once its queue is found full.
    cairn_tests::eventually("the idle watcher dropped", EVENTUALLY, || {
        let n = proxy.stats().client_watchers.load(Relaxed);
        async move { (n == 1).then_some(()) }
    })
    .await;

    // The idle client, when it reads at last: a prefix of the events, in
    // order, then the cancel that tells it to watch again.
    let mut idle_revs = Vec::new();
    loop {
        let r = next(&mut idle).await;
        assert_eq!(r.watch_id(), idle_id);
        if r.canceled() {
            assert!(!r.cancel_reason().is_empty());
            break;
        }
        idle_revs.extend(revs(&r));
    }
    assert!(acked.starts_with(&idle_revs), "the slow client got a gap");
    assert!(idle_revs.len() < acked.len());
    // Nothing for the canceled watcher after its cancel.
    assert!(progress(&mut idle).await >= *acked.last().unwrap());
}

/// Adds the events of `r` to its watcher's list; a cancel or an unknown
/// watch id fails the test.
fn record(seen: &mut BTreeMap<i64, Vec<(i64, String)>>, r: &WatchResponse) {
    assert!(!r.canceled() && !r.created(), "{}", brief(r));
    let v = seen.get_mut(&r.watch_id()).expect("a known watch id");
    for e in r.events() {
        let kv = e.kv().unwrap();
        v.push((kv.mod_revision(), kv.value_str().unwrap().to_string()));
    }
}

async fn eventually_in<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    cairn_tests::eventually(what, EVENTUALLY, f).await
}
