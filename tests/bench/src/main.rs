//! `cairn-bench`: the same workloads against cairn and against etcd, in one
//! run on one machine, printed side by side.
//!
//! The workloads follow etcd's `tools/benchmark` (key 8 B, value 256 B):
//!
//! | name       | what                                                           |
//! |------------|----------------------------------------------------------------|
//! | `put-1`    | sequential puts from 1 client                                  |
//! | `put-100`  | puts from `--clients` (100) clients over `--conns` (10) conns  |
//! | `range-l`  | linearizable range of one key, 100 clients                     |
//! | `range-s`  | serializable range of one key, 100 clients                     |
//! | `watch`    | put-to-event latency with `--watchers` (100) watchers           |
//! | `memory`   | VmRSS idle (and its anonymous part) and after `--mem-puts` puts (fresh server) |
//!
//! Usage:
//!
//! ```text
//! # both servers, fresh temp data dirs, same flags, one table:
//! cargo build --release -p cairn-agent -p cairn-bench
//! target/release/cairn-bench compare [--cairn-bin target/release/cairn] \
//!     [--etcd-bin /usr/bin/etcd] [--total 10000] [--total-single 1000] \
//!     [--clients 100] [--conns 10] [--watchers 100] [--watch-puts 100] \
//!     [--mem-puts 100000] [--workloads put-1,put-100,range-l,range-s,watch,memory]
//! # etcd alone (no cairn binary needed):
//! cairn-bench compare --only etcd
//! # the real memory figure of the design targets:
//! cairn-bench compare --workloads memory --mem-puts 1000000
//! # 3-member clusters on loopback (etcd's flags for both; clients spread
//! # over the members' endpoints as etcd's benchmark does with --endpoints):
//! cairn-bench compare --members 3 --workloads put-1,put-100,range-l,range-s,watch
//! # several rounds with fresh servers, alternating who goes first, then
//! # the median of every cell (one run on a shared machine can be far off):
//! cairn-bench compare --members 3 --workloads put-100 --total 60000 --rounds 5
//! # one workload against a server that is already running:
//! cairn-bench run --endpoints http://127.0.0.1:2379 put-100 [--pid PID for memory]
//! # cairn's DNS server: UDP q/s, p50/p99, key change → answer (dns.rs):
//! cairn-bench dns [--secs 10] [--sockets 4] [--inflight 64] [--changes 200]
//! ```
//!
//! The cairn binary defaults to `CAIRN_BIN`, else `cairn` next to this tool
//! (`<target>/<profile>/cairn`). Numbers are printed, never asserted: this is
//! a benchmark, not a test. Ratios are cairn / etcd.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::{Kind, Subject, SubjectOptions, rss_anon_bytes, rss_bytes};
use clap::{Parser, Subcommand};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, WatchOptions};
use tokio::sync::mpsc;

mod compaction;
mod dns;
mod prefix_delete;
mod render;
mod roles;
mod tenants;

const KEY_SIZE: usize = 8;
const VALUE_SIZE: usize = 256;

#[derive(Parser, Debug)]
#[command(
    name = "cairn-bench",
    about = "Runs the same workloads against cairn and etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Load {
    /// Requests for the many-client workloads.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Requests for the single-client put workload.
    #[arg(long, default_value_t = 1_000)]
    total_single: u64,
    /// Concurrent clients for the many-client workloads.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Watchers for the watch workload.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Puts observed by the watchers in the watch workload.
    #[arg(long, default_value_t = 100)]
    watch_puts: u64,
    /// Puts of 256 B before reading the resident memory.
    #[arg(long, default_value_t = 100_000)]
    mem_puts: u64,
    /// Comma-separated workloads.
    #[arg(long, default_value = "put-1,put-100,range-l,range-s,watch,memory")]
    workloads: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start etcd and cairn on loopback and run every workload against each.
    Compare {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        #[arg(long, default_value = cairn_tests::ETCD_BIN)]
        etcd_bin: PathBuf,
        /// Run only one of them: `etcd` or `cairn`.
        #[arg(long)]
        only: Option<String>,
        /// Members per cluster: 1, or 3 for a replicated cluster on loopback.
        #[arg(long, default_value_t = 1)]
        members: usize,
        /// Rounds, each with fresh servers (etcd first in odd rounds, cairn
        /// first in even ones); with more than one, each round's table and
        /// then the median of every cell. On a shared machine one run can
        /// be a quarter off the next.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Serializable read throughput of a 3-voter cairn cluster as learners
    /// are added.
    Learners {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        /// Learner counts to measure, comma-separated.
        #[arg(long, default_value = "0,1,2,4")]
        counts: String,
        /// Limit each member to this many cores (its own cgroup), as if
        /// each were a host of its own.
        #[arg(long)]
        member_cpu: Option<f64>,
        #[command(flatten)]
        load: Load,
    },
    /// Resident memory per idle watcher on cairn's proxy and etcd's
    /// grpc-proxy, N watchers of one key.
    ProxyWatchers {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        #[arg(long, default_value = cairn_tests::ETCD_BIN)]
        etcd_bin: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        /// Watchers per gRPC stream.
        #[arg(long, default_value_t = 100)]
        per_stream: usize,
    },
    /// Write latency while a long history (1 M revisions) is compacted,
    /// etcd and cairn.
    Compaction {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        #[arg(long, default_value = cairn_tests::ETCD_BIN)]
        etcd_bin: PathBuf,
        #[arg(long)]
        only: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        revisions: u64,
        /// Keys the history is spread over.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Clients writing during the measurement.
        #[arg(long, default_value_t = 10)]
        writers: usize,
        /// Seconds of the baseline window.
        #[arg(long, default_value_t = 10)]
        baseline: u64,
    },
    /// One tenant's flood against another's latency, with and without a
    /// rate limit on the flooding prefix (cairn).
    Tenants {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        flooders: usize,
        #[arg(long, default_value_t = 10)]
        victims: usize,
        /// Seconds per scenario.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// The limit put on the flooding prefix.
        #[arg(long, default_value = "/noisy/=1000:1000")]
        limit: String,
    },
    /// Other clients' write latency while one DeleteRange removes a
    /// prefix of 100 000 keys, etcd and cairn.
    PrefixDelete {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        #[arg(long, default_value = cairn_tests::ETCD_BIN)]
        etcd_bin: PathBuf,
        #[arg(long)]
        only: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 10)]
        writers: usize,
    },
    /// Put-to-file latency of `[[template]]` rendering: N templates
    /// sharing a few prefixes on one cairn agent, wait 0s.
    Render {
        #[arg(long)]
        cairn_bin: Option<PathBuf>,
        #[arg(long, default_value_t = 500)]
        templates: usize,
        #[arg(long, default_value_t = 10)]
        prefixes: usize,
        #[arg(long, default_value_t = 200)]
        changes: usize,
    },
    /// cairn's DNS server (`[dns]`): UDP answers/s and latency with
    /// pipelined sockets, and key change → new DNS answer latency.
    Dns(dns::Opts),
    /// Run workloads against a server that is already running.
    Run {
        #[arg(long)]
        endpoints: String,
        /// The server's pid, for the memory workload.
        #[arg(long)]
        pid: Option<u32>,
        /// Workload name, or `all`.
        workload: String,
        #[command(flatten)]
        load: Load,
    },
}

#[derive(Clone, Copy, Debug)]
struct Stats {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU time the server processes (every member) used meanwhile.
    server_cpu: Option<Duration>,
    /// CPU time this load generator used meanwhile.
    client_cpu: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
enum Measure {
    Load(Stats),
    Memory {
        idle: u64,
        /// The anonymous part of `idle` (heap and stacks; not the
        /// executable's pages mapped from the page cache).
        idle_anon: u64,
        after: u64,
        puts: u64,
    },
}

const ALL: [&str; 6] = ["put-1", "put-100", "range-l", "range-s", "watch", "memory"];

fn main() -> Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // As the agent's runtime (agent/src/main.rs): without the LIFO slot a
    // connection's task writes the requests of many clients at once, not
    // one `writev` each, so the load generator takes less of the CPU it
    // shares with the servers (both of them, equally).
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()?.block_on(run())
}

async fn run() -> Result<()> {
    let cli = Cli::parse();
    print_header();
    match cli.command {
        Cmd::Compare {
            cairn_bin,
            etcd_bin,
            only,
            members,
            rounds,
            load,
        } => {
            let workloads = parse_workloads(&load.workloads)?;
            if rounds == 0 {
                bail!("--rounds takes 1 or more");
            }
            if members != 1 && members != 3 {
                bail!("--members takes 1 or 3, not {members}");
            }
            if members > 1 && workloads.iter().any(|w| w == "memory") {
                bail!("the memory workload measures one member; run it without --members");
            }
            println!(
                "# members per cluster: {members} (loopback); clients spread over their endpoints"
            );
            println!(
                "# server CPU µs: user+system CPU time of every server process per request \
                 (the load generator's own not counted); client CPU µs: the load generator's"
            );
            let want = |kind: &str| only.as_deref().is_none_or(|o| o == kind);
            if let Some(o) = &only
                && o != "etcd"
                && o != "cairn"
            {
                bail!("--only takes `etcd` or `cairn`, not {o:?}");
            }
            // Find cairn before spending minutes on etcd.
            let cairn_bin = want("cairn").then(|| cairn_bin.unwrap_or_else(cairn_tests::cairn_bin));
            let mut tables = Vec::new();
            for round in 1..=rounds {
                let mut etcd = Vec::new();
                let mut cairn = Vec::new();
                let etcd_first = round % 2 == 1;
                for side in [etcd_first, !etcd_first] {
                    if side && want("etcd") {
                        etcd =
                            run_subject(Kind::Etcd, etcd_bin.clone(), &workloads, &load, members)
                                .await?;
                    }
                    if !side && let Some(bin) = &cairn_bin {
                        cairn = run_subject(Kind::Cairn, bin.clone(), &workloads, &load, members)
                            .await?;
                    }
                }
                let table = table_rows(&workloads, &etcd, &cairn, &load);
                if rounds > 1 {
                    println!("# round {round} of {rounds}");
                }
                print_rows("etcd", &table);
                tables.push(table);
            }
            if rounds > 1 {
                println!("# median of {rounds} rounds");
                print_rows("etcd", &median_rows(&tables));
            }
        }
        Cmd::Learners {
            cairn_bin,
            counts,
            member_cpu,
            load,
        } => {
            let counts: Vec<usize> = counts
                .split(',')
                .map(|c| c.trim().parse().context("--counts takes numbers"))
                .collect::<Result<_>>()?;
            let bin = cairn_bin.unwrap_or_else(cairn_tests::cairn_bin);
            let rows = roles::learners(bin, &counts, &load, member_cpu).await?;
            println!(
                "# 3 voters + N learners (each a process on loopback); {} clients over {}+ conns spread over every endpoint",
                load.clients, load.conns
            );
            if let Some(cores) = member_cpu {
                println!("# each member limited to {cores} cores (cgroup cpu quota)");
            }
            println!("# serializable range of one key");
            println!(
                "{:<10} | {:>10} | {:>8} | {:>8}",
                "learners", "req/s", "p50 ms", "p99 ms"
            );
            println!("{}", "-".repeat(46));
            for (n, st) in rows {
                println!(
                    "{:<10} | {:>10.0} | {:>8.2} | {:>8.2}",
                    n,
                    st.ops as f64 / st.elapsed.as_secs_f64(),
                    st.p50.as_secs_f64() * 1e3,
                    st.p99.as_secs_f64() * 1e3
                );
            }
        }
        Cmd::ProxyWatchers {
            cairn_bin,
            etcd_bin,
            watchers,
            per_stream,
        } => {
            let bin = cairn_bin.unwrap_or_else(cairn_tests::cairn_bin);
            let etcd = roles::proxy_watchers(Kind::Etcd, etcd_bin, watchers, per_stream).await?;
            let cairn = roles::proxy_watchers(Kind::Cairn, bin, watchers, per_stream).await?;
            println!(
                "# {watchers} idle watchers of one key through a proxy, {per_stream} per stream"
            );
            println!(
                "{:<22} | {:>16} | {:>14}",
                "proxy", "bytes/watcher", "idle RSS MiB"
            );
            println!("{}", "-".repeat(58));
            for (name, (per, idle)) in [("etcd grpc-proxy", etcd), ("cairn --role proxy", cairn)] {
                println!(
                    "{:<22} | {:>16} | {:>14.2}",
                    name,
                    per,
                    idle as f64 / (1 << 20) as f64
                );
            }
        }
        Cmd::Compaction {
            cairn_bin,
            etcd_bin,
            only,
            revisions,
            keys,
            writers,
            baseline,
        } => {
            let mut rows = Vec::new();
            let want = |k: &str| only.as_deref().is_none_or(|o| o == k);
            let baseline = Duration::from_secs(baseline);
            if want("etcd") {
                let r = compaction::run(Kind::Etcd, etcd_bin, revisions, keys, writers, baseline)
                    .await?;
                rows.push(("etcd", r));
            }
            if want("cairn") {
                let bin = cairn_bin.unwrap_or_else(cairn_tests::cairn_bin);
                let r =
                    compaction::run(Kind::Cairn, bin, revisions, keys, writers, baseline).await?;
                rows.push(("cairn", r));
            }
            println!(
                "# {revisions} revisions over {keys} keys, then {writers} writers: baseline, and while Compact(physical) runs"
            );
            println!(
                "{:<6} | {:>9} | {:>22} | {:>22} | {:>10}",
                "server", "fill/s", "base p50/p99/max ms", "during p50/p99/max ms", "compact s"
            );
            println!("{}", "-".repeat(82));
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            for (name, r) in rows {
                println!(
                    "{:<6} | {:>9.0} | {:>6.2} {:>7.2} {:>7.1} | {:>6.2} {:>7.2} {:>7.1} | {:>10.2}",
                    name,
                    r.fill_per_s,
                    ms(r.base.p50),
                    ms(r.base.p99),
                    ms(r.base.max),
                    ms(r.during.p50),
                    ms(r.during.p99),
                    ms(r.during.max),
                    r.compaction.as_secs_f64()
                );
                eprintln!(
                    "{name}: {} writes in the baseline, {} during",
                    r.base.ops, r.during.ops
                );
            }
        }
        Cmd::Tenants {
            cairn_bin,
            flooders,
            victims,
            secs,
            limit,
        } => {
            let bin = cairn_bin.unwrap_or_else(cairn_tests::cairn_bin);
            let mut rows = Vec::new();
            for (name, f, l) in [
                ("victim alone", 0, None),
                ("flood, no limit", flooders, None),
                ("flood, limited", flooders, Some(limit.as_str())),
            ] {
                eprintln!("tenants: {name}");
                rows.push(tenants::run(bin.clone(), name, l, f, victims, secs).await?);
            }
            println!(
                "# {victims} victim clients (put/get /victim/), {flooders} flooding clients (put /noisy/), {secs} s each; limit: {limit}"
            );
            println!(
                "{:<16} | {:>10} | {:>8} | {:>8} | {:>12} | {:>12}",
                "scenario", "victim/s", "p50 ms", "p99 ms", "noisy ok/s", "noisy refused/s"
            );
            println!("{}", "-".repeat(82));
            for r in rows {
                println!(
                    "{:<16} | {:>10.0} | {:>8.2} | {:>8.2} | {:>12.0} | {:>12.0}",
                    r.name,
                    r.victim_ops,
                    r.p50.as_secs_f64() * 1e3,
                    r.p99.as_secs_f64() * 1e3,
                    r.noisy_served,
                    r.noisy_refused
                );
            }
        }
        Cmd::Render {
            cairn_bin,
            templates,
            prefixes,
            changes,
        } => {
            let bin = cairn_bin.unwrap_or_else(cairn_tests::cairn_bin);
            let r = render::run(bin, templates, prefixes, changes).await?;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "# {templates} templates over {prefixes} prefixes ({} per prefix), wait 0s; {changes} puts, each timed until the last file of its prefix holds the value",
                templates / prefixes
            );
            println!(
                "# first full render of all templates (agent start included): {:.2} s",
                r.setup.as_secs_f64()
            );
            println!(
                "{:<12} | {:>8} | {:>8} | {:>8}",
                "changes", "p50 ms", "p99 ms", "max ms"
            );
            println!("{}", "-".repeat(46));
            println!(
                "{:<12} | {:>8.2} | {:>8.2} | {:>8.2}",
                r.latency.ops,
                ms(r.latency.p50),
                ms(r.latency.p99),
                ms(r.max)
            );
        }
        Cmd::PrefixDelete {
            cairn_bin,
            etcd_bin,
            only,
            keys,
            writers,
        } => {
            let want = |k: &str| only.as_deref().is_none_or(|o| o == k);
            let mut rows = Vec::new();
            if want("etcd") {
                rows.push((
                    "etcd",
                    prefix_delete::run(Kind::Etcd, etcd_bin, keys, writers).await?,
                ));
            }
            if want("cairn") {
                let bin = cairn_bin.unwrap_or_else(cairn_tests::cairn_bin);
                rows.push((
                    "cairn",
                    prefix_delete::run(Kind::Cairn, bin, keys, writers).await?,
                ));
            }
            println!(
                "# {keys} keys under /big/ deleted by one DeleteRange while {writers} clients put under /other/"
            );
            println!(
                "{:<6} | {:>13} | {:>15} | {:>15} | {:>10}",
                "server", "base p99 ms", "during p99 ms", "during max ms", "delete s"
            );
            println!("{}", "-".repeat(70));
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            for (name, r) in rows {
                println!(
                    "{:<6} | {:>13.2} | {:>15.2} | {:>15.1} | {:>10.2}",
                    name,
                    ms(r.base_p99),
                    ms(r.during_p99),
                    ms(r.during_max),
                    r.delete.as_secs_f64()
                );
            }
        }
        Cmd::Dns(o) => dns::run(o).await?,
        Cmd::Run {
            endpoints,
            pid,
            workload,
            load,
        } => {
            let workloads = if workload == "all" {
                ALL.iter().map(|s| s.to_string()).collect()
            } else {
                parse_workloads(&workload)?
            };
            let mut results = Vec::new();
            for w in &workloads {
                eprintln!("running {w} against {endpoints}");
                let m = if w == "memory" {
                    let Some(pid) = pid else {
                        bail!("the memory workload needs --pid");
                    };
                    memory(&endpoints, pid, &load).await?
                } else {
                    let eps: Vec<String> = endpoints.split(',').map(str::to_string).collect();
                    run_workload(w, &eps, &load).await?
                };
                results.push(Some(m));
            }
            print_table("server", &workloads, &results, &[], &load);
        }
    }
    Ok(())
}

fn parse_workloads(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for w in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if !ALL.contains(&w) {
            bail!("unknown workload {w:?}; known: {}", ALL.join(", "));
        }
        out.push(w.to_string());
    }
    Ok(out)
}

async fn run_subject(
    kind: Kind,
    bin: PathBuf,
    workloads: &[String],
    load: &Load,
    members: usize,
) -> Result<Vec<Option<Measure>>> {
    if members > 1 {
        eprintln!("{kind:?} ({}): starting {members} members", bin.display());
        let mut cluster = cairn_tests::cluster::Cluster::prepare(kind, members, &[]);
        cluster.bin = Some(bin);
        for i in 0..members {
            cluster.spawn(i, "new");
        }
        for i in 0..members {
            cluster.wait_ready(i).await;
        }
        let endpoints: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
        let pids: Vec<u32> = cluster.members.iter().filter_map(|m| m.pid()).collect();
        let mut results = Vec::new();
        for w in workloads {
            eprintln!("{kind:?} x{members}: {w}");
            results.push(Some(measured(w, &endpoints, load, &pids).await?));
        }
        return Ok(results);
    }
    let options = SubjectOptions {
        bin: Some(bin.clone()),
        ..SubjectOptions::new(kind)
    };
    let mut results = Vec::new();
    let mut subject = None;
    for w in workloads {
        eprintln!("{kind:?} ({}): {w}", bin.display());
        let m = if w == "memory" {
            // A fresh server, so earlier workloads do not count.
            drop(subject.take());
            let s = Subject::start_with(options.clone()).await;
            let pid = s.pid().context("server pid")?;
            memory(&s.endpoint(), pid, load).await?
        } else {
            if subject.is_none() {
                subject = Some(Subject::start_with(options.clone()).await);
            }
            let s = subject.as_ref().unwrap();
            let pids: Vec<u32> = s.pid().into_iter().collect();
            measured(w, &[s.endpoint()], load, &pids).await?
        };
        results.push(Some(m));
    }
    Ok(results)
}

async fn run_workload(name: &str, endpoint: &[String], load: &Load) -> Result<Measure> {
    let stats = match name {
        "put-1" => put_load(endpoint, 1, 1, load.total_single).await?,
        "put-100" => put_load(endpoint, load.clients, load.conns, load.total).await?,
        "range-l" => range_load(endpoint, load, false).await?,
        "range-s" => range_load(endpoint, load, true).await?,
        "watch" => watch_latency(endpoint, load).await?,
        other => bail!("workload {other} needs a server pid"),
    };
    Ok(Measure::Load(stats))
}

/// `conns` connections, each to one endpoint, round-robin over them.
async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::new();
    for i in 0..conns.max(1) {
        let endpoint = &endpoints[i % endpoints.len()];
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        clients.push(
            Client::connect([endpoint], Some(options))
                .await
                .with_context(|| format!("connect {endpoint}"))?,
        );
    }
    Ok(clients)
}

/// Runs `op` `total` times from `clients` tasks sharing `conns` connections.
/// Each op gets a clone of its connection's KV client only (a whole
/// `Client` is nine service clients to clone and drop per request).
async fn closed_loop<F, Fut>(conns: Vec<Client>, clients: usize, total: u64, op: F) -> Result<Stats>
where
    F: Fn(KvClient, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), etcd_client::Error>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients.max(1) {
        let client = conns[i % conns.len()].kv_client();
        let next = next.clone();
        let errors = errors.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return latencies;
                }
                let t0 = Instant::now();
                match op(client.clone(), n).await {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(total as usize);
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed();
    Ok(stats(all, errors.load(Ordering::Relaxed), elapsed))
}

fn stats(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Stats {
    latencies.sort();
    let pick = |q: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    Stats {
        ops: latencies.len() as u64,
        errors,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        server_cpu: None,
        client_cpu: None,
    }
}

/// User plus system CPU time of the processes `pids`, all their threads,
/// from `/proc/<pid>/stat` (in USER_HZ ticks, 100 per second on Linux).
fn cpu_of(pids: &[u32]) -> Option<Duration> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line.
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 10))
}

/// Runs a workload and records the servers' CPU time it took.
async fn measured(name: &str, endpoints: &[String], load: &Load, pids: &[u32]) -> Result<Measure> {
    let me = [std::process::id()];
    let (before, before_me) = (cpu_of(pids), cpu_of(&me));
    let mut m = run_workload(name, endpoints, load).await?;
    if let Measure::Load(s) = &mut m {
        if let (Some(b), Some(a)) = (before, cpu_of(pids)) {
            s.server_cpu = Some(a.saturating_sub(b));
        }
        if let (Some(b), Some(a)) = (before_me, cpu_of(&me)) {
            s.client_cpu = Some(a.saturating_sub(b));
        }
    }
    Ok(m)
}

/// 8-byte sequential keys, like `benchmark put --key-size=8 --sequential-keys`.
fn key(n: u64) -> Vec<u8> {
    format!("{n:0width$}", width = KEY_SIZE).into_bytes()
}

async fn put_load(endpoint: &[String], clients: usize, conns: usize, total: u64) -> Result<Stats> {
    let conns = connect(endpoint, conns).await?;
    let value = Arc::new(vec![b'v'; VALUE_SIZE]);
    closed_loop(conns, clients, total, move |mut c, n| {
        let value = value.clone();
        async move {
            c.put(key(n), value.as_slice(), None).await?;
            Ok(())
        }
    })
    .await
}

async fn range_load(endpoint: &[String], load: &Load, serializable: bool) -> Result<Stats> {
    let conns = connect(endpoint, load.conns).await?;
    conns[0]
        .clone()
        .put("rangekey", vec![b'v'; VALUE_SIZE], None)
        .await?;
    closed_loop(
        conns,
        load.clients,
        load.total,
        move |mut c, _| async move {
            let options = if serializable {
                GetOptions::new().with_serializable()
            } else {
                GetOptions::new()
            };
            c.get("rangekey", Some(options)).await?;
            Ok(())
        },
    )
    .await
}

/// Put-to-event latency: each put's send time against the moment every
/// watcher sees its event.
async fn watch_latency(endpoint: &[String], load: &Load) -> Result<Stats> {
    let streams = load.conns.clamp(1, load.watchers.max(1));
    let conns = connect(endpoint, streams).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(streams);
    let per_stream = load.watchers.div_ceil(streams);
    let mut remaining = load.watchers;
    let mut tasks = Vec::new();
    for conn in conns.iter().take(streams) {
        let n = per_stream.min(remaining);
        if n == 0 {
            break;
        }
        remaining -= n;
        let mut client = conn.clone();
        let tx = tx.clone();
        let ready = ready_tx.clone();
        let expected = n as u64 * load.watch_puts;
        tasks.push(tokio::spawn(async move {
            let mut stream = client.watch("watchkey", None).await?;
            for _ in 1..n {
                stream.watch("watchkey", Some(WatchOptions::new())).await?;
            }
            let mut created = 0;
            while created < n {
                match stream.message().await? {
                    Some(r) if r.created() => created += 1,
                    Some(_) => {}
                    None => bail!("watch stream closed"),
                }
            }
            ready.send(()).await.ok();
            let mut seen = 0u64;
            while seen < expected {
                let Some(resp) = stream.message().await? else {
                    bail!("watch stream closed");
                };
                let now = Instant::now();
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        tx.send((kv.mod_revision(), now)).ok();
                        seen += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    drop(tx);
    drop(ready_tx);
    for _ in 0..tasks.len() {
        ready_rx.recv().await.context("watcher setup failed")?;
    }
    let mut putter = conns[0].clone();
    let mut sent = std::collections::HashMap::new();
    let started = Instant::now();
    for i in 0..load.watch_puts {
        let t0 = Instant::now();
        let resp = putter
            .put(
                "watchkey",
                format!("{i:0>width$}", width = VALUE_SIZE),
                None,
            )
            .await?;
        sent.insert(resp.header().context("put header")?.revision(), t0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let expected = load.watchers as u64 * load.watch_puts;
    let mut latencies = Vec::with_capacity(expected as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (latencies.len() as u64) < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((rev, at))) => {
                if let Some(t0) = sent.get(&rev) {
                    latencies.push(at.saturating_duration_since(*t0));
                }
            }
            _ => break,
        }
    }
    let missing = expected.saturating_sub(latencies.len() as u64);
    for t in tasks {
        t.abort();
    }
    Ok(stats(latencies, missing, started.elapsed()))
}

async fn memory(endpoint: &str, pid: u32, load: &Load) -> Result<Measure> {
    let idle = rss_bytes(pid).context("read VmRSS")?;
    let idle_anon = rss_anon_bytes(pid).context("read RssAnon")?;
    // Distinct keys so every put adds a key: 1 M keys need 7 digits.
    let conns = connect(&[endpoint.to_string()], load.conns).await?;
    let value = Arc::new(vec![b'm'; VALUE_SIZE]);
    closed_loop(conns, load.clients, load.mem_puts, move |mut c, n| {
        let value = value.clone();
        async move {
            c.put(format!("m{n:07}"), value.as_slice(), None).await?;
            Ok(())
        }
    })
    .await?;
    // Let background work (snapshots, compaction of the log) settle a bit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid).context("read VmRSS")?;
    Ok(Measure::Memory {
        idle,
        idle_anon,
        after,
        puts: load.mem_puts,
    })
}

fn print_header() {
    let date = std::process::Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("# cairn-bench  {date}");
    println!("# nproc {nproc}; cpu: {model}");
    println!("# key {KEY_SIZE} B, value {VALUE_SIZE} B; ratio = cairn / etcd");
}

/// One table; `etcd` holds the left column (`left` names it), `cairn` the right.
fn print_table(
    left: &str,
    workloads: &[String],
    etcd: &[Option<Measure>],
    cairn: &[Option<Measure>],
    load: &Load,
) {
    print_rows(left, &table_rows(workloads, etcd, cairn, load));
}

/// A workload's title and its rows: metric, left value, right value.
type Rows = Vec<(String, Vec<(&'static str, Option<f64>, Option<f64>)>)>;

fn table_rows(
    workloads: &[String],
    etcd: &[Option<Measure>],
    cairn: &[Option<Measure>],
    load: &Load,
) -> Rows {
    let mut table = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let e = etcd.get(i).copied().flatten();
        let c = cairn.get(i).copied().flatten();
        let title = match w.as_str() {
            "put-1" => "put, 1 client".to_string(),
            "put-100" => format!("put, {} clients/{} conns", load.clients, load.conns),
            "range-l" => format!("range linearizable, {} clients", load.clients),
            "range-s" => format!("range serializable, {} clients", load.clients),
            "watch" => format!("watch put->event, {} watchers", load.watchers),
            "memory" => format!("memory, {} puts of 256 B", load.mem_puts),
            other => other.to_string(),
        };
        let rows: Vec<(&str, Option<f64>, Option<f64>)> = match w.as_str() {
            "memory" => {
                let idle = |m: Option<Measure>| match m {
                    Some(Measure::Memory { idle, .. }) => Some(idle as f64 / 1_048_576.0),
                    _ => None,
                };
                let anon = |m: Option<Measure>| match m {
                    Some(Measure::Memory { idle_anon, .. }) => Some(idle_anon as f64 / 1_048_576.0),
                    _ => None,
                };
                let after = |m: Option<Measure>| match m {
                    Some(Measure::Memory { after, puts, .. }) if puts > 0 => {
                        Some(after as f64 / 1_048_576.0)
                    }
                    _ => None,
                };
                vec![
                    ("RSS idle MiB", idle(e), idle(c)),
                    ("idle anon MiB", anon(e), anon(c)),
                    ("RSS after MiB", after(e), after(c)),
                ]
            }
            _ => {
                let get = |m: Option<Measure>, f: fn(&Stats) -> f64| match m {
                    Some(Measure::Load(s)) => Some(f(&s)),
                    _ => None,
                };
                let rate: fn(&Stats) -> f64 = |s| s.ops as f64 / s.elapsed.as_secs_f64().max(1e-9);
                let p50: fn(&Stats) -> f64 = |s| s.p50.as_secs_f64() * 1e3;
                let p99: fn(&Stats) -> f64 = |s| s.p99.as_secs_f64() * 1e3;
                let errs: fn(&Stats) -> f64 = |s| s.errors as f64;
                // µs of CPU per request, of the servers or of this generator.
                let per_op = |m: Option<Measure>, f: fn(&Stats) -> Option<Duration>| match m {
                    Some(Measure::Load(s)) if s.ops > 0 => {
                        f(&s).map(|c| c.as_secs_f64() * 1e6 / s.ops as f64)
                    }
                    _ => None,
                };
                let cpu = |m| per_op(m, |s| s.server_cpu);
                let client_cpu = |m| per_op(m, |s| s.client_cpu);
                let mut rows = Vec::new();
                if w != "watch" {
                    rows.push(("req/s", get(e, rate), get(c, rate)));
                }
                rows.push(("p50 ms", get(e, p50), get(c, p50)));
                rows.push(("p99 ms", get(e, p99), get(c, p99)));
                if w != "watch" && (cpu(e).is_some() || cpu(c).is_some()) {
                    rows.push(("server CPU µs", cpu(e), cpu(c)));
                }
                if w != "watch" && (client_cpu(e).is_some() || client_cpu(c).is_some()) {
                    rows.push(("client CPU µs", client_cpu(e), client_cpu(c)));
                }
                let (ee, ce) = (get(e, errs), get(c, errs));
                if ee.unwrap_or(0.0) > 0.0 || ce.unwrap_or(0.0) > 0.0 {
                    rows.push((
                        if w == "watch" {
                            "missed events"
                        } else {
                            "errors"
                        },
                        ee,
                        ce,
                    ));
                }
                rows
            }
        };
        table.push((title, rows));
    }
    table
}

/// The median of each cell over several rounds' tables, rows in the order
/// they first appear (a row missing from a round, such as an errors row,
/// counts only the rounds that have it). The ratio printed from it is the
/// medians' ratio.
fn median_rows(rounds: &[Rows]) -> Rows {
    fn median(mut v: Vec<f64>) -> Option<f64> {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
    let mut out: Rows = Vec::new();
    for (title, rows) in rounds.iter().flatten() {
        let at = match out.iter().position(|(t, _)| t == title) {
            Some(at) => at,
            None => {
                out.push((title.clone(), Vec::new()));
                out.len() - 1
            }
        };
        for (metric, ..) in rows {
            if !out[at].1.iter().any(|r| r.0 == *metric) {
                out[at].1.push((metric, None, None));
            }
        }
    }
    for (title, rows) in &mut out {
        for cell in rows.iter_mut() {
            let same = rounds
                .iter()
                .flatten()
                .filter(|(t, _)| t == title)
                .flat_map(|(_, rows)| rows.iter().filter(|r| r.0 == cell.0));
            cell.1 = median(same.clone().filter_map(|r| r.1).collect());
            cell.2 = median(same.filter_map(|r| r.2).collect());
        }
    }
    out
}

fn print_rows(left: &str, table: &Rows) {
    println!(
        "{:<49} | {:>12} | {:>12} | {:>8}",
        "workload", left, "cairn", "ratio"
    );
    println!("{}", "-".repeat(49 + 3 + 12 + 3 + 12 + 3 + 8));
    for (title, rows) in table {
        for (j, (metric, ev, cv)) in rows.iter().enumerate() {
            let label = if j == 0 { title.as_str() } else { "" };
            let label = format!("{label:<34} {metric:<14}");
            let fmt = |v: &Option<f64>| match v {
                Some(v) if *v >= 100.0 => format!("{v:.0}"),
                Some(v) => format!("{v:.2}"),
                None => "-".into(),
            };
            let ratio = match (ev, cv) {
                (Some(e), Some(c)) if *e > 0.0 => format!("{:.2}", c / e),
                _ => "-".into(),
            };
            println!(
                "{label:<49} | {:>12} | {:>12} | {:>8}",
                fmt(ev),
                fmt(cv),
                ratio
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(rate: (f64, f64), errors: Option<(f64, f64)>) -> Rows {
        let mut rows = vec![("req/s", Some(rate.0), Some(rate.1))];
        if let Some((e, c)) = errors {
            rows.push(("errors", Some(e), Some(c)));
        }
        vec![("put".to_string(), rows)]
    }

    #[test]
    fn the_median_is_taken_per_cell_over_the_rounds_that_have_it() {
        // Chosen so that a mean would differ from the median.
        let rounds = [
            round((10.0, 30.0), None),
            round((50.0, 12.0), Some((1.0, 0.0))),
            round((20.0, 20.0), None),
            round((100.0, 90.0), Some((3.0, 2.0))),
        ];
        let m = median_rows(&rounds);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, "put");
        assert_eq!(
            m[0].1,
            vec![
                ("req/s", Some(35.0), Some(25.0)),
                ("errors", Some(2.0), Some(1.0)),
            ]
        );
        let odd = median_rows(&rounds[..3]);
        assert_eq!(odd[0].1[0], ("req/s", Some(20.0), Some(20.0)));
        assert_eq!(odd[0].1[1], ("errors", Some(1.0), Some(0.0)));
    }
}
