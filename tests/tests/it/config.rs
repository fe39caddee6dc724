//! Configuration: etcd's flags, config file and environment variables.
//!
//! Bad configurations must stop the process with a non-zero exit and a
//! message naming the setting. Where etcd 3.4 behaves the same, the case
//! runs against it too, so the expectation is checked against the oracle.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_tests::{
    Kind, Layout, Subject, SubjectOptions, bin_for, free_port, member_args, subject_kind,
};

/// Runs the subject's binary with `args` and expects it to exit by itself
/// with a failure; returns its combined output.
pub(crate) fn run_expect_failure(args: &[String], envs: &[(&str, &str)]) -> String {
    let kind = subject_kind();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("out.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(bin_for(kind))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn subject");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{kind:?} with {args:?} kept running; output:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        !status.success(),
        "{kind:?} with {args:?} exited successfully; output:\n{output}"
    );
    output
}

fn member_flags(data_dir: &Path) -> Vec<String> {
    member_args(data_dir, free_port(), free_port(), "config-test")
}

#[test]
fn unknown_flag() {
    let out = run_expect_failure(&["--bogus-flag".into()], &[]);
    assert!(out.contains("bogus-flag"), "{out}");
}

#[test]
fn bad_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = member_flags(&dir.path().join("data"));
    let i = args
        .iter()
        .position(|a| a == "--listen-client-urls")
        .unwrap();
    args[i + 1] = "not-a-url".into();
    let out = run_expect_failure(&args, &[]);
    assert!(out.contains("listen-client-urls"), "{out}");
    assert!(out.contains("not-a-url"), "{out}");
}

#[test]
fn client_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let args = member_args(&dir.path().join("data"), port, free_port(), "in-use");
    let out = run_expect_failure(&args, &[]);
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(out.to_lowercase().contains("in use"), "{out}");
    drop(taken);
}

#[test]
fn garbage_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let wal = data.join("member").join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::create_dir_all(data.join("member").join("snap")).unwrap();
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(wal.join("0000000000000000-0000000000000000.wal"), &noise).unwrap();
    std::fs::write(data.join("garbage.bin"), &noise).unwrap();
    let out = run_expect_failure(&member_flags(&data), &[]);
    if subject_kind() == Kind::Cairn {
        assert!(out.contains(&data.display().to_string()), "{out}");
    }
}

/// A data dir written by real etcd is not cairn's format: cairn must refuse
/// it (and name it) rather than start empty or overwrite it.
#[tokio::test]
async fn etcd_data_dir_is_refused_by_cairn() {
    if subject_kind() == Kind::Etcd {
        return;
    }
    let mut etcd = Subject::start_with(SubjectOptions::new(Kind::Etcd)).await;
    etcd.client().await.put("k", "v", None).await.unwrap();
    etcd.kill9();
    let data = etcd.data_dir().to_path_buf();
    let before = std::fs::read_dir(data.join("member")).unwrap().count();
    let out = run_expect_failure(&member_flags(&data), &[]);
    assert!(out.contains(&data.display().to_string()), "{out}");
    let after = std::fs::read_dir(data.join("member")).unwrap().count();
    assert_eq!(before, after, "cairn changed etcd's data dir");
}

#[tokio::test]
async fn config_file_is_honoured() {
    let options = SubjectOptions {
        command_line: Some(Arc::new(|l: &Layout<'_>| {
            let client = format!("http://127.0.0.1:{}", l.client_port);
            let peer = format!("http://127.0.0.1:{}", l.peer_port);
            let yaml = format!(
                "name: fromfile\n\
                 data-dir: {}\n\
                 listen-client-urls: {client}\n\
                 advertise-client-urls: {client}\n\
                 listen-peer-urls: {peer}\n\
                 initial-advertise-peer-urls: {peer}\n\
                 initial-cluster: fromfile={peer}\n\
                 initial-cluster-state: new\n\
                 initial-cluster-token: {}\n",
                l.data_dir.display(),
                l.token
            );
            let path = l.dir.join("etcd.conf.yml");
            std::fs::write(&path, yaml).unwrap();
            (
                vec!["--config-file".into(), path.display().to_string()],
                vec![],
            )
        })),
        ..SubjectOptions::new(subject_kind())
    };
    let s = Subject::start_with(options).await;
    let mut c = s.client().await;
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members()[0].name(), "fromfile");
    assert_eq!(members.members()[0].peer_urls(), [s.peer_url()]);
    assert!(std::fs::read_dir(s.data_dir()).unwrap().count() > 0);
}

#[tokio::test]
async fn environment_variables_are_honoured() {
    let options = SubjectOptions {
        command_line: Some(Arc::new(|l: &Layout<'_>| {
            let client = format!("http://127.0.0.1:{}", l.client_port);
            let peer = format!("http://127.0.0.1:{}", l.peer_port);
            let envs = vec![
                ("ETCD_NAME".to_string(), "fromenv".to_string()),
                (
                    "ETCD_DATA_DIR".to_string(),
                    l.data_dir.display().to_string(),
                ),
                (
                    "ETCD_INITIAL_CLUSTER".to_string(),
                    format!("fromenv={peer}"),
                ),
            ];
            let args = vec![
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer,
                "--initial-cluster-token".into(),
                l.token.to_string(),
            ];
            (args, envs)
        })),
        ..SubjectOptions::new(subject_kind())
    };
    let s = Subject::start_with(options).await;
    let mut c = s.client().await;
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members()[0].name(), "fromenv");
    assert!(
        std::fs::read_dir(s.data_dir()).unwrap().count() > 0,
        "ETCD_DATA_DIR not used"
    );
}

/// The local socket (cairn only): `<data-dir>/cairn.sock` by default, the
/// same API as the TCP port. Driven with curl (the JSON gateway over
/// HTTP/1.1 and a raw gRPC call over h2c) and with etcdctl 3.4, whose
/// `unix://` endpoints send the socket path as `:authority`: h2 would refuse
/// that, so the client port repairs it (agent/src/serve/authority.rs).
#[tokio::test]
async fn local_socket_serves_the_same_api() {
    if subject_kind() == Kind::Etcd {
        return;
    }
    let s = Subject::start().await;
    let sock = s.data_dir().join("cairn.sock");
    assert!(sock.exists(), "no socket at {}", sock.display());
    let curl = |args: &[&str], input: &[u8]| -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("curl")
            .args(["-sS", "--unix-socket", sock.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // JSON gateway: put "via-socket" = "yes" (base64).
    let put = curl(
        &[
            "-X",
            "POST",
            "http://localhost/v3/kv/put",
            "-d",
            r#"{"key":"dmlhLXNvY2tldA==","value":"eWVz"}"#,
        ],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&put).contains("revision"),
        "{}",
        String::from_utf8_lossy(&put)
    );
    // Written on the socket, read over TCP: one store.
    let r = s.client().await.get("via-socket", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"yes");
    // gRPC over h2c on the socket: KV.Range{key: "via-socket"}.
    let mut msg = vec![0x0a, 10];
    msg.extend_from_slice(b"via-socket");
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let body = curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "@-",
            "http://localhost/etcdserverpb.KV/Range",
        ],
        &framed,
    );
    assert!(body.windows(3).any(|w| w == b"yes"), "gRPC reply {body:?}");
    // etcdctl over the socket: a put, a get, and a lock (several requests
    // on one connection, later ones referring to HPACK's dynamic table).
    let unix = format!("--endpoints=unix://{}", sock.display());
    let etcdctl = |args: &[&str]| -> String {
        let out = s.etcdctl([unix.as_str()].iter().chain(args));
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(etcdctl(&["put", "etcdctl-socket", "ok"]).trim(), "OK");
    assert_eq!(
        etcdctl(&["get", "etcdctl-socket", "--print-value-only"]).trim(),
        "ok"
    );
    assert_eq!(
        etcdctl(&["lock", "socket-lock", "echo", "held"]).trim(),
        "held"
    );
    let r = s.client().await.get("etcdctl-socket", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"ok");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
}

/// cairn's own TOML config (`--config`): every key is a flag's name; arrays
/// are URL lists. Flags on the command line win over it. cairn only.
#[tokio::test]
async fn toml_config_is_honoured_and_flags_override_it() {
    if subject_kind() == Kind::Etcd {
        return;
    }
    let options = SubjectOptions {
        command_line: Some(Arc::new(|l: &Layout<'_>| {
            let client = format!("http://127.0.0.1:{}", l.client_port);
            let peer = format!("http://127.0.0.1:{}", l.peer_port);
            let toml = format!(
                "role = \"voter\"\n\
                 name = \"fromtoml\"\n\
                 data_dir = \"{}\"\n\
                 listen-client-urls = [\"{client}\"]\n\
                 advertise-client-urls = [\"{client}\"]\n\
                 listen_peer_urls = \"{peer}\"\n\
                 initial-advertise-peer-urls = \"{peer}\"\n\
                 initial-cluster = \"fromtoml={peer}\"\n\
                 initial-cluster-token = \"{}\"\n\
                 socket-mode = \"0600\"\n\
                 max-txn-ops = 3\n",
                l.data_dir.display(),
                l.token
            );
            let path = l.dir.join("cairn.toml");
            std::fs::write(&path, toml).unwrap();
            (
                vec![
                    "--config".into(),
                    path.display().to_string(),
                    "--max-txn-ops".into(),
                    "5".into(),
                ],
                vec![],
            )
        })),
        ..SubjectOptions::new(subject_kind())
    };
    let s = Subject::start_with(options).await;
    let mut c = s.client().await;
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members()[0].name(), "fromtoml");
    use std::os::unix::fs::PermissionsExt;
    let sock = s.data_dir().join("cairn.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // --max-txn-ops 5 from the command line, not 3 from the file.
    let ops: Vec<etcd_client::TxnOp> = (0..5)
        .map(|i| etcd_client::TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
}

#[test]
fn bad_role_settings_are_refused_with_the_setting_named() {
    if subject_kind() == Kind::Etcd {
        return;
    }
    let out = run_expect_failure(&["--role".into(), "observer".into()], &[]);
    assert!(out.contains("--role") && out.contains("observer"), "{out}");
    let out = run_expect_failure(&["--role".into(), "learner".into()], &[]);
    assert!(out.contains("--endpoints"), "{out}");
    let out = run_expect_failure(
        &[
            "--role".into(),
            "proxy".into(),
            "--endpoints".into(),
            "http://127.0.0.1".into(),
        ],
        &[],
    );
    assert!(
        out.contains("--endpoints") && out.contains("host:port"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.toml");
    std::fs::write(&path, "rol = \"voter\"\n").unwrap();
    let out = run_expect_failure(&["--config".into(), path.display().to_string()], &[]);
    assert!(
        out.contains("unknown key \"rol\"") && out.contains("cairn.toml"),
        "{out}"
    );
    std::fs::write(&path, "role = [\n").unwrap();
    let out = run_expect_failure(&["--config".into(), path.display().to_string()], &[]);
    assert!(out.contains("cairn.toml"), "{out}");
    let out = run_expect_failure(&["--socket-mode".into(), "999".into()], &[]);
    assert!(out.contains("--socket-mode"), "{out}");
    // TLS to the cluster: a missing file, a certificate without its key.
    let proxy = |extra: &[&str]| -> Vec<String> {
        ["--role", "proxy", "--endpoints", "https://127.0.0.1:2379"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let out = run_expect_failure(&proxy(&["--cacert", "/nonexistent/ca.pem"]), &[]);
    assert!(
        out.contains("--cacert") && out.contains("/nonexistent/ca.pem"),
        "{out}"
    );
    let cert = path.display().to_string();
    let out = run_expect_failure(&proxy(&["--cert", &cert]), &[]);
    assert!(
        out.contains("--cert") && out.contains("needs --key"),
        "{out}"
    );
}

#[test]
fn bad_auth_settings_are_refused_with_the_setting_named() {
    if subject_kind() == Kind::Etcd {
        return; // etcd 3.4 logs a warning and falls back for some of these
    }
    let out = run_expect_failure(&["--auth-token".into(), "magic".into()], &[]);
    assert!(
        out.contains("--auth-token") && out.contains("unknown token type"),
        "{out}"
    );
    let out = run_expect_failure(
        &[
            "--auth-token".into(),
            "jwt,pub-key=/nonexistent.pub,sign-method=RS256".into(),
        ],
        &[],
    );
    assert!(out.contains("/nonexistent.pub"), "{out}");
    let out = run_expect_failure(&["--bcrypt-cost".into(), "99".into()], &[]);
    assert!(
        out.contains("--bcrypt-cost") && out.contains("between 4 and 31"),
        "{out}"
    );
}
