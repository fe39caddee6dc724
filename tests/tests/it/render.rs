//! Files rendered from keys (`[[template]]`, `cairn render`), cairn only:
//! etcd has no templates. Each case runs a real agent with a `--config`
//! holding its templates, writes keys through the etcd API and waits for
//! the files (never for a time).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_tests::{
    Kind, Layout, Subject, SubjectOptions, cairn_bin, eventually, http_request, subject_kind,
};
use etcd_client::PutOptions;

const LIMIT: Duration = Duration::from_secs(30);

fn cairn_only() -> bool {
    subject_kind() == Kind::Cairn
}

/// An agent started with `--config <dir>/cairn.toml` holding `config`.
async fn agent(dir: &Path, config: &str) -> Subject {
    let path = dir.join("cairn.toml");
    std::fs::write(&path, config).unwrap();
    Subject::start_with(SubjectOptions {
        extra_args: vec!["--config".into(), path.display().to_string()],
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await
}

fn status(port: u16) -> serde_json::Value {
    let (code, body) = http_request(("127.0.0.1", port), "GET", "/v1/render", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn template_status(port: u16, dest: &Path) -> serde_json::Value {
    let st = status(port);
    st["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["destination"] == dest.display().to_string())
        .unwrap_or_else(|| panic!("no status for {}: {st}", dest.display()))
        .clone()
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// Waits until `p` holds exactly `want`.
async fn file_is(p: &Path, want: &str) {
    let what = format!("{} to hold {want:?}", p.display());
    eventually(&what, LIMIT, || async {
        (read(p).as_deref() == Some(want)).then_some(())
    })
    .await
}

/// Waits until the template's last complete render is at `rev` or later.
async fn rendered_at(port: u16, dest: &Path, rev: i64) -> serde_json::Value {
    eventually(
        &format!("{} rendered at {rev}", dest.display()),
        LIMIT,
        || async {
            let t = template_status(port, dest);
            (t["last_render_revision"].as_i64().unwrap_or(0) >= rev).then_some(t)
        },
    )
    .await
}

fn metric(port: u16, path: &str, name: &str) -> Option<f64> {
    let (code, body) = http_request(("127.0.0.1", port), "GET", path, None);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

const NGINX: &str = r#"upstream web {
{% for s in services("web") | sort(attribute="host") %}
  server {{ s.host }}:{{ s.port }};
{% else %}
  server 127.0.0.1:1 down;
{% endfor %}
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn nginx_upstreams_follow_skydns_records_added_revoked_and_expired() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("upstreams.conf");
    let s = agent(
        dir.path(),
        &format!(
            "[[template]]\ndestination = {}\ncontents = '''\n{NGINX}'''\n",
            toml_str(&dest)
        ),
    )
    .await;
    let empty = "upstream web {\n  server 127.0.0.1:1 down;\n}\n";
    file_is(&dest, empty).await;
    let mut c = s.client().await;
    let a = c.lease_grant(600, None).await.unwrap().id();
    c.put(
        "/skydns/local/skydns/web/a",
        r#"{"host":"10.0.0.1","port":8080}"#,
        Some(PutOptions::new().with_lease(a)),
    )
    .await
    .unwrap();
    file_is(&dest, "upstream web {\n  server 10.0.0.1:8080;\n}\n").await;
    // A record that no agent keeps alive: it goes when its lease expires.
    let b = c.lease_grant(3, None).await.unwrap().id();
    c.put(
        "/skydns/local/skydns/web/b",
        r#"{"host":"10.0.0.2","port":8081}"#,
        Some(PutOptions::new().with_lease(b)),
    )
    .await
    .unwrap();
    // Another service's record is no part of this template.
    c.put("/skydns/local/skydns/db/x", r#"{"host":"10.9.9.9"}"#, None)
        .await
        .unwrap();
    eventually("b added", LIMIT, || async {
        read(&dest)
            .filter(|t| t.contains("server 10.0.0.2:8081;"))
            .map(|_| ())
    })
    .await;
    let rev = c
        .lease_revoke(a)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    eventually("a gone with its lease", LIMIT, || async {
        read(&dest).filter(|t| !t.contains("10.0.0.1")).map(|_| ())
    })
    .await;
    let t = rendered_at(s.client_port(), &dest, rev).await;
    assert!(t["last_error"].is_null(), "{t}");
    assert!(!read(&dest).unwrap().contains("10.9.9.9"));
    file_is(&dest, empty).await;
    let t = template_status(s.client_port(), &dest);
    assert_eq!(
        t["interests"],
        serde_json::json!(["prefix:/skydns/local/skydns/web"])
    );
    assert!(t["writes"].as_u64().unwrap() >= 4, "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_check_keeps_the_old_file_and_is_reported() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("app.conf");
    let s = agent(
        dir.path(),
        &format!(
            "[[template]]\ndestination = {}\ncontents = \"{{{{ key('/chk/v') }}}}\\n\"\n\
             check = \"grep -q '^good' {{{{path}}}} && test \\\"$CAIRN_STAGED\\\" != {}\"\n",
            toml_str(&dest),
            toml_str(&dest).replace('"', "'")
        ),
    )
    .await;
    let port = s.client_port();
    let mut c = s.client().await;
    // A missing key is an error too, and nothing is written.
    let t = eventually("missing key reported", LIMIT, || async {
        let t = template_status(port, &dest);
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("/chk/v"))
            .then_some(t)
    })
    .await;
    assert!(!dest.exists(), "{t}");
    c.put("/chk/v", "good-1", None).await.unwrap();
    file_is(&dest, "good-1\n").await;
    let errors = status(port)["errors_total"].as_u64().unwrap();
    let rev = c
        .put("/chk/v", "bad-2", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let t = rendered_at(port, &dest, rev).await;
    let e = t["last_error"].as_str().unwrap_or_default();
    assert!(e.contains("check") && e.contains("failed"), "{t}");
    assert_eq!(read(&dest).unwrap(), "good-1\n", "the old file is kept");
    assert!(status(port)["errors_total"].as_u64().unwrap() > errors);
    assert!(
        metric(port, "/v1/render/metrics", "cairn_render_errors_total").unwrap() > errors as f64
    );
    // The agent's own /health and /metrics say so too; the store stays
    // healthy (etcd's status code and field are untouched).
    let (code, body) = cairn_tests::http_request(("127.0.0.1", port), "GET", "/health", None);
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["health"], "true", "{body}");
    let apps = health["apps"].as_array().expect("an apps list").clone();
    assert!(
        apps.iter().any(|p| p
            .as_str()
            .is_some_and(|p| p.contains(&dest.display().to_string()) && p.contains("check"))),
        "{body}"
    );
    assert!(metric(port, "/metrics", "cairn_render_errors_total").unwrap() > errors as f64);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    c.put("/chk/v", "good-3", None).await.unwrap();
    file_is(&dest, "good-3\n").await;
    let t = template_status(port, &dest);
    assert!(t["last_error"].is_null(), "{t}");
    let (_, body) = cairn_tests::http_request(("127.0.0.1", port), "GET", "/health", None);
    assert!(
        !body.contains("apps"),
        "a good render clears the problem: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_runs_once_per_change_and_not_for_an_unchanged_output() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let log = dir.path().join("runs.log");
    let s = agent(
        dir.path(),
        &format!(
            "[[template]]\ndestination = {}\ncontents = \"{{{{ key_or_default('/cmd/v', '') | trim }}}}\\n\"\n\
             command = \"echo run >> {}\"\ncommand_timeout = \"5s\"\n",
            toml_str(&dest),
            log.display()
        ),
    )
    .await;
    let port = s.client_port();
    let runs = || read(&log).map(|l| l.lines().count()).unwrap_or(0);
    file_is(&dest, "\n").await;
    eventually("the first write's command", LIMIT, || async {
        (runs() == 1).then_some(())
    })
    .await;
    let mut c = s.client().await;
    c.put("/cmd/v", "a", None).await.unwrap();
    file_is(&dest, "a\n").await;
    eventually("the command of the change", LIMIT, || async {
        (runs() == 2).then_some(())
    })
    .await;
    // A change of the key that renders the same text: no write, no command.
    let rev = c
        .put("/cmd/v", "a   ", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let t = rendered_at(port, &dest, rev).await;
    assert_eq!(runs(), 2, "{t}");
    assert_eq!(t["writes"].as_u64(), Some(2), "{t}");
    let rev = c
        .put("/cmd/v", "b", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    rendered_at(port, &dest, rev).await;
    assert_eq!(read(&dest).unwrap(), "b\n");
    assert_eq!(runs(), 3);
    assert_eq!(status(port)["commands_total"].as_u64(), Some(3));
}

fn render_cli(args: &[&str]) -> std::process::Output {
    Command::new(cairn_bin())
        .arg("render")
        .args(args)
        .output()
        .expect("run cairn render")
}

#[tokio::test(flavor = "multi_thread")]
async fn render_once_and_dry_run() {
    if !cairn_only() {
        return;
    }
    let s = Subject::start_with(SubjectOptions::new(Kind::Cairn)).await;
    let mut c = s.client().await;
    c.put("/once/a", "A", None).await.unwrap();
    c.put("/once/list/x", "1", None).await.unwrap();
    c.put("/once/list/y", "2", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d1 = dir.path().join("sub/one.conf");
    let d2 = dir.path().join("two.conf");
    let cfg = dir.path().join("ok.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[template]]\ndestination = {}\ncontents = \"a={{{{ key('/once/a') }}}}\\n\"\nperms = \"0600\"\n\
             [[template]]\ndestination = {}\ncontents = \"{{{{ keys('/once/list/') | map(attribute='value') | join(',') }}}}\"\n",
            toml_str(&d1),
            toml_str(&d2)
        ),
    )
    .unwrap();
    let ep = s.endpoint();
    let cfg_s = cfg.display().to_string();
    // --dry-run: printed, nothing written.
    let out = render_cli(&["--dry-run", "--config", &cfg_s, "--endpoints", &ep]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("> {}\na=A\n", d1.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("> {}\n1,2", d2.display())),
        "{stdout}"
    );
    assert!(!d1.exists() && !d2.exists());
    // --once: written, with the mode asked for.
    let out = render_cli(&["--once", "--config", &cfg_s, "--endpoints", &ep]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&d1).as_deref(), Some("a=A\n"));
    assert_eq!(read(&d2).as_deref(), Some("1,2"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&d1).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A missing key fails --once, names the key, and keeps the old file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[[template]]\ndestination = {}\ncontents = \"a={{{{ key('/once/missing') }}}}\"\n",
            toml_str(&d1)
        ),
    )
    .unwrap();
    let out = render_cli(&[
        "--once",
        "--config",
        &bad.display().to_string(),
        "--endpoints",
        &ep,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/once/missing"),
        "{out:?}"
    );
    assert_eq!(read(&d1).as_deref(), Some("a=A\n"));
    // Through the local socket too.
    let sock = format!("unix:{}", s.data_dir().join("cairn.sock").display());
    c.put("/once/a", "B", None).await.unwrap();
    let out = render_cli(&["--once", "--config", &cfg_s, "--endpoints", &sock]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&d1).as_deref(), Some("a=B\n"));
    // Usage errors exit 2.
    assert_eq!(render_cli(&["--config", &cfg_s]).status.code(), Some(2));
    assert_eq!(render_cli(&["--once", "--bogus"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_a_template_file_re_renders_it() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app.conf.j2");
    let dest = dir.path().join("app.conf");
    std::fs::write(&src, "v1 {{ key_or_default('/edit/x', 'none') }}\n").unwrap();
    let s = agent(
        dir.path(),
        &format!(
            "[[template]]\nsource = \"app.conf.j2\"\ndestination = {}\n",
            toml_str(&dest)
        ),
    )
    .await;
    file_is(&dest, "v1 none\n").await;
    std::fs::write(&src, "v2 {{ key_or_default('/edit/x', 'none') }}\n").unwrap();
    file_is(&dest, "v2 none\n").await;
    // An editor's save: a new file renamed over the old one.
    let tmp = dir.path().join(".app.conf.j2.swp");
    std::fs::write(&tmp, "v3 {{ key('/edit/x') }}\n").unwrap();
    std::fs::rename(&tmp, &src).unwrap();
    let mut c = s.client().await;
    c.put("/edit/x", "X", None).await.unwrap();
    file_is(&dest, "v3 X\n").await;
    // A template that does not compile keeps the last good file.
    std::fs::write(&src, "v4 {% for %}\n").unwrap();
    eventually("syntax error reported", LIMIT, || async {
        let t = template_status(s.client_port(), &dest);
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("syntax"))
            .then_some(())
    })
    .await;
    assert_eq!(read(&dest).unwrap(), "v3 X\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_bad_config_keeps_the_old_one() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let good = format!(
        "[[template]]\ndestination = {}\ncontents = \"{{{{ key_or_default('/hup/k', '0') }}}}\"\n",
        toml_str(&a)
    );
    let s = agent(dir.path(), &good).await;
    let port = s.client_port();
    file_is(&a, "0").await;
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(&cfg, format!("{good}bogus = 1\n")).unwrap();
    let hup = |pid: u32| {
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    };
    hup(s.pid().unwrap());
    eventually("the bad config refused", LIMIT, || async {
        let st = status(port);
        (st["reloads_refused"].as_u64().unwrap_or(0) >= 1 && s.log().contains("SIGHUP"))
            .then_some(())
    })
    .await;
    assert!(s.log().contains("bogus"), "the refusal names the key");
    // Still running, still rendering the old templates.
    let mut c = s.client().await;
    c.put("/hup/k", "1", None).await.unwrap();
    file_is(&a, "1").await;
    assert!(!b.exists());
    // A good new config is taken.
    std::fs::write(
        &cfg,
        format!(
            "{good}[[template]]\ndestination = {}\ncontents = \"b{{{{ key('/hup/k') }}}}\"\n",
            toml_str(&b)
        ),
    )
    .unwrap();
    hup(s.pid().unwrap());
    file_is(&b, "b1").await;
    assert!(status(port)["reloads"].as_u64().unwrap() >= 1);
    assert_eq!(status(port)["templates"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_renders_too() {
    if !cairn_only() {
        return;
    }
    let member = Subject::start_with(SubjectOptions::new(Kind::Cairn)).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("via-proxy");
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[template]]\ndestination = {}\ncontents = \"{{{{ key('/px/k') }}}}\"\n",
            toml_str(&dest)
        ),
    )
    .unwrap();
    let member_ep = member.endpoint();
    let cfg_s = cfg.display().to_string();
    let proxy = Subject::start_with(SubjectOptions {
        command_line: Some(Arc::new(move |l: &Layout<'_>| {
            let client = format!("http://127.0.0.1:{}", l.client_port);
            let args = [
                "--role",
                "proxy",
                "--name",
                "p1",
                "--endpoints",
                &member_ep,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--data-dir",
                &l.data_dir.display().to_string(),
                "--config",
                &cfg_s,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (args, vec![])
        })),
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await;
    let mut c = member.client().await;
    c.put("/px/k", "from-the-cluster", None).await.unwrap();
    file_is(&dest, "from-the-cluster").await;
    c.put("/px/k", "again", None).await.unwrap();
    file_is(&dest, "again").await;
    let st = status(proxy.client_port());
    assert!(st["stale"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_templates_share_one_watch_per_prefix() {
    if !cairn_only() {
        return;
    }
    const N: usize = 500;
    const PREFIXES: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dest = |i: usize| out.join(format!("t{i:03}.conf"));
    let mut cfg = String::new();
    for i in 0..N {
        cfg.push_str(&format!(
            "[[template]]\ndestination = {}\ncontents = \"{{% for k in keys('/many/p{}/') %}}{{{{ k.name }}}}={{{{ k.value }}}};{{% endfor %}}\"\n",
            toml_str(&dest(i)),
            i % PREFIXES
        ));
    }
    let s = agent(dir.path(), &cfg).await;
    let port = s.client_port();
    let mut c = s.client().await;
    for j in 0..PREFIXES {
        c.put(format!("/many/p{j}/k"), format!("v{j}"), None)
            .await
            .unwrap();
    }
    eventually("all 500 files rendered", LIMIT, || async {
        (0..N)
            .all(|i| read(&dest(i)).as_deref() == Some(&*format!("k=v{};", i % PREFIXES)))
            .then_some(())
    })
    .await;
    // One watcher per prefix on the agent, however many templates read it
    // (the gauge follows the watch streams a moment later under load).
    eventually("one watcher per prefix", LIMIT, || async {
        (metric(port, "/metrics", "etcd_debugging_mvcc_watcher") == Some(PREFIXES as f64))
            .then_some(())
    })
    .await;
    // The render status counts the view's ranges as of the last snapshot
    // the renderer took in, which can follow the watchers by a moment.
    eventually("the status lists one range per prefix", LIMIT, || async {
        (status(port)["watched_ranges"].as_u64() == Some(PREFIXES as u64)).then_some(())
    })
    .await;
    // A change under one prefix re-renders only its templates.
    let before: Vec<serde_json::Value> = (0..N).map(|i| template_status(port, &dest(i))).collect();
    let rev = c
        .put("/many/p0/k", "new", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    eventually("prefix 0's files", LIMIT, || async {
        (0..N)
            .step_by(PREFIXES)
            .all(|i| read(&dest(i)).as_deref() == Some("k=new;"))
            .then_some(())
    })
    .await;
    let st = status(port);
    for (i, t) in st["templates"].as_array().unwrap().iter().enumerate() {
        let r = t["last_render_revision"].as_i64().unwrap();
        if i % PREFIXES == 0 {
            assert!(r >= rev, "{t}");
        } else {
            assert_eq!(
                r,
                before[i]["last_render_revision"].as_i64().unwrap(),
                "{t}"
            );
            assert_eq!(t["renders"], before[i]["renders"], "{t}");
        }
    }
}

/// A destination that is a bind-mounted file (EBUSY on rename), made in a
/// user namespace (`unshare -Urm`, no root needed where unprivileged user
/// namespaces are allowed; skipped where they are not).
#[tokio::test(flavor = "multi_thread")]
async fn a_bind_mounted_destination_is_written_in_place() {
    if !cairn_only() {
        return;
    }
    let probe = Command::new("unshare").args(["-Urm", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no user namespaces here (unshare -Urm)");
        return;
    }
    let s = Subject::start_with(SubjectOptions::new(Kind::Cairn)).await;
    let mut c = s.client().await;
    c.put("/mnt/v", "new content", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backing: PathBuf = dir.path().join("backing.conf");
    let dest = dir.path().join("mounted.conf");
    std::fs::write(&backing, "old").unwrap();
    std::fs::write(&dest, "").unwrap();
    let cfg = dir.path().join("cairn.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[template]]\ndestination = {}\ncontents = \"{{{{ key('/mnt/v') }}}}\"\n",
            toml_str(&dest)
        ),
    )
    .unwrap();
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && exec "$3" render --once --config "$4" --endpoints "$5""#)
        .arg("sh")
        .arg(&backing)
        .arg(&dest)
        .arg(cairn_bin())
        .arg(&cfg)
        .arg(s.endpoint())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(stderr.contains("writing it in place"), "{stderr}");
    // Outside the namespace the mount is gone; what was written through
    // it is in the backing file.
    assert_eq!(read(&backing).as_deref(), Some("new content"));
    assert_eq!(read(&dest).as_deref(), Some(""));
}

/// Under systemd (`NOTIFY_SOCKET`), `READY=1` comes after the first full
/// render: when it arrives, every file is there.
#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_after_the_first_full_render() {
    if !cairn_only() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let mut cfg = String::new();
    for i in 0..20 {
        cfg.push_str(&format!(
            "[[template]]\ndestination = {}\ncontents = \"{i} {{{{ key_or_default('/ready/{i}', 'none') }}}}\"\n",
            toml_str(&dir.path().join(format!("f{i}")))
        ));
    }
    let cfg_path = dir.path().join("cairn.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let (cfg_s, notify) = (
        cfg_path.display().to_string(),
        sock_path.display().to_string(),
    );
    let _s = Subject::start_with(SubjectOptions {
        command_line: Some(Arc::new(move |l: &Layout<'_>| {
            let mut args =
                cairn_tests::member_args(l.data_dir, l.client_port, l.peer_port, l.token);
            args.extend(["--config".to_string(), cfg_s.clone()]);
            (args, vec![("NOTIFY_SOCKET".to_string(), notify.clone())])
        })),
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await;
    // STATUS= lines first, then READY=1 (the agent's, after its own
    // conditions and the first full render).
    let got = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        loop {
            let mut buf = [0u8; 256];
            let n = sock.recv(&mut buf).expect("READY=1 within the limit");
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if msg.lines().any(|l| l == "READY=1") {
                return seen;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        got.iter()
            .any(|m| m == "STATUS=waiting for the first full render"),
        "{got:?}"
    );
    for i in 0..20 {
        assert_eq!(
            read(&dir.path().join(format!("f{i}"))),
            Some(format!("{i} none"))
        );
    }
}
