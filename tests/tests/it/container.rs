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

#[tokio::test(flavor = "multi_thread")]
async fn three_containers_survive_the_leader_cut_off_the_network() {
    if !docker_available() {
        eprintln!("no Docker engine answers: the container test is skipped");
        return;
    }
    let mut s = Scope::new("trio");
    let net = s.network("cairn-it-net");
    let names = ["infra0", "infra1", "infra2"];
    let initial = names
        .iter()
        .map(|n| format!("{n}=http://{n}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let tag = s.tag.clone();
    let mut containers = Vec::new();
    for (n, port) in names.iter().zip(&ports) {
        let publish = format!("127.0.0.1:{port}:2379");
        let adv = format!("http://{n}:2379");
        let peer = format!("http://{n}:2380");
        let c = s.run(
            n,
            &[
                "--network",
                &net,
                "--network-alias",
                n,
                "-p",
                &publish,
                tag.as_str(),
                "--name",
                n,
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
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                "containers",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ],
        );
        containers.push(c);
    }
    let client = |i: usize| {
        let ep = format!("http://127.0.0.1:{}", ports[i]);
        async move {
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
    };
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
