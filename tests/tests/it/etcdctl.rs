//! The real `/usr/bin/etcdctl` (3.4) as an independent client, `-w json`.

use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cairn_tests::Subject;
use serde_json::Value;

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "etcdctl failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "etcdctl printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ctl(s: &Subject, args: &[&str]) -> Value {
    let mut all = vec!["-w", "json"];
    all.extend_from_slice(args);
    ok_json(s.etcdctl(all))
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn revision(v: &Value) -> i64 {
    v["header"]["revision"].as_i64().expect("header.revision")
}

#[tokio::test]
async fn put_get_del() {
    let s = Subject::start().await;
    let put = ctl(&s, &["put", "foo", "bar"]);
    assert_eq!(revision(&put), 2);
    assert!(put["header"]["cluster_id"].as_u64().unwrap() > 0);
    assert!(put["header"]["member_id"].as_u64().unwrap() > 0);

    ctl(&s, &["put", "foo2", "baz"]);
    let get = ctl(&s, &["get", "foo"]);
    assert_eq!(revision(&get), 3);
    assert_eq!(get["count"], 1);
    assert_eq!(
        get["kvs"][0],
        serde_json::json!({
            "key": b64("foo"), "value": b64("bar"),
            "create_revision": 2, "mod_revision": 2, "version": 1
        })
    );
    let get = ctl(&s, &["get", "foo", "--prefix", "--limit=1"]);
    assert_eq!(get["count"], 2);
    assert_eq!(get["more"], true);
    assert_eq!(get["kvs"].as_array().unwrap().len(), 1);
    let get = ctl(&s, &["get", "foo", "--prefix", "--keys-only"]);
    assert_eq!(get["kvs"][1]["key"], b64("foo2"));
    assert!(get["kvs"][1].get("value").is_none());
    let get = ctl(&s, &["get", "foo", "--rev=2", "--prefix"]);
    assert_eq!(get["count"], 1);
    // Nothing found: no kvs, count omitted (zero).
    let get = ctl(&s, &["get", "nothing"]);
    assert!(get.get("kvs").is_none());
    assert!(get.get("count").is_none());

    let del = ctl(&s, &["del", "foo", "--prefix", "--prev-kv"]);
    assert_eq!(revision(&del), 4);
    assert_eq!(del["deleted"], 2);
    assert_eq!(del["prev_kvs"][1]["value"], b64("baz"));
    // A no-op delete: revision unchanged, deleted omitted.
    let del = ctl(&s, &["del", "foo"]);
    assert_eq!(revision(&del), 4);
    assert!(del.get("deleted").is_none());
}

#[tokio::test]
async fn txn_from_stdin() {
    let s = Subject::start().await;
    ctl(&s, &["put", "foo", "bar"]);
    let input = b"value(\"foo\") = \"bar\"\n\nput a 1\nget foo\n\nput b 2\n\n";
    let out = ok_json(s.etcdctl_stdin(["-w", "json", "txn"], input));
    assert_eq!(revision(&out), 3);
    assert_eq!(out["succeeded"], true);
    let responses = out["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 2);
    // Responses inside a txn carry a header with the txn's revision only.
    assert_eq!(
        responses[0]["Response"]["ResponsePut"]["header"]["revision"],
        3
    );
    let range = &responses[1]["Response"]["ResponseRange"];
    assert_eq!(range["kvs"][0]["value"], b64("bar"));
    assert_eq!(range["count"], 1);

    let input = b"value(\"foo\") = \"nope\"\n\nput a 1\n\nput b 2\n\n";
    let out = ok_json(s.etcdctl_stdin(["-w", "json", "txn"], input));
    assert_eq!(revision(&out), 4);
    assert!(out.get("succeeded").is_none(), "false is omitted: {out}");
    let get = ctl(&s, &["get", "b"]);
    assert_eq!(get["kvs"][0]["value"], b64("2"));
    assert_eq!(get["kvs"][0]["mod_revision"], 4);
}

#[tokio::test]
async fn watch_replays_with_rev() {
    let s = Subject::start().await;
    ctl(&s, &["put", "w", "1"]); // 2
    ctl(&s, &["put", "w", "2"]); // 3
    ctl(&s, &["del", "w"]); // 4
    // etcdctl watch never ends by itself: give it a deadline.
    let out = std::process::Command::new("timeout")
        .args(["3", cairn_tests::ETCDCTL_BIN])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", s.endpoint()))
        .args(["-w", "json", "watch", "--rev=2", "w"])
        .output()
        .expect("run etcdctl watch");
    let text = String::from_utf8_lossy(&out.stdout);
    let responses: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("watch output not JSON ({e}): {text}"));
    let events: Vec<&Value> = responses
        .iter()
        .flat_map(|r| r["Events"].as_array().unwrap().iter())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[0]["kv"]["value"], b64("1"));
    assert_eq!(events[0]["kv"]["mod_revision"], 2);
    assert!(events[0].get("type").is_none(), "PUT is 0, omitted");
    assert_eq!(events[1]["kv"]["version"], 2);
    assert_eq!(events[2]["type"], 1);
    assert_eq!(events[2]["kv"]["key"], b64("w"));
    assert_eq!(events[2]["kv"]["mod_revision"], 4);
}

#[tokio::test]
async fn lease_commands() {
    let s = Subject::start().await;
    let grant = ctl(&s, &["lease", "grant", "60"]);
    // Lease responses are flattened: header fields next to ID and TTL.
    assert_eq!(grant["TTL"], 60);
    assert_eq!(grant["revision"], 1);
    let id = grant["ID"].as_i64().unwrap();
    let hex = format!("{id:x}");
    ctl(&s, &["put", &format!("--lease={hex}"), "lk", "v"]);

    let ka = ctl(&s, &["lease", "keep-alive", "--once", &hex]);
    assert_eq!(ka["ID"].as_i64(), Some(id));
    assert_eq!(ka["TTL"], 60);

    let ttl = ctl(&s, &["lease", "timetolive", "--keys", &hex]);
    assert_eq!(ttl["id"].as_i64(), Some(id));
    assert_eq!(ttl["granted-ttl"], 60);
    let left = ttl["ttl"].as_i64().unwrap();
    assert!((55..=60).contains(&left), "{ttl}");
    assert_eq!(ttl["keys"], serde_json::json!([b64("lk")]));

    let list = ctl(&s, &["lease", "list"]);
    assert_eq!(list["leases"], serde_json::json!([{ "id": id }]));

    let out = s.etcdctl(["lease", "revoke", &hex]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("lease {id:016x} revoked")
    );
    let get = ctl(&s, &["get", "lk"]);
    assert!(get.get("kvs").is_none());
    assert_eq!(revision(&get), 3);
    // Revoking again fails with etcd's message.
    let out = s.etcdctl(["lease", "revoke", &hex]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdserver: requested lease not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn compaction_and_errors() {
    let s = Subject::start().await;
    for v in ["1", "2", "3"] {
        ctl(&s, &["put", "k", v]); // 2, 3, 4
    }
    let out = s.etcdctl(["compaction", "3"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "compacted revision 3"
    );
    let out = s.etcdctl(["get", "k", "--rev=2"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let get = ctl(&s, &["get", "k", "--rev=3"]);
    assert_eq!(get["kvs"][0]["value"], b64("2"));
    // A watch from a compacted revision is canceled.
    let out = std::process::Command::new("timeout")
        .args(["5", cairn_tests::ETCDCTL_BIN])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", s.endpoint()))
        .args(["watch", "--rev=2", "k"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(124), "watch not canceled");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn endpoint_and_member_commands() {
    let s = Subject::start().await;
    ctl(&s, &["put", "a", "1"]);
    // etcdctl 3.4 dials the endpoints of endpoint status/health one by one
    // and puts each into :authority as given: `http://127.0.0.1:2379` is not
    // a valid authority. grpc-go (etcd) ignores it; h2 would refuse the
    // request, so cairn's client port repairs it (agent/src/serve/
    // authority.rs). Both forms must work.
    let hostport = s.endpoint().trim_start_matches("http://").to_string();
    for endpoint in [s.endpoint(), hostport] {
        let only = format!("--endpoints={endpoint}");
        let status = ctl(&s, &["endpoint", "status", &only]);
        let st = &status[0];
        assert_eq!(st["Endpoint"], endpoint);
        let inner = &st["Status"];
        assert_eq!(inner["header"]["revision"], 2);
        assert_eq!(inner["leader"], inner["header"]["member_id"]);
        assert!(inner["dbSize"].as_i64().unwrap() > 0);
        assert!(inner["raftIndex"].as_u64().unwrap() >= 2);
        assert!(inner["version"].as_str().unwrap().split('.').count() == 3);

        let health = ctl(&s, &["endpoint", "health", &only]);
        assert_eq!(health[0]["endpoint"], endpoint);
        assert_eq!(health[0]["health"], true);
    }
    // --cluster dials the members' client URLs, which are http:// URLs.
    let status = ctl(&s, &["endpoint", "status", "--cluster"]);
    assert_eq!(status.as_array().unwrap().len(), 1);
    assert_eq!(status[0]["Endpoint"], s.endpoint());
    assert_eq!(status[0]["Status"]["header"]["revision"], 2);

    let members = ctl(&s, &["member", "list"]);
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "n1");
    assert_eq!(list[0]["peerURLs"], serde_json::json!([s.peer_url()]));
    assert_eq!(list[0]["clientURLs"], serde_json::json!([s.endpoint()]));
    assert_eq!(list[0]["ID"], members["header"]["member_id"]);

    let path = s.temp_dir().join("snap.db");
    let out = s.etcdctl(["snapshot", "save", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("Snapshot saved at {}", path.display())
    );
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}
