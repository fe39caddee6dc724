//! Backup and restore: `etcdctl snapshot save` and `cairn snapshot
//! save|status|restore` (cairn only: the snapshot format is cairn's own,
//! and Debian's etcd 3.4 ships no etcdutl to restore with).
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{ETCDCTL_BIN, Kind, cairn_bin, subject_kind};
use etcd_client::{Client, GetOptions, WatchOptions};

fn cairn(args: &[&str]) -> Output {
    Command::new(cairn_bin())
        .args(args)
        .output()
        .expect("cairn")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(needle), "{out:?}");
}

fn status_json(file: &Path) -> serde_json::Value {
    let out = cairn(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    serde_json::from_str(ok(&out).trim()).unwrap()
}

/// Restores `file` as every member of `new` (not started yet).
fn restore_into(new: &Cluster, file: &Path, extra: &[&str]) {
    let initial = new.initial_cluster(new.members.len());
    for m in &new.members {
        let mut args = vec![
            "snapshot".to_string(),
            "restore".into(),
            file.display().to_string(),
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--initial-cluster".into(),
            initial.clone(),
            "--initial-cluster-token".into(),
            new.token.clone(),
            "--initial-advertise-peer-urls".into(),
            m.peer_url(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&cairn(&args));
    }
}

/// Every key at `rev` with its revisions and version.
async fn all_keys(c: &mut Client, rev: i64) -> Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)> {
    let opts = GetOptions::new().with_all_keys().with_revision(rev);
    c.get("", Some(opts))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect()
}

/// A snapshot taken from one member of a 3-member cluster while clients
/// write, restored into a new 3-member cluster (new names, ports, token):
/// the same HashKV and the same keys at the snapshot's revision, the new
/// membership only, and revisions that go on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_member_snapshot_restores_into_a_new_3_member_cluster() {
    if subject_kind() == Kind::Etcd {
        return;
    }
    let old = Cluster::start(Kind::Cairn, 3, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..3 {
        let mut c = old.client(i).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                c.put(format!("w{i}/{n:05}"), format!("v{n}"), None)
                    .await
                    .unwrap();
                if n.is_multiple_of(7) {
                    c.delete(format!("w{i}/{:05}", n / 2), None).await.unwrap();
                }
                n += 1;
            }
            n
        }));
    }
    // Some history first, then the snapshot while the writes go on.
    let mut c1 = old.client(1).await;
    cairn_tests::eventually("writes under way", Duration::from_secs(30), || {
        let mut c1 = c1.clone();
        async move {
            let r = c1.status().await.ok()?;
            (r.header()?.revision() > 300).then_some(())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.snap");
    let out = cairn(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--endpoints",
        &old.members[1].client_url(),
    ]);
    assert_eq!(
        ok(&out).trim(),
        format!("Snapshot saved at {}", file.display())
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.await.unwrap() > 0);
    }
    let st = status_json(&file);
    let rev = st["revision"].as_i64().unwrap();
    let hash = st["hash"].as_u64().unwrap() as u32;
    let after = c1.status().await.unwrap().header().unwrap().revision();
    assert!(
        rev > 300 && rev < after,
        "snapshot at {rev}, writes ended at {after}"
    );
    // The file's hash is the cluster's HashKV at that revision, on every member.
    for i in 0..3 {
        let mut c = old.client(i).await;
        assert_eq!(c.hash_kv(rev).await.unwrap().hash(), hash, "member {i}");
    }

    let mut new = Cluster::prepare(Kind::Cairn, 3, &[]);
    restore_into(&new, &file, &[]);
    for i in 0..3 {
        new.spawn(i, "new");
    }
    for i in 0..3 {
        new.wait_ready(i).await;
    }
    let want = all_keys(&mut c1, rev).await;
    assert!(want.len() > 100);
    for i in 0..3 {
        let mut c = new.client(i).await;
        let h = c.hash_kv(0).await.unwrap();
        assert_eq!((h.hash(), rev_of(&h)), (hash, rev), "restored member {i}");
        assert_eq!(all_keys(&mut c, rev).await, want, "restored member {i}");
    }
    let mut nc = new.client(0).await;
    let members = nc.member_list().await.unwrap();
    let mut names: Vec<String> = members
        .members()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["infra0", "infra1", "infra2"]);
    for m in members.members() {
        let ours = new.members.iter().any(|n| m.peer_urls() == [n.peer_url()]);
        assert!(ours, "{m:?} is not a member of the new cluster");
    }
    let old_cluster = c1.status().await.unwrap().header().unwrap().cluster_id();
    let new_cluster = members.header().unwrap().cluster_id();
    assert_ne!(old_cluster, new_cluster);
    // Revisions go on from the snapshot's.
    let put = nc.put("after-restore", "x", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), rev + 1);
    for i in 1..3 {
        let mut c = new.client(i).await;
        let r = c.get("after-restore", None).await.unwrap();
        assert_eq!(r.kvs()[0].mod_revision(), rev + 1);
    }
}

fn rev_of(h: &etcd_client::HashKvResponse) -> i64 {
    h.header().unwrap().revision()
}

/// `etcdctl snapshot save` against cairn gives a file `cairn snapshot`
/// reads; a restore with `--bump-revision` and `--mark-compacted` continues
/// above the old revisions and compacts watchers and reads below; bad
/// files and flags are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_save_status_and_restore_with_bumped_revision() {
    if subject_kind() == Kind::Etcd {
        return;
    }
    let mut old = Cluster::start(Kind::Cairn, 1, &[]).await;
    let mut c = old.client(0).await;
    for i in 0..20 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    c.compact(5, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.snap");
    let out = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", old.members[0].client_url()))
        .args(["snapshot", "save", file.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out);
    let st = status_json(&file);
    assert_eq!(st["revision"], 21);
    let h = c.hash_kv(0).await.unwrap();
    assert_eq!(st["hash"].as_u64(), Some(h.hash() as u64));
    assert_eq!(
        st["totalSize"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len())
    );
    let table = ok(&cairn(&[
        "snapshot",
        "status",
        file.to_str().unwrap(),
        "-w",
        "table",
    ]));
    assert!(
        table.contains("|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |"),
        "{table}"
    );
    assert!(table.contains(&format!("| {:x} |", h.hash())), "{table}");
    let simple = ok(&cairn(&["snapshot", "status", file.to_str().unwrap()]));
    assert!(
        simple.starts_with(&format!("{:x}, 21, ", h.hash())),
        "{simple}"
    );
    drop(c);
    old.kill9(0);

    // Bad input, each with its reason.
    let bytes = std::fs::read(&file).unwrap();
    let bad = dir.path().join("bad.snap");
    let mut flipped = bytes.clone();
    flipped[100] ^= 0x40;
    std::fs::write(&bad, &flipped).unwrap();
    fails_with(
        &cairn(&["snapshot", "status", bad.to_str().unwrap()]),
        "does not match its content",
    );
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(
        &cairn(&["snapshot", "status", bad.to_str().unwrap()]),
        "truncated",
    );
    let mut bolt = vec![0u8; 4096];
    bolt[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
    std::fs::write(&bad, &bolt).unwrap();
    fails_with(
        &cairn(&[
            "snapshot",
            "restore",
            bad.to_str().unwrap(),
            "--data-dir",
            "x",
        ]),
        "etcd (bbolt) snapshot",
    );
    fails_with(
        &cairn(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--bump-revision",
            "5",
        ]),
        "--mark-compacted is required",
    );
    fails_with(
        &cairn(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]),
        "exists and is not empty",
    );

    let mut new = Cluster::prepare(Kind::Cairn, 1, &[]);
    restore_into(
        &new,
        &file,
        &["--bump-revision", "1000", "--mark-compacted"],
    );
    new.spawn(0, "new");
    new.wait_ready(0).await;
    let mut c = new.client(0).await;
    let st = c.status().await.unwrap();
    assert_eq!(st.header().unwrap().revision(), 1021);
    assert_eq!(c.get("k7", None).await.unwrap().kvs()[0].value(), b"v7");
    crate::assert_grpc_error(
        c.get("k7", Some(GetOptions::new().with_revision(21))).await,
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // A watcher resuming from an old revision learns it was compacted.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(22)))
        .await
        .unwrap();
    let mut canceled = None;
    while let Some(resp) = stream.message().await.unwrap() {
        if resp.canceled() {
            canceled = Some(resp.compact_revision());
            break;
        }
    }
    assert_eq!(canceled, Some(1021));
    let put = c.put("k", "new", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 1022);
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(1022)))
        .await
        .unwrap();
    loop {
        let resp = stream.message().await.unwrap().unwrap();
        if let Some(e) = resp.events().first() {
            assert_eq!(e.kv().unwrap().mod_revision(), 1022);
            break;
        }
    }
}
