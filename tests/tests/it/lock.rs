//! Lock and Election (`v3lock`, `v3election`), against cairn and etcd 3.4:
//! `etcdctl lock` / `etcdctl elect` (client-side locking over KV, Watch and
//! Lease), the gRPC services through the etcd-client crate, the JSON
//! gateway, and the fencing property: the lock key's create revision (and
//! the revision of the header at acquisition) strictly increases from one
//! holder to the next, holders never overlap, and a holder whose lease
//! expired cannot write with its stale token.
//!
//! Where etcd 3.4 behaves differently the case says so: a waiter whose
//! lease expires keeps waiting in etcd 3.4 and is then told it holds a lock
//! whose key no longer exists (Jepsen's etcd 3.4.3 finding); cairn ends the
//! wait with "mutex: session is expired" as soon as its key is gone.
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{ETCDCTL_BIN, Kind, Subject, eventually, subject_is_etcd};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions,
    Txn, TxnOp,
};

use crate::{assert_grpc_error, start, status_of};

/// How long any one wait in these cases may take before the case fails.
const LIMIT: Duration = Duration::from_secs(15);

/// A running `etcdctl` whose output is collected as it comes.
struct Ctl {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Ctl {
    fn spawn(s: &Subject, args: &[&str]) -> Ctl {
        let mut child = Command::new(ETCDCTL_BIN)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.endpoint()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let out = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ctl { child, out }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until the output holds `needle`; returns the output.
    async fn wait_for(&self, needle: &str) -> String {
        eventually(&format!("etcdctl prints {needle:?}"), LIMIT, || {
            let out = self.output();
            async move { out.contains(needle).then_some(out) }
        })
        .await
    }

    /// SIGINT (etcdctl unlocks or resigns on it), then waits for the exit.
    async fn interrupt(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let child = &mut self.child;
        eventually("etcdctl exits", LIMIT, || {
            let st = child.try_wait().unwrap();
            async move { st }
        })
        .await
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys (with create revisions) under `prefix`, oldest first.
async fn queue(c: &mut Client, prefix: &str) -> Vec<(String, i64)> {
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut keys: Vec<(String, i64)> = r
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.create_revision()))
        .collect();
    keys.sort_by_key(|k| k.1);
    keys
}

async fn wait_queue_len(c: &Client, prefix: &str, n: usize) -> Vec<(String, i64)> {
    eventually(&format!("{n} keys under {prefix}"), LIMIT, || {
        let mut c = c.clone();
        async move {
            let q = queue(&mut c, prefix).await;
            (q.len() == n).then_some(q)
        }
    })
    .await
}

async fn lease(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None).await.unwrap().id()
}

async fn create_revision(c: &mut Client, key: &[u8]) -> Option<i64> {
    let r = c.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| kv.create_revision())
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {LIMIT:?}"))
}

#[tokio::test]
async fn etcdctl_lock_is_held_until_the_holder_exits() {
    let (s, mut c) = start().await;
    let mut a = Ctl::spawn(&s, &["lock", "mylock"]);
    let a_out = a.wait_for("mylock/").await;
    let a_key = a_out.lines().next().unwrap().to_owned();
    assert_eq!(queue(&mut c, "mylock/").await[0].0, a_key);

    // A second locker queues behind the first and prints nothing.
    let mut b = Ctl::spawn(&s, &["lock", "mylock"]);
    let q = wait_queue_len(&c, "mylock/", 2).await;
    assert_eq!(q[0].0, a_key, "the holder is the oldest key");
    assert_eq!(b.output(), "", "the second locker waits");

    // The first exits (it unlocks on SIGINT): the second holds the lock.
    assert!(a.interrupt().await.success(), "{}", a.output());
    let b_out = b.wait_for("mylock/").await;
    assert_eq!(b_out.lines().next().unwrap(), q[1].0);
    assert_eq!(queue(&mut c, "mylock/").await.len(), 1);
    assert!(b.interrupt().await.success(), "{}", b.output());
    assert!(queue(&mut c, "mylock/").await.is_empty());
}

#[tokio::test]
async fn etcdctl_lock_runs_a_command_while_holding_the_lock() {
    let (s, mut c) = start().await;
    let script = format!(
        "echo key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV; \
         ETCDCTL_API=3 {ETCDCTL_BIN} --endpoints={} get --prefix --keys-only mylock/",
        s.endpoint()
    );
    let out = s.etcdctl(["lock", "mylock", "--", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap();
    let (key, rev) = first
        .strip_prefix("key=")
        .and_then(|r| r.split_once(" rev="))
        .unwrap_or_else(|| panic!("unexpected output {text:?}"));
    assert!(key.starts_with("mylock/"), "{text}");
    let rev: i64 = rev.parse().unwrap();
    assert!(rev > 1, "{text}");
    // The command saw its own key, and only it, under the lock's prefix.
    assert_eq!(text.lines().nth(1), Some(key), "{text}");
    // Released when the command ended.
    assert!(queue(&mut c, "mylock/").await.is_empty());
}

#[tokio::test]
async fn etcdctl_elect_campaigns_and_listens() {
    let (s, mut c) = start().await;
    let listener = Ctl::spawn(&s, &["elect", "--listen", "e"]);
    let mut p1 = Ctl::spawn(&s, &["elect", "e", "p1"]);
    let out = p1.wait_for("p1").await;
    let p1_key = out.lines().next().unwrap().to_owned();
    assert!(p1_key.starts_with("e/"), "{out}");
    let heard = listener.wait_for("p1").await;
    assert!(heard.starts_with(&format!("{p1_key}\np1\n")), "{heard}");

    let mut p2 = Ctl::spawn(&s, &["elect", "e", "p2"]);
    wait_queue_len(&c, "e/", 2).await;
    assert_eq!(p2.output(), "", "the second candidate waits");
    assert!(p1.interrupt().await.success(), "{}", p1.output());
    let out = p2.wait_for("p2").await;
    let p2_key = out.lines().next().unwrap().to_owned();
    assert_ne!(p1_key, p2_key);
    let heard = listener.wait_for("p2").await;
    assert!(heard.ends_with(&format!("{p2_key}\np2\n")), "{heard}");
    assert!(p2.interrupt().await.success(), "{}", p2.output());
    assert!(queue(&mut c, "e/").await.is_empty());
}

/// One holder's acquisition, recorded inside its critical section.
#[derive(Debug, Clone)]
struct Hold {
    client: usize,
    token: i64,
    header_rev: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contending_holders_never_overlap_and_their_tokens_increase() {
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 4;
    let (s, mut c) = start().await;
    let inside = Arc::new(AtomicUsize::new(0));
    let holds = Arc::new(Mutex::new(Vec::<Hold>::new()));
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let mut c = s.client().await;
        let lease = lease(&mut c, 60).await;
        let (inside, holds) = (inside.clone(), holds.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let got = c
                    .lock("fenced", Some(LockOptions::new().with_lease(lease)))
                    .await
                    .unwrap();
                let key = got.key().to_vec();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let token = create_revision(&mut c, &key)
                    .await
                    .expect("held key exists");
                holds.lock().unwrap().push(Hold {
                    client: id,
                    token,
                    header_rev: got.header().unwrap().revision(),
                });
                // The guarded write of a holder: only while its key is the
                // one created at its token.
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        token,
                    )])
                    .and_then([TxnOp::put("resource", token.to_string(), None)]);
                assert!(c.txn(txn).await.unwrap().succeeded());
                inside.fetch_sub(1, Ordering::SeqCst);
                c.unlock(key).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within("contending lockers finish", t).await.unwrap();
    }
    let holds = holds.lock().unwrap().clone();
    assert_eq!(holds.len(), CLIENTS * ROUNDS);
    for w in holds.windows(2) {
        assert!(
            w[1].token > w[0].token,
            "fencing tokens must strictly increase in acquisition order: {w:?}"
        );
        assert!(
            w[1].header_rev > w[0].header_rev,
            "acquisition revisions must strictly increase: {w:?}"
        );
        assert!(w[1].header_rev >= w[1].token, "{w:?}");
    }
    assert!(holds.iter().any(|h| h.client != holds[0].client));
    let last = c.get("resource", None).await.unwrap();
    assert_eq!(
        last.kvs()[0].value_str().unwrap(),
        holds.last().unwrap().token.to_string()
    );
    assert!(queue(&mut c, "fenced/").await.is_empty());
}

#[tokio::test]
async fn a_holder_whose_lease_expired_cannot_write_with_its_stale_token() {
    let (s, mut c) = start().await;
    // The holder's lease is never renewed: it expires while the holder
    // still believes it holds the lock (a pause, a partition).
    let short = lease(&mut c, 2).await;
    let held = c
        .lock("l", Some(LockOptions::new().with_lease(short)))
        .await
        .unwrap();
    let stale_key = held.key().to_vec();
    let stale_token = create_revision(&mut c, &stale_key).await.unwrap();
    // A resource that remembers the highest token it has accepted.
    let accept = |highest: &mut i64, token: i64| {
        let ok = token >= *highest;
        if ok {
            *highest = token;
        }
        ok
    };
    let mut highest = 0;
    assert!(accept(&mut highest, stale_token));

    let mut next = s.client().await;
    let long = lease(&mut next, 60).await;
    let got = within(
        "the next locker gets the lock once the first lease expires",
        next.lock("l", Some(LockOptions::new().with_lease(long))),
    )
    .await
    .unwrap();
    let token = create_revision(&mut next, got.key()).await.unwrap();
    assert!(token > stale_token);
    assert!(got.header().unwrap().revision() > stale_token);
    assert!(accept(&mut highest, token));

    // The stale holder's guarded write fails in the store, and the
    // resource refuses its token.
    let txn = Txn::new()
        .when([Compare::create_revision(
            stale_key,
            CompareOp::Equal,
            stale_token,
        )])
        .and_then([TxnOp::put("resource", "stale", None)]);
    assert!(!c.txn(txn).await.unwrap().succeeded());
    assert!(!accept(&mut highest, stale_token));
    assert!(c.get("resource", None).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn a_waiter_whose_lease_ends_stops_waiting() {
    let (s, mut c) = start().await;
    let holder_lease = lease(&mut c, 60).await;
    let held = c
        .lock("w", Some(LockOptions::new().with_lease(holder_lease)))
        .await
        .unwrap();

    // One waiter's lease expires, another's is revoked.
    let mut w1 = s.client().await;
    let expiring = lease(&mut w1, 2).await;
    let waiting1 = tokio::spawn(async move {
        w1.lock("w", Some(LockOptions::new().with_lease(expiring)))
            .await
    });
    let mut w2 = s.client().await;
    let revoked = lease(&mut w2, 60).await;
    let waiting2 = tokio::spawn(async move {
        w2.lock("w", Some(LockOptions::new().with_lease(revoked)))
            .await
    });
    // And a candidate's, in an election.
    let won = c.campaign("we", "h", holder_lease).await.unwrap();
    let mut w3 = s.client().await;
    let campaign_lease = lease(&mut w3, 60).await;
    let campaigning = tokio::spawn(async move { w3.campaign("we", "w", campaign_lease).await });
    wait_queue_len(&c, "w/", 3).await;
    wait_queue_len(&c, "we/", 2).await;
    c.lease_revoke(revoked).await.unwrap();
    c.lease_revoke(campaign_lease).await.unwrap();
    wait_queue_len(&c, "we/", 1).await;
    // Both waiters' keys go with their leases; the holder keeps the lock.
    let q = wait_queue_len(&c, "w/", 1).await;
    assert_eq!(q[0].0.as_bytes(), held.key());

    if subject_is_etcd() {
        // etcd 3.4 keeps waiting for the holder, then reports a lock
        // whose key no longer exists.
        c.unlock(held.key()).await.unwrap();
        for w in [waiting1, waiting2] {
            let got = within("etcd's waiter returns", w).await.unwrap().unwrap();
            assert_eq!(create_revision(&mut c, got.key()).await, None);
        }
        c.resign(Some(
            ResignOptions::new().with_leader(won.leader().unwrap().clone()),
        ))
        .await
        .unwrap();
        let got = within("etcd's candidate returns", campaigning)
            .await
            .unwrap()
            .unwrap();
        let key = got.leader().unwrap().key().to_vec();
        assert_eq!(create_revision(&mut c, &key).await, None);
        return;
    }
    let result = within("the candidate's campaign ends", campaigning)
        .await
        .unwrap();
    assert_grpc_error(result, tonic::Code::Unknown, "election: session is expired");
    // cairn ends each wait at once, while the holder still holds the lock.
    for w in [waiting1, waiting2] {
        let result = within("the waiter's lock call ends", w).await.unwrap();
        assert_grpc_error(result, tonic::Code::Unknown, "mutex: session is expired");
    }
    assert_eq!(queue(&mut c, "w/").await.len(), 1);
}

#[tokio::test]
async fn a_waiter_that_goes_away_leaves_the_queue() {
    let (s, mut c) = start().await;
    let l = lease(&mut c, 60).await;
    let held = c
        .lock("gone", Some(LockOptions::new().with_lease(l)))
        .await
        .unwrap();
    let mut w = s.client().await;
    let wl = lease(&mut w, 60).await;
    let waiting = tokio::spawn(async move {
        w.lock("gone", Some(LockOptions::new().with_lease(wl)))
            .await
    });
    wait_queue_len(&c, "gone/", 2).await;
    waiting.abort();
    // The server withdraws the abandoned key (its lease is still alive).
    wait_queue_len(&c, "gone/", 1).await;
    c.unlock(held.key()).await.unwrap();
    let mut next = s.client().await;
    let nl = lease(&mut next, 60).await;
    within(
        "the lock is free again",
        next.lock("gone", Some(LockOptions::new().with_lease(nl))),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn lock_without_a_lease_gets_a_session_lease() {
    let (_s, mut c) = start().await;
    let got = c.lock("nolease", None).await.unwrap();
    let key = got.key().to_vec();
    let r = c.get(key.clone(), None).await.unwrap();
    let granted = r.kvs()[0].lease();
    assert_ne!(granted, 0, "the key is under a lease the server granted");
    assert_eq!(
        String::from_utf8_lossy(&key),
        format!("nolease/{granted:x}"),
        "the key is <name>/<lease in hex>"
    );
    let ttl = c.lease_time_to_live(granted, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    c.unlock(key).await.unwrap();
    // Locking twice with one lease is one acquisition.
    let l = lease(&mut c, 60).await;
    let a = c
        .lock("twice", Some(LockOptions::new().with_lease(l)))
        .await
        .unwrap();
    let b = c
        .lock("twice", Some(LockOptions::new().with_lease(l)))
        .await
        .unwrap();
    assert_eq!(a.key(), b.key());
    assert_eq!(queue(&mut c, "twice/").await.len(), 1);
    // A lease that does not exist: etcd 3.4 turns every error inside Lock
    // into Unknown with the same message (which etcd's Go client maps back
    // by its text); cairn keeps the code.
    let r = c
        .lock("x", Some(LockOptions::new().with_lease(12345)))
        .await;
    let code = if subject_is_etcd() {
        tonic::Code::Unknown
    } else {
        tonic::Code::NotFound
    };
    assert_grpc_error(r, code, "etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_leader_observe_resign() {
    let (s, mut c) = start().await;
    assert_grpc_error(
        c.leader("e").await,
        tonic::Code::Unknown,
        "election: no leader",
    );
    // Observing before there is a leader (etcd answers the call only with
    // its first message, so the stream is opened in a task).
    let mut observer = observe(s.client().await, "e").await;

    let l1 = lease(&mut c, 60).await;
    let won = c.campaign("e", "v1", l1).await.unwrap();
    let k1 = won.leader().unwrap().clone();
    assert_eq!(k1.name(), b"e");
    assert_eq!(k1.key_str().unwrap(), format!("e/{l1:x}"));
    assert_eq!(k1.lease(), l1);
    assert_eq!(k1.rev(), won.header().unwrap().revision());
    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.kv().unwrap().value(), b"v1");
    assert_eq!(seen.kv().unwrap().key(), k1.key());

    c.proclaim("v1b", Some(ProclaimOptions::new().with_leader(k1.clone())))
        .await
        .unwrap();
    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.kv().unwrap().value(), b"v1b");
    let now = c.leader("e").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"v1b");
    assert_eq!(now.kv().unwrap().create_revision(), k1.rev());

    // Only the leader may proclaim.
    let impostor = LeaderKey::new()
        .with_name("e")
        .with_key(k1.key())
        .with_rev(k1.rev() + 100)
        .with_lease(l1);
    assert_grpc_error(
        c.proclaim("evil", Some(ProclaimOptions::new().with_leader(impostor)))
            .await,
        tonic::Code::Unknown,
        "election: not leader",
    );

    // A second candidate waits until the first resigns.
    let mut c2 = s.client().await;
    let l2 = lease(&mut c2, 60).await;
    let campaigning = tokio::spawn(async move { c2.campaign("e", "v2", l2).await });
    wait_queue_len(&c, "e/", 2).await;
    assert!(!campaigning.is_finished());
    c.resign(Some(ResignOptions::new().with_leader(k1.clone())))
        .await
        .unwrap();
    let won2 = within("the second candidate wins", campaigning)
        .await
        .unwrap()
        .unwrap();
    let k2 = won2.leader().unwrap().clone();
    assert!(k2.rev() > k1.rev());
    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.kv().unwrap().value(), b"v2");
    assert_eq!(seen.kv().unwrap().key(), k2.key());
    // Resigning a leadership already lost is not an error.
    c.resign(Some(ResignOptions::new().with_leader(k1.clone())))
        .await
        .unwrap();
    assert_eq!(c.leader("e").await.unwrap().kv().unwrap().value(), b"v2");

    // Campaigning again with the leader's lease finds its key and
    // proclaims the new value.
    let mut again = c.campaign("e", "v2b", l2).await.unwrap();
    let k2b = again.take_leader().unwrap();
    assert_eq!((k2b.key(), k2b.rev()), (k2.key(), k2.rev()));
    assert_eq!(
        next_leader(&mut observer).await.kv().unwrap().value(),
        b"v2b"
    );

    c.resign(Some(ResignOptions::new().with_leader(k2)))
        .await
        .unwrap();
    assert_grpc_error(
        c.leader("e").await,
        tonic::Code::Unknown,
        "election: no leader",
    );
    let missing = status_of(c.resign(None).await);
    assert_eq!(missing.message(), "\"leader\" field must be provided");
}

type Observer = tokio::sync::mpsc::Receiver<etcd_client::LeaderResponse>;

/// Observes election `name` from a task, passing each answer on.
async fn observe(mut c: Client, name: &'static str) -> Observer {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut stream = c.observe(name).await.expect("observe");
        while let Ok(Some(m)) = stream.message().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_leader(o: &mut Observer) -> etcd_client::LeaderResponse {
    within("an observed proclamation", o.recv())
        .await
        .expect("observe stream open")
}

/// Base64, as the gateway carries bytes.
fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn lock_and_election_on_the_json_gateway() {
    let (s, mut c) = start().await;
    let l = lease(&mut c, 60).await;
    let (code, body) = s.http(
        "POST",
        "/v3/lock/lock",
        Some(&format!(r#"{{"name":"{}","lease":"{l}"}}"#, b64("gw"))),
    );
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let key = v["key"].as_str().unwrap().to_owned();
    assert_eq!(key, b64(&format!("gw/{l:x}")));
    assert!(v["header"]["revision"].as_str().is_some(), "{body}");
    let (code, body) = s.http(
        "POST",
        "/v3/lock/unlock",
        Some(&format!(r#"{{"key":"{key}"}}"#)),
    );
    assert_eq!(code, 200, "{body}");
    assert!(queue(&mut c, "gw/").await.is_empty());

    let (code, body) = s.http(
        "POST",
        "/v3/election/campaign",
        Some(&format!(
            r#"{{"name":"{}","lease":"{l}","value":"{}"}}"#,
            b64("ge"),
            b64("a")
        )),
    );
    assert_eq!(code, 200, "{body}");
    let leader = json(&body)["leader"].clone();
    assert_eq!(leader["name"], b64("ge"));
    assert_eq!(leader["lease"], l.to_string());
    let (code, body) = s.http(
        "POST",
        "/v3/election/proclaim",
        Some(&format!(r#"{{"leader":{leader},"value":"{}"}}"#, b64("b"))),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.http(
        "POST",
        "/v3/election/leader",
        Some(&format!(r#"{{"name":"{}"}}"#, b64("ge"))),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["kv"]["value"], b64("b"));
    let (code, body) = s.http_stream(
        "/v3/election/observe",
        &format!(r#"{{"name":"{}"}}"#, b64("ge")),
        |b| b.contains('\n'),
        LIMIT,
    );
    assert_eq!(code, 200, "{body}");
    let first = json(body.lines().next().unwrap());
    assert_eq!(first["result"]["kv"]["value"], b64("b"), "{body}");
    let (code, body) = s.http(
        "POST",
        "/v3/election/resign",
        Some(&format!(r#"{{"leader":{leader}}}"#)),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.http(
        "POST",
        "/v3/election/leader",
        Some(&format!(r#"{{"name":"{}"}}"#, b64("ge"))),
    );
    assert_eq!(code, 500, "{body}");
    let v = json(&body);
    assert_eq!(v["error"], "election: no leader", "{body}");
    assert_eq!(v["code"], 2, "{body}");
}

/// Lock and Election are served by a learner (which passes its writes to
/// the leader and waits on its own replica) and by a proxy (forwarded, in
/// its namespace). cairn only: etcd has no `--role`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_through_a_learner_and_a_namespaced_proxy() {
    if subject_is_etcd() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 1, &[]).await;
    let l = c.new_member();
    c.spawn_role(l, "learner", &[0]);
    c.wait_ready(l).await;
    let p = c.new_member();
    c.members[p]
        .extra_args
        .extend(["--namespace".to_string(), "tenant/".to_string()]);
    c.spawn_role(p, "proxy", &[0]);
    c.wait_ready(p).await;
    let voter = c.client(0).await;
    let mut learner = c.client(l).await;
    let mut proxy = c.client(p).await;

    // Held through the learner; the proxy's client asks for the same lock
    // ("m" in its namespace) and waits.
    let ll = lease(&mut learner, 60).await;
    let held = learner
        .lock("tenant/m", Some(LockOptions::new().with_lease(ll)))
        .await
        .unwrap();
    let held_token = create_revision(&mut learner, held.key()).await.unwrap();
    let pl = lease(&mut proxy, 60).await;
    let mut pc = proxy.clone();
    let waiting =
        tokio::spawn(async move { pc.lock("m", Some(LockOptions::new().with_lease(pl))).await });
    // A second waiter through the proxy gives up: its key is withdrawn.
    let pl2 = lease(&mut proxy, 60).await;
    let mut pc2 = proxy.clone();
    let abandoned = tokio::spawn(async move {
        pc2.lock("m", Some(LockOptions::new().with_lease(pl2)))
            .await
    });
    wait_queue_len(&voter, "tenant/m/", 3).await;
    abandoned.abort();
    wait_queue_len(&voter, "tenant/m/", 2).await;

    learner.unlock(held.key()).await.unwrap();
    let got = within("the proxy's locker gets the lock", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.key(),
        format!("m/{pl:x}").as_bytes(),
        "namespace stripped"
    );
    let token = create_revision(&mut proxy, got.key()).await.unwrap();
    assert!(token > held_token);
    proxy.unlock(got.key()).await.unwrap();
    assert!(queue(&mut voter.clone(), "tenant/m/").await.is_empty());

    // Campaign on the learner, observed through the proxy.
    let mut observer = observe(proxy.clone(), "e").await;
    let won = learner.campaign("tenant/e", "x", ll).await.unwrap();
    let seen = next_leader(&mut observer).await;
    assert_eq!(seen.kv().unwrap().key(), format!("e/{ll:x}").as_bytes());
    assert_eq!(seen.kv().unwrap().value(), b"x");
    let now = proxy.leader("e").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"x");
    learner
        .resign(Some(
            ResignOptions::new().with_leader(won.leader().unwrap().clone()),
        ))
        .await
        .unwrap();

    // Campaign, proclaim and resign through the proxy.
    let won = proxy.campaign("e", "y", pl).await.unwrap();
    let k = won.leader().unwrap().clone();
    assert_eq!(k.name(), b"e");
    assert_eq!(k.key(), format!("e/{pl:x}").as_bytes());
    assert_eq!(next_leader(&mut observer).await.kv().unwrap().value(), b"y");
    proxy
        .proclaim("z", Some(ProclaimOptions::new().with_leader(k.clone())))
        .await
        .unwrap();
    assert_eq!(next_leader(&mut observer).await.kv().unwrap().value(), b"z");
    proxy
        .resign(Some(ResignOptions::new().with_leader(k)))
        .await
        .unwrap();
    assert!(queue(&mut voter.clone(), "tenant/e/").await.is_empty());
}

/// With auth on, Lock and Election act as their caller: the queue's txn
/// needs WRITE on the key and READ on the lock's prefix, Leader and
/// Observe READ.
#[tokio::test]
async fn lock_and_election_act_as_the_caller_with_auth_on() {
    let (s, _) = start().await;
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
        let out = s.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    let opts = etcd_client::ConnectOptions::new()
        .with_user("alice", "alicepw")
        .with_timeout(LIMIT);
    let mut alice = Client::connect([s.endpoint()], Some(opts)).await.unwrap();
    let l = lease(&mut alice, 60).await;
    let got = alice
        .lock("a/l", Some(LockOptions::new().with_lease(l)))
        .await
        .unwrap();
    assert_eq!(got.key(), format!("a/l/{l:x}").as_bytes());
    alice.unlock(got.key()).await.unwrap();
    let won = alice.campaign("a/e", "v", l).await.unwrap();
    assert_eq!(
        alice.leader("a/e").await.unwrap().kv().unwrap().value(),
        b"v"
    );
    alice
        .resign(Some(
            ResignOptions::new().with_leader(won.leader().unwrap().clone()),
        ))
        .await
        .unwrap();

    // Outside alice's prefix, and without a user. etcd 3.4 turns these
    // errors into Unknown; cairn keeps their codes.
    let (denied, no_user) = if subject_is_etcd() {
        (tonic::Code::Unknown, tonic::Code::Unknown)
    } else {
        (tonic::Code::PermissionDenied, tonic::Code::InvalidArgument)
    };
    let r = alice
        .lock("b", Some(LockOptions::new().with_lease(l)))
        .await;
    assert_grpc_error(r, denied, "etcdserver: permission denied");
    assert_grpc_error(
        alice.campaign("b", "v", l).await,
        denied,
        "etcdserver: permission denied",
    );
    assert_grpc_error(
        alice.leader("b").await,
        denied,
        "etcdserver: permission denied",
    );
    let mut anonymous = s.client().await;
    assert_grpc_error(
        anonymous
            .lock("a/l", Some(LockOptions::new().with_lease(l)))
            .await,
        no_user,
        "etcdserver: user name is empty",
    );
    assert!(
        alice
            .get("b/", Some(GetOptions::new().with_prefix()))
            .await
            .is_err(),
        "alice may not read outside a/"
    );
}
