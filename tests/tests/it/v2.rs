//! The v2 keys API (`/v2/keys`, `/v2/members`, `/v2/stats/self`), the same
//! cases against cairn and, with `CONFORMANCE_SUBJECT=etcd`, against
//! Debian's etcd 3.4 started with `--enable-v2`. Indexes differ between the
//! two (cairn's are v3 revisions), so each expectation is built from the
//! indexes the subject itself reported; everything else is compared field
//! by field.
use std::time::Duration;

use cairn_tests::v2::{Answer, V2};
use cairn_tests::{Subject, SubjectOptions, eventually, subject_kind};
use serde_json::{Value, json};

async fn start() -> (Subject, V2) {
    let mut o = SubjectOptions::new(subject_kind());
    o.extra_args = vec!["--enable-v2".into()];
    let s = Subject::start_with(o).await;
    let v2 = V2::new(s.client_port());
    (s, v2)
}

fn idx(a: &Answer) -> i64 {
    a.json()["node"]["modifiedIndex"]
        .as_i64()
        .unwrap_or_else(|| panic!("no modifiedIndex: {}", a.body))
}

#[track_caller]
fn assert_answer(a: &Answer, status: u16, body: Value) {
    assert_eq!((a.status, a.json()), (status, body), "{}", a.body);
}

/// An error document: code, message, cause, and the index the subject
/// reports in both the body and `X-Etcd-Index`.
#[track_caller]
fn assert_error(a: &Answer, status: u16, code: u16, message: &str, cause: &str) {
    let index = a.etcd_index();
    assert_answer(
        a,
        status,
        json!({"errorCode": code, "message": message, "cause": cause, "index": index}),
    );
}

#[tokio::test]
async fn set_get_and_headers() {
    let (_s, v2) = start().await;
    let a = v2.put("/v2/keys/message", "value=Hello");
    let i = idx(&a);
    assert_answer(
        &a,
        201,
        json!({"action":"set","node":{"key":"/message","value":"Hello","modifiedIndex":i,"createdIndex":i}}),
    );
    assert_eq!(a.etcd_index(), i);
    assert!(a.num("X-Raft-Index") > 0 && a.num("X-Raft-Term") > 0);
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(a.headers.contains_key("x-etcd-cluster-id"));

    let g = v2.get("/v2/keys/message");
    assert_answer(
        &g,
        200,
        json!({"action":"get","node":{"key":"/message","value":"Hello","modifiedIndex":i,"createdIndex":i}}),
    );
    assert_eq!(g.etcd_index(), i);

    // A second set replaces the node: a new createdIndex, the old one as prevNode.
    let b = v2.put("/v2/keys/message", "value=World");
    let j = idx(&b);
    assert!(j > i);
    assert_answer(
        &b,
        200,
        json!({"action":"set",
            "node":{"key":"/message","value":"World","modifiedIndex":j,"createdIndex":j},
            "prevNode":{"key":"/message","value":"Hello","modifiedIndex":i,"createdIndex":i}}),
    );

    let m = v2.get("/v2/keys/missing");
    assert_error(&m, 404, 100, "Key not found", "/missing");
    assert_eq!(m.etcd_index(), j);
    // The body's value wins over the query's.
    let c = v2.put("/v2/keys/a/c?value=query", "value=body");
    assert_eq!(c.json()["node"]["key"], "/a/c");
    assert_eq!(c.json()["node"]["value"], "body");
    // An empty value is a value.
    let e = v2.put("/v2/keys/empty?prevExist=false", "");
    assert_eq!(e.json()["node"]["value"], "", "{}", e.body);
    // noValueOnSuccess.
    let q = v2.put("/v2/keys/quiet?noValueOnSuccess=true", "value=1");
    assert_answer(&q, 201, json!({"action":"set"}));
    // The root is read only.
    assert_error(
        &v2.put("/v2/keys/", "value=x"),
        400,
        107,
        "Root is read only",
        "/",
    );
    // Methods the API does not have.
    assert_eq!(
        cairn_tests::v2::request(
            v2.port,
            "PATCH",
            "/v2/keys/message",
            "",
            Duration::from_secs(5)
        )
        .status,
        405
    );
}

#[tokio::test]
async fn request_errors() {
    let (_s, v2) = start().await;
    let cases = [
        (
            "/v2/keys/k?ttl=abc",
            202,
            "The given TTL in POST form is not a number",
            r#"invalid value for "ttl""#,
        ),
        (
            "/v2/keys/k?prevExist=maybe",
            209,
            "Invalid field",
            "invalid value for prevExist",
        ),
        (
            "/v2/keys/k?prevIndex=x",
            203,
            "The given index in POST form is not a number",
            r#"invalid value for "prevIndex""#,
        ),
        (
            "/v2/keys/k?prevValue=",
            201,
            "PrevValue is Required in POST form",
            r#""prevValue" cannot be empty"#,
        ),
        (
            "/v2/keys/k?refresh=true&ttl=5&value=v",
            211,
            "Value provided on refresh",
            "A value was provided on a refresh",
        ),
        (
            "/v2/keys/k?refresh=true",
            212,
            "A TTL must be provided on refresh",
            "No TTL value set",
        ),
        (
            "/v2/keys/k?wait=true",
            209,
            "Invalid field",
            r#""wait" can only be used with GET requests"#,
        ),
        (
            "/v2/keys/k?recursive=nope",
            209,
            "Invalid field",
            r#"invalid value for "recursive""#,
        ),
    ];
    for (path, code, message, cause) in cases {
        let a = v2.put(path, "");
        assert_answer(
            &a,
            400,
            json!({"errorCode": code, "message": message, "cause": cause, "index": 0}),
        );
    }
}

#[tokio::test]
async fn directories() {
    let (_s, v2) = start().await;
    let d = v2.put("/v2/keys/dir?dir=true", "");
    let di = idx(&d);
    assert_answer(
        &d,
        201,
        json!({"action":"set","node":{"key":"/dir","dir":true,"modifiedIndex":di,"createdIndex":di}}),
    );
    // Setting a directory again, or over it, is "Not a file".
    assert_error(
        &v2.put("/v2/keys/dir?dir=true", ""),
        403,
        102,
        "Not a file",
        "/dir",
    );
    assert_error(
        &v2.put("/v2/keys/dir", "value=x"),
        403,
        102,
        "Not a file",
        "/dir",
    );
    // Missing directories are created on the way.
    let f = v2.put("/v2/keys/dir/a/b", "value=x");
    let fi = idx(&f);
    let _hidden = v2.put("/v2/keys/dir/_hidden", "value=h");
    let z = v2.put("/v2/keys/dir/z", "value=z");
    let zi = idx(&z);

    let file_b = json!({"key":"/dir/a/b","value":"x","modifiedIndex":fi,"createdIndex":fi});
    let file_z = json!({"key":"/dir/z","value":"z","modifiedIndex":zi,"createdIndex":zi});
    assert_answer(
        &v2.get("/v2/keys/dir?recursive=true&sorted=true"),
        200,
        json!({"action":"get","node":{"key":"/dir","dir":true,"nodes":[
            {"key":"/dir/a","dir":true,"nodes":[file_b],"modifiedIndex":fi,"createdIndex":fi},
            file_z,
        ],"modifiedIndex":di,"createdIndex":di}}),
    );
    assert_answer(
        &v2.get("/v2/keys/dir?sorted=true"),
        200,
        json!({"action":"get","node":{"key":"/dir","dir":true,"nodes":[
            {"key":"/dir/a","dir":true,"modifiedIndex":fi,"createdIndex":fi},
            file_z,
        ],"modifiedIndex":di,"createdIndex":di}}),
    );
    // A hidden node is left out of listings, but can be read.
    assert_eq!(v2.get("/v2/keys/dir/_hidden").json()["node"]["value"], "h");
    // The root lists the top level.
    let root = v2.get("/v2/keys/?sorted=true").json();
    assert_eq!(root["node"]["dir"], true);
    assert!(root["node"].get("key").is_none(), "{root}");
    assert_eq!(root["node"]["nodes"][0]["key"], "/dir");

    // A file on the way is "Not a directory"; a missing one "Key not found".
    assert_error(
        &v2.put("/v2/keys/dir/z/sub", "value=1"),
        400,
        104,
        "Not a directory",
        "/dir/z",
    );
    assert_error(
        &v2.get("/v2/keys/dir/z/sub"),
        400,
        104,
        "Not a directory",
        "/dir/z",
    );
    assert_error(
        &v2.get("/v2/keys/nox/y/z"),
        404,
        100,
        "Key not found",
        "/nox",
    );
    assert_error(
        &v2.post("/v2/keys/dir/z", "value=1"),
        400,
        104,
        "Not a directory",
        "/dir/z",
    );

    // Deleting a directory takes dir=true, and recursive=true when it has
    // children.
    assert_error(&v2.delete("/v2/keys/dir"), 403, 102, "Not a file", "/dir");
    assert_error(
        &v2.delete("/v2/keys/dir?dir=true"),
        403,
        108,
        "Directory not empty",
        "/dir",
    );
    let rm = v2.delete("/v2/keys/dir?recursive=true");
    let ri = idx(&rm);
    assert_answer(
        &rm,
        200,
        json!({"action":"delete","node":{"key":"/dir","dir":true,"modifiedIndex":ri,"createdIndex":di},
            "prevNode":{"key":"/dir","dir":true,"modifiedIndex":di,"createdIndex":di}}),
    );
    assert_error(
        &v2.get("/v2/keys/dir/a/b"),
        404,
        100,
        "Key not found",
        "/dir",
    );
    let e = v2.put("/v2/keys/empty?dir=true", "");
    let ei = idx(&e);
    // An empty directory has no `nodes`.
    assert_answer(
        &v2.get("/v2/keys/empty?recursive=true"),
        200,
        json!({"action":"get","node":{"key":"/empty","dir":true,"modifiedIndex":ei,"createdIndex":ei}}),
    );
    let rm = v2.delete("/v2/keys/empty?dir=true");
    assert_eq!(rm.json()["node"]["createdIndex"], ei);
    assert_eq!(rm.status, 200);
}

#[tokio::test]
async fn compare_and_swap_and_delete() {
    let (_s, v2) = start().await;
    let a = v2.put("/v2/keys/k", "value=one");
    let i = idx(&a);
    assert_error(
        &v2.put("/v2/keys/k?prevExist=false", "value=x"),
        412,
        105,
        "Key already exists",
        "/k",
    );
    assert_error(
        &v2.put("/v2/keys/nokey?prevExist=true", "value=x"),
        404,
        100,
        "Key not found",
        "/nokey",
    );
    assert_error(
        &v2.put("/v2/keys/k?prevValue=nope", "value=x"),
        412,
        101,
        "Compare failed",
        "[nope != one]",
    );
    assert_error(
        &v2.put("/v2/keys/k?prevIndex=1", "value=x"),
        412,
        101,
        "Compare failed",
        &format!("[1 != {i}]"),
    );
    assert_error(
        &v2.put("/v2/keys/k?prevIndex=1&prevValue=nope", "value=x"),
        412,
        101,
        "Compare failed",
        &format!("[nope != one] [1 != {i}]"),
    );
    let cas = v2.put(
        &format!("/v2/keys/k?prevIndex={i}&prevValue=one"),
        "value=two",
    );
    let j = idx(&cas);
    assert_answer(
        &cas,
        200,
        json!({"action":"compareAndSwap",
            "node":{"key":"/k","value":"two","modifiedIndex":j,"createdIndex":i},
            "prevNode":{"key":"/k","value":"one","modifiedIndex":i,"createdIndex":i}}),
    );
    let up = v2.put("/v2/keys/k?prevExist=true", "value=three");
    let u = idx(&up);
    assert_answer(
        &up,
        200,
        json!({"action":"update",
            "node":{"key":"/k","value":"three","modifiedIndex":u,"createdIndex":i},
            "prevNode":{"key":"/k","value":"two","modifiedIndex":j,"createdIndex":i}}),
    );
    let cr = v2.put("/v2/keys/new?prevExist=false", "value=c");
    let c = idx(&cr);
    assert_answer(
        &cr,
        201,
        json!({"action":"create","node":{"key":"/new","value":"c","modifiedIndex":c,"createdIndex":c}}),
    );
    assert_error(
        &v2.delete("/v2/keys/k?prevValue=bad"),
        412,
        101,
        "Compare failed",
        "[bad != three]",
    );
    assert_error(
        &v2.delete("/v2/keys/k?prevIndex=1"),
        412,
        101,
        "Compare failed",
        &format!("[1 != {u}]"),
    );
    let cad = v2.delete(&format!("/v2/keys/k?prevIndex={u}"));
    let d = idx(&cad);
    assert_answer(
        &cad,
        200,
        json!({"action":"compareAndDelete",
            "node":{"key":"/k","modifiedIndex":d,"createdIndex":i},
            "prevNode":{"key":"/k","value":"three","modifiedIndex":u,"createdIndex":i}}),
    );
    let del = v2.delete("/v2/keys/new");
    let n = idx(&del);
    assert_answer(
        &del,
        200,
        json!({"action":"delete",
            "node":{"key":"/new","modifiedIndex":n,"createdIndex":c},
            "prevNode":{"key":"/new","value":"c","modifiedIndex":c,"createdIndex":c}}),
    );
}

#[tokio::test]
async fn in_order_keys() {
    let (_s, v2) = start().await;
    let mut seen = Vec::new();
    for job in ["Job1", "Job2", "Job3"] {
        let a = v2.post("/v2/keys/queue", &format!("value={job}"));
        assert_eq!(a.status, 201, "{}", a.body);
        let j = a.json();
        assert_eq!(j["action"], "create");
        let key = j["node"]["key"].as_str().unwrap().to_string();
        let name = key.strip_prefix("/queue/").unwrap();
        assert_eq!(name.len(), 20, "{key}");
        // Uncontended, the name is the createdIndex.
        assert_eq!(name.parse::<i64>().unwrap(), idx(&a), "{}", a.body);
        seen.push((key, job));
    }
    let list = v2.get("/v2/keys/queue?recursive=true&sorted=true").json();
    let got: Vec<(String, String)> = list["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["key"].as_str().unwrap().to_string(),
                n["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = seen
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn ttl_refresh_and_expire() {
    let (_s, v2) = start().await;
    let a = v2.put("/v2/keys/t?ttl=30", "value=v");
    assert_eq!(a.status, 201);
    let n = &a.json()["node"];
    assert_eq!(n["ttl"], 30, "{}", a.body);
    let exp = n["expiration"].as_str().unwrap().to_string();
    assert!(exp.ends_with('Z') && exp.contains('T'), "{exp}");
    // Refresh: a new TTL, the value kept.
    let r = v2.put("/v2/keys/t?ttl=60&refresh=true", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["node"]["value"], "v");
    assert_eq!(r.json()["node"]["ttl"], 60);
    assert_eq!(r.json()["prevNode"]["value"], "v");
    assert_error(
        &v2.put("/v2/keys/none?ttl=5&refresh=true", ""),
        404,
        100,
        "Key not found",
        "/none",
    );
    // An update without ttl makes the node permanent.
    let u = v2.put("/v2/keys/t?ttl=&prevExist=true", "value=w");
    assert!(u.json()["node"].get("ttl").is_none(), "{}", u.body);
    assert!(u.json()["node"].get("expiration").is_none(), "{}", u.body);

    // A short TTL expires; a watcher hears "expire".
    let s = v2.put("/v2/keys/short?ttl=1", "value=e");
    let si = idx(&s);
    let w = v2.wait(
        &format!("/v2/keys/short?wait=true&waitIndex={}", si + 1),
        Duration::from_secs(20),
    );
    assert_eq!(w.status, 200, "{}", w.body);
    let ev = w.json();
    assert_eq!(ev["action"], "expire", "{ev}");
    assert_eq!(ev["node"]["key"], "/short");
    assert_eq!(ev["node"]["createdIndex"], si);
    assert_eq!(ev["prevNode"]["value"], "e");
    eventually("expired key gone", Duration::from_secs(10), || async {
        (v2.get("/v2/keys/short").status == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_directory_with_a_ttl_takes_its_content() {
    let (_s, v2) = start().await;
    let d = v2.put("/v2/keys/tdir?dir=true&ttl=1", "");
    assert_eq!(d.status, 201, "{}", d.body);
    assert_eq!(d.json()["node"]["ttl"], 1);
    assert_eq!(v2.put("/v2/keys/tdir/child", "value=1").status, 201);
    assert_eq!(v2.put("/v2/keys/tdir/sub/leaf", "value=2").status, 201);
    eventually(
        "the directory and its content gone",
        Duration::from_secs(15),
        || async {
            let gone = v2.get("/v2/keys/tdir/sub/leaf").status == 404
                && v2.get("/v2/keys/tdir/child").status == 404
                && v2.get("/v2/keys/tdir").status == 404;
            gone.then_some(())
        },
    )
    .await;
    let root = v2.get("/v2/keys/?recursive=true").json();
    assert!(!root.to_string().contains("tdir"), "{root}");
}

#[tokio::test]
async fn long_poll_watches() {
    let (_s, v2) = start().await;
    let first = v2.put("/v2/keys/w/a", "value=1");
    let i = idx(&first);
    // An index in the past answers at once from history.
    let w = v2.wait(
        &format!("/v2/keys/w?wait=true&recursive=true&waitIndex={i}"),
        Duration::from_secs(10),
    );
    assert_answer(
        &w,
        200,
        json!({"action":"set","node":{"key":"/w/a","value":"1","modifiedIndex":i,"createdIndex":i}}),
    );
    assert!(w.etcd_index() >= i);
    // Watches from the next index (so none misses a write made before it
    // is registered). A non-recursive watch of the directory does not see
    // its children.
    let next = v2.get("/v2/keys/w").etcd_index() + 1;
    let port = v2.port;
    let watch = move |path: String| {
        std::thread::spawn(move || {
            V2::new(port).wait(&format!("{path}&waitIndex={next}"), Duration::from_secs(20))
        })
    };
    let dir_watch = watch("/v2/keys/w?wait=true".into());
    let key_watch = watch("/v2/keys/w/b?wait=true".into());
    let rec_watch = watch("/v2/keys/w?wait=true&recursive=true".into());
    let b = v2.put("/v2/keys/w/b", "value=2");
    let bi = idx(&b);
    let kw = key_watch.join().unwrap();
    assert_answer(
        &kw,
        200,
        json!({"action":"set","node":{"key":"/w/b","value":"2","modifiedIndex":bi,"createdIndex":bi}}),
    );
    assert_eq!(rec_watch.join().unwrap().json()["node"]["key"], "/w/b");
    // Deleting the directory reaches its own watcher.
    let rm = v2.delete("/v2/keys/w?recursive=true");
    let dw = dir_watch.join().unwrap().json();
    assert_eq!(dw["action"], "delete", "{dw}");
    assert_eq!(dw["node"]["key"], "/w");
    assert_eq!(dw["node"]["modifiedIndex"], idx(&rm));
    // A watcher below a deleted directory hears of it too.
    let x = v2.put("/v2/keys/p/q/r", "value=1");
    let xi = idx(&x);
    v2.delete("/v2/keys/p?recursive=true");
    let ev = v2
        .wait(
            &format!("/v2/keys/p/q/r?wait=true&waitIndex={}", xi + 1),
            Duration::from_secs(10),
        )
        .json();
    assert_eq!(
        (ev["action"].as_str(), ev["node"]["key"].as_str()),
        (Some("delete"), Some("/p")),
        "{ev}"
    );
}

#[tokio::test]
async fn watch_index_cleared() {
    let (s, v2) = start().await;
    let first = v2.put("/v2/keys/old", "value=1");
    let i = idx(&first);
    if s.is_etcd() {
        // etcd keeps the last 1000 events.
        for n in 0..1001 {
            v2.put("/v2/keys/filler", &format!("value={n}"));
        }
    } else {
        // cairn keeps what v3 compaction keeps.
        for n in 0..3 {
            v2.put("/v2/keys/filler", &format!("value={n}"));
        }
        let mut c = s.client().await;
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(rev, None).await.unwrap();
    }
    let a = v2.wait(
        &format!("/v2/keys/old?wait=true&waitIndex={i}"),
        Duration::from_secs(10),
    );
    let j = a.json();
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(j["errorCode"], 401);
    assert_eq!(
        j["message"],
        "The event in requested index is outdated and cleared"
    );
    let cause = j["cause"].as_str().unwrap();
    assert!(
        cause.starts_with("the requested history has been cleared [")
            && cause.ends_with(&format!("/{i}]")),
        "{cause}"
    );
    assert_eq!(j["index"], a.etcd_index());
}

#[tokio::test]
async fn etcdctl_v2_commands() {
    let (_s, v2) = start().await;
    let out = |o: std::process::Output| {
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert_eq!(out(v2.etcdctl(&["set", "/ctl/a", "1"])).1, "1\n");
    assert_eq!(out(v2.etcdctl(&["get", "/ctl/a"])).1, "1\n");
    assert_eq!(out(v2.etcdctl(&["mk", "/ctl/b", "2"])).1, "2\n");
    let (code, _, err) = out(v2.etcdctl(&["mk", "/ctl/b", "2"]));
    assert_eq!(code, Some(4));
    assert!(
        err.starts_with("Error:  105: Key already exists (/ctl/b) ["),
        "{err}"
    );
    assert_eq!(out(v2.etcdctl(&["mkdir", "/ctl/d"])).0, Some(0));
    assert_eq!(
        out(v2.etcdctl(&["ls", "--recursive", "--sort", "/ctl"])).1,
        "/ctl/a\n/ctl/b\n/ctl/d\n"
    );
    assert_eq!(out(v2.etcdctl(&["update", "/ctl/a", "3"])).1, "3\n");
    assert_eq!(out(v2.etcdctl(&["rm", "/ctl/a"])).1, "PrevNode.Value: 3\n");
    let (code, _, err) = out(v2.etcdctl(&["get", "/ctl/a"]));
    assert_eq!(code, Some(4));
    assert!(
        err.starts_with("Error:  100: Key not found (/ctl/a) ["),
        "{err}"
    );
    assert_eq!(out(v2.etcdctl(&["rmdir", "/ctl/d"])).0, Some(0));
    // watch: answers with the next change.
    let port = v2.port;
    let watcher = std::thread::spawn(move || V2::new(port).etcdctl(&["watch", "/ctl/b"]));
    // Keep writing until the watcher has seen a write (it may start after
    // the first).
    let mut n = 0;
    while !watcher.is_finished() {
        n += 1;
        assert!(n < 200, "etcdctl watch never answered");
        v2.etcdctl(&["set", "/ctl/b", "9"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(out(watcher.join().unwrap()).1, "9\n");
    let (code, text, _) = out(v2.etcdctl(&["member", "list"]));
    assert_eq!(code, Some(0));
    assert!(
        text.contains("name=n1") && text.contains("isLeader=true"),
        "{text}"
    );
    let (_, text, _) = out(v2.etcdctl(&["cluster-health"]));
    assert!(text.contains("cluster is healthy"), "{text}");
}

#[tokio::test]
async fn members_and_stats() {
    let (s, v2) = start().await;
    // A member publishes its client URLs through the log once it serves
    // (etcd's too): until then the list shows none.
    let m = cairn_tests::eventually(
        "the member's client URLs published",
        Duration::from_secs(10),
        || {
            let m = v2.get("/v2/members").json();
            let published = m["members"][0]["clientURLs"]
                .as_array()
                .is_some_and(|u| !u.is_empty());
            async move { published.then_some(m) }
        },
    )
    .await;
    let ms = m["members"].as_array().unwrap();
    assert_eq!(ms.len(), 1, "{m}");
    let me = &ms[0];
    let keys: Vec<&String> = me.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, ["clientURLs", "id", "name", "peerURLs"]);
    assert_eq!(me["name"], "n1");
    assert_eq!(me["peerURLs"], json!([s.peer_url()]));
    assert_eq!(me["clientURLs"], json!([s.endpoint()]));
    let st = v2.get("/v2/stats/self").json();
    assert_eq!(st["name"], "n1");
    assert_eq!(st["id"], me["id"]);
    assert_eq!(st["state"], "StateLeader");
    assert_eq!(st["leaderInfo"]["leader"], me["id"]);
    for k in ["startTime", "recvAppendRequestCnt", "sendAppendRequestCnt"] {
        assert!(st.get(k).is_some(), "{k} missing: {st}");
    }
    assert_eq!(v2.get("/v2/members/leader").json(), *me);
}

#[tokio::test]
async fn v2_keys_are_not_v3_keys() {
    let (s, v2) = start().await;
    v2.put("/v2/keys/hidden-from-v3", "value=1");
    let mut c = s.client().await;
    c.put("/v3key", "1", None).await.unwrap();
    let all = c
        .get("", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).to_string())
        .collect();
    // The whole v3 key space: a NUL-prefixed range, if any, is cairn's v2
    // space; nothing under "/" or any printable prefix.
    assert!(keys.contains(&"/v3key".to_string()));
    assert!(
        keys.iter()
            .all(|k| !k.contains("hidden-from-v3") || k.starts_with('\0')),
        "{keys:?}"
    );
    let slash = c
        .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(slash.kvs().len(), 1);
    assert_eq!(v2.get("/v2/keys/v3key").status, 404);
}

#[tokio::test]
async fn disabled_answers_404() {
    // etcd 3.4 serves v2 only with --enable-v2; cairn unless --enable-v2=false.
    let mut o = SubjectOptions::new(subject_kind());
    if subject_kind() == cairn_tests::Kind::Cairn {
        o.extra_args = vec!["--enable-v2=false".into()];
    }
    let s = Subject::start_with(o).await;
    let v2 = V2::new(s.client_port());
    let a = v2.put("/v2/keys/foo", "value=1");
    assert_eq!((a.status, a.body.as_str()), (404, "404 page not found\n"));
    assert_eq!(v2.get("/v2/keys/foo").status, 404);
}
