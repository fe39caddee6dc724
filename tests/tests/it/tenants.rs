//! Tenant QoS (cairn's own): request-rate limits and space quotas by key
//! prefix (`--tenant-rate-limit`, `--tenant-quota-bytes`).
use cairn_tests::{Subject, SubjectOptions, eventually, subject_is_etcd, subject_kind};
use etcd_client::{Txn, TxnOp};
use tonic::Code;

use crate::status_of;

async fn start_with(args: &[&str]) -> Subject {
    let mut o = SubjectOptions::new(subject_kind());
    o.extra_args = args.iter().map(|s| s.to_string()).collect();
    Subject::start_with(o).await
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_refused_and_others_are_not() {
    if subject_is_etcd() {
        return;
    }
    // One request a second after a burst of three.
    let s = start_with(&["--tenant-rate-limit", "/noisy/=1:3"]).await;
    let mut c = s.client().await;
    let mut refused = None;
    for i in 0..10 {
        if let Err(e) = c.put(format!("/noisy/{i}"), "x", None).await {
            refused = Some(status_of::<()>(Err(e)));
            break;
        }
    }
    let st = refused.expect("ten puts within the burst of three were all served");
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .contains("tenant /noisy/ is over its rate limit of 1 requests/s"),
        "{st:?}"
    );
    // Reads of the tenant count too; other prefixes are not limited.
    for i in 0..20 {
        c.put(format!("/quiet/{i}"), "x", None).await.unwrap();
        c.get(format!("/quiet/{i}"), None).await.unwrap();
    }
}

#[tokio::test]
async fn a_tenant_cannot_store_past_its_quota_but_can_clean_up() {
    if subject_is_etcd() {
        return;
    }
    let mut s = start_with(&["--tenant-quota-bytes", "/t/=100"]).await;
    let mut c = s.client().await;
    let v50 = "v".repeat(50);
    c.put("/t/a", v50.as_str(), None).await.unwrap(); // 4 + 50 bytes
    let e = status_of(c.put("/t/b", v50.as_str(), None).await);
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains("tenant /t/ is over its space quota of 100 bytes"),
        "{e:?}"
    );
    // The same through a txn; other prefixes are not bounded.
    let txn = Txn::new().and_then([TxnOp::put("/t/b", v50.as_str(), None)]);
    assert_eq!(status_of(c.txn(txn).await).code(), Code::ResourceExhausted);
    c.put("/other/x", "y".repeat(500), None).await.unwrap();
    // Shrinking and deleting are allowed, and free the room.
    c.put("/t/a", "small", None).await.unwrap();
    c.put("/t/b", v50.as_str(), None).await.unwrap();
    c.delete("/t/a", None).await.unwrap();
    c.put("/t/c", "v".repeat(30), None).await.unwrap();
    // After a restart the bytes are counted again from the store.
    s.restart().await;
    let c = s.client().await;
    eventually(
        "the restarted member refuses the tenant's next 50 bytes",
        std::time::Duration::from_secs(10),
        || {
            let mut c = c.clone();
            let v = v50.clone();
            async move {
                match c.put("/t/d", v.as_str(), None).await {
                    Err(e) if e.to_string().contains("space quota") => Some(()),
                    Ok(_) => panic!("a put past the quota was accepted after a restart"),
                    Err(_) => None,
                }
            }
        },
    )
    .await;
}

#[test]
fn bad_tenant_rules_are_refused_with_the_flag_named() {
    if subject_is_etcd() {
        return;
    }
    for (flag, value, needle) in [
        ("--tenant-rate-limit", "/a/=fast", "not a positive number"),
        ("--tenant-rate-limit", "=5", "every key"),
        ("--tenant-quota-bytes", "user:bob=1MiB", "by key prefix"),
        ("--tenant-quota-bytes", "/a/=lots", "not a size"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(cairn_tests::cairn_bin())
            .args(["--data-dir", &dir.path().display().to_string(), flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(flag) && err.contains(needle),
            "{flag} {value}: {err}"
        );
    }
}
