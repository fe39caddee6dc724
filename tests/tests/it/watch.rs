//! Watch service: one bidi stream multiplexing watchers.

use std::time::Duration;

use etcd_client::{
    CompactionOptions, EventType, PutOptions, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

use crate::{rev, start};

const WAIT: Duration = Duration::from_secs(10);

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("watch response within 10 s")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Asserts nothing arrives for a short while.
async fn quiet(stream: &mut WatchStream) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("unexpected watch message: {m:?}");
    }
}

/// (type, key, value, mod_revision) of each event.
fn events(resp: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    resp.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            (
                e.event_type(),
                String::from_utf8_lossy(kv.key()).to_string(),
                String::from_utf8_lossy(kv.value()).to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

fn ev(t: EventType, k: &str, v: &str, r: i64) -> (EventType, String, String, i64) {
    (t, k.into(), v.into(), r)
}

/// Collects events until `n` have arrived.
async fn collect(stream: &mut WatchStream, n: usize) -> Vec<(EventType, String, String, i64)> {
    let mut all = Vec::new();
    while all.len() < n {
        let resp = next(stream).await;
        assert!(!resp.canceled(), "{resp:?}");
        all.extend(events(&resp));
    }
    assert_eq!(all.len(), n);
    all
}

#[tokio::test]
async fn create_event_cancel() {
    let (_s, mut c) = start().await;
    let mut stream = c.watch("k", None).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    assert!(!created.canceled());
    assert!(created.events().is_empty());
    assert_eq!(rev(created.header()), 1);
    let id = created.watch_id();

    c.put("other", "x", None).await.unwrap(); // 2
    c.put("k", "v", None).await.unwrap(); // 3
    let resp = next(&mut stream).await;
    assert_eq!(resp.watch_id(), id);
    assert!(!resp.created());
    assert_eq!(events(&resp), [ev(EventType::Put, "k", "v", 3)]);
    assert_eq!(rev(resp.header()), 3);
    let kv = resp.events()[0].kv().unwrap();
    assert_eq!((kv.create_revision(), kv.version()), (3, 1));
    assert!(resp.events()[0].prev_kv().is_none());

    c.delete("k", None).await.unwrap(); // 4
    let resp = next(&mut stream).await;
    let e = &resp.events()[0];
    assert_eq!(e.event_type(), EventType::Delete);
    let kv = e.kv().unwrap();
    // A delete event carries the key, the deletion revision and nothing else.
    assert_eq!(
        (
            kv.key(),
            kv.value(),
            kv.mod_revision(),
            kv.create_revision(),
            kv.version()
        ),
        (&b"k"[..], &b""[..], 4, 0, 0)
    );

    stream.cancel(id).await.unwrap();
    let resp = next(&mut stream).await;
    assert!(resp.canceled(), "{resp:?}");
    assert_eq!(resp.watch_id(), id);
    assert_eq!(resp.compact_revision(), 0);
    c.put("k", "after", None).await.unwrap();
    quiet(&mut stream).await;
}

#[tokio::test]
async fn many_watchers_one_stream() {
    let (_s, mut c) = start().await;
    let mut stream = c.watch("a", None).await.unwrap();
    let id_a = next(&mut stream).await.watch_id();
    stream.watch("b", None).await.unwrap();
    let created_b = next(&mut stream).await;
    assert!(created_b.created());
    let id_b = created_b.watch_id();
    stream
        .watch("", Some(WatchOptions::new().with_all_keys()))
        .await
        .unwrap();
    let created_all = next(&mut stream).await;
    assert!(created_all.created());
    let id_all = created_all.watch_id();
    // Server-chosen ids count up from 0 on each stream.
    assert_eq!((id_a, id_b, id_all), (0, 1, 2));

    c.put("a", "1", None).await.unwrap(); // 2
    c.put("b", "2", None).await.unwrap(); // 3
    // One event per watcher and revision. A watcher may get both of its
    // revisions in one response when the server is slow (etcd batches an
    // unsynced watcher's events too), so count events, not responses.
    let mut got: Vec<(i64, Vec<_>)> = Vec::new();
    while got.len() < 4 {
        let resp = next(&mut stream).await;
        for e in events(&resp) {
            got.push((resp.watch_id(), vec![e]));
        }
    }
    got.sort_by_key(|(id, e)| (e[0].3, *id));
    assert_eq!(
        got,
        [
            (id_a, vec![ev(EventType::Put, "a", "1", 2)]),
            (id_all, vec![ev(EventType::Put, "a", "1", 2)]),
            (id_b, vec![ev(EventType::Put, "b", "2", 3)]),
            (id_all, vec![ev(EventType::Put, "b", "2", 3)]),
        ]
    );

    // Cancel one; the others keep going.
    stream.cancel(id_a).await.unwrap();
    let resp = next(&mut stream).await;
    assert!(resp.canceled());
    assert_eq!(resp.watch_id(), id_a);
    c.put("a", "again", None).await.unwrap(); // 4
    let resp = next(&mut stream).await;
    assert_eq!(resp.watch_id(), id_all);
    assert_eq!(events(&resp), [ev(EventType::Put, "a", "again", 4)]);
    quiet(&mut stream).await;

    // A client-chosen id.
    stream
        .watch("c", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    let resp = next(&mut stream).await;
    assert!(resp.created());
    assert_eq!(resp.watch_id(), 100);
    // Reusing an id: etcd answers created+canceled with watch id -1.
    stream
        .watch("d", Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    let resp = next(&mut stream).await;
    assert!(resp.created() && resp.canceled(), "{resp:?}");
    assert_eq!(resp.watch_id(), -1);
    assert_eq!(
        resp.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // Canceling an unknown id is ignored: no response at all.
    stream.cancel(777).await.unwrap();
    quiet(&mut stream).await;
    // The next server-chosen id skips the ones in use.
    stream.watch("e", None).await.unwrap();
    let resp = next(&mut stream).await;
    assert!(resp.created());
    assert_eq!(resp.watch_id(), 3);
}

#[tokio::test]
async fn start_revision_replays_history() {
    let (_s, mut c) = start().await;
    c.put("k", "1", None).await.unwrap(); // 2
    c.put("x", "1", None).await.unwrap(); // 3
    c.put("k", "2", None).await.unwrap(); // 4
    c.delete("k", None).await.unwrap(); // 5
    c.put("k", "3", None).await.unwrap(); // 6
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let created = next(&mut stream).await;
    assert!(created.created());
    assert_eq!(rev(created.header()), 6);
    let got = collect(&mut stream, 4).await;
    assert_eq!(
        got,
        [
            ev(EventType::Put, "k", "1", 2),
            ev(EventType::Put, "k", "2", 4),
            ev(EventType::Delete, "k", "", 5),
            ev(EventType::Put, "k", "3", 6),
        ]
    );
    // Then live events follow.
    c.put("k", "4", None).await.unwrap(); // 7
    assert_eq!(
        collect(&mut stream, 1).await,
        [ev(EventType::Put, "k", "4", 7)]
    );

    // A start revision in the middle is inclusive.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let got = collect(&mut stream, 3).await;
    assert_eq!(got.iter().map(|e| e.3).collect::<Vec<_>>(), [5, 6, 7]);

    // A start revision in the future waits for it.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(9)))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    c.put("k", "5", None).await.unwrap(); // 8
    c.put("k", "6", None).await.unwrap(); // 9
    assert_eq!(
        collect(&mut stream, 1).await,
        [ev(EventType::Put, "k", "6", 9)]
    );
}

#[tokio::test]
async fn prev_kv_and_filters() {
    let (_s, mut c) = start().await;
    c.put("k", "old", None).await.unwrap(); // 2
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    stream
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
        )
        .await
        .unwrap();
    let no_put = next(&mut stream).await.watch_id();
    stream
        .watch(
            "k",
            Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
        )
        .await
        .unwrap();
    let no_delete = next(&mut stream).await.watch_id();

    c.put("k", "new", None).await.unwrap(); // 3
    c.delete("k", None).await.unwrap(); // 4
    let mut by_watcher: std::collections::BTreeMap<i64, Vec<WatchResponse>> = Default::default();
    // prev_kv watcher: 2 events; no_put: 1; no_delete: 1 (they may be batched).
    let mut count = 0;
    while count < 4 {
        let resp = next(&mut stream).await;
        count += resp.events().len();
        by_watcher.entry(resp.watch_id()).or_default().push(resp);
    }
    quiet(&mut stream).await;

    let prev: Vec<_> = by_watcher[&0]
        .iter()
        .flat_map(|r| r.events().to_vec())
        .collect();
    assert_eq!(prev.len(), 2);
    let p0 = prev[0].prev_kv().expect("prev_kv on put");
    assert_eq!((p0.value(), p0.mod_revision()), (&b"old"[..], 2));
    let p1 = prev[1].prev_kv().expect("prev_kv on delete");
    assert_eq!(
        (p1.value(), p1.mod_revision(), p1.version()),
        (&b"new"[..], 3, 2)
    );

    let np: Vec<_> = by_watcher[&no_put].iter().flat_map(events).collect();
    assert_eq!(np, [ev(EventType::Delete, "k", "", 4)]);
    // Without prev_kv asked for, none is sent.
    assert!(by_watcher[&no_put][0].events()[0].prev_kv().is_none());
    let nd: Vec<_> = by_watcher[&no_delete].iter().flat_map(events).collect();
    assert_eq!(nd, [ev(EventType::Put, "k", "new", 3)]);
}

#[tokio::test]
async fn progress_request() {
    let (_s, mut c) = start().await;
    c.put("a", "1", None).await.unwrap(); // 2
    let mut stream = c.watch("k", None).await.unwrap();
    assert!(next(&mut stream).await.created());
    c.put("other", "1", None).await.unwrap(); // 3
    stream.request_progress().await.unwrap();
    let resp = next(&mut stream).await;
    // etcd 3.4 answers a progress request with an empty response carrying
    // the current revision and watch id -1 (sent to the whole stream).
    assert!(resp.events().is_empty(), "{resp:?}");
    assert!(!resp.created() && !resp.canceled(), "{resp:?}");
    assert_eq!(rev(resp.header()), 3);
    assert_eq!(resp.watch_id(), -1, "{resp:?}");
}

#[tokio::test]
async fn compacted_start_revision_is_canceled() {
    let (_s, mut c) = start().await;
    for i in 0..5 {
        c.put("k", format!("{i}"), None).await.unwrap(); // 2..=6
    }
    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .unwrap();
    // etcd 3.4 first acknowledges the watcher (header at the current
    // revision), then cancels it with compact_revision set, an empty
    // cancel_reason and — a quirk — a header revision of 0.
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    assert_eq!(rev(created.header()), 6);
    let resp = next(&mut stream).await;
    assert!(resp.canceled() && !resp.created(), "{resp:?}");
    assert_eq!(resp.watch_id(), created.watch_id());
    assert_eq!(resp.compact_revision(), 5);
    assert_eq!(resp.cancel_reason(), "");
    assert!(resp.events().is_empty());

    // Starting at the compaction revision itself is allowed.
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let got = collect(&mut stream, 2).await;
    assert_eq!(got.iter().map(|e| e.3).collect::<Vec<_>>(), [5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_puts_in_order_without_gaps() {
    let (s, mut c) = start().await;
    let mut stream = c
        .watch("burst/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let mut tasks = Vec::new();
    for w in 0..10 {
        let mut client = s.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                client
                    .put(format!("burst/{w}/{i:03}"), format!("{i}"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    let got = collect(&mut stream, 1000).await;
    for t in tasks {
        t.await.unwrap();
    }
    let revisions: Vec<i64> = got.iter().map(|e| e.3).collect();
    let want: Vec<i64> = (2..1002).collect();
    assert_eq!(revisions, want);
    // Each writer's keys arrive in the order it wrote them.
    for w in 0..10 {
        let prefix = format!("burst/{w}/");
        let mine: Vec<&String> = got
            .iter()
            .filter(|e| e.1.starts_with(&prefix))
            .map(|e| &e.1)
            .collect();
        let want: Vec<String> = (0..100).map(|i| format!("{prefix}{i:03}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
    quiet(&mut stream).await;
}

#[tokio::test]
async fn range_watch() {
    let (_s, mut c) = start().await;
    let mut stream = c
        .watch("b", Some(WatchOptions::new().with_range("d")))
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let mut from = c
        .watch("c", Some(WatchOptions::new().with_from_key()))
        .await
        .unwrap();
    assert!(next(&mut from).await.created());
    for k in ["a", "b", "bb", "c", "d", "e"] {
        c.put(k, k, None).await.unwrap(); // 2..=7
    }
    let got = collect(&mut stream, 3).await;
    assert_eq!(
        got,
        [
            ev(EventType::Put, "b", "b", 3),
            ev(EventType::Put, "bb", "bb", 4),
            ev(EventType::Put, "c", "c", 5),
        ]
    );
    quiet(&mut stream).await;
    let got = collect(&mut from, 3).await;
    assert_eq!(got.iter().map(|e| e.3).collect::<Vec<_>>(), [5, 6, 7]);

    // A txn writing several watched keys is delivered as one revision.
    c.txn(etcd_client::Txn::new().and_then(vec![
        etcd_client::TxnOp::put("b", "t", None),
        etcd_client::TxnOp::put("c", "t", Some(PutOptions::new())),
    ]))
    .await
    .unwrap(); // 8
    let resp = next(&mut stream).await;
    assert_eq!(
        events(&resp),
        [
            ev(EventType::Put, "b", "t", 8),
            ev(EventType::Put, "c", "t", 8)
        ]
    );
}

/// History longer than any in-memory buffer (cairn keeps 4096 revisions in
/// its ring; etcd replays from its store too): a watch from revision 2 gets
/// every event, in order, without gaps, read back from the store.
#[tokio::test]
async fn long_history_replays_from_the_store() {
    const N: usize = 5000;
    let (s, mut c) = start().await;
    let mut tasks = Vec::new();
    for w in 0..10 {
        let mut client = s.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..N / 10 {
                client
                    .put(format!("hist/{w}"), format!("{i}"), None)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut stream = c
        .watch(
            "hist/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2)),
        )
        .await
        .unwrap();
    assert!(next(&mut stream).await.created());
    let got = collect(&mut stream, N).await;
    let revisions: Vec<i64> = got.iter().map(|e| e.3).collect();
    assert_eq!(revisions, (2..2 + N as i64).collect::<Vec<_>>());
    // Each key's values arrive in the order they were written.
    for w in 0..10 {
        let key = format!("hist/{w}");
        let values: Vec<&String> = got.iter().filter(|e| e.1 == key).map(|e| &e.2).collect();
        let want: Vec<String> = (0..N / 10).map(|i| i.to_string()).collect();
        assert_eq!(values, want.iter().collect::<Vec<_>>());
    }
    quiet(&mut stream).await;
}
