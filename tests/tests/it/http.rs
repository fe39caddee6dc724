//! Plain HTTP on the client port: health, version, metrics, JSON gateway.

use cairn_tests::Subject;
use serde_json::{Value, json};

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn health_version_metrics() {
    let s = Subject::start().await;
    let (status, body) = s.http("GET", "/health", None);
    assert_eq!(status, 200);
    assert_eq!(parse(&body), json!({"health": "true"}));

    let (status, body) = s.http("GET", "/version", None);
    assert_eq!(status, 200);
    let v = parse(&body);
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    assert_eq!(keys, ["etcdcluster", "etcdserver"]);
    for k in keys {
        assert_eq!(obj[k].as_str().unwrap().split('.').count(), 3, "{body}");
    }

    let (status, body) = s.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    // Prometheus text format: HELP/TYPE comments and samples.
    assert!(body.contains("# HELP "), "{}", &body[..body.len().min(500)]);
    assert!(body.contains("# TYPE "));
    assert!(
        body.lines()
            .any(|l| !l.starts_with('#') && l.split_whitespace().count() >= 2),
        "no samples"
    );
    // etcd's metric names where they exist: writes are fsynced and timed.
    let mut c = s.client().await;
    c.put("fsynced", "v", None).await.unwrap();
    let (_, body) = s.http("GET", "/metrics", None);
    let sample = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(sample("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(sample("etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert_eq!(sample("etcd_server_has_leader"), 1.0);
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    if cairn_tests::subject_is_etcd() {
        return; // etcd 3.4 has no --log-format (3.5 does)
    }
    let mut o = cairn_tests::SubjectOptions::new(cairn_tests::subject_kind());
    o.extra_args = vec!["--log-format".into(), "json".into()];
    let s = Subject::start_with(o).await;
    let log = s.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in lines {
        let v = parse(l);
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
}

#[tokio::test]
async fn json_gateway_put_range_delete_txn() {
    let s = Subject::start().await;
    let (status, body) = s.http(
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"Zm9v","value":"YmFy"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let put = parse(&body);
    let header = put["header"].as_object().unwrap();
    // int64/uint64 are strings in the gateway's JSON.
    assert_eq!(header["revision"], "2");
    for k in ["cluster_id", "member_id", "raft_term"] {
        let v = header[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} not a string: {body}"));
        assert!(v.parse::<u64>().unwrap() > 0);
    }
    assert_eq!(put.as_object().unwrap().len(), 1, "only a header: {body}");

    let (status, body) = s.http("POST", "/v3/kv/range", Some(r#"{"key":"Zm9v"}"#));
    assert_eq!(status, 200, "{body}");
    let range = parse(&body);
    assert_eq!(range["header"]["revision"], "2");
    assert_eq!(
        range["kvs"],
        json!([{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}])
    );
    assert_eq!(range["count"], "1");
    assert!(range.get("more").is_none(), "false is omitted: {body}");

    // Range over a missing key: no kvs, no count.
    let (_, body) = s.http("POST", "/v3/kv/range", Some(r#"{"key":"bm9wZQ=="}"#));
    let range = parse(&body);
    assert!(range.get("kvs").is_none(), "{body}");
    assert!(range.get("count").is_none(), "{body}");

    let (status, body) = s.http(
        "POST",
        "/v3/kv/txn",
        Some(
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],
                "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}]}"#,
        ),
    );
    assert_eq!(status, 200, "{body}");
    let txn = parse(&body);
    assert_eq!(txn["succeeded"], true);
    assert_eq!(txn["header"]["revision"], "3");
    assert_eq!(
        txn["responses"][0]["response_put"]["header"]["revision"],
        "3"
    );

    let (status, body) = s.http(
        "POST",
        "/v3/kv/deleterange",
        Some(r#"{"key":"Zm9v","prev_kv":true}"#),
    );
    assert_eq!(status, 200, "{body}");
    let del = parse(&body);
    assert_eq!(del["deleted"], "1");
    assert_eq!(del["prev_kvs"][0]["value"], "YmF6");
    assert_eq!(del["header"]["revision"], "4");

    // An error is JSON too, with the gRPC code and etcd's message.
    let (status, body) = s.http(
        "POST",
        "/v3/kv/range",
        Some(r#"{"key":"Zm9v","revision":"99"}"#),
    );
    assert_ne!(status, 200, "{body}");
    let err = parse(&body);
    assert_eq!(err["code"], 11, "OutOfRange: {body}");
    assert_eq!(
        err["error"],
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[tokio::test]
async fn json_gateway_lease_and_maintenance() {
    let s = Subject::start().await;
    let (status, body) = s.http("POST", "/v3/lease/grant", Some(r#"{"TTL":"60","ID":"77"}"#));
    assert_eq!(status, 200, "{body}");
    let grant = parse(&body);
    assert_eq!(grant["ID"], "77");
    assert_eq!(grant["TTL"], "60");

    let (status, body) = s.http("POST", "/v3/lease/timetolive", Some(r#"{"ID":"5"}"#));
    assert_eq!(status, 200, "{body}");
    let ttl = parse(&body);
    assert_eq!(
        (&ttl["ID"], &ttl["TTL"]),
        (&json!("5"), &json!("-1")),
        "{body}"
    );

    let (status, body) = s.http("POST", "/v3/maintenance/status", Some("{}"));
    assert_eq!(status, 200, "{body}");
    let st = parse(&body);
    assert_eq!(st["leader"], st["header"]["member_id"]);
    assert!(st["dbSize"].as_str().unwrap().parse::<i64>().unwrap() > 0);

    let (status, body) = s.http("POST", "/v3/cluster/member/list", Some("{}"));
    assert_eq!(status, 200, "{body}");
    let members = parse(&body);
    assert_eq!(members["members"][0]["name"], "n1");
    assert_eq!(members["members"][0]["peerURLs"], json!([s.peer_url()]));
}

#[tokio::test]
async fn json_gateway_watch_streams_events() {
    let s = Subject::start().await;
    s.http(
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"YQ==","value":"MQ=="}"#),
    ); // 2
    s.http("POST", "/v3/kv/deleterange", Some(r#"{"key":"YQ=="}"#)); // 3
    // Replay from revision 2: the created message, then both events.
    let (status, body) = s.http_stream(
        "/v3/watch",
        r#"{"create_request":{"key":"YQ==","start_revision":"2"}}"#,
        |body| body.matches("\"result\"").count() >= 2 && body.contains("DELETE"),
        std::time::Duration::from_secs(10),
    );
    assert_eq!(status, 200, "{body}");
    let messages: Vec<Value> = serde_json::Deserializer::from_str(&body)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON lines ({e}): {body}"));
    let created = &messages[0]["result"];
    assert_eq!(created["created"], true, "{body}");
    assert_eq!(created["header"]["revision"], "3");
    let events: Vec<&Value> = messages[1..]
        .iter()
        .flat_map(|m| m["result"]["events"].as_array().unwrap().iter())
        .collect();
    assert_eq!(
        events,
        [
            &json!({"kv":{"key":"YQ==","create_revision":"2","mod_revision":"2","version":"1","value":"MQ=="}}),
            &json!({"type":"DELETE","kv":{"key":"YQ==","mod_revision":"3"}}),
        ],
        "{body}"
    );
}

#[tokio::test]
async fn requests_bytes_and_keys_by_prefix_in_metrics_and_cairn_top() {
    if cairn_tests::subject_is_etcd() {
        return; // cairn's own metrics
    }
    let mut o = cairn_tests::SubjectOptions::new(cairn_tests::subject_kind());
    o.extra_args = vec!["--metrics-prefix-depth".into(), "2".into()];
    let mut s = Subject::start_with(o).await;
    let mut c = s.client().await;
    c.put("/registry/pods/a", "12345", None).await.unwrap();
    c.put("/registry/pods/b", "1", None).await.unwrap();
    c.put("/registry/pods/b", "123", None).await.unwrap();
    c.put("/registry/nodes/n1", "x", None).await.unwrap();
    c.delete("/registry/nodes/n1", None).await.unwrap();
    for _ in 0..5 {
        c.get("/registry/pods/a", None).await.unwrap();
    }
    let sample = |body: &str, name: &str, prefix: &str| -> i64 {
        let start = format!("{name}{{prefix=\"{prefix}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(start.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {start} in\n{body}"))
    };
    let (_, body) = s.http("GET", "/metrics", None);
    // "/registry/pods/a" + "12345" and "/registry/pods/b" + "123"
    assert_eq!(
        sample(&body, "cairn_prefix_bytes", "/registry/pods/"),
        16 + 5 + 16 + 3
    );
    assert_eq!(sample(&body, "cairn_prefix_keys", "/registry/pods/"), 2);
    assert_eq!(sample(&body, "cairn_prefix_keys", "/registry/nodes/"), 0);
    assert!(sample(&body, "cairn_prefix_requests_total", "/registry/pods/") >= 8);
    // After a restart the store's bytes are counted again from a scan.
    s.restart().await;
    cairn_tests::eventually(
        "bytes counted by the start scan",
        std::time::Duration::from_secs(10),
        || {
            let (_, body) = s.http("GET", "/metrics", None);
            let found = body.contains("cairn_prefix_bytes{prefix=\"/registry/pods/\"} 40\n");
            async move { found.then_some(()) }
        },
    )
    .await;
    // cairn top prints the prefixes.
    let out = std::process::Command::new(cairn_tests::cairn_bin())
        .args(["top", "--once", "--interval", "200ms", "--sort", "bytes"])
        .arg(format!("--endpoints=127.0.0.1:{}", s.client_port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().nth(2).unwrap_or_default();
    assert!(
        first.starts_with("/registry/pods/") && first.contains("40.0 B"),
        "{text}"
    );
}
