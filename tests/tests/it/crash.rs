//! kill -9 and restart: acknowledged writes survive, revisions never go back.

use std::time::Duration;

use cairn_tests::Subject;
use etcd_client::{GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions};
use rand::{Rng, SeedableRng, rngs::StdRng};

const WRITERS: usize = 8;
const ROUNDS: usize = 3;

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().expect("CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill9() {
    let seed = seed();
    eprintln!("crash seed: {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = Subject::start().await;
    let mut highest_ack = 1;

    for round in 0..ROUNDS {
        let delay = rng.random_range(100..1200);
        let acks = s
            .puts_until_kill9(
                WRITERS,
                &format!("crash/{round}/"),
                Duration::from_millis(delay),
            )
            .await;
        eprintln!(
            "round {round}: killed after {delay} ms with {} acknowledged puts",
            acks.len()
        );
        assert!(
            !acks.is_empty(),
            "no write was acknowledged before the kill"
        );

        s.restart().await;
        let mut c = s.client().await;
        // Revisions are unique per acknowledged put.
        let mut revs: Vec<i64> = acks.iter().map(|a| a.2).collect();
        revs.sort();
        revs.dedup();
        assert_eq!(
            revs.len(),
            acks.len(),
            "two puts acknowledged at one revision"
        );
        assert!(revs[0] > highest_ack, "revision went back after a restart");

        let all = c
            .get(
                format!("crash/{round}/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let stored: std::collections::HashMap<Vec<u8>, (Vec<u8>, i64)> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision())))
            .collect();
        for (key, value, rev) in &acks {
            let Some((v, r)) = stored.get(key.as_bytes()) else {
                panic!("seed {seed}: acknowledged key {key} (revision {rev}) lost");
            };
            assert_eq!(
                (v.as_slice(), *r),
                (value.as_bytes(), *rev),
                "seed {seed}: key {key}"
            );
        }
        let max_ack = *revs.last().unwrap();
        // The history survived too: a watch replays every acknowledged put.
        let mut watch = c
            .watch(
                format!("crash/{round}/"),
                Some(
                    etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revs[0]),
                ),
            )
            .await
            .unwrap();
        let mut history = std::collections::HashMap::new();
        let mut last_seen = 0;
        while last_seen < max_ack {
            let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
                .await
                .expect("history replay within 10 s")
                .unwrap()
                .expect("watch open");
            assert!(!resp.canceled(), "{resp:?}");
            for e in resp.events() {
                let kv = e.kv().unwrap();
                last_seen = kv.mod_revision();
                history.insert(kv.mod_revision(), kv.key().to_vec());
            }
        }
        for (key, _, rev) in &acks {
            assert_eq!(
                history.get(rev).map(Vec::as_slice),
                Some(key.as_bytes()),
                "seed {seed}: revision {rev} missing from the history"
            );
        }

        let next = c
            .put("crash/after", format!("{round}"), None)
            .await
            .unwrap();
        let next_rev = next.header().unwrap().revision();
        assert!(
            next_rev > max_ack,
            "seed {seed}: next write got revision {next_rev}, acknowledged up to {max_ack}"
        );
        highest_ack = next_rev;
    }
}

#[tokio::test]
async fn leases_survive_restart() {
    let mut s = Subject::start().await;
    let mut c = s.client().await;
    let server_chosen = c.lease_grant(600, None).await.unwrap().id();
    let chosen = c
        .lease_grant(300, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .unwrap()
        .id();
    c.put(
        "l/a",
        "1",
        Some(PutOptions::new().with_lease(server_chosen)),
    )
    .await
    .unwrap();
    c.put("l/b", "2", Some(PutOptions::new().with_lease(chosen)))
        .await
        .unwrap();
    s.kill9();
    s.restart().await;
    let mut c = s.client().await;

    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut want = vec![server_chosen, chosen];
    want.sort();
    assert_eq!(ids, want);
    for (id, granted, key) in [(server_chosen, 600, "l/a"), (chosen, 300, "l/b")] {
        let ttl = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(ttl.granted_ttl(), granted);
        assert!(ttl.ttl() > 0 && ttl.ttl() <= granted, "ttl {}", ttl.ttl());
        assert_eq!(ttl.keys(), [key.as_bytes().to_vec()]);
        let kv = c.get(key, None).await.unwrap();
        assert_eq!(kv.kvs()[0].lease(), id);
    }
    // A new server-chosen id does not collide with the restored ones.
    let fresh = c.lease_grant(60, None).await.unwrap().id();
    assert!(!want.contains(&fresh));
    // Revoke still deletes the keys after the restart.
    let r = c.lease_revoke(chosen).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 4);
    assert!(c.get("l/b", None).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn compaction_and_revision_survive_restart() {
    let mut s = Subject::start().await;
    let mut c = s.client().await;
    for i in 0..10 {
        c.put("k", format!("{i}"), None).await.unwrap(); // 2..=11
    }
    c.delete("k", None).await.unwrap(); // 12
    c.compact(6, None).await.unwrap();
    s.kill9();
    s.restart().await;
    let mut c = s.client().await;
    let status = crate::status_of(c.get("k", Some(GetOptions::new().with_revision(5))).await);
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted"
        )
    );
    let old = c
        .get("k", Some(GetOptions::new().with_revision(8)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"6");
    assert_eq!(old.header().unwrap().revision(), 12);
    assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    // A deleted key starts a new life after the restart.
    let p = c.put("k", "new", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 13);
    let g = c.get("k", None).await.unwrap();
    let kv = &g.kvs()[0];
    assert_eq!((kv.create_revision(), kv.version()), (13, 1));
}
