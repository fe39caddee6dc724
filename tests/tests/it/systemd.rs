//! Running under systemd (cairn only): the shipped unit verifies, the
//! shipped config names every flag and starts an agent, and the agent
//! speaks systemd's notify protocol — `READY=1` once it serves (a member
//! caught up, a proxy connected), `STATUS=` lines, `WATCHDOG=1` pings.
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{Kind, Layout, Subject, SubjectOptions, cairn_bin, subject_kind};

const LIMIT: Duration = Duration::from_secs(30);

fn cairn_only() -> bool {
    subject_kind() == Kind::Cairn
}

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// A notify socket, as systemd's: the datagrams the agent sends.
struct Notify {
    sock: UnixDatagram,
    path: String,
    _dir: tempfile::TempDir,
}

impl Notify {
    fn bind() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        Notify {
            sock,
            path: path.display().to_string(),
            _dir: dir,
        }
    }

    /// Every message until one has the line `want` (which is last).
    fn until(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let mut buf = [0u8; 512];
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {want} (got {seen:?}): {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn the_unit_verifies() {
    if !cairn_only() {
        return;
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(packaging().join("systemd/cairn.service")).unwrap();
    // verify checks that ExecStart's binary exists: the one just built.
    let unit = unit.replace("/usr/bin/cairn", &cairn_bin().display().to_string());
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecReload="),
        "{unit}"
    );
    let path = dir.path().join("cairn.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // A directive systemd does not understand is only a warning: none.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_shipped_config_names_every_flag() {
    if !cairn_only() {
        return;
    }
    let text = std::fs::read_to_string(packaging().join("cairn.toml")).unwrap();
    let help = Command::new(cairn_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--"))
        .map(|f| f.split([' ', '[']).next().unwrap())
        .collect();
    assert!(flags.len() > 50, "{help}");
    for f in flags {
        let named = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .any(|l| l.starts_with(&format!("{f} =")));
        assert!(named, "--{f} is not in packaging/cairn.toml");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_with_the_shipped_config_is_ready_once_it_serves_and_pings_the_watchdog() {
    if !cairn_only() {
        return;
    }
    let notify = Notify::bind();
    let config = packaging().join("cairn.toml").display().to_string();
    let n = notify.path.clone();
    let s = Subject::start_with(SubjectOptions {
        command_line: Some(Arc::new(move |l: &Layout<'_>| {
            // The shipped config's data-dir is the unit's; a flag overrides it.
            let mut args = vec!["--config".to_string(), config.clone()];
            args.extend(cairn_tests::member_args(
                l.data_dir,
                l.client_port,
                l.peer_port,
                l.token,
            ));
            (
                args,
                vec![
                    ("NOTIFY_SOCKET".to_string(), n.clone()),
                    ("WATCHDOG_USEC".to_string(), "200000".to_string()),
                ],
            )
        })),
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await;
    let got = tokio::task::spawn_blocking(move || {
        let mut got = notify.until("READY=1");
        got.extend(notify.until("WATCHDOG=1"));
        got
    })
    .await
    .unwrap();
    assert_eq!(got[0], "STATUS=catching up with the cluster", "{got:?}");
    assert!(
        got.iter().any(|m| m == "READY=1\nSTATUS=serving"),
        "{got:?}"
    );
    // `cairn health`, a container's HEALTHCHECK: 0 when healthy, 1 when
    // the agent does not answer.
    let health = |agent: &str| {
        Command::new(cairn_bin())
            .args(["health", "--agent", agent])
            .output()
            .unwrap()
    };
    let out = health(&s.endpoint());
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\""));
    let dead = format!("http://127.0.0.1:{}", cairn_tests::free_port());
    let out = health(&dead);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to the agent"));
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_is_ready_once_the_cluster_answers_through_it() {
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::prepare(Kind::Cairn, 2, &[]);
    let notify = Notify::bind();
    // The proxy first, before any member: it says so and waits.
    c.members[1].env = vec![("NOTIFY_SOCKET".into(), notify.path.clone())];
    c.spawn_role(1, "proxy", &[0]);
    let first = tokio::task::spawn_blocking(move || {
        let first = notify.until("STATUS=connecting to the cluster");
        (notify, first)
    })
    .await
    .unwrap();
    let (notify, first) = first;
    assert_eq!(first, ["STATUS=connecting to the cluster"]);
    // Only a member that answers makes it ready.
    c.initial = Some(1);
    c.spawn(0, "new");
    c.wait_ready(0).await;
    let got = tokio::task::spawn_blocking(move || notify.until("READY=1"))
        .await
        .unwrap();
    assert_eq!(got, ["READY=1\nSTATUS=serving"]);
    c.wait_ready(1).await;
    // systemctl reload of an agent without --config: logged, not fatal.
    c.signal(1, "HUP");
    cairn_tests::eventually("the SIGHUP logged", LIMIT, || {
        let log = c.log(1);
        async move {
            log.contains("SIGHUP: no --config file to reload")
                .then_some(())
        }
    })
    .await;
    assert!(c.members[1].is_running(), "SIGHUP killed the agent");
    c.wait_ready(1).await;
}

/// `packaging/deb/build.sh` makes a package that `dpkg -i` installs on
/// this machine: the binary runs, the user exists, the unit is enabled and
/// not started, the config is a conffile; `dpkg --purge` takes it all away.
/// Needs root and dpkg (skipped, saying so, elsewhere).
#[test]
fn the_debian_package_installs_enabled_but_not_started() {
    if !cairn_only() {
        return;
    }
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0"
        || Command::new("dpkg").arg("--version").output().is_err()
    {
        eprintln!("not root or no dpkg: the package install test is skipped");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let build = Command::new(packaging().join("deb/build.sh"))
        .arg(cairn_bin())
        .arg(out_dir.path())
        .env("DEB_COMPRESS", "none")
        .output()
        .unwrap();
    assert!(build.status.success(), "{build:?}");
    let deb = String::from_utf8_lossy(&build.stdout).trim().to_string();
    let info = Command::new("dpkg-deb")
        .args(["--field", &deb, "Package"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "cairn");

    let install = Command::new("dpkg").args(["-i", &deb]).output().unwrap();
    let purge = || {
        Command::new("dpkg")
            .args(["--purge", "cairn"])
            .output()
            .unwrap()
    };
    if !install.status.success() {
        purge();
        panic!("dpkg -i failed: {install:?}");
    }
    let version = Command::new("/usr/bin/cairn")
        .arg("--version")
        .output()
        .unwrap();
    let enabled = Path::new("/etc/systemd/system/multi-user.target.wants/cairn.service").exists();
    let user = Command::new("getent")
        .args(["passwd", "cairn"])
        .output()
        .unwrap();
    let running = Command::new("pgrep")
        .args(["-f", "^/usr/bin/cairn"])
        .output()
        .unwrap();
    let status = Command::new("dpkg").args(["-s", "cairn"]).output().unwrap();
    let removed = purge();
    assert!(version.status.success(), "{version:?}");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cairn "));
    assert!(enabled, "the unit is not enabled");
    assert!(user.status.success(), "no cairn user");
    assert!(
        !running.status.success(),
        "the package must not start the agent"
    );
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("Conffiles:\n /etc/cairn/cairn.toml"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert!(removed.status.success(), "{removed:?}");
    assert!(!Path::new("/usr/bin/cairn").exists());
    assert!(!Path::new("/etc/cairn/cairn.toml").exists());
}
