//! The container image (cairn only; skipped, saying so, where no Docker
//! engine answers): `packaging/docker/build.sh` builds it from this
//! machine with no registry; it runs as a numeric non-root user, its
//! HEALTHCHECK (`cairn health` on the shared socket) turns healthy; three
//! voters, a learner and a proxy on a private network bootstrap by DNS SRV
//! records that a cairn container serves from its keys, and survive the
//! leader's container being cut off the network, without losing an
//! acknowledged write, and converge (HashKV) once it is back; the compose
//! example (`packaging/docker/compose/`) gives its application a rendered
//! file and DNS answers.
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cairn_tests::{Kind, cairn_bin, eventually, free_port, subject_kind};

const LIMIT: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn docker_available() -> bool {
    subject_kind() == Kind::Cairn
        && Command::new("docker")
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Containers, networks and images of one test, removed on drop.
struct Scope {
    tag: String,
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Scope {
    fn new(name: &str) -> Scope {
        let tag = format!("cairn-it-{name}:{}", std::process::id());
        let build = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/docker/build.sh"
        ))
        .arg(cairn_bin())
        .arg(&tag)
        .output()
        .unwrap();
        assert!(build.status.success(), "{build:?}");
        Scope {
            images: vec![tag.clone()],
            tag,
            containers: Vec::new(),
            networks: Vec::new(),
        }
    }

    fn network(&mut self, name: &str) -> String {
        let n = format!("{name}-{}", std::process::id());
        let _ = docker(&["network", "rm", &n]);
        docker_ok(&["network", "create", &n]);
        self.networks.push(n.clone());
        n
    }

    fn run(&mut self, name: &str, args: &[&str]) -> String {
        let c = format!("{name}-{}", std::process::id());
        let _ = docker(&["rm", "-f", "-v", &c]);
        let mut all = vec!["run", "-d", "--name", &c, "--hostname", name];
        all.extend(args);
        docker_ok(&all);
        self.containers.push(c.clone());
        c
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // -v: the image's VOLUMEs are anonymous volumes of each container.
        for c in &self.containers {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_as_a_non_root_user_and_turns_healthy() {
    if !docker_available() {
        eprintln!("no Docker engine answers: the container test is skipped");
        return;
    }
    let mut s = Scope::new("single");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:2379");
    let tag = s.tag.clone();
    let c = s.run(
        "single",
        &["-p", &publish, "--health-interval", "1s", tag.as_str()],
    );
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.Config.User}}", &c]),
        "10001:10001"
    );
    eventually("the container healthy", LIMIT, || {
        let status = docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", &c]);
        async move { (status == "healthy").then_some(()) }
    })
    .await;
    let ep = format!("http://127.0.0.1:{port}");
    let mut client = etcd_client::Client::connect([ep.as_str()], None)
        .await
        .unwrap();
    client.put("in-a-container", "1", None).await.unwrap();
    let health = docker_ok(&["exec", &c, "/usr/bin/cairn", "health"]);
    assert!(health.contains("\"health\":\"true\""), "{health}");
    // A graceful stop: SIGTERM, exit status 0.
    docker_ok(&["stop", "-t", "20", &c]);
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &c]),
        "0"
    );
}

/// Starts an agent container `name` on `net` (reachable there by its
/// name), its client port published on a loopback port, with the flags
/// every agent here has and `extra`. Returns the container and the port.
fn agent(s: &mut Scope, net: &str, name: &str, extra: &[&str]) -> (String, u16) {
    agent_with(s, net, name, &[], extra)
}

/// [`agent`] with `docker run` options of its own (`docker`).
fn agent_with(
    s: &mut Scope,
    net: &str,
    name: &str,
    docker: &[&str],
    extra: &[&str],
) -> (String, u16) {
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:2379");
    let adv = format!("http://{name}:2379");
    let peer = format!("http://{name}:2380");
    let tag = s.tag.clone();
    let mut args = vec!["--network", net, "--network-alias", name, "-p", &publish];
    args.extend(docker);
    args.extend([
        tag.as_str(),
        "--name",
        name,
        "--data-dir",
        "/var/lib/cairn",
        "--listen-client-urls",
        "http://0.0.0.0:2379",
        "--advertise-client-urls",
        &adv,
        "--listen-peer-urls",
        "http://0.0.0.0:2380",
        "--initial-advertise-peer-urls",
        &peer,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
    ]);
    args.extend(extra);
    (s.run(name, &args), port)
}

/// Starts one voter container per name on `net` (static bootstrap by
/// container name).
fn voters(s: &mut Scope, net: &str, names: &[&str]) -> (Vec<String>, Vec<u16>) {
    let initial = names
        .iter()
        .map(|n| format!("{n}=http://{n}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    names
        .iter()
        .map(|n| {
            agent(
                s,
                net,
                n,
                &[
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-token",
                    "containers",
                ],
            )
        })
        .unzip()
}

/// A client of the agent whose client port is published on `port`.
/// A client of the proxy on host port `proxy`, once a put goes through it
/// and the member list it forwards names `learner` as a learner.
async fn proxy_with_learner(proxy: u16, learner: &str) -> etcd_client::Client {
    let proxy_client = eventually("the proxy forwards", LIMIT, || async {
        let mut c = client_at(proxy).await?;
        c.put("via-proxy", "1", None).await.ok()?;
        Some(c)
    })
    .await;
    eventually("the learner listed", LIMIT, || {
        let mut c = proxy_client.clone();
        async move {
            let list = c.member_list().await.ok()?;
            list.members()
                .iter()
                .any(|m| m.name() == learner && m.is_learner())
                .then_some(())
        }
    })
    .await;
    proxy_client
}

async fn client_at(port: u16) -> Option<etcd_client::Client> {
    let ep = format!("http://127.0.0.1:{port}");
    etcd_client::Client::connect(
        [ep.as_str()],
        Some(
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(10)),
        ),
    )
    .await
    .ok()
}

/// The address of container `c` on network `net`.
fn address_on(c: &str, net: &str) -> String {
    docker_ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        c,
    ])
}

/// A single-member cairn on `net` that answers DNS for `cluster.test.`
/// on port 53 from its keys (a `[dns]` table in its `--config`), with
/// etcd's SRV records for `members` (server records on 2380, client
/// records on 2379; the targets are the containers' names on `net`)
/// written through its published client port. Returns its address on
/// `net`: containers started with `--dns <it>` ask it, through Docker's
/// embedded DNS, for every name that is not a container's.
async fn srv_dns(s: &mut Scope, net: &str, dir: &Path, members: &[&str]) -> String {
    let config = dir.join("dns.toml");
    std::fs::write(
        &config,
        "[dns]\nlisten = \"0.0.0.0:53\"\nzones = [\"cluster.test.\"]\n",
    )
    .unwrap();
    let mount = format!("{}:/etc/cairn/dns.toml:ro", config.display());
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:2379");
    let tag = s.tag.clone();
    let c = s.run(
        "srvdns",
        &[
            "--network",
            net,
            "-v",
            &mount,
            "-p",
            &publish,
            tag.as_str(),
            "--name",
            "srvdns",
            "--data-dir",
            "/var/lib/cairn",
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            "http://srvdns:2379",
            "--config",
            "/etc/cairn/dns.toml",
        ],
    );
    let mut client = eventually("the DNS container serves", LIMIT, || async {
        let mut c = client_at(port).await?;
        c.put("probe", "1", None).await.ok()?;
        Some(c)
    })
    .await;
    // The SkyDNS layout: _etcd-server._tcp.cluster.test. is
    // /skydns/test/cluster/_tcp/_etcd-server/, one key per target.
    for m in members {
        for (service, port) in [("_etcd-server", 2380), ("_etcd-client", 2379)] {
            client
                .put(
                    format!("/skydns/test/cluster/_tcp/{service}/{m}"),
                    format!(r#"{{"host":"{m}","port":{port}}}"#),
                    None,
                )
                .await
                .unwrap();
        }
    }
    address_on(&c, net)
}

/// The index in `names` of the member that leads, as member 0 sees it.
async fn leader_of(names: &[&str], ports: &[u16]) -> usize {
    eventually("a leader", LIMIT, || async {
        let mut c = client_at(ports[0]).await?;
        let lid = c.status().await.ok()?.leader();
        if lid == 0 {
            return None;
        }
        for (i, _) in names.iter().enumerate() {
            let mut ci = client_at(ports[i]).await?;
            if ci.status().await.ok()?.header()?.member_id() == lid {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Three voters, a learner and a proxy, each in its own container on a
/// private network, bootstrap by DNS SRV (`--discovery-srv`, with the
/// system's resolver: the containers' `--dns` is a cairn container that
/// serves the records from its keys). The leader's container is then cut
/// off the network: the other two elect a leader and take writes, directly
/// and through the proxy; once it is back, HashKV is equal on the voters
/// and the learner and every acknowledged write is on the old leader and
/// on the learner.
#[tokio::test(flavor = "multi_thread")]
async fn srv_bootstrapped_containers_survive_the_leader_cut_off_the_network() {
    if !docker_available() {
        eprintln!("no Docker engine answers: the container test is skipped");
        return;
    }
    let mut s = Scope::new("trio");
    let net = s.network("cairn-it-net");
    let dir = tempfile::tempdir().unwrap();
    let names = ["infra0", "infra1", "infra2"];
    let dns = srv_dns(&mut s, &net, dir.path(), &names).await;
    let resolver = ["--dns", dns.as_str()];
    let srv = [
        "--discovery-srv",
        "cluster.test",
        "--initial-cluster-token",
        "containers",
    ];
    let (containers, ports): (Vec<String>, Vec<u16>) = names
        .iter()
        .map(|n| agent_with(&mut s, &net, n, &resolver, &srv))
        .unzip();
    let leader = leader_of(&names, &ports).await;
    let client = |i: usize| client_at(ports[i]);
    // The voters know each other by the names they published (SRV
    // records carry none).
    eventually("three named voters", LIMIT, || async {
        let mut c = client(0).await?;
        let mut listed: Vec<(String, bool)> = c
            .member_list()
            .await
            .ok()?
            .members()
            .iter()
            .map(|m| (m.name().to_string(), m.is_learner()))
            .collect();
        listed.sort();
        (listed == names.map(|n| (n.to_string(), false))).then_some(())
    })
    .await;
    // A learner and a proxy find the cluster by the client records.
    let mut learner_flags = srv.to_vec();
    learner_flags.extend(["--role", "learner"]);
    let (_, learner) = agent_with(&mut s, &net, "learner0", &resolver, &learner_flags);
    let mut proxy_flags = srv.to_vec();
    proxy_flags.extend(["--role", "proxy"]);
    let (_, proxy) = agent_with(&mut s, &net, "proxy0", &resolver, &proxy_flags);
    let mut proxy_client = proxy_with_learner(proxy, "learner0").await;

    let mut acked = vec!["via-proxy".to_string()];
    for k in 0..50 {
        let mut c = client((leader + 1) % 3).await.unwrap();
        c.put(format!("k{k}"), "v", None).await.unwrap();
        acked.push(format!("k{k}"));
    }
    let old_leader = client(leader)
        .await
        .unwrap()
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    // Cut the leader off the cluster's network.
    docker_ok(&["network", "disconnect", &net, &containers[leader]]);
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    eventually(
        "the majority elects a new leader and takes writes",
        LIMIT,
        || {
            let i = others[0];
            async move {
                let mut c = client(i).await?;
                c.put("after-cut", "1", None).await.ok()?;
                Some(())
            }
        },
    )
    .await;
    acked.push("after-cut".into());
    let mut c = client(others[0]).await.unwrap();
    let new_leader = c.status().await.unwrap().leader();
    assert!(
        new_leader != 0 && new_leader != old_leader,
        "the majority's leader {new_leader:x} (the cut-off one was {old_leader:x})"
    );
    for k in 50..80 {
        let mut c = client(others[1]).await.unwrap();
        c.put(format!("k{k}"), "v", None).await.unwrap();
        acked.push(format!("k{k}"));
    }
    // The proxy fails over to the majority.
    eventually("a write through the proxy after the cut", LIMIT, || {
        let mut p = proxy_client.clone();
        async move { p.put("proxy-after-cut", "1", None).await.ok() }
    })
    .await;
    acked.push("proxy-after-cut".into());
    for k in 0..20 {
        proxy_client.put(format!("p{k}"), "v", None).await.unwrap();
        acked.push(format!("p{k}"));
    }
    // Back on the network: it converges.
    docker_ok(&["network", "connect", &net, &containers[leader]]);
    let rev = c
        .get("p19", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let all = [ports.clone(), vec![learner]].concat();
    eventually(
        "HashKV equal on the voters and the learner at one revision",
        LIMIT,
        || {
            let all = all.clone();
            async move {
                let mut hashes = Vec::new();
                for port in all {
                    let mut c = client_at(port).await?;
                    hashes.push(c.hash_kv(rev).await.ok()?.hash());
                }
                hashes.windows(2).all(|w| w[0] == w[1]).then_some(())
            }
        },
    )
    .await;
    // No acknowledged write lost, read from the old leader and the learner.
    for port in [ports[leader], learner] {
        let mut m = eventually("a client", LIMIT, || client_at(port)).await;
        for k in &acked {
            let r = m
                .get(
                    k.as_str(),
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
                .unwrap();
            assert_eq!(r.kvs().len(), 1, "{k} lost on the member at port {port}");
        }
    }
}

/// A learner and a proxy, each in its own container, join three voters by
/// their client URLs; then every voter container is restarted in turn
/// (`docker restart`, SIGTERM then start) while a writer keeps writing
/// through the proxy: no acknowledged write is lost and the learner ends
/// with every one of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_learner_a_proxy_and_a_rolling_restart_in_containers() {
    if !docker_available() {
        eprintln!("no Docker engine answers: the container test is skipped");
        return;
    }
    let mut s = Scope::new("roles");
    let net = s.network("cairn-it-roles");
    let names = ["r0", "r1", "r2"];
    let (containers, _ports) = voters(&mut s, &net, &names);
    let endpoints = names
        .iter()
        .map(|n| format!("http://{n}:2379"))
        .collect::<Vec<_>>()
        .join(",");
    let (_, learner) = agent(
        &mut s,
        &net,
        "rlearner",
        &["--role", "learner", "--endpoints", &endpoints],
    );
    let (_, proxy) = agent(
        &mut s,
        &net,
        "rproxy",
        &["--role", "proxy", "--endpoints", &endpoints],
    );
    let proxy_client = proxy_with_learner(proxy, "rlearner").await;

    // A writer through the proxy for the whole rolling restart; it keeps
    // the keys whose put was acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut c = proxy_client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let k = format!("roll/{n:05}");
                n += 1;
                if c.put(k.as_str(), "v", None).await.is_ok() {
                    acked.push(k);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    for c in &containers {
        docker_ok(&["restart", "-t", "20", c]);
        // Back and serving before the next one goes.
        eventually("the restarted voter serves", LIMIT, || {
            let mut p = proxy_client.clone();
            async move { p.put("probe", "1", None).await.ok().map(|_| ()) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 20,
        "too few writes acknowledged: {}",
        acked.len()
    );
    let mut p = proxy_client.clone();
    let all = p
        .get("roll/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let have: std::collections::HashSet<String> = all
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    for k in &acked {
        assert!(have.contains(k), "{k} acknowledged and lost");
    }
    // The learner has replicated every one of them.
    let last = acked.last().unwrap().clone();
    eventually("the learner caught up", LIMIT, || {
        let last = last.clone();
        async move {
            let mut l = client_at(learner).await?;
            let r = l
                .get(
                    last.as_str(),
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
                .ok()?;
            (r.kvs().len() == 1).then_some(())
        }
    })
    .await;
}

/// `docker compose` (the v2 plugin) where it is installed, else
/// `docker-compose` (v1); `None` when neither answers.
fn compose_command() -> Option<Vec<String>> {
    let works = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [&["docker", "compose"][..], &["docker-compose"][..]]
        .into_iter()
        .find(|argv| works(argv))
        .map(|argv| argv.iter().map(|a| a.to_string()).collect())
}

/// One compose project of the example, brought down with its volumes on
/// drop (also when the test fails).
struct Compose {
    argv: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn dir() -> &'static str {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/docker/compose")
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(["-p", &self.project])
            .args(args)
            .current_dir(Self::dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(out.status.success(), "compose {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

/// The compose example: three members and an application container in
/// the first member's network namespace. The application's own output
/// shows the file that member renders from keys (with a value the test
/// writes) and the member's DNS answers for the service it registers.
#[tokio::test(flavor = "multi_thread")]
async fn the_compose_example_serves_its_application_a_rendered_file_and_dns() {
    if !docker_available() {
        eprintln!("no Docker engine answers: the compose test is skipped");
        return;
    }
    let Some(argv) = compose_command() else {
        eprintln!(
            "neither `docker compose` nor `docker-compose` answers: the compose test is skipped"
        );
        return;
    };
    let mut s = Scope::new("compose");
    let app = format!("cairn-it-app:{}", std::process::id());
    let build = Command::new(format!("{}/app/build.sh", Compose::dir()))
        .arg(&app)
        .output()
        .unwrap();
    assert!(build.status.success(), "{build:?}");
    s.images.push(app.clone());
    let port = free_port();
    let project = Compose {
        argv,
        project: format!("cairn-it-compose-{}", std::process::id()),
        env: vec![
            ("CAIRN_IMAGE".into(), s.tag.clone()),
            ("APP_IMAGE".into(), app),
            ("CAIRN_CLIENT_PORT".into(), port.to_string()),
        ],
    };
    project.ok(&["up", "-d"]);
    let greeting = format!("hello from test {}", std::process::id());
    eventually("the cluster takes a write", LIMIT, || {
        let greeting = greeting.clone();
        async move {
            let mut c = client_at(port).await?;
            c.put("app/greeting", greeting, None).await.ok()
        }
    })
    .await;
    let mut last = String::new();
    let seen = eventually_or_last(&mut last, || {
        let logs = project.ok(&["logs", "--no-color", "--no-log-prefix", "app"]);
        let lines: Vec<&str> = logs.lines().map(str::trim).collect();
        // The rendered file, as the application printed it.
        let file = lines.contains(&format!("greeting = {greeting}").as_str())
            && lines.contains(&"upstream = 192.0.2.10:8080");
        // `dig +short` SRV: priority weight port target; and A.
        let srv = lines.iter().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 4 && f[2] == "8080" && f[3].ends_with(".web.skydns.local.")
        });
        let a = lines.contains(&"192.0.2.10");
        (file && srv && a, logs)
    })
    .await;
    assert!(seen, "the application's output:\n{last}");
}

/// Polls `check` (a verdict and what it looked at) until it holds or
/// [`LIMIT`] passes; the last thing looked at is left in `last`.
async fn eventually_or_last(last: &mut String, mut check: impl FnMut() -> (bool, String)) -> bool {
    let until = std::time::Instant::now() + LIMIT;
    loop {
        let (ok, seen) = check();
        *last = seen;
        if ok {
            return true;
        }
        if std::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
