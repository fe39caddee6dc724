//! `prefix-delete`: other clients' latency while `etcdctl del --prefix`
//! removes a large prefix (issue "Security and day-2 operations": cleanup
//! of an abusive tenant's keys). `--keys` (100 000) keys under `/big/` are
//! written, then `--writers` (10) clients put (as `compaction`'s do) for a
//! baseline window and while one DeleteRange of `/big/` runs.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_tests::{Kind, Subject, SubjectOptions};
use etcd_client::{Client, DeleteOptions};

use crate::{VALUE_SIZE, connect, stats};

pub struct Row {
    pub base_p99: Duration,
    pub during_p99: Duration,
    pub during_max: Duration,
    pub delete: Duration,
}

/// The other clients: `compaction`'s steady writers, in a task.
fn spawn_load(
    conns: &[Client],
    writers: usize,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    let (conns, stop) = (conns.to_vec(), stop.clone());
    tokio::spawn(async move { crate::compaction::steady_puts(&conns, writers, stop).await })
}

pub async fn run(kind: Kind, bin: PathBuf, keys: u64, writers: usize) -> Result<Row> {
    let s = Subject::start_with(SubjectOptions {
        bin: Some(bin),
        ..SubjectOptions::new(kind)
    })
    .await;
    let conns = connect(&[s.endpoint()], 10).await?;
    eprintln!("{kind:?}: writing {keys} keys under /big/");
    let next = Arc::new(AtomicU64::new(0));
    let mut fill = Vec::new();
    for i in 0..100 {
        let mut c = conns[i % conns.len()].clone();
        let next = next.clone();
        fill.push(tokio::spawn(async move {
            let v = vec![b'b'; VALUE_SIZE];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys {
                    return;
                }
                let _ = c.put(format!("/big/{n:08}"), v.clone(), None).await;
            }
        }));
    }
    for t in fill {
        t.await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&conns, writers, &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let base = stats(load.await?, 0, Duration::from_secs(1));
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&conns, writers, &stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let mut admin = conns[0].clone();
    admin
        .delete("/big/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    let delete = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let lat = load.await?;
    let max = lat.iter().max().copied().unwrap_or_default();
    let during = stats(lat, 0, Duration::from_secs(1));
    Ok(Row {
        base_p99: base.p99,
        during_p99: during.p99,
        during_max: max,
        delete,
    })
}
