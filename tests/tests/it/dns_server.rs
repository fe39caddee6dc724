//! DNS answered from keys (`[dns]`, crate `cairn-dns`), black box: a real
//! cairn with a `--config` holding `[dns]`, SkyDNS keys written through the
//! etcd API, questions asked with `dig` (and `kdig`). cairn only: etcd has
//! no DNS server, so every case returns early under
//! `CONFORMANCE_SUBJECT=etcd`.
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::{
    Kind, Layout, Subject, SubjectOptions, eventually, free_port, member_args, subject_is_etcd,
};
use etcd_client::PutOptions;

const LIMIT: Duration = Duration::from_secs(20);

/// One answer record as dig prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    data: String,
}

/// What dig printed, by section.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answer: Vec<Rr>,
    authority: Vec<Rr>,
    additional: Vec<Rr>,
    raw: String,
}

impl Dig {
    /// `TYPE data` of the answers, sorted.
    fn answers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .map(|r| format!("{} {}", r.rtype, r.data))
            .collect();
        v.sort();
        v
    }

    fn additionals(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .additional
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.rtype, r.data))
            .collect();
        v.sort();
        v
    }

    fn has_soa(&self) -> bool {
        self.authority.iter().any(|r| r.rtype == "SOA")
    }
}

fn parse_dig(out: &str) -> Dig {
    let mut d = Dig {
        raw: out.to_string(),
        ..Default::default()
    };
    let mut section = "";
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            if let Some(s) = rest.split("status:").nth(1) {
                d.status = s.split(',').next().unwrap_or("").trim().to_string();
            }
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.is_empty() || line.starts_with(';') {
            if line.is_empty() {
                section = "";
            }
        } else {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() < 4 {
                continue;
            }
            let rr = Rr {
                name: t[0].to_ascii_lowercase(),
                ttl: t[1].parse().unwrap_or(0),
                rtype: t[3].to_string(),
                data: t[4..].join(" "),
            };
            match section {
                "answer" => d.answer.push(rr),
                "authority" => d.authority.push(rr),
                "additional" => d.additional.push(rr),
                _ => {}
            }
        }
    }
    d
}

/// `dig @127.0.0.1 -p port <args>`.
fn dig(port: u16, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("run dig (Debian package dnsutils)");
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

/// Polls dig until `ok` holds.
async fn dig_until(port: u16, args: &[&str], what: &str, ok: impl Fn(&Dig) -> bool) -> Dig {
    eventually(what, LIMIT, || {
        let d = dig(port, args);
        let pass = ok(&d);
        async move { pass.then_some(d) }
    })
    .await
}

/// A cairn voter whose `--config` has `dns` (the body of `[dns]`), and
/// the DNS port.
async fn start_with_dns(dns: &str) -> (Subject, u16) {
    let port = free_port();
    let table = format!("[dns]\nlisten = \"127.0.0.1:{port}\"\n{dns}");
    let options = SubjectOptions {
        command_line: Some(Arc::new(move |l: &Layout<'_>| {
            let path = l.dir.join("cairn.toml");
            std::fs::write(&path, &table).unwrap();
            let mut args = member_args(l.data_dir, l.client_port, l.peer_port, l.token);
            args.extend(["--config".to_string(), path.display().to_string()]);
            (args, vec![])
        })),
        ..SubjectOptions::new(Kind::Cairn)
    };
    let s = Subject::start_with(options).await;
    (s, port)
}

const ZONES: &str = "zones = [\"skydns.local.\", \"0.10.in-addr.arpa.\"]\n";

async fn put(c: &mut etcd_client::Client, key: &str, value: &str) {
    c.put(key, value, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_answers_every_record_type_from_skydns_keys() {
    if subject_is_etcd() {
        return;
    }
    let (s, port) = start_with_dns(ZONES).await;
    let mut c = s.client().await;
    for (k, v) in [
        (
            "/skydns/local/skydns/east/production/rails/1",
            r#"{"host":"10.0.0.1","port":8080}"#,
        ),
        (
            "/skydns/local/skydns/east/production/rails/2",
            r#"{"host":"10.0.0.2","port":8080,"weight":300}"#,
        ),
        ("/skydns/local/skydns/v6", r#"{"host":"2001:db8::1"}"#),
        (
            "/skydns/local/skydns/www",
            r#"{"host":"rails.production.east.skydns.local"}"#,
        ),
        ("/skydns/local/skydns/ext", r#"{"host":"example.com"}"#),
        ("/skydns/local/skydns/txt/a", r#"{"text":"hello world"}"#),
        (
            "/skydns/local/skydns/mail/a",
            r#"{"host":"10.0.0.25","mail":true,"priority":20}"#,
        ),
        (
            "/skydns/arpa/in-addr/10/0/0/1",
            r#"{"host":"rails.production.east.skydns.local."}"#,
        ),
        (
            "/skydns/local/skydns/west/staging/web/1",
            r#"{"host":"10.1.0.1","port":80}"#,
        ),
        (
            "/skydns/local/skydns/east/staging/web/1",
            r#"{"host":"10.2.0.1","port":80}"#,
        ),
        ("/skydns/local/skydns/dns/ns/a", r#"{"host":"10.0.0.53"}"#),
    ] {
        put(&mut c, k, v).await;
    }
    let name = "rails.production.east.skydns.local";
    // A: every record below the name (subtree aggregation).
    let d = dig_until(port, &[name, "A"], "A records", |d| d.answer.len() == 2).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.flags.contains(&"aa".to_string()), "{}", d.raw);
    assert_eq!(d.answers(), ["A 10.0.0.1", "A 10.0.0.2"]);
    assert_eq!(d.answer[0].ttl, 300, "CoreDNS's default TTL");
    let d = dig(port, &["1.rails.production.east.skydns.local", "A"]);
    assert_eq!(d.answers(), ["A 10.0.0.1"]);
    // AAAA.
    let d = dig(port, &["v6.skydns.local", "AAAA"]);
    assert_eq!(d.answers(), ["AAAA 2001:db8::1"]);
    // SRV: targets named after the keys, weights split 100/(100+300), the
    // addresses in additional.
    let d = dig(port, &[name, "SRV"]);
    assert_eq!(
        d.answers(),
        [
            "SRV 10 25 8080 1.rails.production.east.skydns.local.",
            "SRV 10 75 8080 2.rails.production.east.skydns.local."
        ]
    );
    assert_eq!(
        d.additionals(),
        [
            "1.rails.production.east.skydns.local. A 10.0.0.1",
            "2.rails.production.east.skydns.local. A 10.0.0.2"
        ]
    );
    // CNAME: a host that is a name, followed inside the zone.
    let d = dig(port, &["www.skydns.local", "A"]);
    assert_eq!(
        d.answers(),
        [
            "A 10.0.0.1",
            "A 10.0.0.2",
            "CNAME rails.production.east.skydns.local."
        ]
    );
    let d = dig(port, &["ext.skydns.local", "CNAME"]);
    assert_eq!(d.answers(), ["CNAME example.com."]);
    // TXT.
    let d = dig(port, &["txt.skydns.local", "TXT"]);
    assert_eq!(d.answers(), ["TXT \"hello world\""]);
    // MX: mail:true, priority as the preference, exchange named after the key.
    let d = dig(port, &["mail.skydns.local", "MX"]);
    assert_eq!(d.answers(), ["MX 20 a.mail.skydns.local."]);
    assert_eq!(d.additionals(), ["a.mail.skydns.local. A 10.0.0.25"]);
    // PTR in the reverse zone.
    let d = dig(port, &["-x", "10.0.0.1"]);
    assert_eq!(d.answers(), ["PTR rails.production.east.skydns.local."]);
    // Wildcards: `*` and `any` match one label anywhere.
    for q in ["web.staging.*.skydns.local", "web.staging.any.skydns.local"] {
        let d = dig(port, &[q, "A"]);
        assert_eq!(d.answers(), ["A 10.1.0.1", "A 10.2.0.1"], "{q}");
    }
    let d = dig(port, &["*.staging.east.skydns.local", "A"]);
    assert_eq!(d.answers(), ["A 10.2.0.1"]);
    // NXDOMAIN vs NODATA, both with the zone's SOA.
    let d = dig(port, &["nothing.skydns.local", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.answer.is_empty() && d.has_soa(), "{}", d.raw);
    let d = dig(port, &["v6.skydns.local", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty() && d.has_soa(), "{}", d.raw);
    let d = dig(port, &["production.east.skydns.local", "TXT"]);
    assert_eq!(
        d.status, "NOERROR",
        "an empty non-terminal exists: {}",
        d.raw
    );
    // SOA and NS at the apex.
    let d = dig(port, &["skydns.local", "SOA"]);
    assert_eq!(d.answer.len(), 1, "{}", d.raw);
    assert!(
        d.answer[0]
            .data
            .starts_with("ns.dns.skydns.local. hostmaster.skydns.local."),
        "{}",
        d.raw
    );
    let d = dig(port, &["skydns.local", "NS"]);
    assert_eq!(d.answers(), ["NS a.ns.dns.skydns.local."]);
    assert_eq!(d.additionals(), ["a.ns.dns.skydns.local. A 10.0.0.53"]);
    // Outside the zones, with no forwarder: REFUSED.
    let d = dig(port, &["example.org", "A"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    // kdig sees the same answers.
    let out = Command::new("kdig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+short", name, "A"])
        .output()
        .expect("run kdig (Debian package knot-dnsutils)");
    let mut short: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    short.sort();
    assert_eq!(short, ["10.0.0.1", "10.0.0.2"]);
    // The status route.
    let (code, body) = s.http("GET", "/v1/dns", None);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["records"], 11, "{body}");
    assert_eq!(v["zones"]["skydns.local."], 10, "{body}");
    assert_eq!(v["zones"]["0.10.in-addr.arpa."], 1, "{body}");
    assert!(v["stale"].is_null(), "{body}");
    assert!(v["revision"].as_i64().unwrap() > 0, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_truncates_over_udp_and_answers_in_full_over_tcp() {
    if subject_is_etcd() {
        return;
    }
    let (s, port) = start_with_dns(ZONES).await;
    let mut c = s.client().await;
    let n = 80;
    for i in 0..n {
        put(
            &mut c,
            &format!("/skydns/local/skydns/big/{i}"),
            &format!(r#"{{"host":"10.9.{}.{}"}}"#, i / 200, i % 200 + 1),
        )
        .await;
    }
    // Over TCP: every record.
    let d = dig_until(
        port,
        &["+tcp", "big.skydns.local", "A"],
        "all records over TCP",
        |d| d.answer.len() == n,
    )
    .await;
    assert!(!d.flags.contains(&"tc".to_string()), "{}", d.raw);
    // Over UDP without EDNS (512 bytes): truncated, TC set.
    let d = dig(
        port,
        &["+ignore", "+notcp", "+noedns", "big.skydns.local", "A"],
    );
    assert!(d.flags.contains(&"tc".to_string()), "{}", d.raw);
    assert!(d.answer.len() < n, "{}", d.raw);
    // EDNS: the client's UDP size is honoured (80 A records fit in 4096).
    let d = dig(
        port,
        &[
            "+ignore",
            "+notcp",
            "+bufsize=4096",
            "big.skydns.local",
            "A",
        ],
    );
    assert!(!d.flags.contains(&"tc".to_string()), "{}", d.raw);
    assert_eq!(d.answer.len(), n, "{}", d.raw);
    let d = dig(
        port,
        &[
            "+ignore",
            "+notcp",
            "+bufsize=1024",
            "big.skydns.local",
            "A",
        ],
    );
    assert!(d.flags.contains(&"tc".to_string()), "{}", d.raw);
    // Without +ignore dig retries over TCP and gets everything.
    let d = dig(port, &["+noedns", "big.skydns.local", "A"]);
    assert_eq!(d.answer.len(), n, "{}", d.raw);
    // kdig over TCP too.
    let out = Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tcp",
            "+short",
            "big.skydns.local",
            "A",
        ])
        .output()
        .expect("kdig");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_answers_follow_key_changes_and_leases() {
    if subject_is_etcd() {
        return;
    }
    let (s, port) = start_with_dns(&format!("{ZONES}min_ttl = 1\n")).await;
    let mut c = s.client().await;
    let key = "/skydns/local/skydns/moving";
    put(&mut c, key, r#"{"host":"10.3.0.1"}"#).await;
    dig_until(port, &["moving.skydns.local", "A"], "first value", |d| {
        d.answers() == ["A 10.3.0.1"]
    })
    .await;
    put(&mut c, key, r#"{"host":"10.3.0.2"}"#).await;
    dig_until(port, &["moving.skydns.local", "A"], "changed value", |d| {
        d.answers() == ["A 10.3.0.2"]
    })
    .await;
    c.delete(key, None).await.unwrap();
    dig_until(port, &["moving.skydns.local", "A"], "deleted", |d| {
        d.status == "NXDOMAIN"
    })
    .await;

    // Under a lease: the TTL is the lease's remaining TTL when lower than
    // the record's; a revoked lease takes the record with it.
    let lease = c.lease_grant(60, None).await.unwrap().id();
    c.put(
        "/skydns/local/skydns/leased",
        r#"{"host":"10.4.0.1","ttl":600}"#,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let d = dig_until(port, &["leased.skydns.local", "A"], "leased record", |d| {
        d.answer.len() == 1
    })
    .await;
    assert!(d.answer[0].ttl <= 60 && d.answer[0].ttl > 0, "{}", d.raw);
    c.lease_revoke(lease).await.unwrap();
    dig_until(port, &["leased.skydns.local", "A"], "revoked", |d| {
        d.status == "NXDOMAIN"
    })
    .await;

    // A lease left to expire.
    let lease = c.lease_grant(2, None).await.unwrap().id();
    c.put(
        "/skydns/local/skydns/expiring",
        r#"{"host":"10.5.0.1"}"#,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let d = dig_until(
        port,
        &["expiring.skydns.local", "A"],
        "expiring record",
        |d| d.answer.len() == 1,
    )
    .await;
    assert!(d.answer[0].ttl <= 2, "{}", d.raw);
    dig_until(port, &["expiring.skydns.local", "A"], "expired", |d| {
        d.status == "NXDOMAIN"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_forwards_other_names_when_configured() {
    if subject_is_etcd() {
        return;
    }
    let mut table = HashMap::new();
    table.insert(
        "example.org.".to_string(),
        vec![cairn_tests::dns::Record::A("192.0.2.7".parse().unwrap())],
    );
    let upstream = cairn_tests::dns::DnsServer::start(table);
    let (s, port) = start_with_dns(&format!("{ZONES}forward = [\"{}\"]\n", upstream.addr())).await;
    let mut c = s.client().await;
    put(
        &mut c,
        "/skydns/local/skydns/here",
        r#"{"host":"10.6.0.1"}"#,
    )
    .await;
    dig_until(port, &["here.skydns.local", "A"], "own zone", |d| {
        d.answers() == ["A 10.6.0.1"]
    })
    .await;
    let d = dig(port, &["example.org", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answers(), ["A 192.0.2.7"]);
    assert!(!d.flags.contains(&"aa".to_string()), "{}", d.raw);
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_on_a_proxy_agent() {
    if subject_is_etcd() {
        return;
    }
    let mut c = Cluster::start(Kind::Cairn, 1, &[]).await;
    let p = c.new_member();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!("[dns]\nlisten = \"127.0.0.1:{port}\"\n{ZONES}"),
    )
    .unwrap();
    c.members[p]
        .extra_args
        .extend(["--config".to_string(), path.display().to_string()]);
    c.spawn_role(p, "proxy", &[0]);
    c.wait_ready(p).await;
    // Written on the voter, answered by the proxy's DNS from its own view.
    let mut voter = c.client(0).await;
    put(
        &mut voter,
        "/skydns/local/skydns/via/proxy",
        r#"{"host":"10.7.0.1"}"#,
    )
    .await;
    dig_until(
        port,
        &["via.skydns.local", "A"],
        "answer on the proxy",
        |d| d.answers() == ["A 10.7.0.1"],
    )
    .await;
    put(
        &mut voter,
        "/skydns/local/skydns/via/proxy",
        r#"{"host":"10.7.0.2"}"#,
    )
    .await;
    dig_until(
        port,
        &["proxy.via.skydns.local", "A"],
        "change seen on the proxy",
        |d| d.answers() == ["A 10.7.0.2"],
    )
    .await;
    // Fail static: with the only member gone the proxy's view goes stale,
    // and DNS keeps answering from the last index.
    c.kill9(0);
    let proxy_port = c.members[p].client_port;
    eventually("the index marked stale", LIMIT, || {
        let (code, body) =
            cairn_tests::http_request(("127.0.0.1", proxy_port), "GET", "/v1/dns", None);
        async move { (code == 200 && !body.contains("\"stale\":null")).then_some(()) }
    })
    .await;
    let d = dig(port, &["proxy.via.skydns.local", "A"]);
    assert_eq!(d.answers(), ["A 10.7.0.2"], "{}", d.raw);
    // The agent's /health lists it, /metrics has the gauge.
    let (_, body) = cairn_tests::http_request(("127.0.0.1", proxy_port), "GET", "/health", None);
    assert!(body.contains("dns: stale"), "{body}");
    let (_, metrics) =
        cairn_tests::http_request(("127.0.0.1", proxy_port), "GET", "/metrics", None);
    assert!(metrics.contains("cairn_dns_stale 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_bind_failure_and_bad_table_stop_the_agent_naming_them() {
    if subject_is_etcd() {
        return;
    }
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |table: &str| -> String {
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, table).unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut args = member_args(data.path(), free_port(), free_port(), "dns-fail");
        args.extend(["--config".to_string(), path.display().to_string()]);
        let mut child = Command::new(cairn_tests::cairn_bin())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                return format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("cairn did not stop on {table:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let out = run(&format!("[dns]\nlisten = \"{addr}\"\n{ZONES}"));
    assert!(
        out.contains(&addr.to_string()) && out.contains("[dns]"),
        "{out}"
    );
    let out = run(&format!(
        "[dns]\nlisten = \"127.0.0.1:1\"\n{ZONES}zonez = 1\n"
    ));
    assert!(out.contains("zonez"), "{out}");
    drop(taken);
}
