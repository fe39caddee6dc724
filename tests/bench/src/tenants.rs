//! `tenants`: one tenant's flood against another tenant's latency, with and
//! without a `--tenant-rate-limit` on the flooding prefix. One cairn member;
//! `--victims` (10) clients put and get under `/victim/`, `--flooders` (100)
//! clients put under `/noisy/` as fast as they are served (refusals do not
//! slow them down: a refused client tries again at once).
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_tests::{Kind, Subject, SubjectOptions};

use crate::{VALUE_SIZE, connect, stats};

pub struct Row {
    pub name: String,
    pub victim_ops: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub noisy_served: f64,
    pub noisy_refused: f64,
}

pub async fn run(
    bin: PathBuf,
    name: &str,
    limit: Option<&str>,
    flooders: usize,
    victims: usize,
    secs: u64,
) -> Result<Row> {
    let mut extra = Vec::new();
    if let Some(l) = limit {
        extra = vec!["--tenant-rate-limit".to_string(), l.to_string()];
    }
    let s = Subject::start_with(SubjectOptions {
        bin: Some(bin),
        extra_args: extra,
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    if flooders > 0 {
        let conns = connect(&[s.endpoint()], 10).await?;
        for i in 0..flooders {
            let mut c = conns[i % conns.len()].clone();
            let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let v = vec![b'n'; VALUE_SIZE];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match c
                        .put(format!("/noisy/{i}-{}", n % 100), v.clone(), None)
                        .await
                    {
                        Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            }));
        }
    }
    let vconns = connect(&[s.endpoint()], victims.min(10)).await?;
    let mut vtasks = Vec::new();
    let started = Instant::now();
    for i in 0..victims {
        let mut c = vconns[i % vconns.len()].clone();
        let stop = stop.clone();
        vtasks.push(tokio::spawn(async move {
            let v = vec![b'v'; VALUE_SIZE];
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("/victim/{i}-{}", n % 100);
                let t0 = Instant::now();
                let ok = if n.is_multiple_of(2) {
                    c.put(k, v.clone(), None).await.is_ok()
                } else {
                    c.get(k, None).await.is_ok()
                };
                if ok {
                    lat.push(t0.elapsed());
                }
                n += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for t in vtasks {
        lat.extend(t.await?);
    }
    for t in tasks {
        t.await?;
    }
    let st = stats(lat, 0, Duration::from_secs_f64(elapsed));
    Ok(Row {
        name: name.to_string(),
        victim_ops: st.ops as f64 / elapsed,
        p50: st.p50,
        p99: st.p99,
        noisy_served: served.load(Ordering::Relaxed) as f64 / elapsed,
        noisy_refused: refused.load(Ordering::Relaxed) as f64 / elapsed,
    })
}
