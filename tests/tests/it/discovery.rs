//! Bootstrap by discovery: clusters formed through a discovery URL served
//! by cairn or by Debian's etcd (`--enable-v2`), etcd members formed
//! through cairn's, v3 discovery (`--discovery-token`), the fallbacks of
//! agents that find the cluster full, and the errors of a bad token. These
//! start cairn agents (and etcd as a service or as members), so they run
//! in the cairn suite only.
use std::process::Command;
use std::time::Duration;

use cairn_tests::cluster::Cluster;
use cairn_tests::v2::V2;
use cairn_tests::{Kind, Subject, SubjectOptions, cairn_bin, eventually, subject_kind};

fn cairn_only() -> bool {
    subject_kind() == Kind::Cairn
}

/// `cairn discovery new ...`: the printed URL (or token).
fn discovery_new(args: &[&str]) -> String {
    let out = Command::new(cairn_bin())
        .arg("discovery")
        .arg("new")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cairn discovery new failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A discovery service: a single member with the v2 API on.
async fn service(kind: Kind) -> Subject {
    let mut o = SubjectOptions::new(kind);
    o.extra_args = vec!["--enable-v2".into()];
    Subject::start_with(o).await
}

/// SRV records pointing at `ports` on 127.0.0.1.
fn srv_on_loopback(ports: Vec<u16>) -> Vec<cairn_tests::dns::Record> {
    ports
        .into_iter()
        .map(|port| cairn_tests::dns::Record::Srv {
            port,
            target: "127.0.0.1.".into(),
        })
        .collect()
}

/// Starts member `i` of the layout with `bootstrap` flags in place of
/// `--initial-cluster`.
fn launch(c: &mut Cluster, i: usize, bootstrap: &[&str]) {
    let peer = c.members[i].peer_url();
    launch_with_peer_url(c, i, &peer, bootstrap);
}

/// [`launch`] with the given peer URL (listened on and advertised).
fn launch_with_peer_url(c: &mut Cluster, i: usize, peer: &str, bootstrap: &[&str]) {
    let m = &c.members[i];
    let mut args: Vec<String> = [
        "--name",
        &m.name,
        "--data-dir",
        &m.data_dir.display().to_string(),
        "--initial-advertise-peer-urls",
        peer,
        "--listen-peer-urls",
        peer,
        "--listen-client-urls",
        &m.client_url(),
        "--advertise-client-urls",
        &m.client_url(),
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(bootstrap.iter().map(|s| s.to_string()));
    c.launch(i, args);
}

async fn members(c: &Cluster, i: usize) -> Vec<(String, bool)> {
    let mut client = c.client(i).await;
    let list = client.member_list().await.unwrap();
    let mut out: Vec<(String, bool)> = list
        .members()
        .iter()
        .map(|m| (m.name().to_string(), m.is_learner()))
        .collect();
    out.sort();
    out
}

fn voters(names: &[&str]) -> Vec<(String, bool)> {
    names.iter().map(|n| (n.to_string(), false)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_serves_discovery_and_late_agents_fall_back_to_learner_and_proxy() {
    if !cairn_only() {
        return;
    }
    let svc = service(Kind::Cairn).await;
    let url = discovery_new(&["--size", "3", "--endpoints", &svc.endpoint()]);
    assert!(
        url.starts_with(&format!("{}/v2/keys/discovery/", svc.endpoint())),
        "{url}"
    );
    let mut c = Cluster::prepare(Kind::Cairn, 5, &[]);
    for i in 0..3 {
        launch(&mut c, i, &["--discovery", &url]);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    assert_eq!(
        members(&c, 0).await,
        voters(&["infra0", "infra1", "infra2"])
    );
    // The registrations are etcd's: one key per member, `name=peerURL`.
    let token_dir = url.strip_prefix(&svc.endpoint()).unwrap();
    let listing = V2::new(svc.client_port()).get(token_dir).json();
    let mut regs: Vec<String> = listing["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["value"].as_str().unwrap().to_string())
        .collect();
    regs.sort();
    let want: Vec<String> = (0..3)
        .map(|i| format!("infra{i}={}", c.members[i].peer_url()))
        .collect();
    assert_eq!(regs, want);

    // The cluster is full: a 4th agent becomes a learner, a 5th a proxy.
    launch(
        &mut c,
        3,
        &["--discovery", &url, "--discovery-fallback", "learner"],
    );
    c.wait_ready(3).await;
    launch(
        &mut c,
        4,
        &["--discovery", &url, "--discovery-fallback", "proxy"],
    );
    c.wait_ready(4).await;
    let want = vec![
        ("infra0".to_string(), false),
        ("infra1".to_string(), false),
        ("infra2".to_string(), false),
        ("infra3".to_string(), true),
    ];
    eventually("the learner listed", Duration::from_secs(10), || {
        let c = &c;
        let want = want.clone();
        async move { (members(c, 0).await == want).then_some(()) }
    })
    .await;
    // The proxy is no member, and forwards.
    let mut p = c.client(4).await;
    p.put("through-proxy", "1", None).await.unwrap();
    let mut v = c.client(0).await;
    assert_eq!(
        v.get("through-proxy", None).await.unwrap().kvs()[0].value(),
        b"1"
    );
    assert!(c.log(4).contains("running as a proxy"), "{}", c.log(4));
    assert_eq!(members(&c, 4).await.len(), 4);

    // The v2 API is served by the learner and the proxy too.
    let learner = V2::new(c.members[3].client_port);
    let proxy = V2::new(c.members[4].client_port);
    let a = learner.put("/v2/keys/roles/learner", "value=l");
    assert_eq!(a.status, 201, "{}", a.body);
    let b = proxy.put("/v2/keys/roles/proxy", "value=p");
    assert_eq!(b.status, 201, "{}", b.body);
    let listing = proxy.get("/v2/keys/roles?sorted=true&quorum=true").json();
    assert_eq!(listing["node"]["nodes"][0]["value"], "l", "{listing}");
    assert_eq!(listing["node"]["nodes"][1]["value"], "p", "{listing}");
    let w = learner.wait(
        &format!(
            "/v2/keys/roles?wait=true&recursive=true&waitIndex={}",
            b.etcd_index()
        ),
        Duration::from_secs(10),
    );
    assert_eq!(w.json()["node"]["key"], "/roles/proxy", "{}", w.body);

    // A 6th with --discovery-fallback exit stops with etcd's message.
    let i = c.new_member();
    launch(
        &mut c,
        i,
        &["--discovery", &url, "--discovery-fallback", "exit"],
    );
    assert!(
        c.wait_exit(i, Duration::from_secs(30)).await,
        "did not exit"
    );
    assert!(
        c.log(i).contains("discovery: cluster is full"),
        "{}",
        c.log(i)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_serves_discovery_for_cairn() {
    if !cairn_only() {
        return;
    }
    let svc = service(Kind::Etcd).await;
    let url = discovery_new(&["--size", "3", "--endpoints", &svc.endpoint()]);
    let mut c = Cluster::prepare(Kind::Cairn, 3, &[]);
    for i in 0..3 {
        launch(&mut c, i, &["--discovery", &url]);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    assert_eq!(
        members(&c, 1).await,
        voters(&["infra0", "infra1", "infra2"])
    );
    // A member that lost its data directory is refused by the discovery
    // protocol (it could vote twice in a term), as etcd refuses it.
    c.kill9(2);
    std::fs::remove_dir_all(&c.members[2].data_dir).unwrap();
    launch(&mut c, 2, &["--discovery", &url]);
    assert!(
        c.wait_exit(2, Duration::from_secs(30)).await,
        "did not exit"
    );
    assert!(
        c.log(2).contains("discovery: found duplicate id"),
        "{}",
        c.log(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_members_form_through_cairn_discovery() {
    if !cairn_only() {
        return;
    }
    let svc = service(Kind::Cairn).await;
    let url = discovery_new(&["--size", "3", "--endpoints", &svc.endpoint()]);
    let mut c = Cluster::prepare(Kind::Etcd, 3, &[]);
    for i in 0..3 {
        launch(&mut c, i, &["--discovery", &url]);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    assert_eq!(
        members(&c, 2).await,
        voters(&["infra0", "infra1", "infra2"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn v3_discovery_token() {
    if !cairn_only() {
        return;
    }
    let svc = Subject::start_with(SubjectOptions::new(Kind::Cairn)).await;
    let token = discovery_new(&["--v3", "--size", "3", "--endpoints", &svc.endpoint()]);
    assert_eq!(token.len(), 32, "{token}");
    let mut c = Cluster::prepare(Kind::Cairn, 5, &[]);
    let ep = svc.endpoint();
    let flags = [
        "--discovery-token",
        token.as_str(),
        "--discovery-endpoints",
        ep.as_str(),
    ];
    // A learner started before the voters waits for them.
    let mut early = flags.to_vec();
    early.extend(["--role", "learner"]);
    launch(&mut c, 4, &early);
    for i in 0..3 {
        launch(&mut c, i, &flags);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    // The early learner may already have been added (still unnamed until
    // it publishes): only the voters are fixed at this point.
    let voting: Vec<_> = members(&c, 0)
        .await
        .into_iter()
        .filter(|(_, learner)| !learner)
        .collect();
    assert_eq!(voting, voters(&["infra0", "infra1", "infra2"]));
    // etcd 3.6's keys.
    let mut s = svc.client().await;
    let regs = s
        .get(
            format!("/_etcd/registry/{token}/members/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(regs.kvs().len(), 3);
    let mut flags = flags.to_vec();
    flags.extend(["--discovery-fallback", "learner"]);
    launch(&mut c, 3, &flags);
    c.wait_ready(3).await;
    c.wait_ready(4).await;
    eventually("both learners listed", Duration::from_secs(10), || {
        let c = &c;
        async move {
            let ms = members(c, 0).await;
            (ms.contains(&("infra3".to_string(), true))
                && ms.contains(&("infra4".to_string(), true)))
            .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_clear_errors() {
    if !cairn_only() {
        return;
    }
    let svc = service(Kind::Cairn).await;
    let v2 = V2::new(svc.client_port());
    let base = format!("{}/v2/keys/discovery", svc.endpoint());
    v2.put("/v2/keys/discovery/bad/_config/size", "value=three");
    v2.put("/v2/keys/discovery/nosize/other", "value=1");
    let dup = discovery_new(&["--size", "2", "--endpoints", &svc.endpoint()]);
    let mut c = Cluster::prepare(Kind::Cairn, 4, &[]);
    launch(&mut c, 0, &["--discovery", &format!("{base}/bad")]);
    launch(&mut c, 1, &["--discovery", &format!("{base}/nosize")]);
    // Two agents with the same name.
    c.members[3].name = c.members[2].name.clone();
    launch(&mut c, 2, &["--discovery", &dup]);
    launch(&mut c, 3, &["--discovery", &dup]);
    for (i, msg) in [
        (0, "discovery: size key is bad"),
        (1, "discovery: size key not found"),
        (2, "discovery: found duplicate name"),
        (3, "discovery: found duplicate name"),
    ] {
        assert!(
            c.wait_exit(i, Duration::from_secs(30)).await,
            "member {i} did not exit"
        );
        assert!(c.log(i).contains(msg), "member {i}: {}", c.log(i));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_srv_bootstrap_with_learner_and_proxy() {
    use cairn_tests::dns::DnsServer;
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::prepare(Kind::Cairn, 5, &[]);
    let mut records = std::collections::HashMap::new();
    records.insert(
        "_etcd-server._tcp.cairn.test.".to_string(),
        srv_on_loopback(c.members[..3].iter().map(|m| m.peer_port).collect()),
    );
    records.insert(
        "_etcd-client._tcp.cairn.test.".to_string(),
        srv_on_loopback(c.members[..3].iter().map(|m| m.client_port).collect()),
    );
    let dns = DnsServer::start(records);
    let ns = dns.addr().to_string();
    let flags = [
        "--discovery-srv",
        "cairn.test",
        "--discovery-srv-nameserver",
        ns.as_str(),
        "--initial-cluster-token",
        "srv-test",
    ];
    for i in 0..3 {
        launch(&mut c, i, &flags);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    assert!(
        c.log(0).contains("DNS SRV discovery decided"),
        "{}",
        c.log(0)
    );
    // Members publish their names once running (SRV records carry none).
    eventually("three named voters", Duration::from_secs(10), || {
        let c = &c;
        async move {
            (members(c, 0).await == voters(&["infra0", "infra1", "infra2"])).then_some(())
        }
    })
    .await;
    // Not in the server records: the fallback, through the client records.
    let mut learner = flags.to_vec();
    learner.extend(["--discovery-fallback", "learner"]);
    launch(&mut c, 3, &learner);
    c.wait_ready(3).await;
    eventually("the learner listed", Duration::from_secs(10), || {
        let c = &c;
        async move {
            members(c, 0)
                .await
                .contains(&("infra3".to_string(), true))
                .then_some(())
        }
    })
    .await;
    let mut proxy = flags.to_vec();
    proxy.extend(["--role", "proxy"]);
    launch(&mut c, 4, &proxy);
    c.wait_ready(4).await;
    let mut p = c.client(4).await;
    p.put("via-srv-proxy", "1", None).await.unwrap();
    assert_eq!(members(&c, 4).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_srv_without_records_is_a_clear_error() {
    use cairn_tests::dns::DnsServer;
    if !cairn_only() {
        return;
    }
    let dns = DnsServer::start(Default::default());
    let ns = dns.addr().to_string();
    let mut c = Cluster::prepare(Kind::Cairn, 1, &[]);
    launch(
        &mut c,
        0,
        &[
            "--discovery-srv",
            "nowhere.test",
            "--discovery-srv-nameserver",
            &ns,
        ],
    );
    assert!(
        c.wait_exit(0, Duration::from_secs(30)).await,
        "did not exit"
    );
    let log = c.log(0);
    assert!(
        log.contains("error querying DNS SRV records for nowhere.test")
            && log.contains("_etcd-server-ssl._tcp.nowhere.test.")
            && log.contains("_etcd-server._tcp.nowhere.test."),
        "{log}"
    );
}

/// Starts member `i` with https peer URLs (a certificate the agent makes
/// itself) and `bootstrap` flags in place of `--initial-cluster`.
fn launch_https_peers(c: &mut Cluster, i: usize, bootstrap: &[&str]) {
    let peer = format!("https://127.0.0.1:{}", c.members[i].peer_port);
    let mut flags = vec!["--peer-auto-tls"];
    flags.extend(bootstrap);
    launch_with_peer_url(c, i, &peer, &flags);
}

/// `_etcd-server-ssl._tcp` records give https peer URLs; the members find
/// themselves among them and form the cluster over them.
#[tokio::test(flavor = "multi_thread")]
async fn dns_srv_ssl_records_give_https_peer_urls() {
    use cairn_tests::dns::DnsServer;
    if !cairn_only() {
        return;
    }
    let mut c = Cluster::prepare(Kind::Cairn, 3, &[]);
    let mut records = std::collections::HashMap::new();
    records.insert(
        "_etcd-server-ssl._tcp.ssl.test.".to_string(),
        srv_on_loopback(c.members.iter().map(|m| m.peer_port).collect()),
    );
    let dns = DnsServer::start(records);
    let ns = dns.addr().to_string();
    let flags = [
        "--discovery-srv",
        "ssl.test",
        "--discovery-srv-nameserver",
        ns.as_str(),
        "--initial-cluster-token",
        "srv-ssl-test",
    ];
    for i in 0..3 {
        launch_https_peers(&mut c, i, &flags);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let mut client = c.client(0).await;
    let list = client.member_list().await.unwrap();
    let mut peers: Vec<String> = list
        .members()
        .iter()
        .flat_map(|m| m.peer_urls().to_vec())
        .collect();
    peers.sort();
    let mut want: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", m.peer_port))
        .collect();
    want.sort();
    assert_eq!(peers, want);
    // A write through one member is read on another: they replicate over
    // the https peer URLs.
    client.put("over-ssl-srv", "1", None).await.unwrap();
    let mut other = c.client(2).await;
    eventually("replicated", Duration::from_secs(10), || {
        let mut o = other.clone();
        async move {
            let r = o
                .get(
                    "over-ssl-srv",
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
                .ok()?;
            (r.kvs().len() == 1).then_some(())
        }
    })
    .await;
    let _ = &mut other;
}

/// An https discovery URL, verified against the CA in `SSL_CERT_FILE` (as
/// Go's etcd does); without that CA the certificate is refused, by name.
#[tokio::test(flavor = "multi_thread")]
async fn https_discovery_url() {
    if !cairn_only() {
        return;
    }
    let pki = crate::pki::Pki::new("discovery");
    let (cert, key) = pki.member("discovery");
    // The discovery service: one member serving plain and https client URLs.
    let mut svc = Cluster::prepare(Kind::Cairn, 1, &[]);
    let https_port = cairn_tests::free_port();
    let https = format!("https://127.0.0.1:{https_port}");
    let m = &svc.members[0];
    let both = format!("{},{https}", m.client_url());
    let peer = m.peer_url();
    let args: Vec<String> = [
        "--name",
        &m.name,
        "--data-dir",
        &m.data_dir.display().to_string(),
        "--listen-client-urls",
        &both,
        "--advertise-client-urls",
        &both,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("{}={peer}", m.name),
        "--cert-file",
        &cert,
        "--key-file",
        &key,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    svc.launch(0, args);
    svc.wait_ready(0).await;
    let plain = svc.members[0].client_url();
    let url = discovery_new(&["--size", "3", "--endpoints", &plain]).replace(&plain, &https);
    assert!(url.starts_with("https://"), "{url}");

    let ca = pki.ca_path.display().to_string();
    let mut c = Cluster::prepare(Kind::Cairn, 4, &[]);
    for i in 0..3 {
        c.members[i].env = vec![("SSL_CERT_FILE".into(), ca.clone())];
        launch(&mut c, i, &["--discovery", &url]);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    assert_eq!(
        members(&c, 0).await,
        voters(&["infra0", "infra1", "infra2"])
    );
    // v3 discovery (etcd 3.6's --discovery-token) over the https
    // endpoint, verified with --discovery-cacert.
    let token = discovery_new(&["--v3", "--size", "1", "--endpoints", &plain]);
    let mut single = Cluster::prepare(Kind::Cairn, 1, &[]);
    launch(
        &mut single,
        0,
        &[
            "--discovery-token",
            &token,
            "--discovery-endpoints",
            &https,
            "--discovery-cacert",
            &ca,
        ],
    );
    single.wait_ready(0).await;
    assert_eq!(members(&single, 0).await, voters(&["infra0"]));

    // With another CA the discovery service's certificate is refused, and
    // the log says so.
    let other = crate::pki::Pki::new("other");
    c.members[3].env = vec![("SSL_CERT_FILE".into(), other.ca_path.display().to_string())];
    launch(&mut c, 3, &["--discovery", &url]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !c.log(3).contains("invalid peer certificate") {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal is not logged:\n{}",
            c.log(3)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill9(3);
}

/// `_etcd-client-ssl._tcp` records give https client URLs: a learner adds
/// itself and a proxy forwards through them, verifying the members'
/// certificates against `--cacert` (etcd grpc-proxy's flag).
#[tokio::test(flavor = "multi_thread")]
async fn dns_srv_ssl_client_records_for_a_learner_and_a_proxy() {
    use cairn_tests::dns::DnsServer;
    if !cairn_only() {
        return;
    }
    let pki = crate::pki::Pki::new("clients");
    let mut c = Cluster::prepare(Kind::Cairn, 5, &[]);
    let https_ports: Vec<u16> = (0..3).map(|_| cairn_tests::free_port()).collect();
    let mut records = std::collections::HashMap::new();
    records.insert(
        "_etcd-server._tcp.tls.test.".to_string(),
        srv_on_loopback(c.members[..3].iter().map(|m| m.peer_port).collect()),
    );
    records.insert(
        "_etcd-client-ssl._tcp.tls.test.".to_string(),
        srv_on_loopback(https_ports.clone()),
    );
    let dns = DnsServer::start(records);
    let ns = dns.addr().to_string();
    let flags = [
        "--discovery-srv",
        "tls.test",
        "--discovery-srv-nameserver",
        ns.as_str(),
        "--initial-cluster-token",
        "srv-client-ssl",
    ];
    // The voters serve their client API over http (for the test's probes)
    // and https (the port the SRV records name).
    for (i, port) in https_ports.iter().enumerate() {
        let (cert, key) = pki.member(&format!("voter{i}"));
        let m = &c.members[i];
        let urls = format!("{},https://127.0.0.1:{port}", m.client_url());
        let args: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--listen-peer-urls",
            &m.peer_url(),
            "--listen-client-urls",
            &urls,
            "--advertise-client-urls",
            &urls,
            "--cert-file",
            &cert,
            "--key-file",
            &key,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(flags.iter().map(|s| s.to_string()))
        .collect();
        c.launch(i, args);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let ca = pki.ca_path.display().to_string();
    let mut learner = flags.to_vec();
    learner.extend(["--discovery-fallback", "learner", "--cacert", &ca]);
    launch(&mut c, 3, &learner);
    c.wait_ready(3).await;
    eventually("the learner listed", Duration::from_secs(10), || {
        let c = &c;
        async move {
            members(c, 0)
                .await
                .contains(&("infra3".to_string(), true))
                .then_some(())
        }
    })
    .await;
    assert!(
        c.log(3).lines().any(
            |l| l.contains("added this host to the cluster as a learner")
                && l.contains("https://127.0.0.1:")
        ),
        "the learner must add itself through an https client URL: {}",
        c.log(3)
    );
    let mut proxy = flags.to_vec();
    proxy.extend(["--role", "proxy", "--cacert", &ca]);
    launch(&mut c, 4, &proxy);
    c.wait_ready(4).await;
    let mut p = c.client(4).await;
    p.put("via-ssl-proxy", "1", None).await.unwrap();
    let started = c
        .log(4)
        .lines()
        .find(|l| l.contains("cairn started as a proxy"))
        .unwrap_or_default()
        .to_string();
    assert!(
        https_ports
            .iter()
            .any(|port| started.contains(&format!("https://127.0.0.1:{port}"))),
        "the proxy must start on the https client URLs: {started}"
    );
}
