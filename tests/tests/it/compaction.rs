//! Automatic compaction: etcd's periodic and revision modes, and cairn's
//! adaptive mode. Periodic runs against etcd 3.4 too; revision mode is
//! checked every 5 minutes in etcd (cairn takes `--auto-compaction-interval`)
//! and adaptive is cairn's own, so those two are cairn-only.
use std::time::Duration;

use cairn_tests::{Subject, SubjectOptions, eventually, subject_is_etcd, subject_kind};
use etcd_client::GetOptions;

async fn start_with(args: &[&str]) -> Subject {
    let mut o = SubjectOptions::new(subject_kind());
    o.extra_args = args.iter().map(|s| s.to_string()).collect();
    Subject::start_with(o).await
}

/// Keeps writing a key every 100 ms until dropped.
fn writer(s: &Subject) -> tokio::task::JoinHandle<()> {
    let ep = s.endpoint();
    tokio::spawn(async move {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        for i in 0u64.. {
            let _ = c.put("tick", i.to_string(), None).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn compacted_at(c: &mut etcd_client::Client, rev: i64) -> bool {
    match c
        .get("tick", Some(GetOptions::new().with_revision(rev)))
        .await
    {
        Ok(_) => false,
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("compacted"), "unexpected error: {m}");
            true
        }
    }
}

/// Writes a first key, then keeps writing until a read at the first key's
/// revision says it was compacted; the client and the still running writer.
async fn write_until_first_compacted(
    s: &Subject,
    what: &str,
) -> (etcd_client::Client, tokio::task::JoinHandle<()>) {
    let mut c = s.client().await;
    let first = c.put("tick", "first", None).await.unwrap();
    let first_rev = first.header().unwrap().revision();
    let w = writer(s);
    eventually(what, Duration::from_secs(30), || {
        let mut c = c.clone();
        async move { compacted_at(&mut c, first_rev).await.then_some(()) }
    })
    .await;
    (c, w)
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_retention_compacts_what_is_older_than_the_period() {
    let s = start_with(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ])
    .await;
    let (mut c, w) = write_until_first_compacted(&s, "revision of the first write compacted").await;
    // What was written within the last period is kept.
    let now = c
        .get("tick", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(!compacted_at(&mut c, now).await);
    w.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn revision_retention_keeps_the_last_n_revisions() {
    if subject_is_etcd() {
        return; // etcd looks every 5 minutes
    }
    let s = start_with(&[
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "10",
        "--auto-compaction-interval",
        "200ms",
    ])
    .await;
    let mut c = s.client().await;
    for i in 0..30 {
        c.put("tick", format!("{i}"), None).await.unwrap();
    }
    // 31 now: compaction to 21 keeps 21..=31.
    eventually("compacted to current - 10", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move { compacted_at(&mut c, 20).await.then_some(()) }
    })
    .await;
    assert!(
        !compacted_at(&mut c, 21).await,
        "kept revisions were compacted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_mode_puts_compaction_off_while_busy_but_not_forever() {
    if subject_is_etcd() {
        return; // cairn's own mode
    }
    let s = start_with(&[
        "--auto-compaction-mode",
        "adaptive",
        "--auto-compaction-retention",
        "1s",
        // Any traffic at all counts as busy here, so only the maximum delay
        // lets the compaction through.
        "--auto-compaction-busy-rate",
        "1",
        "--auto-compaction-max-delay",
        "3s",
    ])
    .await;
    let (_, w) = write_until_first_compacted(&s, "compacted despite the traffic").await;
    let (code, body) = s.http("GET", "/metrics", None);
    assert_eq!(code, 200);
    let postponed: f64 = body
        .lines()
        .find(|l| l.starts_with("cairn_auto_compaction_postponed_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no postponement metric in\n{body}"));
    assert!(postponed > 0.0, "the busy member was never seen busy");
    w.abort();
}

#[tokio::test]
async fn a_bad_auto_compaction_setting_is_refused() {
    if subject_is_etcd() {
        return;
    }
    let out = std::process::Command::new(cairn_tests::cairn_bin())
        .args([
            "--data-dir",
            &tempfile::tempdir().unwrap().path().display().to_string(),
            "--auto-compaction-mode",
            "weekly",
            "--auto-compaction-retention",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auto-compaction-mode") && err.contains("weekly"),
        "{err}"
    );
}
