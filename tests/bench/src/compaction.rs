//! `compaction`: write latency while a large history is compacted (issue
//! "Security and day-2 operations": compaction must not stop the world).
//!
//! One member; `--revisions` (1 M) puts over `--keys` (1000) keys fill the
//! history; then a steady put load from `--writers` (10) clients runs for a
//! baseline window, a `Compact` to the current revision is issued (etcd's
//! `physical: true`, so its answer marks the end of the physical removal
//! for both servers) and the same load runs until it is done. Printed: fill
//! rate, write p50/p99/max in the baseline and during the compaction, how
//! long the compaction took, and the longest write stall.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_tests::{Kind, Subject, SubjectOptions};
use etcd_client::{Client, CompactionOptions};

use crate::{VALUE_SIZE, connect, stats};

pub struct Row {
    pub fill_per_s: f64,
    pub base: Window,
    pub during: Window,
    pub compaction: Duration,
}

pub struct Window {
    pub ops: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Puts from `writers` tasks until `stop`; every latency.
pub async fn steady_puts(conns: &[Client], writers: usize, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..writers {
        let mut c = conns[i % conns.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'w'; VALUE_SIZE];
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if c.put(format!("steady{i}-{}", n % 100), value.clone(), None)
                    .await
                    .is_ok()
                {
                    lat.push(t0.elapsed());
                }
                n += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

fn window(lat: Vec<Duration>) -> Window {
    let max = lat.iter().max().copied().unwrap_or_default();
    let st = stats(lat, 0, Duration::from_secs(1));
    Window {
        ops: st.ops,
        p50: st.p50,
        p99: st.p99,
        max,
    }
}

pub async fn run(
    kind: Kind,
    bin: PathBuf,
    revisions: u64,
    keys: u64,
    writers: usize,
    baseline: Duration,
) -> Result<Row> {
    let s = Subject::start_with(SubjectOptions {
        bin: Some(bin),
        // Room for a million revisions of 256 B values.
        extra_args: vec!["--quota-backend-bytes".into(), (8u64 << 30).to_string()],
        ..SubjectOptions::new(kind)
    })
    .await;
    let conns = connect(&[s.endpoint()], 10).await?;
    // Fill: 100 clients, `revisions` puts over `keys` keys.
    eprintln!("{kind:?}: writing {revisions} revisions over {keys} keys");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = conns[i % conns.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'v'; VALUE_SIZE];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= revisions {
                    return;
                }
                let _ = c
                    .put(format!("fill{:08}", n % keys), value.clone(), None)
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let fill_per_s = revisions as f64 / started.elapsed().as_secs_f64();

    eprintln!("{kind:?}: baseline");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let conns = conns.clone();
        let stop = stop.clone();
        tokio::spawn(async move { steady_puts(&conns, writers, stop).await })
    };
    tokio::time::sleep(baseline).await;
    stop.store(true, Ordering::Relaxed);
    let base = window(load.await?);

    eprintln!("{kind:?}: compacting");
    let mut admin = conns[0].clone();
    let rev = admin
        .get("fill", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or(1);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let conns = conns.clone();
        let stop = stop.clone();
        tokio::spawn(async move { steady_puts(&conns, writers, stop).await })
    };
    let t0 = Instant::now();
    admin
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await?;
    let compaction = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = window(load.await?);
    Ok(Row {
        fill_per_s,
        base,
        during,
        compaction,
    })
}
