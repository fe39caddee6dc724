//! The three applications together, across hosts (cairn only): services
//! registered by two proxy agents appear in a file rendered on a voter
//! (an nginx-style upstream list) and in the voter's DNS answers; a
//! failing check, a recovered one and a killed agent (lease expiry) change
//! both.
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{Kind, eventually, free_port, subject_kind};

const LIMIT: Duration = Duration::from_secs(30);

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The upstream lines of the rendered file, sorted.
fn upstreams(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// The ports of `dig +short SRV web.skydns.local.` against the voter's DNS.
fn srv_ports(dns_port: u16) -> Vec<u16> {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &dns_port.to_string(),
            "+short",
            "+time=2",
            "+tries=1",
            "SRV",
            "web.skydns.local.",
        ])
        .output()
        .expect("dig (Debian's dnsutils) must be installed");
    let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    ports.sort();
    ports
}

async fn both(path: &Path, dns_port: u16, want: &[u16], what: &str) {
    let lines: Vec<String> = want
        .iter()
        .map(|p| format!("server 127.0.0.1:{p};"))
        .collect();
    eventually(what, LIMIT, || {
        let ok = upstreams(path) == lines && srv_ports(dns_port) == want;
        async move { ok.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_on_two_hosts_show_in_a_rendered_file_and_in_dns() {
    if subject_kind() != Kind::Cairn {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let health = cairn_tests::health_endpoint(up.clone()).await;
    let dns_port = free_port();
    let upstream_file = dir.path().join("upstream.conf");
    let voter_cfg = write(
        dir.path(),
        "voter.toml",
        &format!(
            r#"
[dns]
listen = "127.0.0.1:{dns_port}"
zones = ["skydns.local."]

[[template]]
destination = "{dest}"
wait = {{ min = "50ms", max = "500ms" }}
contents = """
upstream web {{
{{% for s in services('web') %}}    server {{{{ s.host }}}}:{{{{ s.port }}}};
{{% endfor %}}}}
"""
"#,
            dest = upstream_file.display()
        ),
    );
    let web1_cfg = write(
        dir.path(),
        "web1.toml",
        &format!(
            r#"
[[service]]
name = "web"
address = "127.0.0.1"
port = 8081
ttl = "2s"
check = {{ http = "http://127.0.0.1:{health}/", interval = "200ms" }}
"#
        ),
    );
    let web2_cfg = write(
        dir.path(),
        "web2.toml",
        "[[service]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 8082\nttl = \"2s\"\n",
    );

    let mut c = Cluster::prepare(Kind::Cairn, 1, &[]);
    c.members[0].extra_args = vec!["--config".into(), voter_cfg];
    c.spawn(0, "new");
    c.wait_ready(0).await;
    let a = c.new_member();
    c.members[a].extra_args = vec!["--config".into(), web1_cfg];
    c.spawn_role(a, "proxy", &[0]);
    let b = c.new_member();
    c.members[b].extra_args = vec!["--config".into(), web2_cfg];
    c.spawn_role(b, "proxy", &[0]);
    c.wait_ready(a).await;
    c.wait_ready(b).await;

    both(&upstream_file, dns_port, &[8081, 8082], "both services").await;

    // web1's check fails: it goes from the file and from DNS.
    up.store(false, Ordering::SeqCst);
    both(
        &upstream_file,
        dns_port,
        &[8082],
        "web1 gone on a failing check",
    )
    .await;
    // It recovers.
    up.store(true, Ordering::SeqCst);
    both(&upstream_file, dns_port, &[8081, 8082], "web1 back").await;
    // web2's agent is killed: its record expires with its lease.
    c.kill9(b);
    both(
        &upstream_file,
        dns_port,
        &[8081],
        "web2 gone with its lease",
    )
    .await;
}
