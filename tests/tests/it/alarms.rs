//! Alarms and the space quota: NOSPACE reached, what it refuses, recovery
//! by compaction, defragmentation and `alarm disarm`; the same against
//! Debian's etcd. A quota of 4 MiB keeps the writes small.
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{Subject, SubjectOptions, eventually, subject_kind};
use etcd_client::{AlarmAction, AlarmType, Client, Compare, CompareOp, Txn, TxnOp};

use crate::assert_grpc_error;

const QUOTA: &str = "4194304";
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Puts 200 KB values under one key until the quota refuses one; returns
/// how many were accepted. Fails the test if the quota never bites.
async fn fill(c: &mut Client, key: &str) -> usize {
    let value = vec![b'x'; 200_000];
    for n in 0..200 {
        match c.put(key, value.clone(), None).await {
            Ok(_) => continue,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(NOSPACE), "put {n} failed otherwise: {msg}");
                return n;
            }
        }
    }
    panic!("200 puts of 200 KB never exceeded a 4 MiB quota");
}

async fn alarms(c: &mut Client) -> Vec<(u64, AlarmType)> {
    c.alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap()
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

fn member(id: u64) -> etcd_client::AlarmOptions {
    let mut o = etcd_client::AlarmOptions::new();
    o.with_member(id);
    o
}

async fn put_refused(c: &mut Client, key: &str) {
    assert_grpc_error(
        c.put(key, "v", None).await,
        tonic::Code::ResourceExhausted,
        NOSPACE,
    );
}

#[tokio::test]
async fn nospace_is_raised_refuses_writes_survives_restart_and_is_recovered() {
    let mut opts = SubjectOptions::new(subject_kind());
    opts.extra_args = vec!["--quota-backend-bytes".into(), QUOTA.into()];
    let mut s = Subject::start_with(opts).await;
    let mut c = s.client().await;
    assert!(alarms(&mut c).await.is_empty());
    c.put("small", "1", None).await.unwrap();
    let accepted = fill(&mut c, "big").await;
    assert!(accepted >= 5, "only {accepted} puts of 200 KB fit in 4 MiB");

    let me = c.status().await.unwrap().header().unwrap().member_id();
    assert_eq!(alarms(&mut c).await, [(me, AlarmType::Nospace)]);
    let st = c.status().await.unwrap();
    assert_eq!(st.errors(), [format!("memberID:{me} alarm:NOSPACE ")]);
    if !s.is_etcd() {
        // etcd 3.4 has no dbSizeQuota.
        assert_eq!(st.db_size_quota(), 4 << 20);
        // Refused because the next 200 KB would not fit.
        assert!(st.db_size() + 200_300 >= 4 << 20, "dbSize {}", st.db_size());
    }
    let out = s.etcdctl(["alarm", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("memberID:{me} alarm:NOSPACE")
    );
    let (code, body) = s.http("GET", "/health", None);
    assert!(body.contains(r#""health":"false""#), "{code} {body}");
    // The JSON gateway lists it too.
    let (code, body) = s.http("POST", "/v3/maintenance/alarm", Some(r#"{"action":"GET"}"#));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["alarms"][0]["alarm"], "NOSPACE", "{body}");
    assert_eq!(v["alarms"][0]["memberID"], me.to_string(), "{body}");
    let (_, metrics) = s.http("GET", "/metrics", None);
    let quota = metrics
        .lines()
        .find_map(|l| l.strip_prefix("etcd_server_quota_backend_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(quota, Some(4194304.0), "{metrics}");

    // Refused: puts, txns that put, lease grants.
    put_refused(&mut c, "other").await;
    let put_txn = Txn::new().and_then([TxnOp::put("t", "v", None)]);
    assert_grpc_error(
        c.txn(put_txn).await,
        tonic::Code::ResourceExhausted,
        NOSPACE,
    );
    assert_grpc_error(
        c.lease_grant(60, None).await,
        tonic::Code::ResourceExhausted,
        NOSPACE,
    );
    // Allowed: reads, read-only txns, deletes.
    assert_eq!(c.get("small", None).await.unwrap().kvs()[0].value(), b"1");
    let read_txn = Txn::new()
        .when([Compare::version("small", CompareOp::Equal, 1)])
        .and_then([TxnOp::get("small", None)]);
    assert!(c.txn(read_txn).await.unwrap().succeeded());
    assert_eq!(c.delete("small", None).await.unwrap().deleted(), 1);

    // The alarm is part of the stored state.
    s.restart().await;
    let mut c = s.client().await;
    assert_eq!(alarms(&mut c).await, [(me, AlarmType::Nospace)]);
    put_refused(&mut c, "other").await;

    // Recovery: compact, defragment, disarm.
    let rev = c.status().await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    c.defragment().await.unwrap();
    if !s.is_etcd() {
        let size = c.status().await.unwrap().db_size();
        assert!(
            size < 1 << 20,
            "after compaction and defrag dbSize is {size}"
        );
    }
    let out = s.etcdctl(["alarm", "disarm"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("memberID:{me} alarm:NOSPACE")
    );
    assert!(alarms(&mut c).await.is_empty());
    assert!(c.status().await.unwrap().errors().is_empty());
    if let Err(e) = c.put("other", "v", None).await {
        let st = c.status().await.unwrap();
        panic!(
            "put after recovery: {e}; dbSize {} errors {:?}",
            st.db_size(),
            st.errors()
        );
    }
    c.lease_grant(60, None).await.unwrap();
    let (code, body) = s.http("GET", "/health", None);
    assert_eq!((code, body.contains(r#""health":"true""#)), (200, true));
}

#[tokio::test]
async fn alarm_activate_and_deactivate_go_through_the_log() {
    let (s, mut c) = crate::start().await;
    let me = c.status().await.unwrap().header().unwrap().member_id();
    // Deactivating what is not raised answers nothing.
    let r = c
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(member(me)),
        )
        .await
        .unwrap();
    assert!(r.alarms().is_empty());
    let r = c
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(member(me)))
        .await
        .unwrap();
    assert_eq!(r.alarms().len(), 1);
    assert_eq!(r.alarms()[0].alarm(), AlarmType::Nospace);
    put_refused(&mut c, "k").await;
    // GET of another type lists nothing.
    let r = c
        .alarm(AlarmAction::Get, AlarmType::Corrupt, None)
        .await
        .unwrap();
    assert!(r.alarms().is_empty());
    let r = c
        .alarm(
            AlarmAction::Deactivate,
            AlarmType::Nospace,
            Some(member(me)),
        )
        .await
        .unwrap();
    assert_eq!(r.alarms().len(), 1);
    c.put("k", "v", None).await.unwrap();
    drop(s);
}

/// NOSPACE raised by one member refuses writes through every member; the
/// operator's recovery (compact, defrag each member, disarm) brings them
/// all back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_is_cluster_wide_in_a_3_member_cluster() {
    let mut cl = Cluster::start(subject_kind(), 3, &["--quota-backend-bytes", QUOTA]).await;
    let mut c0 = cl.client(0).await;
    fill(&mut c0, "big").await;
    for i in 0..3 {
        let mut c = cl.client(i).await;
        eventually("NOSPACE on every member", Duration::from_secs(10), || {
            let mut c = c.clone();
            async move {
                let a = alarms(&mut c).await;
                a.iter()
                    .any(|(_, t)| *t == AlarmType::Nospace)
                    .then_some(())
            }
        })
        .await;
        put_refused(&mut c, &format!("from-{i}")).await;
        assert_eq!(c.delete("nothing", None).await.unwrap().deleted(), 0);
    }
    let rev = c0.status().await.unwrap().header().unwrap().revision();
    c0.compact(rev, None).await.unwrap();
    let out = cl.etcdctl(&["defrag", "--cluster"]);
    assert!(out.status.success(), "{out:?}");
    let out = cl.etcdctl(&["alarm", "disarm"]);
    assert!(out.status.success(), "{out:?}");
    for i in 0..3 {
        let mut c = cl.client(i).await;
        eventually("writes again", Duration::from_secs(10), || {
            let mut c = c.clone();
            async move { c.put(format!("after-{i}"), "v", None).await.ok() }
        })
        .await;
        assert!(alarms(&mut c).await.is_empty());
    }
}

/// What CORRUPT refuses, raised by hand (etcd accepts an ACTIVATE of any
/// alarm type): every write, compaction and lease grant or revoke; reads
/// and read-only txns go on.
#[tokio::test]
async fn corrupt_refuses_writes_but_not_reads() {
    let (s, mut c) = crate::start().await;
    let me = c.status().await.unwrap().header().unwrap().member_id();
    c.put("k", "v", None).await.unwrap();
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.alarm(AlarmAction::Activate, AlarmType::Corrupt, Some(member(me)))
        .await
        .unwrap();
    const CORRUPT: &str = "etcdserver: corrupt cluster";
    let refused = |r: Result<(), etcd_client::Error>| {
        let st = crate::status_of(r);
        assert_eq!((st.code(), st.message()), (tonic::Code::DataLoss, CORRUPT));
    };
    refused(c.put("k", "w", None).await.map(|_| ()));
    refused(c.delete("k", None).await.map(|_| ()));
    let rev = c.status().await.unwrap().header().unwrap().revision();
    refused(c.compact(rev, None).await.map(|_| ()));
    refused(c.lease_grant(60, None).await.map(|_| ()));
    refused(c.lease_revoke(lease).await.map(|_| ()));
    let write_txn = Txn::new().and_then([TxnOp::delete("k", None)]);
    refused(c.txn(write_txn).await.map(|_| ()));
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    let read_txn = Txn::new().and_then([TxnOp::get("k", None)]);
    assert!(c.txn(read_txn).await.unwrap().succeeded());
    assert_eq!(
        c.status().await.unwrap().errors(),
        [format!("memberID:{me} alarm:CORRUPT ")]
    );
    let (_, body) = s.http("GET", "/health", None);
    assert!(body.contains(r#""health":"false""#), "{body}");
    c.alarm(
        AlarmAction::Deactivate,
        AlarmType::Corrupt,
        Some(member(me)),
    )
    .await
    .unwrap();
    c.put("k", "w", None).await.unwrap();
}

/// One follower's store is altered on disk while it is stopped (a value
/// rewritten through the store crate, so its own checksums hold). Started
/// with `--experimental-initial-corrupt-check` it refuses to start; started
/// without, the leader's periodic check (`--experimental-corrupt-check-time`)
/// finds its HashKV differs and raises CORRUPT for it: writes stop
/// cluster-wide, reads go on. cairn only: the tool alters cairn's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_altered_on_disk_is_found_corrupt() {
    if subject_kind() == cairn_tests::Kind::Etcd {
        return;
    }
    let mut cl = Cluster::start(
        cairn_tests::Kind::Cairn,
        3,
        &["--experimental-corrupt-check-time", "1s"],
    )
    .await;
    let leader = cl.leader(Duration::from_secs(10)).await;
    let mut lc = cl.client(leader).await;
    for i in 0..20 {
        lc.put(format!("k{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let f = (leader + 1) % 3;
    let fid = cl.member_id(f).await;
    let fc = cl.client(f).await;
    eventually(
        "the follower has every write",
        Duration::from_secs(10),
        || {
            let mut fc = fc.clone();
            async move {
                let opts = etcd_client::GetOptions::new().with_serializable();
                let r = fc.get("k19", Some(opts)).await.ok()?;
                (r.count() == 1).then_some(())
            }
        },
    )
    .await;
    // Healthy so far: the periodic checks pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(alarms(&mut lc).await.is_empty());

    cl.signal(f, "TERM");
    assert!(cl.wait_exit(f, Duration::from_secs(15)).await);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-corrupt"))
        .arg(&cl.members[f].data_dir)
        .args(["k5", "altered"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    cl.members[f].extra_args = vec!["--experimental-initial-corrupt-check".into()];
    cl.spawn(f, "new");
    assert!(
        cl.wait_exit(f, Duration::from_secs(30)).await,
        "the altered member started despite the initial check\n{}",
        cl.log(f)
    );
    assert!(
        cl.log(f).contains("found data inconsistency with peers"),
        "{}",
        cl.log(f)
    );

    cl.members[f].extra_args.clear();
    cl.spawn(f, "new");
    cl.wait_ready(f).await;
    eventually(
        "CORRUPT raised for the altered member",
        Duration::from_secs(20),
        || {
            let mut lc = lc.clone();
            async move {
                alarms(&mut lc)
                    .await
                    .contains(&(fid, AlarmType::Corrupt))
                    .then_some(())
            }
        },
    )
    .await;
    for i in 0..3 {
        let mut c = cl.client(i).await;
        let st = crate::status_of(c.put("after", "x", None).await);
        assert_eq!(
            (st.code(), st.message()),
            (tonic::Code::DataLoss, "etcdserver: corrupt cluster")
        );
        assert_eq!(c.get("k1", None).await.unwrap().kvs()[0].value(), b"v1");
    }
    let out = cl.etcdctl(&["alarm", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("memberID:{fid} alarm:CORRUPT")
    );
    // The altered member serves what was written on its disk.
    let opts = etcd_client::GetOptions::new().with_serializable();
    let r = cl.client(f).await.get("k5", Some(opts)).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"altered");
}

#[test]
fn a_bad_corrupt_check_time_is_refused_with_the_flag_named() {
    let out = std::process::Command::new(cairn_tests::bin_for(subject_kind()))
        .args(["--experimental-corrupt-check-time", "bogus"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("experimental-corrupt-check-time") && err.contains("bogus"),
        "{err}"
    );
}

/// An alarm travels in the snapshot a follower installs when the log it
/// missed is compacted away. cairn only (etcd keeps 5000 entries for slow
/// followers, so it would not send a snapshot here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_reaches_a_follower_in_a_snapshot() {
    if subject_kind() == cairn_tests::Kind::Etcd {
        return;
    }
    let mut cl = Cluster::start(cairn_tests::Kind::Cairn, 3, &["--snapshot-count", "100"]).await;
    let leader = cl.leader(Duration::from_secs(10)).await;
    let lid = cl.member_id(leader).await;
    let f = (leader + 1) % 3;
    cl.kill9(f);
    let mut lc = cl.client(leader).await;
    lc.put("before", "x", None).await.unwrap();
    lc.alarm(AlarmAction::Activate, AlarmType::Nospace, Some(member(lid)))
        .await
        .unwrap();
    // Deletes are allowed under NOSPACE; 300 of them compact the log past
    // the alarm's entry.
    for n in 0..300 {
        lc.delete(format!("nothing/{n}"), None).await.unwrap();
    }
    cl.restart(f).await;
    let mut fc = cl.client(f).await;
    let st = eventually(
        "the follower holds the alarm",
        Duration::from_secs(20),
        || {
            let mut fc = fc.clone();
            async move {
                let st = fc.status().await.ok()?;
                (!st.errors().is_empty()).then_some(st)
            }
        },
    )
    .await;
    assert_eq!(st.errors(), [format!("memberID:{lid} alarm:NOSPACE ")]);
    assert!(cl.log(f).contains("installed a snapshot"), "{}", cl.log(f));
    put_refused(&mut fc, "through-the-follower").await;
}
