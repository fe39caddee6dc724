//! Benchmarks of the agent's roles (issue "One agent, three roles"):
//!
//! - `learners`: serializable read throughput of a 3-voter cairn cluster as
//!   learners are added (each a process on loopback, added with `--role
//!   learner --endpoints ...`); the clients' connections are spread over
//!   every member's endpoint, voters and learners alike.
//!   On one machine every process shares the same cores, so more processes
//!   cannot add capacity; `--member-cpu F` puts each member in its own
//!   cgroup (v1 `cpu` controller) limited to F cores, so that the members,
//!   not the machine, bound the throughput, as when each learner is
//!   another host.
//! - `proxy-watchers`: resident memory per idle watcher on a proxy in front
//!   of one member, for cairn's `--role proxy` and etcd's `grpc-proxy`; the
//!   watchers all watch one key (fan-out), `--per-stream` (100) per stream.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::cluster::Cluster;
use cairn_tests::{Kind, Subject, SubjectOptions, free_port, rss_bytes};
use etcd_client::{Client, ConnectOptions};

use crate::{Load, Stats, range_load};

/// A cgroup (v1 `cpu` controller) holding one process, limited to a share
/// of a core; removed on drop (after the process is gone).
pub struct CpuLimit(PathBuf);

impl CpuLimit {
    pub fn new(pid: u32, cores: f64) -> Result<CpuLimit> {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/cpu/cairn-bench-{}-{pid}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| {
            format!("creating {} (needs root and cgroup v1 cpu)", dir.display())
        })?;
        // A short period: throttled members wait at most 10 ms, not 100.
        let period = 10_000u64;
        std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
        std::fs::write(
            dir.join("cpu.cfs_quota_us"),
            ((cores * period as f64) as u64).max(1000).to_string(),
        )?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", dir.display()))?;
        Ok(CpuLimit(dir))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub async fn learners(
    bin: PathBuf,
    counts: &[usize],
    load: &Load,
    member_cpu: Option<f64>,
) -> Result<Vec<(usize, Stats)>> {
    let most = counts.iter().copied().max().unwrap_or(0);
    let mut limits = Vec::new();
    let mut c = Cluster::prepare(Kind::Cairn, 3, &[]);
    c.bin = Some(bin);
    for i in 0..3 {
        c.spawn(i, "new");
        if let Some(cores) = member_cpu {
            limits.push(CpuLimit::new(c.members[i].pid().unwrap(), cores)?);
        }
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let mut learners = Vec::new();
    let mut out = Vec::new();
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    for n in sorted {
        while learners.len() < n.min(most) {
            let i = c.new_member();
            c.spawn_role(i, "learner", &[0, 1, 2]);
            if let Some(cores) = member_cpu {
                limits.push(CpuLimit::new(c.members[i].pid().unwrap(), cores)?);
            }
            c.wait_ready(i).await;
            learners.push(i);
        }
        let endpoints: Vec<String> = (0..3)
            .chain(learners.iter().copied())
            .map(|i| c.members[i].client_url())
            .collect();
        eprintln!("learners: {n}, endpoints {}", endpoints.len());
        // The same number of connections to every endpoint.
        let conns = load.conns.max(endpoints.len()).div_ceil(endpoints.len()) * endpoints.len();
        let load = Load {
            conns,
            ..load.clone()
        };
        out.push((n, range_load(&endpoints, &load, true).await?));
    }
    drop(c);
    drop(limits);
    Ok(out)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bytes of resident memory per idle watcher on a proxy of `kind`, and the
/// proxy's idle RSS.
pub async fn proxy_watchers(
    kind: Kind,
    bin: PathBuf,
    watchers: usize,
    per_stream: usize,
) -> Result<(u64, u64)> {
    let upstream = Subject::start_with(SubjectOptions {
        bin: Some(bin.clone()),
        ..SubjectOptions::new(kind)
    })
    .await;
    let port = free_port();
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(&bin);
    match kind {
        Kind::Cairn => cmd.args([
            "--role",
            "proxy",
            "--endpoints",
            &upstream.endpoint(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{port}"),
            "--data-dir",
            &dir.path().join("proxy").display().to_string(),
        ]),
        Kind::Etcd => cmd.args([
            "grpc-proxy",
            "start",
            "--endpoints",
            &upstream.endpoint(),
            "--listen-addr",
            &format!("127.0.0.1:{port}"),
        ]),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start the {kind:?} proxy"))?;
    let proxy = Proc(child);
    let pid = proxy.0.id();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        if let Ok(mut c) = Client::connect([&endpoint], Some(options)).await
            && c.get("probe", None).await.is_ok()
        {
            break c;
        }
        if Instant::now() > deadline {
            bail!("the {kind:?} proxy did not answer on {endpoint}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Warm up one stream so that per-connection costs are paid before the
    // baseline.
    let mut warm = client.clone().watch("fanout", None).await?;
    let _ = warm.message().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes(pid).context("proxy RSS")?;
    let mut streams = Vec::new();
    let mut opened = 0;
    while opened < watchers {
        let mut s = client.clone().watch("fanout", None).await?;
        let _ = s.message().await?;
        opened += 1;
        for _ in 1..per_stream.min(watchers - opened + 1) {
            s.watch("fanout", None).await?;
            let _ = s.message().await?;
            opened += 1;
        }
        streams.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid).context("proxy RSS")?;
    drop(streams);
    Ok((after.saturating_sub(idle) / watchers as u64, idle))
}
