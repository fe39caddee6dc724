//! `render`: change-to-file latency of `[[template]]` rendering. One cairn
//! agent renders `--templates` (500) templates that share `--prefixes`
//! (10) prefixes (template i lists the keys under `/bench/p{i % prefixes}/`),
//! with `[render] wait = "0s"`. Each of `--changes` puts changes one key
//! under one prefix; the latency is from the put until the last template
//! of that prefix (the highest index) holds the new value: every template
//! that reads the prefix is rendered, written (fsync, rename, directory
//! fsync) in that round.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cairn_tests::{Kind, Subject, SubjectOptions};

use crate::{Stats, stats};

pub struct Row {
    pub latency: Stats,
    pub max: Duration,
    pub setup: Duration,
}

fn dest(out: &Path, i: usize) -> PathBuf {
    out.join(format!("t{i:04}.conf"))
}

/// Polls `p` until it holds `want`, from a blocking thread.
async fn until(p: PathBuf, want: String, limit: Duration) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        loop {
            if std::fs::read(&p).is_ok_and(|c| c == want.as_bytes()) {
                return Ok(());
            }
            if t0.elapsed() > limit {
                bail!("{} did not become {want:?} within {limit:?}", p.display());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .await?
}

pub async fn run(bin: PathBuf, templates: usize, prefixes: usize, changes: usize) -> Result<Row> {
    if prefixes == 0 || templates < prefixes {
        bail!("--templates must be at least --prefixes (> 0)");
    }
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let mut cfg = String::from("[render]\nwait = \"0s\"\n");
    for i in 0..templates {
        cfg.push_str(&format!(
            "[[template]]\ndestination = {:?}\ncontents = \"{{% for k in keys('/bench/p{}/') %}}{{{{ k.name }}}}={{{{ k.value }}}}\\n{{% endfor %}}\"\n",
            dest(&out, i).display().to_string(),
            i % prefixes
        ));
    }
    let cfg_path = dir.path().join("cairn.toml");
    std::fs::write(&cfg_path, cfg)?;
    let t0 = Instant::now();
    let s = Subject::start_with(SubjectOptions {
        bin: Some(bin),
        extra_args: vec!["--config".into(), cfg_path.display().to_string()],
        ..SubjectOptions::new(Kind::Cairn)
    })
    .await;
    let mut c = s.client().await;
    for j in 0..prefixes {
        c.put(format!("/bench/p{j}/k"), "init", None).await?;
    }
    for i in 0..templates {
        until(dest(&out, i), "k=init\n".into(), Duration::from_secs(60)).await?;
    }
    let setup = t0.elapsed();
    eprintln!("render: {templates} templates rendered in {setup:?}; {changes} changes");
    let mut lat = Vec::with_capacity(changes);
    for n in 0..changes {
        let j = n % prefixes;
        // The highest-index template of prefix j.
        let last = (0..templates)
            .rev()
            .find(|i| i % prefixes == j)
            .unwrap_or(j);
        let value = format!("c{n}");
        let t = Instant::now();
        c.put(format!("/bench/p{j}/k"), value.clone(), None).await?;
        until(
            dest(&out, last),
            format!("k={value}\n"),
            Duration::from_secs(10),
        )
        .await?;
        lat.push(t.elapsed());
        // Every template of the prefix has it too (same round).
        for i in (j..templates).step_by(prefixes) {
            until(
                dest(&out, i),
                format!("k={value}\n"),
                Duration::from_secs(10),
            )
            .await?;
        }
    }
    let max = lat.iter().max().copied().unwrap_or_default();
    Ok(Row {
        latency: stats(lat, 0, Duration::from_secs(1)),
        max,
        setup,
    })
}
