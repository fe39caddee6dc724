//! Services registered under leases (cairn only: etcd has no agent). A
//! `[[service]]` block of the `--config` file becomes a SkyDNS record kept
//! under a lease while its check passes; it goes when the check fails, comes
//! back when it passes again, goes at once when the agent stops and a lease
//! TTL later when the agent is killed. `cairn service ...` and the local
//! HTTP API register, list, deregister and report TTL checks.
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{
    Kind, Subject, SubjectOptions, cairn_bin, eventually, http_request, subject_kind,
};
use etcd_client::{Client, GetOptions};

const LIMIT: Duration = Duration::from_secs(20);

fn cairn_only() -> bool {
    subject_kind() == Kind::Cairn
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("cairn.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The value and lease of `key`, if present.
async fn record(client: &mut Client, key: &str) -> Option<(serde_json::Value, i64)> {
    let r = client.get(key, None).await.ok()?;
    let kv = r.kvs().first()?;
    Some((serde_json::from_slice(kv.value()).unwrap(), kv.lease()))
}

fn cli(agent: &str, args: &[&str]) -> std::process::Output {
    Command::new(cairn_bin())
        .arg("service")
        .args(args)
        .args(["--agent", agent])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_follow_their_checks_and_the_cli_manages_them() {
    if !cairn_only() {
        return;
    }
    let up = Arc::new(AtomicBool::new(true));
    let health = cairn_tests::health_endpoint(up.clone()).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = write_config(
        cfg_dir.path(),
        &format!(
            r#"
[[service]]
name = "web"
id = "web1"
address = "127.0.0.1"
port = 8080
tags = ["blue"]
weight = 20
ttl = "2s"
check = {{ http = "http://127.0.0.1:{health}/health", interval = "200ms", timeout = "1s" }}

[[service]]
name = "api"
address = "10.0.0.7"
port = 9000
check = {{ ttl = "1s" }}
"#
        ),
    );
    let mut opts = SubjectOptions::new(Kind::Cairn);
    opts.extra_args = vec!["--config".into(), config];
    let s = Subject::start_with(opts).await;
    let mut client = s.client().await;
    let agent = s.endpoint();
    let web = "/skydns/local/skydns/web/n1-web1";
    let api = "/skydns/local/skydns/api/n1-api";

    // Registered under a lease while the check passes.
    let (value, lease1) = eventually("web registered", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, web).await }
    })
    .await;
    assert_eq!(value["host"], "127.0.0.1");
    assert_eq!(value["port"], 8080);
    assert_eq!(value["weight"], 20);
    assert_eq!(value["tags"], serde_json::json!(["blue"]));
    assert_ne!(lease1, 0, "the record must be under a lease");
    let ttl = client.lease_time_to_live(lease1, None).await.unwrap();
    assert!(ttl.granted_ttl() == 2, "granted TTL {}", ttl.granted_ttl());

    // The check fails: the record goes (its lease is revoked).
    up.store(false, Ordering::SeqCst);
    eventually("web removed when its check fails", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, web).await.is_none().then_some(()) }
    })
    .await;
    let ttl = client.lease_time_to_live(lease1, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "the old lease must be revoked");

    // It passes again: registered again, under a new lease.
    up.store(true, Ordering::SeqCst);
    let (_, lease2) = eventually("web back when its check passes", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, web).await }
    })
    .await;
    assert_ne!(lease2, lease1);

    // A TTL check: nothing until the application reports pass.
    assert!(record(&mut client, api).await.is_none());
    let out = cli(&agent, &["pass", "api", "warming up done"]);
    assert!(out.status.success(), "{out:?}");
    let (value, _) = eventually("api registered after a pass", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, api).await }
    })
    .await;
    assert_eq!(value["host"], "10.0.0.7");
    // No pass within the TTL: it goes.
    eventually("api removed when its TTL runs out", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, api).await.is_none().then_some(()) }
    })
    .await;
    // An explicit fail, after a pass, removes it too.
    assert!(cli(&agent, &["pass", "api"]).status.success());
    eventually("api registered again", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, api).await }
    })
    .await;
    assert!(cli(&agent, &["fail", "api", "db down"]).status.success());
    eventually("api removed on fail", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, api).await.is_none().then_some(()) }
    })
    .await;

    // Reports for a service without a TTL check, or no such service, are refused.
    let out = cli(&agent, &["pass", "web1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ttl check"),
        "{out:?}"
    );
    let out = cli(&agent, &["pass", "nope"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service \"nope\""),
        "{out:?}"
    );

    // Register at run time from the CLI, list, deregister.
    let out = cli(
        &agent,
        &[
            "register",
            "--name",
            "db",
            "--address",
            "10.0.0.9",
            "--port",
            "5432",
            "--tag",
            "primary",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let db = "/skydns/local/skydns/db/n1-db";
    let (value, _) = eventually("db registered from the CLI", LIMIT, || {
        let mut c = client.clone();
        async move { record(&mut c, db).await }
    })
    .await;
    assert_eq!(value["port"], 5432);
    let out = cli(&agent, &["list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["api", "db", "web1"]);
    let web_listed = &listed[2];
    assert_eq!(web_listed["passing"], true);
    assert_eq!(web_listed["registered"], true);
    assert_eq!(web_listed["key"], web);
    let out = cli(&agent, &["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("web1") && text.contains("failing"), "{text}");

    let out = cli(&agent, &["deregister", "db"]);
    assert!(out.status.success(), "{out:?}");
    // Deregistering revokes the lease before answering: gone now.
    assert!(record(&mut client, db).await.is_none());
    let out = cli(&agent, &["deregister", "db"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no service"),
        "{out:?}"
    );

    // Bad registrations are refused with the field named, by the CLI and
    // by the HTTP API.
    let out = cli(&agent, &["register", "--name", "a.b", "--address", "x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one DNS label"),
        "{out:?}"
    );
    let out = cli(&agent, &["register", "--name", "x", "--adress", "x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (code, body) = http_request(
        ("127.0.0.1", s.client_port()),
        "PUT",
        "/v1/service/register",
        Some(r#"{"name":"x","address":"y","port":"eighty"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("port"), "{body}");

    // The whole /skydns tree holds exactly the passing services.
    let all = client
        .get("/skydns/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<&str> = all.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, [web]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_agents_services_go_at_once_on_stop_and_by_lease_expiry_when_killed() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 1, &[]).await;
    let p = c.new_member();
    let cfg_dir = tempfile::tempdir().unwrap();
    // A long TTL: the record vanishing soon after SIGTERM shows the lease
    // was revoked, not left to expire.
    let config = write_config(
        cfg_dir.path(),
        r#"
[[service]]
name = "cache"
address = "127.0.0.1"
port = 6379
ttl = "60s"
"#,
    );
    c.members[p].extra_args = vec!["--config".into(), config.clone()];
    c.spawn_role(p, "proxy", &[0]);
    let mut client = c.client(0).await;
    let key = format!("/skydns/local/skydns/cache/{}-cache", c.members[p].name);
    let (value, lease) = eventually("the proxy's service registered", LIMIT, || {
        let mut cl = client.clone();
        let key = key.clone();
        async move { record(&mut cl, &key).await }
    })
    .await;
    assert_eq!(value["port"], 6379);
    assert_ne!(lease, 0);
    // The local HTTP API answers on the proxy too.
    let (code, body) = http_request(
        ("127.0.0.1", c.members[p].client_port),
        "GET",
        "/v1/services",
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"cache\""), "{body}");

    c.signal(p, "TERM");
    assert!(c.wait_exit(p, LIMIT).await, "the proxy did not stop");
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(
        ttl.ttl(),
        -1,
        "a stopping agent revokes its services' leases"
    );
    assert!(record(&mut client, &key).await.is_none());

    // Killed: the record outlives the agent by at most its lease TTL.
    std::fs::write(
        &config,
        "[[service]]\nname = \"cache\"\naddress = \"127.0.0.1\"\nport = 6379\nttl = \"2s\"\n",
    )
    .unwrap();
    c.spawn_role(p, "proxy", &[0]);
    let (_, lease) = eventually("registered again", LIMIT, || {
        let mut cl = client.clone();
        let key = key.clone();
        async move { record(&mut cl, &key).await }
    })
    .await;
    c.kill9(p);
    eventually("the record expires with its lease", LIMIT, || {
        let mut cl = client.clone();
        let key = key.clone();
        async move { record(&mut cl, &key).await.is_none().then_some(()) }
    })
    .await;
    let ttl = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
}

#[test]
fn bad_service_blocks_stop_the_agent_naming_the_problem() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("[[service]]\nname = \"web\"\n", "address"),
        (
            "[[service]]\nname = \"web\"\naddress = \"x\"\nchek = 1\n",
            "chek",
        ),
        (
            "[[service]]\nname = \"web\"\naddress = \"x\"\ncheck = { http = \"https://x\" }\n",
            "only http://",
        ),
    ] {
        let config = write_config(dir.path(), text);
        let data = dir.path().join("data").display().to_string();
        let port = cairn_tests::free_port();
        let err = crate::config::run_expect_failure(
            &[
                "--config".into(),
                config,
                "--data-dir".into(),
                data,
                "--listen-client-urls".into(),
                format!("http://127.0.0.1:{port}"),
            ],
            &[],
        );
        assert!(err.contains(want), "{text}: {err}");
        // Nothing was created: the config is checked before the data dir.
        assert!(!dir.path().join("data").exists(), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_service_blocks_and_refuses_a_bad_config() {
    if !cairn_only() {
        return;
    }
    let cfg_dir = tempfile::tempdir().unwrap();
    let config = write_config(
        cfg_dir.path(),
        "[[service]]\nname = \"a\"\naddress = \"10.0.0.1\"\nport = 1\n\
         [[service]]\nname = \"b\"\naddress = \"10.0.0.2\"\nport = 2\n",
    );
    let mut opts = SubjectOptions::new(Kind::Cairn);
    opts.extra_args = vec!["--config".into(), config.clone()];
    let s = Subject::start_with(opts).await;
    let mut client = s.client().await;
    let agent = s.endpoint();
    let keys = |client: &Client| {
        let mut c = client.clone();
        async move {
            let r = c
                .get("/skydns/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            r.kvs()
                .iter()
                .map(|kv| {
                    let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
                    format!("{} {}", kv.key_str().unwrap(), v["port"])
                })
                .collect::<Vec<_>>()
        }
    };
    eventually("a and b registered", LIMIT, || {
        let k = keys(&client);
        async move {
            (k.await
                == [
                    "/skydns/local/skydns/a/n1-a 1",
                    "/skydns/local/skydns/b/n1-b 2",
                ])
            .then_some(())
        }
    })
    .await;
    // A service registered through the API survives reloads.
    assert!(
        cli(
            &agent,
            &[
                "register",
                "--name",
                "z",
                "--address",
                "10.0.0.9",
                "--port",
                "9"
            ]
        )
        .status
        .success()
    );
    // b changes its port, a goes, c comes.
    std::fs::write(
        &config,
        "[[service]]\nname = \"b\"\naddress = \"10.0.0.2\"\nport = 22\n\
         [[service]]\nname = \"c\"\naddress = \"10.0.0.3\"\nport = 3\n",
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    hup(s.pid().unwrap());
    eventually("the reloaded services", LIMIT, || {
        let k = keys(&client);
        async move {
            (k.await
                == [
                    "/skydns/local/skydns/b/n1-b 22",
                    "/skydns/local/skydns/c/n1-c 3",
                    "/skydns/local/skydns/z/n1-z 9",
                ])
            .then_some(())
        }
    })
    .await;
    // A bad config is refused; everything keeps running.
    std::fs::write(&config, "[[service]]\nname = \"d\"\n").unwrap();
    hup(s.pid().unwrap());
    eventually("the refusal logged", LIMIT, || {
        let log = s.log();
        async move {
            log.contains("the new [[service]] config is refused")
                .then_some(())
        }
    })
    .await;
    assert_eq!(keys(&client).await.len(), 3);
    client.put("still-serving", "1", None).await.unwrap();
}
