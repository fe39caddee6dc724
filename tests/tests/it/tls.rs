//! TLS on the client port with etcd's flags (`--cert-file`, `--key-file`,
//! `--trusted-ca-file`, `--client-cert-auth`, https listen URLs), driven by
//! etcdctl and openssl. The same cases run against etcd 3.4 where it has
//! the flag.
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::{ETCDCTL_BIN, Kind, bin_for, free_port, subject_kind};

use crate::pki::Pki;

/// A server started with https client URLs; killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
    ca: String,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServer {
    /// Starts the subject with `--cert-file`/`--key-file` (and `extra`
    /// flags) and waits until etcdctl with `client` (cert, key) answers.
    fn start(
        pki: &Pki,
        server: (String, String),
        extra: &[&str],
        client: Option<&(String, String)>,
    ) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut peer = free_port();
        while peer == port {
            peer = free_port();
        }
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut args: Vec<String> = vec![
            "--name".into(),
            "tls".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("tls={peer_url}"),
            "--cert-file".into(),
            server.0,
            "--key-file".into(),
            server.1,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(bin_for(subject_kind()))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let s = TlsServer {
            child,
            port,
            ca: pki.ca_path.display().to_string(),
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = s.etcdctl(client, &["get", "probe"]);
            if out.status.success() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "TLS server did not answer: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn etcdctl(&self, client: Option<&(String, String)>, args: &[&str]) -> Output {
        let mut cmd = Command::new(ETCDCTL_BIN);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://127.0.0.1:{}", self.port))
            .arg(format!("--cacert={}", self.ca))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=3s");
        if let Some((c, k)) = client {
            cmd.arg(format!("--cert={c}")).arg(format!("--key={k}"));
        }
        cmd.args(args).output().unwrap()
    }

    /// The subject (CN) of the certificate the server presents now.
    fn presented_subject(&self, extra: &[&str]) -> Output {
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn https_client_urls_serve_etcdctl_and_refuse_plain_http() {
    let pki = Pki::new("client");
    let s = TlsServer::start(&pki, pki.member("server"), &[], None);
    let out = s.etcdctl(None, &["put", "secure", "yes"]);
    assert!(out.status.success(), "{out:?}");
    let out = s.etcdctl(None, &["get", "secure", "--print-value-only"]);
    assert_eq!(stdout(&out).trim(), "yes");
    // The same port in plain text gets nothing.
    let plain = Command::new(ETCDCTL_BIN)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{}", s.port))
        .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "secure"])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain text was served over TLS");
}

#[test]
fn client_cert_auth_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = Pki::new("client");
    let other = Pki::new("other");
    let client = pki.member("alice");
    let ca = pki.ca_path.display().to_string();
    let s = TlsServer::start(
        &pki,
        pki.member("server"),
        &["--client-cert-auth", "--trusted-ca-file", &ca],
        Some(&client),
    );
    let out = s.etcdctl(Some(&client), &["put", "k", "v"]);
    assert!(out.status.success(), "{out:?}");
    let out = s.etcdctl(None, &["get", "k"]);
    assert!(
        !out.status.success(),
        "a client without a certificate was served"
    );
    let stranger = other.member("mallory");
    let out = s.etcdctl(Some(&stranger), &["get", "k"]);
    assert!(
        !out.status.success(),
        "a certificate of another CA was accepted"
    );
}

#[test]
fn with_client_cert_auth_a_certificates_common_name_is_its_user() {
    let pki = Pki::new("client");
    let root = pki.member("root");
    let alice = pki.member("alice");
    let nobody = pki.member("mallory");
    let ca = pki.ca_path.display().to_string();
    let s = TlsServer::start(
        &pki,
        pki.member("server"),
        &["--client-cert-auth", "--trusted-ca-file", &ca],
        Some(&root),
    );
    let ok = |cert: &(String, String), args: &[&str]| {
        let out = s.etcdctl(Some(cert), args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        stdout(&out)
    };
    ok(&root, &["put", "ro", "v0"]);
    ok(&root, &["user", "add", "root:pw"]);
    ok(&root, &["user", "add", "alice:pw"]);
    ok(&root, &["role", "add", "r"]);
    ok(&root, &["role", "grant-permission", "r", "read", "ro"]);
    ok(&root, &["user", "grant-role", "alice", "r"]);
    ok(&root, &["auth", "enable"]);
    // No password, no token: the certificate names the user.
    assert!(ok(&alice, &["get", "ro"]).contains("v0"));
    let denied = s.etcdctl(Some(&alice), &["put", "ro", "x"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    let stranger = s.etcdctl(Some(&nobody), &["get", "ro"]);
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("permission denied"),
        "{stranger:?}"
    );
    // The root certificate is an admin.
    assert!(ok(&root, &["user", "list"]).contains("alice"));
    ok(&root, &["auth", "disable"]);
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = Pki::new("client");
    let (cert, key) = pki.member("first");
    let s = TlsServer::start(&pki, (cert.clone(), key.clone()), &[], None);
    let out = s.presented_subject(&[]);
    assert!(
        stdout(&out).contains("CN = first") || stdout(&out).contains("CN=first"),
        "{}",
        stdout(&out)
    );
    // Renew: new files in place (as certbot or cert-manager would).
    let (c2, k2) = pki.member("second");
    std::fs::copy(&k2, &key).unwrap();
    std::fs::copy(&c2, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = s.presented_subject(&[]);
        let text = stdout(&out);
        if text.contains("CN = second") || text.contains("CN=second") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still presents the old certificate:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = s.etcdctl(None, &["put", "after-renewal", "1"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn tls_versions_and_cipher_suites_are_enforced() {
    if subject_kind() == Kind::Etcd {
        return; // --tls-min-version arrived in etcd 3.5
    }
    let pki = Pki::new("client");
    let s = TlsServer::start(
        &pki,
        pki.member("server"),
        &["--tls-min-version", "TLS1.3"],
        None,
    );
    let out = s.presented_subject(&["-tls1_2"]);
    assert!(
        !stdout(&out).contains("CN = server"),
        "TLS 1.2 was accepted with --tls-min-version TLS1.3"
    );
    let out = s.presented_subject(&["-tls1_3"]);
    assert!(stdout(&out).contains("CN = server"), "{}", stdout(&out));
    drop(s);
    let s = TlsServer::start(
        &pki,
        pki.member("server"),
        &[
            "--tls-max-version",
            "TLS1.2",
            "--cipher-suites",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ],
        None,
    );
    let out = s.presented_subject(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    assert!(
        !stdout(&out).contains("CN = server"),
        "a suite outside --cipher-suites was used"
    );
    let out = s.presented_subject(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]);
    assert!(stdout(&out).contains("CN = server"), "{}", stdout(&out));
}

#[test]
fn an_https_url_without_a_certificate_is_refused() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(bin_for(subject_kind()))
        .args([
            "--data-dir",
            &dir.path().join("d").display().to_string(),
            "--listen-client-urls",
            &format!("https://127.0.0.1:{port}"),
            "--advertise-client-urls",
            &format!("https://127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kept running without a certificate:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(err.contains("--cert-file"), "{err}");
}

/// The proxy role serves https client URLs with the same flags.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_serves_https_client_urls() {
    if subject_kind() == Kind::Etcd {
        return; // cairn's --role proxy
    }
    let upstream = cairn_tests::Subject::start().await;
    let pki = Pki::new("client");
    let (cert, key) = pki.member("proxy");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let log = dir.path().join("proxy.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin_for(Kind::Cairn))
        .args([
            "--role",
            "proxy",
            "--endpoints",
            &upstream.endpoint(),
            "--data-dir",
            &dir.path().join("p").display().to_string(),
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let s = TlsServer {
        child,
        port,
        ca: pki.ca_path.display().to_string(),
        _dir: dir,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = s.etcdctl(None, &["put", "via-tls-proxy", "yes"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS proxy did not answer: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = upstream
        .client()
        .await
        .get("via-tls-proxy", None)
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"yes");
}
