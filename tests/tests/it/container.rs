//! The container image (cairn only; skipped, saying so, where no Docker
//! engine answers): `packaging/docker/build.sh` builds it from this
//! machine with no registry; it runs as a numeric non-root user, its
//! HEALTHCHECK (`cairn health` on the shared socket) turns healthy, and
//! three containers on a private network form a cluster that survives the
//! leader's container being cut off the network, without losing an
//! acknowledged write, and converges (HashKV) once it is back.
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

/// Containers, networks and the image of one test, removed on drop.
struct Scope {
    tag: String,
    containers: Vec<String>,
    networks: Vec<String>,
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
        let _ = docker(&["rm", "-f", &c]);
        let mut all = vec!["run", "-d", "--name", &c, "--hostname", name];
        all.extend(args);
        docker_ok(&all);
        self.containers.push(c.clone());
        c
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        let _ = docker(&["rmi", "-f", &self.tag]);
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
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:2379");
    let adv = format!("http://{name}:2379");
    let peer = format!("http://{name}:2380");
    let tag = s.tag.clone();
    let mut args = vec![
        "--network",
        net,
        "--network-alias",
        name,
        "-p",
        &publish,
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
    ];
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
async fn client_at(port: u16) -> Option<etcd_client::Client> {
    let ep = format!("http://127.0.0.1:{port}");
    etcd_client::Client::connect(
        [ep.as_str()],
        Some(
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(3)),
        ),
    )
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_containers_survive_the_leader_cut_off_the_network() {
    if !docker_available() {
        eprintln!("no Docker engine answers: the container test is skipped");
        return;
    }
    let mut s = Scope::new("trio");
    let net = s.network("cairn-it-net");
    let names = ["infra0", "infra1", "infra2"];
    let (containers, ports) = voters(&mut s, &net, &names);
    let client = |i: usize| client_at(ports[i]);
    // The leader, as member 0 sees it.
    let leader = eventually("a leader", LIMIT, || async {
        let mut c = client(0).await?;
        let st = c.status().await.ok()?;
        let lid = st.leader();
        if lid == 0 {
            return None;
        }
        for (i, _) in names.iter().enumerate() {
            let mut ci = client(i).await?;
            if ci.status().await.ok()?.header()?.member_id() == lid {
                return Some(i);
            }
        }
        None
    })
    .await;
    let mut acked = Vec::new();
    for k in 0..50 {
        let mut c = client((leader + 1) % 3).await.unwrap();
        c.put(format!("k{k}"), "v", None).await.unwrap();
        acked.push(format!("k{k}"));
    }
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
    for k in 50..80 {
        let mut c = client(others[1]).await.unwrap();
        c.put(format!("k{k}"), "v", None).await.unwrap();
        acked.push(format!("k{k}"));
    }
    // Back on the network: it converges.
    docker_ok(&["network", "connect", &net, &containers[leader]]);
    let mut c = client(others[0]).await.unwrap();
    let rev = c
        .get("after-cut", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    eventually(
        "HashKV equal on the three at one revision",
        LIMIT,
        || async move {
            let mut hashes = Vec::new();
            for i in 0..3 {
                let mut c = client(i).await?;
                hashes.push(c.hash_kv(rev).await.ok()?.hash());
            }
            hashes.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    )
    .await;
    // No acknowledged write lost, read from the old leader.
    let mut old = client(leader).await.unwrap();
    for k in &acked {
        let r = old
            .get(
                k.as_str(),
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 1, "{k} lost");
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
                .any(|m| m.name() == "rlearner" && m.is_learner())
                .then_some(())
        }
    })
    .await;

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
