//! The agent's roles (cairn only: etcd has no `--role`): learners that add
//! themselves through the cluster's client URLs and serve reads and watches,
//! `--max-learners`, staleness in Status and `/metrics`, `--max-stale`, the
//! local socket on every role, and the proxy.
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{ETCDCTL_BIN, Kind, eventually, http_request, subject_kind};
use etcd_client::{GetOptions, WatchOptions};

fn cairn_only() -> bool {
    subject_kind() == Kind::Cairn
}

fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .unwrap()
}

fn metric(c: &Cluster, i: usize, name: &str) -> Option<f64> {
    let (code, body) = http_request(
        ("127.0.0.1", c.members[i].client_port),
        "GET",
        "/metrics",
        None,
    );
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `Status` through the JSON gateway, as a JSON document.
fn status_json(c: &Cluster, i: usize) -> serde_json::Value {
    let (code, body) = http_request(
        ("127.0.0.1", c.members[i].client_port),
        "POST",
        "/v3/maintenance/status",
        Some("{}"),
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn json_i64(v: &serde_json::Value, k: &str) -> i64 {
    match &v[k] {
        serde_json::Value::String(s) => s.parse().unwrap(),
        serde_json::Value::Number(n) => n.as_i64().unwrap(),
        serde_json::Value::Null => 0,
        other => panic!("{k}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn learners_add_themselves_serve_reads_and_watches_and_one_is_promoted() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 3, &[]).await;
    let l1 = c.new_member();
    let l2 = c.new_member();
    // Given nothing but the voters' client URLs, both add themselves.
    c.spawn_role(l1, "learner", &[0, 1, 2]);
    c.spawn_role(l2, "learner", &[0, 1, 2]);
    c.wait_ready(l1).await;
    c.wait_ready(l2).await;

    let mut v0 = c.client(0).await;
    // Members publish their names through the log once they run.
    let members = eventually("learners listed", Duration::from_secs(10), || {
        let mut v0 = v0.clone();
        async move {
            let members = v0.member_list().await.unwrap();
            let mut learners: Vec<String> = members
                .members()
                .iter()
                .filter(|m| m.is_learner())
                .map(|m| m.name().to_string())
                .collect();
            learners.sort();
            (learners == ["infra3", "infra4"]).then_some(members)
        }
    })
    .await;

    // A watch on a learner sees writes made through a voter and through
    // the other learner, in order, each once.
    let mut c1 = c.client(l1).await;
    let mut c2 = c.client(l2).await;
    let mut events = c1
        .watch("r/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = events.message().await.unwrap().unwrap();
    assert!(created.created());
    let mut acked = Vec::new();
    for n in 0..10 {
        let (client, via) = if n % 2 == 0 {
            (&mut v0, "voter")
        } else {
            (&mut c2, "learner")
        };
        let key = format!("r/{n:02}");
        let r = client.put(key.clone(), via, None).await.unwrap();
        acked.push((key, r.header().unwrap().revision()));
    }
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let resp = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("watch on a learner stalled")
            .unwrap()
            .unwrap();
        for e in resp.events() {
            let kv = e.kv().unwrap();
            seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    assert_eq!(seen, acked);

    // A linearizable read on a learner sees every acknowledged write.
    let (last_key, last_rev) = acked.last().unwrap().clone();
    let r = c1.get(last_key.clone(), None).await.unwrap();
    assert_eq!(r.kvs()[0].mod_revision(), last_rev);
    let r = c1
        .get(
            "r/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs().len(), 10);

    // Leases through a learner.
    let lease = c1.lease_grant(30, None).await.unwrap().id();
    let (mut keeper, mut replies) = c1.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let reply = replies.message().await.unwrap().unwrap();
    assert_eq!(reply.id(), lease);
    assert!(reply.ttl() > 0);
    let ttl = v0.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0);

    // Status, /metrics and the local socket of a learner.
    let st = c1.status().await.unwrap();
    assert!(st.is_learner());
    assert_eq!(status_json(&c, l1)["cairnRole"], "learner");
    assert_eq!(metric(&c, l1, "etcd_server_is_learner"), Some(1.0));
    assert!(metric(&c, l1, "cairn_behind_revisions").is_some());
    let socket = c.members[l2].data_dir.join("cairn.sock");
    let out = etcdctl(
        &format!("unix://{}", socket.display()),
        &["get", &last_key, "--print-value-only"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "learner");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    // Promote the first learner (once caught up), then lose a voter: four
    // voters keep a quorum of three.
    let id = members
        .members()
        .iter()
        .find(|m| m.name() == "infra3")
        .unwrap()
        .id();
    let id_hex = format!("{id:x}");
    eventually("promote", Duration::from_secs(20), || {
        let out = etcdctl(&c.members[0].client_url(), &["member", "promote", &id_hex]);
        async move { out.status.success().then_some(()) }
    })
    .await;
    assert!(!c1.status().await.unwrap().is_learner());
    // A watch on the remaining learner survives the loss of the leader:
    // four voters keep a quorum of three, and the learner's watch goes on
    // with no event lost or repeated.
    let mut lw = c2
        .watch("lc/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(lw.message().await.unwrap().unwrap().created());
    let mut acked = Vec::new();
    for n in 0..3 {
        let r = c1.put(format!("lc/{n}"), "before", None).await.unwrap();
        acked.push(r.header().unwrap().revision());
    }
    let leader = c.leader(Duration::from_secs(10)).await;
    c.kill9(leader);
    let new_leader = c.leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    let mut writer = c.client(new_leader).await;
    for n in 3..6 {
        let r = writer.put(format!("lc/{n}"), "after", None).await.unwrap();
        acked.push(r.header().unwrap().revision());
    }
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let resp = tokio::time::timeout(Duration::from_secs(10), lw.message())
            .await
            .expect("the learner's watch stalled after the leader change")
            .unwrap()
            .unwrap();
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert_eq!(seen, acked);
    let r = c2.get("lc/5", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"after");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_learners_is_enforced() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 1, &["--max-learners", "1"]).await;
    let ep = c.members[0].client_url();
    let a = c.new_member();
    let b = c.new_member();
    let out = etcdctl(
        &ep,
        &[
            "member",
            "add",
            "a",
            "--learner",
            &format!("--peer-urls={}", c.members[a].peer_url()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = etcdctl(
        &ep,
        &[
            "member",
            "add",
            "b",
            "--learner",
            &format!("--peer-urls={}", c.members[b].peer_url()),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too many learner members in cluster"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_learner_reports_staleness_and_max_stale_refuses_old_reads() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::prepare(Kind::Cairn, 4, &[]);
    c.initial = Some(3);
    let l = 3;
    c.members[l]
        .extra_args
        .extend(["--max-stale".to_string(), "1s".to_string()]);
    c.relay_peers();
    for i in 0..3 {
        c.spawn(i, "new");
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    c.spawn_role(l, "learner", &[0, 1, 2]);
    c.wait_ready(l).await;
    let mut v0 = c.client(0).await;
    v0.put("k", "old", None).await.unwrap();
    let mut lc = c.client(l).await;
    lc.get("k", None).await.unwrap(); // linearizable: the learner has it
    eventually("learner current", Duration::from_secs(10), || {
        let st = status_json(&c, l);
        async move { (json_i64(&st, "cairnBehindMs") < 1000).then_some(()) }
    })
    .await;

    c.isolate(l, true);
    let put = v0.put("k", "new", None).await.unwrap();
    let new_rev = put.header().unwrap().revision();
    // Staleness becomes visible, in Status and in /metrics.
    let behind = eventually("staleness reported", Duration::from_secs(20), || {
        let st = status_json(&c, l);
        async move {
            let ms = json_i64(&st, "cairnBehindMs");
            (ms > 1000).then_some(ms)
        }
    })
    .await;
    assert!(behind > 1000);
    assert!(metric(&c, l, "cairn_behind_milliseconds").unwrap() > 1000.0);
    // Further behind than --max-stale, a serializable read is not answered
    // from the old replica: it needs the leader, which it cannot reach.
    let r = lc
        .get("k", Some(GetOptions::new().with_serializable()))
        .await;
    match r {
        Err(_) => {}
        Ok(r) => panic!(
            "a learner behind --max-stale answered from its replica: {:?}",
            r.kvs()
        ),
    }

    c.isolate(l, false);
    let rev = eventually("learner heals", Duration::from_secs(30), || {
        let mut lc = lc.clone();
        async move {
            let r = lc
                .get("k", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            let kv = r.kvs().first()?;
            (kv.value() == b"new").then_some(kv.mod_revision())
        }
    })
    .await;
    assert_eq!(rev, new_rev);
    eventually("staleness back down", Duration::from_secs(10), || {
        let st = status_json(&c, l);
        async move { (json_i64(&st, "cairnBehindMs") < 1000).then_some(()) }
    })
    .await;
}

/// The sum of a metric over members `of`.
fn metric_sum(c: &Cluster, of: &[usize], name: &str) -> f64 {
    of.iter().map(|&i| metric(c, i, name).unwrap_or(0.0)).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_forwards_the_api_coalesces_watches_and_survives_a_member_loss() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 3, &[]).await;
    let p = c.new_member();
    // Given one endpoint, the proxy learns the others from MemberList.
    c.members[p].extra_args.extend([
        "--endpoints-auto-sync-interval".to_string(),
        "300ms".to_string(),
    ]);
    c.spawn_role(p, "proxy", &[0]);
    c.wait_ready(p).await;
    let proxy_ep = c.members[p].client_url();
    eventually("endpoints from MemberList", Duration::from_secs(10), || {
        let n = metric(&c, p, "cairn_proxy_endpoints");
        async move { (n == Some(3.0)).then_some(()) }
    })
    .await;

    // etcdctl through the proxy: writes, reads, txn, members, status.
    let out = etcdctl(&proxy_ep, &["put", "pk", "pv"]);
    assert!(out.status.success(), "{out:?}");
    let out = etcdctl(&proxy_ep, &["get", "pk", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pv");
    let mut direct = c.client(1).await;
    let r = direct.get("pk", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"pv");
    let out = etcdctl(&proxy_ep, &["member", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        3,
        "{out:?}"
    );
    assert_eq!(status_json(&c, p)["cairnRole"], "proxy");
    // The proxy's own local socket (it has no data, the socket lives in
    // its --data-dir by default).
    let socket = c.members[p].data_dir.join("cairn.sock");
    let out = etcdctl(
        &format!("unix://{}", socket.display()),
        &["get", "pk", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pv", "{out:?}");
    // No data directory content: only the socket.
    let entries: Vec<String> = std::fs::read_dir(&c.members[p].data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["cairn.sock"]);

    // Lease keep-alive through the proxy.
    let mut pc = c.client(p).await;
    let lease = pc.lease_grant(10, None).await.unwrap().id();
    let (mut keeper, mut replies) = pc.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let reply = replies.message().await.unwrap().unwrap();
    assert_eq!(reply.ttl(), 10);

    // 100 identical watches through the proxy: one more watcher upstream.
    let voters = [0, 1, 2];
    let before = metric_sum(&c, &voters, "etcd_debugging_mvcc_watcher");
    // Any watchers the members hold of their own.
    let own_12 = metric_sum(&c, &[1, 2], "etcd_debugging_mvcc_watcher");
    let mut streams = Vec::new();
    let mut created = Vec::new();
    for _ in 0..10 {
        let mut s = pc.watch("w", None).await.unwrap();
        let first = s.message().await.unwrap().unwrap();
        assert!(first.created());
        created.push(first.header().unwrap().revision());
        for _ in 1..10 {
            s.watch("w", None).await.unwrap();
            let r = s.message().await.unwrap().unwrap();
            assert!(r.created());
            created.push(r.header().unwrap().revision());
        }
        streams.push(s);
    }
    let after = eventually("one upstream watch", Duration::from_secs(10), || {
        let v = metric_sum(&c, &voters, "etcd_debugging_mvcc_watcher");
        async move { (v >= before + 1.0).then_some(v) }
    })
    .await;
    assert_eq!(
        after,
        before + 1.0,
        "100 identical watches must share one upstream watch"
    );

    // Writes before and after the loss of the member the proxy talks to
    // (the first endpoint): every watcher sees each of them exactly once.
    let mut acked = Vec::new();
    for n in 0..5 {
        let r = direct.put("w", format!("a{n}"), None).await.unwrap();
        acked.push(r.header().unwrap().revision());
    }
    // The member the proxy talks to is made the leader, then killed: the
    // watches survive both the loss of their endpoint and a leader change.
    let id0 = format!("{:x}", c.member_id(0).await);
    if c.leader(Duration::from_secs(10)).await != 0 {
        let out = c.etcdctl(&["move-leader", &id0]);
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(c.leader(Duration::from_secs(10)).await, 0);
    c.kill9(0);
    for n in 0..5 {
        let r = eventually("write after the kill", Duration::from_secs(20), || {
            let mut d = direct.clone();
            async move { d.put("w", format!("b{n}"), None).await.ok() }
        })
        .await;
        acked.push(r.header().unwrap().revision());
    }
    let first_created = *created.iter().min().unwrap();
    assert!(acked.iter().all(|r| *r > first_created));
    for (i, s) in streams.iter_mut().enumerate() {
        let mut seen: Vec<Vec<i64>> = (0..10).map(|_| Vec::new()).collect();
        let mut ids = std::collections::HashMap::new();
        while seen.iter().any(|v| v.len() < acked.len()) {
            let r = tokio::time::timeout(Duration::from_secs(20), s.message())
                .await
                .unwrap_or_else(|_| panic!("stream {i}: events stopped: {seen:?}"))
                .unwrap()
                .unwrap();
            let next = ids.len();
            let slot = *ids.entry(r.watch_id()).or_insert(next);
            for e in r.events() {
                seen[slot].push(e.kv().unwrap().mod_revision());
            }
        }
        for v in &seen {
            assert_eq!(v, &acked, "stream {i}: lost or repeated events");
        }
    }
    // Cancel every client watch: the upstream watch goes away too.
    drop(streams);
    eventually("upstream watch released", Duration::from_secs(10), || {
        let v = metric_sum(&c, &[1, 2], "etcd_debugging_mvcc_watcher");
        let up = metric(&c, p, "cairn_proxy_upstream_watches").unwrap_or(f64::NAN);
        async move { (v <= own_12 + 1.0 && up <= 1.0).then_some(()) }
    })
    .await;
}

/// Reads the next watch response within 10 s.
async fn next_watch(s: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("watch response within 10 s")
        .unwrap()
        .expect("watch stream open")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespaced_proxy_keeps_watches_keep_alives_and_its_cache_correct() {
    if !cairn_only() {
        return;
    }
    use etcd_client::WatchFilterType;
    let mut c = Cluster::start(Kind::Cairn, 1, &[]).await;
    let p = c.new_member();
    c.members[p]
        .extra_args
        .extend(["--namespace".to_string(), "tenant/".to_string()]);
    c.spawn_role(p, "proxy", &[0]);
    c.wait_ready(p).await;
    let mut up = c.client(0).await;
    let mut pc = c.client(p).await;

    // Namespace: keys live under the prefix upstream; ranges through the
    // proxy never see anything outside it.
    up.put("outside", "x", None).await.unwrap();
    pc.put("a", "1", None).await.unwrap();
    let r = up.get("tenant/a", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"1");
    let all = pc
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let keys: Vec<&str> = all.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, ["a"]);

    // Watches: filters, prev_kv, history from a start revision, progress.
    let mut s = pc
        .watch(
            "a",
            Some(
                WatchOptions::new()
                    .with_prev_key()
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .unwrap();
    let created = next_watch(&mut s).await;
    assert!(created.created());
    let put = pc.put("a", "2", None).await.unwrap();
    let put_rev = put.header().unwrap().revision();
    pc.delete("a", None).await.unwrap();
    let last = pc
        .put("a", "3", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let e1 = next_watch(&mut s).await;
    assert_eq!(e1.events().len(), 1);
    let kv = e1.events()[0].kv().unwrap();
    assert_eq!((kv.key(), kv.value()), (&b"a"[..], &b"2"[..]));
    assert_eq!(e1.events()[0].prev_kv().unwrap().key(), b"a");
    assert_eq!(e1.events()[0].prev_kv().unwrap().value(), b"1");
    // The delete is filtered out; the next put comes next.
    let e2 = next_watch(&mut s).await;
    assert_eq!(e2.events()[0].kv().unwrap().mod_revision(), last);
    s.request_progress().await.unwrap();
    let progress = next_watch(&mut s).await;
    assert!(progress.events().is_empty());
    assert!(progress.header().unwrap().revision() >= last);
    // A watch from a past revision replays history, namespace stripped.
    let mut h = pc
        .watch("a", Some(WatchOptions::new().with_start_revision(put_rev)))
        .await
        .unwrap();
    assert!(next_watch(&mut h).await.created());
    let mut revs = Vec::new();
    while revs.len() < 3 {
        for e in next_watch(&mut h).await.events() {
            assert_eq!(e.kv().unwrap().key(), b"a");
            revs.push(e.kv().unwrap().mod_revision());
        }
    }
    assert_eq!(revs, [put_rev, put_rev + 1, last]);
    // A compacted start revision is refused as a member refuses it.
    up.compact(last, None).await.unwrap();
    let mut old = pc
        .watch("a", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut r = next_watch(&mut old).await;
    if !r.canceled() {
        r = next_watch(&mut old).await;
    }
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), last);

    // Keep-alives: ten clients on one lease share upstream renewals, and a
    // revoked lease is answered with TTL 0, never a stale TTL.
    let lease = pc.lease_grant(30, None).await.unwrap().id();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = c.client(p).await;
        tasks.push(tokio::spawn(async move {
            let (mut k, mut a) = client.lease_keep_alive(lease).await.unwrap();
            let mut ttls = Vec::new();
            for _ in 0..5 {
                k.keep_alive().await.unwrap();
                ttls.push(a.message().await.unwrap().unwrap().ttl());
            }
            ttls
        }));
    }
    for t in tasks {
        let ttls = t.await.unwrap();
        assert!(ttls.iter().all(|t| (28..=30).contains(t)), "{ttls:?}");
    }
    let client_n = metric(&c, p, "cairn_proxy_keepalives_client_total").unwrap();
    let upstream_n = metric(&c, p, "cairn_proxy_keepalives_upstream_total").unwrap();
    assert!(client_n >= 50.0, "{client_n}");
    assert!(
        upstream_n < client_n,
        "{upstream_n} upstream renewals for {client_n} requests"
    );
    up.lease_revoke(lease).await.unwrap();
    // etcd-client turns the TTL-0 answer into "lease not found".
    match pc.lease_keep_alive(lease).await {
        Err(e) => assert!(e.to_string().contains("lease not found"), "{e}"),
        Ok(_) => panic!("a revoked lease was renewed through the proxy"),
    }

    // The cache: a serializable read through the proxy sees a write made
    // directly upstream (the cache's watch invalidates it), and always
    // sees a write made through the proxy.
    let ser = || Some(GetOptions::new().with_serializable());
    pc.put("c", "1", None).await.unwrap();
    assert_eq!(pc.get("c", ser()).await.unwrap().kvs()[0].value(), b"1");
    assert_eq!(pc.get("c", ser()).await.unwrap().kvs()[0].value(), b"1");
    let hits = metric(&c, p, "cairn_proxy_cache_hits_total").unwrap();
    assert!(
        hits >= 1.0,
        "no serializable read was answered from the cache"
    );
    up.put("tenant/c", "2", None).await.unwrap();
    eventually(
        "cache sees an upstream write",
        Duration::from_secs(10),
        || {
            let mut pc = pc.clone();
            async move {
                let r = pc.get("c", ser()).await.ok()?;
                (r.kvs()[0].value() == b"2").then_some(())
            }
        },
    )
    .await;
    for n in 3..20 {
        let v = n.to_string();
        pc.put("c", v.clone(), None).await.unwrap();
        let r = pc.get("c", ser()).await.unwrap();
        assert_eq!(
            r.kvs()[0].value(),
            v.as_bytes(),
            "a stale read after a write"
        );
    }
    // Staleness of the proxy's cache is reported like a member's.
    let st = status_json(&c, p);
    assert_eq!(st["cairnRole"], "proxy");
    assert!(json_i64(&st, "cairnBehindMs") < 10_000, "{st}");
}

/// `--max-stale` on a proxy: while the cluster cannot confirm that the
/// cache is current, a proxy with `--max-stale 1s` stops answering
/// serializable reads from it; one without keeps serving its last data.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_with_max_stale_stops_serving_its_cache_when_it_cannot_confirm_it() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 1, &[]).await;
    let lax = c.new_member();
    let strict = c.new_member();
    c.members[strict]
        .extra_args
        .extend(["--max-stale".to_string(), "1s".to_string()]);
    c.spawn_role(lax, "proxy", &[0]);
    c.spawn_role(strict, "proxy", &[0]);
    c.wait_ready(lax).await;
    c.wait_ready(strict).await;
    let ser = || Some(GetOptions::new().with_serializable());
    let mut up = c.client(0).await;
    up.put("k", "v", None).await.unwrap();
    for p in [lax, strict] {
        let mut pc = c.client(p).await;
        eventually("cached", Duration::from_secs(10), || {
            let mut pc = pc.clone();
            let hits = metric(&c, p, "cairn_proxy_cache_hits_total").unwrap_or(0.0);
            async move {
                pc.get("k", ser()).await.ok()?;
                (hits >= 1.0).then_some(())
            }
        })
        .await;
        assert_eq!(pc.get("k", ser()).await.unwrap().kvs()[0].value(), b"v");
    }
    // The member stops answering (its connections stay open).
    c.signal(0, "STOP");
    let behind = eventually("staleness grows", Duration::from_secs(20), || {
        let ms = metric(&c, strict, "cairn_behind_milliseconds").unwrap_or(0.0);
        async move { (ms > 1000.0).then_some(ms) }
    })
    .await;
    assert!(behind > 1000.0);
    let mut lax_c = c.client(lax).await;
    let mut strict_c = c.client(strict).await;
    let r = lax_c.get("k", ser()).await.unwrap();
    assert_eq!(
        r.kvs()[0].value(),
        b"v",
        "without --max-stale the cache serves"
    );
    let r = strict_c.get("k", ser()).await;
    assert!(
        r.is_err(),
        "a proxy with --max-stale 1s answered from a cache it could not confirm"
    );
    c.signal(0, "CONT");
    eventually("back", Duration::from_secs(20), || {
        let mut s = strict_c.clone();
        async move { s.get("k", ser()).await.ok().map(|_| ()) }
    })
    .await;
}

/// Demotion (cairn only; etcd has no such RPC): a voter becomes a learner
/// through `POST /v3/cluster/member/demote`, keeps serving reads, and can
/// be promoted back. The leader must hand leadership over first.
#[tokio::test(flavor = "multi_thread")]
async fn a_voter_is_demoted_to_a_learner_and_promoted_back() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 3, &[]).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let id = c.member_id(victim).await;
    let leader_id = c.member_id(leader).await;
    let demote = |c: &Cluster, at: usize, id: u64| {
        http_request(
            ("127.0.0.1", c.members[at].client_port),
            "POST",
            "/v3/cluster/member/demote",
            Some(&format!("{{\"ID\":\"{id}\"}}")),
        )
    };
    let (code, body) = demote(&c, victim, leader_id);
    assert_ne!(code, 200, "the leader was demoted: {body}");
    assert!(body.contains("move leadership first"), "{body}");
    // Sent to the victim itself: it is forwarded to the leader. The leader
    // refuses changes for a while after members connect; retry on that.
    let body = eventually("demoted", Duration::from_secs(20), || {
        let (code, body) = demote(&c, victim, id);
        async move { (code == 200).then_some(body) }
    })
    .await;
    assert!(
        body.contains("isLearner") || body.contains("is_learner"),
        "{body}"
    );
    let mut vc = c.client(victim).await;
    let members = c.client(leader).await.member_list().await.unwrap();
    let m = members.members().iter().find(|m| m.id() == id).unwrap();
    assert!(m.is_learner());
    // The victim learns it when it applies the change (after the leader).
    eventually(
        "the victim sees itself a learner",
        Duration::from_secs(10),
        || {
            let mut vc = vc.clone();
            async move { vc.status().await.unwrap().is_learner().then_some(()) }
        },
    )
    .await;
    // Two voters still make a quorum; the learner serves reads.
    let mut lc = c.client(leader).await;
    let rev = lc
        .put("after-demote", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r = vc.get("after-demote", None).await.unwrap();
    assert_eq!(r.kvs()[0].mod_revision(), rev);
    let (code, body) = demote(&c, leader, id);
    assert_ne!(code, 200);
    assert!(body.contains("already a learner"), "{body}");
    // And back.
    let id_hex = format!("{id:x}");
    eventually("promoted back", Duration::from_secs(20), || {
        let out = etcdctl(
            &c.members[leader].client_url(),
            &["member", "promote", &id_hex],
        );
        async move { out.status.success().then_some(()) }
    })
    .await;
    eventually(
        "the victim sees itself a voter",
        Duration::from_secs(10),
        || {
            let mut vc = vc.clone();
            async move { (!vc.status().await.unwrap().is_learner()).then_some(()) }
        },
    )
    .await;
}

/// Auth through a proxy: tokens reach the members, which decide; keep-alives
/// and watches run as the client; the read cache never answers for a
/// cluster with auth on.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_passes_auth_to_the_cluster_and_its_cache_does_not_leak() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 1, &[]).await;
    let p = c.new_member();
    c.spawn_role(p, "proxy", &[0]);
    c.wait_ready(p).await;
    let proxy = format!("127.0.0.1:{}", c.members[p].client_port);
    let ok = |args: &[&str]| {
        let out = etcdctl(&proxy, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    ok(&["put", "secret", "s0"]);
    // Anonymous serializable reads fill the proxy's cache while auth is off.
    for _ in 0..3 {
        assert!(ok(&["get", "secret", "--consistency=s"]).contains("s0"));
    }
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "r"],
        &[
            "role",
            "grant-permission",
            "r",
            "readwrite",
            "--prefix",
            "a/",
        ],
        &["user", "grant-role", "alice", "r"],
        &["auth", "enable"],
    ] {
        ok(args);
    }
    // The cached answer is not served to an anonymous client any more.
    eventually(
        "the proxy stops answering from its cache",
        Duration::from_secs(10),
        || {
            let out = etcdctl(&proxy, &["get", "secret", "--consistency=s"]);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            async move { err.contains("user name is empty").then_some(()) }
        },
    )
    .await;
    let alice = "--user=alice:alicepw";
    ok(&[alice, "put", "a/1", "v"]);
    assert!(ok(&[alice, "get", "a/1", "--consistency=s"]).contains("v"));
    let denied = etcdctl(&proxy, &[alice, "get", "secret"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    // Leases as alice through the proxy.
    let granted = ok(&[alice, "lease", "grant", "60"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ok(&[alice, "put", "a/l", "x", "--lease", &id]);
    assert!(ok(&[alice, "lease", "keep-alive", "--once", &id]).contains("keepalived"));
    ok(&[alice, "lease", "revoke", &id]);
    // A watch she may not make is refused; one she may, works.
    let opts = etcd_client::ConnectOptions::new().with_user("alice", "alicepw");
    let mut pc = etcd_client::Client::connect([c.members[p].client_url()], Some(opts))
        .await
        .unwrap();
    let mut w = pc.watch("secret", None).await.unwrap();
    let first = next_watch(&mut w).await;
    assert!(
        first.canceled() && first.cancel_reason().contains("permission denied"),
        "{first:?}"
    );
    let mut w = pc
        .watch("a/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = next_watch(&mut w).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    pc.put("a/2", "w", None).await.unwrap();
    let ev = next_watch(&mut w).await;
    assert_eq!(ev.events()[0].kv().unwrap().key(), b"a/2");
}
