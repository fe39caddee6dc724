//! A recorded client history of a real 3-member cluster (cairn, or Debian's
//! etcd with `CONFORMANCE_SUBJECT=etcd`) under SIGKILLs, judged by
//! `cairn-check`: linearizability of every client op, and every watch stream
//! against the committed event history.
//!
//! Five clients (two on every endpoint, three pinned to one member each) run
//! a seeded random mix of put, linearizable get, delete, compare-and-swap on
//! mod_revision, lease grant with explicit IDs, put with a lease and lease
//! revoke on five keys for 15 s, while the leader is killed and restarted
//! twice and a follower once. Three watchers (with prev_kv) follow the
//! prefix and one key, reconnecting from their last revision + 1 after an
//! error as a client library does. At the end the committed history is read
//! with a watch from revision 1 and both checkers must pass; then a
//! corrupted copy of the history (a stale read) and of a stream (one event
//! dropped) must fail, so that the harness is shown able to fail.
//!
//! `HISTORY_SEED=<seed>` replays the op mix and the kill schedule (not the
//! timing, which the real processes decide).
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_check::watch::{self, Committed, EventKind, KeyValue, Received, Stream, WatchRange};
use cairn_check::{History, Op, Outcome, Ret, ViolationKind};
use cairn_tests::cluster::Cluster;
use cairn_tests::{eventually, subject_kind};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PREFIX: &str = "h/";
const KEYS: usize = 5;
const CLIENTS: u64 = 5;
/// Lease IDs per key: each lease is only ever attached to one key, so the
/// checker's partitions stay one key (and its leases) each.
const LEASES_PER_KEY: usize = 2;
/// Long enough that no lease expires during the test: the history then
/// needs no `LeaseExpire` ops.
const LEASE_TTL_SECS: i64 = 600;
const LOAD: Duration = Duration::from_secs(15);
/// A client gives up on an op after this and records it unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// A client waits up to this long between two ops.
const PAUSE_MAX_MS: u64 = 30;
/// Acknowledged writes the run must have seen to count as a test.
const OK_WRITES_MIN: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_history_under_leader_kills_is_linearizable_and_watches_are_exact() {
    let seed = std::env::var("HISTORY_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("HISTORY_SEED: a u64"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("history seed {seed} (replay the op mix and kill schedule with HISTORY_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    // No compaction may happen: the committed history is read from revision 1.
    let mut c = Cluster::start(subject_kind(), 3, &["--auto-compaction-retention", "0"]).await;
    let urls: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();
    let clock = Clock(Instant::now());
    let history = Arc::new(Mutex::new(History::new().with_initial_revision(1)));
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        // Clients 0 and 1 use every endpoint, the others one member each.
        let endpoints = if id < 2 {
            urls.clone()
        } else {
            vec![urls[(id as usize) % 3].clone()]
        };
        let w = Worker {
            id,
            endpoints,
            rng: StdRng::seed_from_u64(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            clock,
            history: history.clone(),
            stop: stop.clone(),
        };
        clients.push(tokio::spawn(w.run()));
    }

    let watch_stop = Arc::new(AtomicBool::new(false));
    let prefix = WatchRange::Prefix(PREFIX.into());
    let one_key = WatchRange::Key(key(0).into_bytes());
    let mut watchers = vec![
        Watcher::spawn(urls.clone(), prefix.clone(), 1, &watch_stop),
        Watcher::spawn(vec![urls[2].clone()], prefix, 1, &watch_stop),
    ];

    // The fault schedule: kill the leader, a follower, the leader again,
    // each restarted on its data dir.
    let began = Instant::now();
    let mut leader_changes = 0;
    tokio::time::sleep(Duration::from_millis(1500 + rng.random_range(0..1000))).await;
    // A watcher on one key from a recent revision, pinned to a member.
    let now_rev = current_revision(&urls).await;
    watchers.push(Watcher::spawn(
        vec![urls[0].clone()],
        one_key,
        (now_rev - 5).max(1),
        &watch_stop,
    ));
    for fault in ["leader", "follower", "leader"] {
        tokio::time::sleep(Duration::from_millis(1000 + rng.random_range(0..1500))).await;
        let leader = self_declared_leader(&mut c, None).await;
        let victim = if fault == "leader" {
            leader
        } else {
            (leader + 1 + rng.random_range(0..2)) % 3
        };
        println!(
            "{:?}: SIGKILL {fault} {}",
            began.elapsed(),
            c.members[victim].name
        );
        c.kill9(victim);
        if fault == "leader" {
            let next = self_declared_leader(&mut c, Some(victim)).await;
            println!("{:?}: {} leads", began.elapsed(), c.members[next].name);
            leader_changes += 1;
        }
        tokio::time::sleep(Duration::from_millis(500 + rng.random_range(0..1500))).await;
        // Not waited for: it rejoins while the load goes on.
        c.spawn(victim, "new");
        println!(
            "{:?}: {} restarted",
            began.elapsed(),
            c.members[victim].name
        );
    }
    if let Some(rest) = LOAD.checked_sub(began.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.await.expect("client task");
    }

    // The cluster is whole again: every member serves linearizable reads.
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    c.leader(Duration::from_secs(30)).await;
    let last = current_revision(&urls).await;
    let committed = committed_events(&urls, last).await;

    // Every watcher catches up with the last committed event in its range.
    for w in &watchers {
        let due = committed
            .iter()
            .filter(|e| e.kv.mod_revision >= w.start && w.range.contains(&e.kv.key))
            .map(|e| e.kv.mod_revision)
            .max()
            .unwrap_or(0);
        let seen = w.last.clone();
        eventually(
            &format!("a watcher on {:?} reaching revision {due}", w.range),
            Duration::from_secs(30),
            || {
                let seen = seen.clone();
                async move { (seen.load(Ordering::SeqCst) >= due).then_some(()) }
            },
        )
        .await;
    }
    watch_stop.store(true, Ordering::SeqCst);
    let mut streams = Vec::new();
    for w in watchers {
        streams.push(w.task.await.expect("watcher task"));
    }
    let history = history.lock().unwrap().clone();

    // What the run saw.
    let ok_writes = history
        .entries()
        .iter()
        .filter(|e| match e.ret() {
            Some(Ret::Put { .. }) => true,
            Some(Ret::Delete { deleted, .. }) => *deleted > 0,
            Some(Ret::Cas { succeeded, .. }) => *succeeded,
            _ => false,
        })
        .count();
    let received: Vec<usize> = streams
        .iter()
        .map(|s| {
            s.received
                .iter()
                .filter(|r| matches!(r, Received::Event(_)))
                .count()
        })
        .collect();
    let unknown = history
        .entries()
        .iter()
        .filter(|e| *e.outcome() == Outcome::Unknown)
        .count();
    println!(
        "seed {seed}: {} ops ({unknown} unknown), {ok_writes} acknowledged writes, {leader_changes} leader changes, \
         {} committed events up to revision {last}, events received per watcher {received:?}",
        history.len(),
        committed.len()
    );

    assert_acknowledged_writes_committed(&history, &committed, seed);
    let checking = Instant::now();
    let report = match cairn_check::check(&history) {
        Ok(r) => r,
        Err(v) => panic!("seed {seed}: the client history is not linearizable:\n{v}"),
    };
    println!(
        "linearizability ({:?}): {} ops ({} ok, {} failed, {} unknown), {} partitions, largest {} ops, {} states",
        checking.elapsed(),
        report.ops,
        report.ok,
        report.failed,
        report.unknown,
        report.partitions,
        report.largest_partition,
        report.states
    );
    let committed = Committed::new(committed);
    let wreport = match watch::check(&committed, &streams) {
        Ok(r) => r,
        Err(v) => panic!("seed {seed}: a watch stream is wrong:\n{v}"),
    };
    println!(
        "watch: {} streams, {} events received, {} committed events",
        wreport.streams, wreport.events, wreport.committed
    );
    assert!(
        ok_writes >= OK_WRITES_MIN,
        "only {ok_writes} acknowledged writes"
    );
    assert!(leader_changes >= 1);
    assert!(
        received.iter().all(|n| *n > 0),
        "a watcher received nothing: {received:?}"
    );

    // The harness can fail: a stale read and a lost watch event are caught.
    let stale = stale_read(&history).expect("a get that can be made stale");
    match cairn_check::check(&stale) {
        Ok(r) => panic!("seed {seed}: a history with a stale read passed: {r:?}"),
        Err(v) => {
            println!("the corrupted history is rejected, as it must be:\n{v}");
            assert_eq!(v.kind, ViolationKind::NotLinearizable, "{v}");
        }
    }
    let mut dropped = streams.clone();
    let s = dropped
        .iter_mut()
        .max_by_key(|s| s.received.len())
        .expect("a stream");
    let events: Vec<usize> = (0..s.received.len())
        .filter(|&i| matches!(s.received[i], Received::Event(_)))
        .collect();
    assert!(events.len() >= 2, "too few events to drop one");
    s.received.remove(events[events.len() / 2]);
    match watch::check(&committed, &dropped) {
        Ok(r) => panic!("seed {seed}: a stream missing an event passed: {r:?}"),
        Err(v) => println!("the stream missing an event is rejected, as it must be:\n{v}"),
    }
}

/// A running member that says it leads (other than `not`). Unlike
/// `Cluster::leader` it does not wait for a member still rejoining.
async fn self_declared_leader(c: &mut Cluster, not: Option<usize>) -> usize {
    let running: Vec<(usize, String)> = c
        .running()
        .into_iter()
        .filter(|i| Some(*i) != not)
        .map(|i| (i, c.members[i].client_url()))
        .collect();
    eventually("a leader", Duration::from_secs(30), || {
        let running = running.clone();
        async move {
            for (i, url) in running {
                let Ok(mut cl) = Client::connect([url], Some(connect_options())).await else {
                    continue;
                };
                if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(1), cl.status()).await
                    && st.header().map(|h| h.member_id()) == Some(st.leader())
                {
                    return Some(i);
                }
            }
            None
        }
    })
    .await
}

fn key(i: usize) -> String {
    format!("{PREFIX}k{i}")
}

fn lease_id(key: usize, n: usize) -> i64 {
    0x4000 + (key * LEASES_PER_KEY + n) as i64
}

/// Nanoseconds on a monotonic clock since the test began.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OP_TIMEOUT)
}

/// What an error proves. Only errors etcd returns for a request that was
/// applied without effect (a lease that does not exist, or already does)
/// count as failed; anything else may have been applied.
fn outcome_of(e: &etcd_client::Error) -> Outcome {
    match e {
        etcd_client::Error::GRpcStatus(s)
            if s.message() == "etcdserver: requested lease not found"
                || s.message() == "etcdserver: lease already exists" =>
        {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

/// The revision a linearizable read sees, through any of `urls`.
async fn current_revision(urls: &[String]) -> i64 {
    eventually(
        "a linearizable read",
        Duration::from_secs(30),
        || async move {
            let mut cl = Client::connect(urls, Some(connect_options())).await.ok()?;
            let r = tokio::time::timeout(OP_TIMEOUT, cl.get("h/", None))
                .await
                .ok()?
                .ok()?;
            Some(header_revision(r.header()))
        },
    )
    .await
}

/// Every committed event up to `last`, read with a watch from revision 1.
async fn committed_events(urls: &[String], last: i64) -> Vec<watch::Event> {
    eventually(
        "the committed history",
        Duration::from_secs(30),
        || async move {
            let mut cl = Client::connect(urls, Some(connect_options())).await.ok()?;
            let options = WatchOptions::new()
                .with_all_keys()
                .with_start_revision(1)
                .with_prev_key();
            let mut ws = cl.watch("", Some(options)).await.ok()?;
            let mut events = Vec::new();
            if last <= 1 {
                return Some(events);
            }
            loop {
                let r = tokio::time::timeout(Duration::from_secs(5), ws.message())
                    .await
                    .ok()?
                    .ok()??;
                if r.canceled() {
                    return None;
                }
                for e in r.events() {
                    events.push(convert(e));
                }
                if events.last().is_some_and(|e| e.kv.mod_revision >= last) {
                    events.retain(|e| e.kv.mod_revision <= last);
                    return Some(events);
                }
            }
        },
    )
    .await
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn convert(e: &etcd_client::Event) -> watch::Event {
    watch::Event {
        kind: match e.event_type() {
            etcd_client::EventType::Put => EventKind::Put,
            etcd_client::EventType::Delete => EventKind::Delete,
        },
        kv: convert_kv(e.kv().expect("event kv")),
        prev_kv: e.prev_kv().map(convert_kv),
    }
}

/// Every acknowledged write is in the committed history at its revision:
/// no acknowledged write lost (etcd #14370).
fn assert_acknowledged_writes_committed(h: &History, committed: &[watch::Event], seed: u64) {
    // (revision, key, is a put, value)
    let at: HashSet<(i64, &[u8], bool, &[u8])> = committed
        .iter()
        .map(|e| {
            (
                e.kv.mod_revision,
                e.kv.key.as_slice(),
                e.kind == EventKind::Put,
                e.kv.value.as_slice(),
            )
        })
        .collect();
    for e in h.entries() {
        let want = match (&e.op, e.ret()) {
            (Op::Put { key, value, .. }, Some(Ret::Put { revision })) => {
                Some((*revision, key, true, value.as_slice()))
            }
            (
                Op::Cas { key, value, .. },
                Some(Ret::Cas {
                    succeeded: true,
                    revision,
                    ..
                }),
            ) => Some((*revision, key, true, value.as_slice())),
            (
                Op::Delete { key },
                Some(Ret::Delete {
                    deleted: 1,
                    revision,
                }),
            ) => Some((*revision, key, false, &[][..])),
            _ => None,
        };
        if let Some((rev, key, kind, value)) = want {
            assert!(
                at.contains(&(rev, key.as_slice(), kind, value)),
                "seed {seed}: acknowledged write not in the committed history: {e}"
            );
        }
    }
}

/// A copy of `h` in which one get returns an older value of its key: one
/// written by a put that was followed by another put, both acknowledged
/// before the get was sent. No linearization can explain it (values are
/// unique, revisions only grow).
fn stale_read(h: &History) -> Option<History> {
    let entries = h.entries();
    let (target, old) = entries.iter().find_map(|g| {
        let (Op::Get { key }, Some(Ret::Get { revision, .. })) = (&g.op, g.ret()) else {
            return None;
        };
        // Acknowledged puts of this key before the get, by revision.
        let mut before: Vec<(i64, &[u8])> = entries
            .iter()
            .filter(|p| p.complete.is_some_and(|t| t < g.invoke))
            .filter_map(|p| match (&p.op, p.ret()) {
                (Op::Put { key: k, value, .. }, Some(Ret::Put { revision })) if k == key => {
                    Some((*revision, value.as_slice()))
                }
                _ => None,
            })
            .collect();
        before.sort();
        if before.len() < 2 {
            return None;
        }
        let (old_rev, old_value) = before[before.len() - 2];
        Some((g.id, Ret::get(Some(old_value), old_rev, *revision)))
    })?;
    let mut copy = History::new().with_initial_revision(1);
    for e in entries {
        let id = copy.invoke(e.client, e.invoke, e.op.clone());
        if let (Some(outcome), Some(t)) = (&e.outcome, e.complete) {
            let outcome = if e.id == target {
                Outcome::Ok(old.clone())
            } else {
                outcome.clone()
            };
            copy.complete(id, t, outcome);
        }
    }
    Some(copy)
}

/// One client: a seeded random op at a time, each recorded.
struct Worker {
    id: u64,
    endpoints: Vec<String>,
    rng: StdRng,
    clock: Clock,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    async fn run(mut self) {
        let mut client: Option<Client> = None;
        // The mod revision this client last saw per key, for its CAS.
        let mut seen = [0i64; KEYS];
        let mut n = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            let cl = match &mut client {
                Some(cl) => cl,
                None => match Client::connect(&self.endpoints, Some(connect_options())).await {
                    Ok(cl) => client.insert(cl),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            n += 1;
            let k = self.rng.random_range(0..KEYS);
            let lease = lease_id(k, self.rng.random_range(0..LEASES_PER_KEY));
            // Paced, so that a 15 s run stays a history the checker
            // searches in seconds (a few thousand ops).
            let pause = self.rng.random_range(0..PAUSE_MAX_MS);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let value = format!("c{}-{n}", self.id);
            let roll = self.rng.random_range(0..100);
            let op = match roll {
                0..25 => Op::put(key(k), value.clone()),
                25..50 => Op::get(key(k)),
                50..58 => Op::delete(key(k)),
                58..75 => {
                    // Mostly the last mod revision seen, sometimes a stale guess.
                    let expected = if self.rng.random_bool(0.8) {
                        seen[k]
                    } else {
                        (seen[k] - self.rng.random_range(0..3)).max(0)
                    };
                    Op::cas_mod_revision(key(k), expected, value.clone())
                }
                75..82 => Op::lease_grant(lease, LEASE_TTL_SECS),
                82..93 => Op::put_with_lease(key(k), value.clone(), lease),
                _ => Op::lease_revoke(lease),
            };
            let id = self
                .history
                .lock()
                .unwrap()
                .invoke(self.id, self.clock.now(), op.clone());
            let result = tokio::time::timeout(OP_TIMEOUT, Self::send(cl, &op)).await;
            let at = self.clock.now();
            let outcome = match result {
                Ok(Ok(ret)) => Outcome::Ok(ret),
                Ok(Err(e)) => outcome_of(&e),
                Err(_) => Outcome::Unknown,
            };
            match &outcome {
                Outcome::Ok(Ret::Put { revision }) => seen[k] = *revision,
                Outcome::Ok(Ret::Get { mod_revision, .. }) => seen[k] = *mod_revision,
                Outcome::Ok(Ret::Cas {
                    succeeded,
                    revision,
                    mod_revision,
                    ..
                }) => seen[k] = if *succeeded { *revision } else { *mod_revision },
                Outcome::Ok(_) | Outcome::Failed => {}
                Outcome::Unknown => {}
            }
            let unknown = outcome == Outcome::Unknown;
            self.history.lock().unwrap().complete(id, at, outcome);
            if unknown {
                // A fresh connection, and no more ops until it answers a
                // (not recorded) read: a client pinned to a dead member
                // would otherwise pile up unknown writes, each of which
                // the checker must try at every later point.
                client = None;
                while !self.stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let probe = async {
                        let mut cl =
                            Client::connect(&self.endpoints, Some(connect_options())).await?;
                        cl.get(key(0), None).await?;
                        Ok::<_, etcd_client::Error>(cl)
                    };
                    if let Ok(Ok(cl)) = tokio::time::timeout(OP_TIMEOUT, probe).await {
                        client = Some(cl);
                        break;
                    }
                }
            }
        }
    }

    async fn send(cl: &mut Client, op: &Op) -> Result<Ret, etcd_client::Error> {
        Ok(match op {
            Op::Put { key, value, lease } => {
                let options = lease.map(|l| PutOptions::new().with_lease(l));
                let r = cl.put(key.clone(), value.clone(), options).await?;
                Ret::Put {
                    revision: header_revision(r.header()),
                }
            }
            Op::Get { key } => {
                let r = cl.get(key.clone(), None).await?;
                let kv = r.kvs().first();
                Ret::get(
                    kv.map(|kv| kv.value().to_vec()),
                    kv.map_or(0, |kv| kv.mod_revision()),
                    header_revision(r.header()),
                )
            }
            Op::Delete { key } => {
                let r = cl.delete(key.clone(), None).await?;
                Ret::Delete {
                    deleted: r.deleted() as u64,
                    revision: header_revision(r.header()),
                }
            }
            Op::Cas {
                key,
                compare: cairn_check::Compare::ModRevision(expected),
                value,
            } => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        *expected,
                    )])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let r = cl.txn(txn).await?;
                let revision = header_revision(r.header());
                if r.succeeded() {
                    Ret::cas_succeeded(revision)
                } else {
                    let read = r.op_responses().into_iter().find_map(|o| match o {
                        TxnOpResponse::Get(g) => Some(g),
                        _ => None,
                    });
                    let read = read.expect("the failure branch's get");
                    let kv = read.kvs().first();
                    Ret::cas_failed(
                        kv.map(|kv| kv.value().to_vec()),
                        kv.map_or(0, |kv| kv.mod_revision()),
                        revision,
                    )
                }
            }
            Op::LeaseGrant { id, ttl_secs } => {
                let r = cl
                    .lease_grant(*ttl_secs, Some(LeaseGrantOptions::new().with_id(*id)))
                    .await?;
                assert_eq!(r.id(), *id, "lease granted under another ID");
                Ret::Lease {
                    revision: header_revision(r.header()),
                }
            }
            Op::LeaseRevoke { id } => {
                let r = cl.lease_revoke(*id).await?;
                Ret::Lease {
                    revision: header_revision(r.header()),
                }
            }
            other => unreachable!("the workers do not send {other}"),
        })
    }
}

/// A watch with prev_kv whose deliveries go into a [`Stream`].
struct Watcher {
    range: WatchRange,
    start: i64,
    /// The highest event revision received so far.
    last: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<Stream>,
}

impl Watcher {
    fn spawn(
        endpoints: Vec<String>,
        range: WatchRange,
        start: i64,
        stop: &Arc<AtomicBool>,
    ) -> Watcher {
        let last = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn(Self::run(
            endpoints,
            Stream::new(range.clone(), start, true),
            last.clone(),
            stop.clone(),
        ));
        Watcher {
            range,
            start,
            last,
            task,
        }
    }

    async fn run(
        endpoints: Vec<String>,
        mut stream: Stream,
        last: Arc<AtomicI64>,
        stop: Arc<AtomicBool>,
    ) -> Stream {
        let (key, prefix) = match &stream.range {
            WatchRange::Key(k) => (k.clone(), false),
            WatchRange::Prefix(p) => (p.clone(), true),
            WatchRange::Span { .. } => unreachable!("not used here"),
        };
        let mut reconnects = 0;
        'connect: while !stop.load(Ordering::SeqCst) {
            if reconnects > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            reconnects += 1;
            // Resume after the last event received, as a client library does.
            let from = match last.load(Ordering::SeqCst) {
                0 => stream.start_revision,
                r => r + 1,
            };
            let Ok(mut cl) = Client::connect(&endpoints, Some(connect_options())).await else {
                continue;
            };
            let mut options = WatchOptions::new()
                .with_start_revision(from)
                .with_prev_key();
            if prefix {
                options = options.with_prefix();
            }
            let Ok(Ok(mut ws)) =
                tokio::time::timeout(OP_TIMEOUT, cl.watch(key.clone(), Some(options))).await
            else {
                continue;
            };
            while !stop.load(Ordering::SeqCst) {
                let r = match tokio::time::timeout(Duration::from_millis(200), ws.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) | Ok(Err(_)) => continue 'connect,
                };
                if r.canceled() {
                    if r.compact_revision() > 0 {
                        stream.received.push(Received::Compacted {
                            compact_revision: r.compact_revision(),
                        });
                        return stream;
                    }
                    continue 'connect;
                }
                if r.events().is_empty() {
                    // A progress notification: everything up to its revision
                    // was sent. The creation response promises nothing.
                    if !r.created() {
                        stream.received.push(Received::Progress {
                            revision: header_revision(r.header()),
                        });
                    }
                    continue;
                }
                for e in r.events() {
                    let e = convert(e);
                    last.fetch_max(e.kv.mod_revision, Ordering::SeqCst);
                    stream.received.push(Received::Event(e));
                }
            }
        }
        println!(
            "watcher {:?} from {}: {} connection attempts, {} items",
            stream.range,
            stream.start_revision,
            reconnects,
            stream.received.len()
        );
        stream
    }
}
