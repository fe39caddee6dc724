//! `dns`: the DNS server answered from keys (`[dns]`, crate `cairn-dns`).
//!
//! - **Throughput and latency**: `--sockets` (4) UDP sockets, each on its
//!   own thread, each keeping `--inflight` (64) questions outstanding
//!   (pipelined: a new question goes out as each answer comes back) for
//!   `--secs` (10) seconds, over `--names` (1000) A names. Reports answers/s
//!   and p50/p99 of question-to-answer time.
//! - **Change → answer**: `--changes` (200) times, put a new address for
//!   one name and ask it (one question in flight, back to back) until the
//!   answer carries the new address; p50/p99 of put-sent → new answer.
//!
//! Without `--server`, starts a cairn voter with a `[dns]` table on a free
//! port (fresh temp data dir); with `--server ip:port --endpoints URL`,
//! measures a running one whose zones include `--zone`.
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_tests::{Kind, Layout, Subject, SubjectOptions, free_port, member_args};

use crate::{connect, stats};

/// `dns` subcommand options.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// A running cairn DNS server; without it one is started.
    #[arg(long)]
    pub server: Option<SocketAddr>,
    /// The etcd endpoint of that server, for the puts.
    #[arg(long)]
    pub endpoints: Option<String>,
    #[arg(long)]
    pub cairn_bin: Option<PathBuf>,
    /// The zone asked (must be one of the server's).
    #[arg(long, default_value = "skydns.local.")]
    pub zone: String,
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// Questions outstanding per socket.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    #[arg(long, default_value_t = 1000)]
    pub names: usize,
    #[arg(long, default_value_t = 200)]
    pub changes: usize,
}

/// A DNS question (RFC 1035 4.1), type A, class IN, no recursion wanted.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.trim_end_matches('.').split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The rcode and the first A record's address of an answer to
/// [`query`] (its question is skipped by length: we wrote it).
fn first_a(resp: &[u8], qlen: usize) -> Option<[u8; 4]> {
    if resp.len() < 12 || resp[3] & 0x0f != 0 || u16::from_be_bytes([resp[6], resp[7]]) == 0 {
        return None;
    }
    let mut i = qlen;
    // Owner: a pointer (2 bytes) or labels.
    while i < resp.len() {
        let b = resp[i];
        if b & 0xc0 == 0xc0 {
            i += 2;
            break;
        }
        if b == 0 {
            i += 1;
            break;
        }
        i += 1 + b as usize;
    }
    let rr = resp.get(i..i + 14)?;
    (rr[0..2] == [0, 1] && rr[8..10] == [0, 4]).then(|| [rr[10], rr[11], rr[12], rr[13]])
}

/// One socket's pipelined loop; returns its latencies and lost questions.
fn blast(
    server: SocketAddr,
    names: Arc<Vec<String>>,
    inflight: usize,
    stop: Arc<AtomicBool>,
    seed: usize,
) -> Result<(Vec<Duration>, u64)> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sent: Vec<Option<Instant>> = vec![None; 65_536];
    let mut next_id: u16 = 0;
    let mut n = seed;
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut lost = 0u64;
    let mut outstanding = 0usize;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        while outstanding < inflight {
            let id = next_id;
            next_id = next_id.wrapping_add(1);
            if sent[id as usize].take().is_some() {
                // An id coming round again with no answer: lost.
                lost += 1;
                outstanding -= 1;
            }
            n = n.wrapping_add(7919);
            let q = query(id, &names[n % names.len()]);
            sent[id as usize] = Some(Instant::now());
            sock.send(&q)?;
            outstanding += 1;
        }
        match sock.recv(&mut buf) {
            Ok(len) if len >= 2 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(t0) = sent[id as usize].take() {
                    latencies.push(t0.elapsed());
                    outstanding -= 1;
                }
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                // Everything outstanding is lost: start the window again.
                let gone = sent.iter_mut().filter_map(|s| s.take()).count();
                lost += gone as u64;
                outstanding = 0;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((latencies, lost))
}

/// Asks `name` once, waits for its answer (at most 1 s).
fn ask_once(sock: &UdpSocket, id: u16, name: &str) -> Option<[u8; 4]> {
    let q = query(id, name);
    sock.send(&q).ok()?;
    let mut buf = [0u8; 4096];
    loop {
        let len = sock.recv(&mut buf).ok()?;
        if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return first_a(&buf[..len], q.len());
        }
    }
}

pub async fn run(o: Opts) -> Result<()> {
    let zone = format!("{}.", o.zone.trim_end_matches('.'));
    let zone_key: String = zone
        .trim_end_matches('.')
        .split('.')
        .rev()
        .collect::<Vec<_>>()
        .join("/");
    let mut _subject = None;
    let (server, endpoint) = match (o.server, &o.endpoints) {
        (Some(s), Some(e)) => (s, e.clone()),
        (Some(_), None) => bail!("--server needs --endpoints (to write the keys)"),
        (None, _) => {
            let port = free_port();
            let bin = o.cairn_bin.clone().unwrap_or_else(cairn_tests::cairn_bin);
            let table = format!("[dns]\nlisten = \"127.0.0.1:{port}\"\nzones = [\"{zone}\"]\n");
            let s = Subject::start_with(SubjectOptions {
                bin: Some(bin),
                command_line: Some(Arc::new(move |l: &Layout<'_>| {
                    let path = l.dir.join("cairn.toml");
                    std::fs::write(&path, &table).unwrap();
                    let mut a = member_args(l.data_dir, l.client_port, l.peer_port, l.token);
                    a.extend(["--config".into(), path.display().to_string()]);
                    (a, vec![])
                })),
                ..SubjectOptions::new(Kind::Cairn)
            })
            .await;
            let ep = s.endpoint();
            _subject = Some(s);
            (SocketAddr::from(([127, 0, 0, 1], port)), ep)
        }
    };
    let mut c = connect(std::slice::from_ref(&endpoint), 1).await?.remove(0);
    eprintln!(
        "dns: writing {} names under /skydns/{zone_key}/bench/",
        o.names
    );
    let mut names = Vec::with_capacity(o.names);
    for i in 0..o.names {
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        c.put(
            format!("/skydns/{zone_key}/bench/n{i}"),
            format!(r#"{{"host":"{ip}"}}"#),
            None,
        )
        .await?;
        names.push(format!("n{i}.bench.{zone}"));
    }
    // Wait until the last name is answered: the index has them all.
    let probe = UdpSocket::bind("127.0.0.1:0")?;
    probe.connect(server)?;
    probe.set_read_timeout(Some(Duration::from_secs(1)))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask_once(&probe, 1, names.last().context("--names 0")?).is_none() {
        if Instant::now() > deadline {
            bail!("{server} does not answer {}", names.last().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!(
        "dns: {} s of A questions, {} sockets x {} in flight",
        o.secs, o.sockets, o.inflight
    );
    let names = Arc::new(names);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..o.sockets)
        .map(|i| {
            let (names, stop) = (names.clone(), stop.clone());
            let inflight = o.inflight;
            std::thread::spawn(move || blast(server, names, inflight, stop, i * 104_729))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(o.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut lost = 0;
    for t in threads {
        let (l, x) = t
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        all.extend(l);
        lost += x;
    }
    let elapsed = started.elapsed();
    let load = stats(all, lost, elapsed);

    eprintln!(
        "dns: {} changes, each put then asked until answered",
        o.changes
    );
    let key = format!("/skydns/{zone_key}/bench/moving");
    let name = format!("moving.bench.{zone}");
    let mut visible = Vec::with_capacity(o.changes);
    let mut id: u16 = 100;
    for i in 0..o.changes {
        let want = [10, 200, (i >> 8) as u8, i as u8];
        let ip = format!("{}.{}.{}.{}", want[0], want[1], want[2], want[3]);
        let t0 = Instant::now();
        c.put(key.as_str(), format!(r#"{{"host":"{ip}"}}"#), None)
            .await?;
        loop {
            id = id.wrapping_add(1);
            if ask_once(&probe, id, &name) == Some(want) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("change {i} not visible in DNS after 10 s");
            }
        }
        visible.push(t0.elapsed());
    }
    let change = stats(visible, 0, Duration::ZERO);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "# cairn DNS at {server}: {} names, {} sockets x {} in flight, {} s",
        o.names, o.sockets, o.inflight, o.secs
    );
    println!(
        "{:<16} | {:>10} | {:>9} | {:>9} | {:>8}",
        "measure", "per s", "p50 ms", "p99 ms", "lost"
    );
    println!("{}", "-".repeat(64));
    println!(
        "{:<16} | {:>10.0} | {:>9.3} | {:>9.3} | {:>8}",
        "A questions",
        load.ops as f64 / load.elapsed.as_secs_f64(),
        ms(load.p50),
        ms(load.p99),
        load.errors
    );
    println!(
        "{:<16} | {:>10} | {:>9.2} | {:>9.2} | {:>8}",
        "change → answer",
        o.changes,
        ms(change.p50),
        ms(change.p99),
        "-"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_answers_parse() {
        let q = query(0x1234, "a.bc.");
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(&q[12..], &[1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1]);
        // The answer: the question echoed, a compressed owner, A 10.0.0.9.
        let mut r = q.clone();
        r[2] = 0x84;
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 9]);
        assert_eq!(first_a(&r, q.len()), Some([10, 0, 0, 9]));
        r[3] = 3; // NXDOMAIN
        assert_eq!(first_a(&r, q.len()), None);
    }
}
