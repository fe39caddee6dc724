//! Multi-member clusters of real processes on 127.0.0.1, started with the
//! flags of etcd's clustering guide (cairn or Debian's etcd alike).
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::relay::UdpRelay;
use crate::{ETCDCTL_BIN, Kind, bin_for, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Overrides the cluster's token (to test a mismatch).
    pub token: Option<String>,
    /// Flags of this member only (its certificate, say).
    pub extra_args: Vec<String>,
    /// Environment variables of this member's process only.
    pub env: Vec<(String, String)>,
    /// Where the member really listens for peers when a relay stands in
    /// front of it (`peer_port` is then the relay's).
    pub listen_peer_port: Option<u16>,
    child: Option<Child>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    fn listen_peer_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.listen_peer_port.unwrap_or(self.peer_port)
        )
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

pub struct Cluster {
    pub kind: Kind,
    dir: TempDir,
    pub token: String,
    pub members: Vec<Member>,
    extra_args: Vec<String>,
    relays: Vec<UdpRelay>,
    /// The server binary, when not the default for `kind` (benchmarks).
    pub bin: Option<PathBuf>,
    /// How many of the members form the new cluster (`--initial-cluster`
    /// of a member started with state `new`); the rest join later. All of
    /// them when unset.
    pub initial: Option<usize>,
}

impl Cluster {
    /// Starts `n` members of a new cluster and waits until each serves
    /// linearizable reads.
    pub async fn start(kind: Kind, n: usize, extra_args: &[&str]) -> Cluster {
        let mut c = Cluster::prepare(kind, n, extra_args);
        for i in 0..n {
            c.spawn(i, "new");
        }
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    /// The cluster's layout without starting anything.
    pub fn prepare(kind: Kind, n: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-cluster-")
            .tempdir()
            .expect("tempdir");
        let token = format!(
            "cluster-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let mut c = Cluster {
            kind,
            dir,
            token,
            members: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            relays: Vec::new(),
            bin: None,
            initial: None,
        };
        for _ in 0..n {
            c.new_member();
        }
        c
    }

    /// Adds a member to the layout (not started).
    pub fn new_member(&mut self) -> usize {
        let i = self.members.len();
        let name = format!("infra{i}");
        let mut client_port = free_port();
        let mut peer_port = free_port();
        let taken: Vec<u16> = self
            .members
            .iter()
            .flat_map(|m| [m.client_port, m.peer_port])
            .collect();
        while peer_port == client_port || taken.contains(&peer_port) {
            peer_port = free_port();
        }
        while taken.contains(&client_port) {
            client_port = free_port();
        }
        self.members.push(Member {
            data_dir: self.dir.path().join(&name),
            log_path: self.dir.path().join(format!("{name}.log")),
            name,
            client_port,
            peer_port,
            token: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            listen_peer_port: None,
            child: None,
        });
        i
    }

    /// Puts a UDP relay in front of every member's peer port (before they
    /// start): members advertise the relay, so [`Cluster::isolate`] can cut
    /// one off. QUIC (cairn) only; see `relay.rs`.
    pub fn relay_peers(&mut self) {
        assert!(self.relays.is_empty(), "relays already set up");
        for m in &mut self.members {
            let relay = UdpRelay::start(([127, 0, 0, 1], m.peer_port).into());
            m.listen_peer_port = Some(m.peer_port);
            m.peer_port = relay.addr().port();
            self.relays.push(relay);
        }
    }

    /// Cuts member `i`'s peer traffic both ways (`cut`), or restores it.
    pub fn isolate(&self, i: usize, cut: bool) {
        let real = |j: usize| -> std::net::SocketAddr {
            let port = self.members[j].listen_peer_port.expect("relay_peers first");
            ([127, 0, 0, 1], port).into()
        };
        for (j, relay) in self.relays.iter().enumerate() {
            if j == i {
                relay.cut(cut);
            } else {
                relay.block(real(i), cut);
            }
        }
    }

    /// `name=peer-url,...` of the members `0..upto`.
    pub fn initial_cluster(&self, upto: usize) -> String {
        self.members[..upto]
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn args(&self, i: usize, state: &str) -> Vec<String> {
        let m = &self.members[i];
        let upto = if state == "new" {
            self.initial.unwrap_or(self.members.len())
        } else {
            i + 1
        };
        let mut a: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--listen-peer-urls",
            &m.listen_peer_url(),
            "--listen-client-urls",
            &m.client_url(),
            "--advertise-client-urls",
            &m.client_url(),
            "--initial-cluster-token",
            m.token.as_deref().unwrap_or(&self.token),
            "--initial-cluster",
            &self.initial_cluster(upto),
            "--initial-cluster-state",
            state,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.extra_args.iter().cloned());
        a.extend(m.extra_args.iter().cloned());
        a
    }

    /// Starts member `i` (`state`: `new` or `existing`).
    pub fn spawn(&mut self, i: usize, state: &str) {
        let args = self.args(i, state);
        self.launch(i, args);
    }

    /// Runs the server binary as member `i` with `args`, output to its log.
    pub fn launch(&mut self, i: usize, args: Vec<String>) {
        let bin = self.bin.clone().unwrap_or_else(|| bin_for(self.kind));
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} already runs", m.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log_path)
            .expect("open member log");
        let child = Command::new(bin)
            .args(args)
            .envs(m.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn member");
        m.child = Some(child);
    }

    /// Starts member `i` of the layout as a cairn agent of another role
    /// (`learner` or `proxy`), given only the client URLs of members
    /// `endpoints` (`--role R --endpoints ...`): a learner adds itself to the
    /// cluster, a proxy forwards to it.
    pub fn spawn_role(&mut self, i: usize, role: &str, endpoints: &[usize]) {
        let eps: Vec<String> = endpoints
            .iter()
            .map(|&j| self.members[j].client_url())
            .collect();
        let m = &self.members[i];
        let mut args: Vec<String> = [
            "--role",
            role,
            "--endpoints",
            &eps.join(","),
            "--name",
            &m.name,
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--listen-client-urls",
            &m.client_url(),
            "--advertise-client-urls",
            &m.client_url(),
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--listen-peer-urls",
            &m.listen_peer_url(),
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(m.extra_args.iter().cloned());
        self.launch(i, args);
    }

    /// Waits until member `i` answers a linearizable read.
    pub async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("never answered");
        loop {
            if Instant::now() > deadline {
                panic!(
                    "{} not ready within {READY_TIMEOUT:?}: {last}\n{}",
                    self.members[i].name,
                    self.log(i)
                );
            }
            if !self.members[i].is_running() {
                panic!(
                    "{} exited during startup\n{}",
                    self.members[i].name,
                    self.log(i)
                );
            }
            let mut c = match self.try_client(i).await {
                Ok(c) => c,
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(3), c.get("ready-probe", None)).await {
                Ok(Ok(_)) => return,
                // With auth on, an anonymous read is refused: the member is
                // up and deciding.
                Ok(Err(e)) if e.to_string().contains("user name is empty") => return,
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_client(&self, i: usize) -> Result<etcd_client::Client, etcd_client::Error> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        etcd_client::Client::connect([self.members[i].client_url()], Some(options)).await
    }

    /// A client of member `i` only.
    pub async fn client(&self, i: usize) -> etcd_client::Client {
        self.try_client(i)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.members[i].name))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log_path).unwrap_or_default()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to member `i` (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.members[i].pid().expect("member runs");
        let ok = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Waits up to `timeout` for member `i` to exit; true when it did.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.members[i].is_running() {
                self.members[i].child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Starts member `i` again on its data directory.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i, "new");
        self.wait_ready(i).await;
    }

    /// Indexes of the members whose process runs.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].is_running())
            .collect()
    }

    /// The member the running members agree leads (by Status), waiting up
    /// to `timeout`.
    pub async fn leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running();
            let mut seen = Vec::new();
            for &i in &running {
                let Ok(mut c) = self.try_client(i).await else {
                    continue;
                };
                let st = tokio::time::timeout(Duration::from_secs(2), c.status()).await;
                if let Ok(Ok(st)) = st {
                    seen.push((i, st.header().unwrap().member_id(), st.leader()));
                }
            }
            if seen.len() == running.len()
                && let Some(&(_, _, leader)) = seen.first()
                && leader != 0
                && seen.iter().all(|s| s.2 == leader)
                && let Some(&(i, _, _)) = seen.iter().find(|s| s.1 == leader)
            {
                return i;
            }
            if Instant::now() > deadline {
                panic!("no agreed leader within {timeout:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member ID of member `i` (from its own Status).
    pub async fn member_id(&self, i: usize) -> u64 {
        let mut c = self.client(i).await;
        c.status().await.unwrap().header().unwrap().member_id()
    }

    /// `etcdctl` with the running members' endpoints.
    pub fn etcdctl(&mut self, args: &[&str]) -> Output {
        let eps: Vec<String> = self
            .running()
            .into_iter()
            .map(|i| format!("127.0.0.1:{}", self.members[i].client_port))
            .collect();
        // etcdctl's default 5 s is short for a membership change on a CI
        // machine running the whole suite on two cores.
        Command::new(ETCDCTL_BIN)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .arg("--command-timeout=15s")
            .args(args)
            .output()
            .expect("etcdctl")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(pid) = self.members[i].pid() {
                // A stopped process must be woken to die cleanly.
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            self.kill9(i);
        }
    }
}
