//! Disk faults under the real binary (cairn only: the journal layout and
//! the disk reserve are cairn's; etcd stops on a full disk).
//!
//! Where the raft log lives on disk: in the fjall database
//! `<data-dir>/db`, whose journal files `<n>.jnl` take every write in order
//! (raft entries with the hard state, fsynced before the write is
//! acknowledged; then the MVCC batch that applies them) until a memtable
//! flush (8 MiB) moves them into table files. These tests write far less,
//! so the whole log sits in the newest journal. A journal is preallocated
//! (64 MiB of zeros): its data ends where its last intact batch ends, so
//! "the last bytes" of the log are the last batch, found with
//! `cairn_store::journal::batches` and cut or altered there precisely.
//!
//! - A torn tail (a write cut short by a crash) is what fjall repairs:
//!   the last batch is cut inside after SIGKILL under load, and the
//!   restarted agent has every acknowledged write. An acknowledged write
//!   never depends on the last batch alone: its raft entry was fsynced in
//!   an earlier batch than the apply batch written before the answer.
//! - Damage in the middle: one byte of an earlier raft entry (the batch
//!   checksum fails), or of a record header (fjall would stop reading
//!   there and drop the rest of the journal, acknowledged writes included,
//!   without a word): the agent refuses to start, exits non-zero and names
//!   the journal file and the byte; with the byte put back it starts with
//!   everything.
//! - A full disk: see [`full_disk_refuses_writes_with_nospace_and_recovers`].
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_tests::{Subject, SubjectOptions, eventually, member_args, subject_is_etcd};
use etcd_client::{AlarmAction, AlarmType, Client, GetOptions};
use rand::{Rng, SeedableRng, rngs::StdRng};

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

fn skip_for_etcd(what: &str) -> bool {
    if subject_is_etcd() {
        eprintln!("skipped under CONFORMANCE_SUBJECT=etcd: {what} is cairn's");
    }
    subject_is_etcd()
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().expect("CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// The newest journal of a stopped agent's data directory, and its bytes.
fn newest_journal(data_dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = std::fs::read_dir(data_dir.join("db"))
        .expect("the agent's fjall database")
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let n: u64 = p
                .file_name()?
                .to_str()?
                .strip_suffix(".jnl")?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .max()
        .expect("a journal file")
        .1;
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// The agent refuses to start on the damaged journal `path`, naming it,
/// the byte where the damaged batch starts, and `why`.
async fn refused(s: &mut Subject, path: &std::path::Path, byte: usize, why: &str) {
    let (status, out) = s.restart_expecting_exit(Duration::from_secs(60)).await;
    let status = status.unwrap_or_else(|| panic!("started on a damaged journal:\n{out}"));
    assert!(!status.success(), "{status}\n{out}");
    for want in [
        path.display().to_string(),
        format!("byte {byte}"),
        why.to_string(),
        "refusing to start".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} not in:\n{out}");
    }
}

/// Every acknowledged put is there with its value and revision.
async fn assert_all_present(
    c: &mut Client,
    prefix: &str,
    acks: &[(String, String, i64)],
    what: &str,
) {
    let all = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let stored: HashMap<Vec<u8>, (Vec<u8>, i64)> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision())))
        .collect();
    for (key, value, rev) in acks {
        let Some((v, r)) = stored.get(key.as_bytes()) else {
            panic!("{what}: acknowledged key {key} (revision {rev}) lost");
        };
        assert_eq!(
            (v.as_slice(), *r),
            (value.as_bytes(), *rev),
            "{what}: key {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_journal_tail_is_repaired_at_restart() {
    if skip_for_etcd("the journal layout") {
        return;
    }
    let seed = seed();
    eprintln!("torn-tail seed: {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = Subject::start().await;
    let mut highest = 1;
    for round in 0..3 {
        let after = Duration::from_millis(rng.random_range(100..800));
        let acks = s
            .puts_until_kill9(4, &format!("torn/{round}/"), after)
            .await;
        assert!(
            !acks.is_empty(),
            "no write was acknowledged before the kill"
        );
        let (path, bytes) = newest_journal(s.data_dir());
        let last = cairn_store::journal::batches(&bytes)
            .pop()
            .expect("the journal has batches")
            .range;
        let cut = rng.random_range(last.start + 1..last.end);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        eprintln!(
            "round {round}: {} acknowledged puts; {} cut at byte {cut}, inside its last batch {last:?}",
            acks.len(),
            path.display()
        );
        s.restart().await;
        let mut c = s.client().await;
        let what = format!("seed {seed} round {round}");
        assert_all_present(&mut c, &format!("torn/{round}/"), &acks, &what).await;
        let max_ack = acks.iter().map(|a| a.2).max().unwrap();
        assert!(
            acks.iter().all(|a| a.2 > highest),
            "{what}: revision went back"
        );
        let next = c.put("torn/after", "x", None).await.unwrap();
        let next = next.header().unwrap().revision();
        assert!(
            next > max_ack,
            "{what}: next revision {next}, acknowledged up to {max_ack}"
        );
        highest = next;
    }
}

#[tokio::test]
async fn damaged_journal_middle_is_refused_naming_file_and_byte() {
    if skip_for_etcd("the journal layout") {
        return;
    }
    const MARKER: &str = "marker-value-of-an-early-entry";
    let mut s = Subject::start().await;
    let mut c = s.client().await;
    let first = c.put("mid/marker", MARKER, None).await.unwrap();
    let mut acks = vec![(
        "mid/marker".to_string(),
        MARKER.to_string(),
        first.header().unwrap().revision(),
    )];
    for i in 0..20 {
        let key = format!("mid/after/{i:02}");
        let r = c.put(key.as_str(), "v", None).await.unwrap();
        acks.push((key, "v".into(), r.header().unwrap().revision()));
    }
    drop(c);
    s.kill9();

    let (path, original) = newest_journal(s.data_dir());
    // The first copy of the value is in the raft entry (appended, fsynced,
    // then applied into the key-value table).
    let at = original
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .expect("the marker in the journal");
    let batches = cairn_store::journal::batches(&original);
    let i = batches
        .iter()
        .position(|b| b.range.contains(&at))
        .expect("the marker inside an intact batch");
    let batch = batches[i].clone();
    assert!(
        batches.len() > i + 20,
        "the entry's batch is followed by the later writes' batches"
    );
    let item = batch
        .items
        .iter()
        .find(|r| r.contains(&at))
        .expect("the marker inside a record")
        .clone();

    // One byte of the entry's payload: the batch checksum fails.
    let mut bytes = original.clone();
    bytes[at + 3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    refused(
        &mut s,
        &path,
        batch.range.start,
        "a batch fails its checksum",
    )
    .await;

    // One byte of the record's header (its tag): fjall alone would stop
    // reading there and drop this entry and the twenty after it.
    let mut bytes = original.clone();
    bytes[item.start] = 0x7f;
    std::fs::write(&path, &bytes).unwrap();
    refused(&mut s, &path, batch.range.start, "an intact batch follows").await;

    // Refusing changed nothing: with the byte back, everything is there.
    std::fs::write(&path, &original).unwrap();
    s.restart().await;
    let mut c = s.client().await;
    assert_all_present(&mut c, "mid/", &acks, "after the repair").await;
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` (with the reason) where mounting is not allowed.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-fulldisk-")
            .tempdir()
            .unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// The agent's data directory on a 48 MiB tmpfs holding an 8 MiB ballast
/// file, with `--disk-reserve-bytes` 12 MiB; 64 KiB puts until refused:
/// - the refusal is etcd's NOSPACE error (`database space exceeded`),
///   quickly and for every later put, with the NOSPACE alarm raised, while
///   reads go on and the agent keeps running (no crash, no hang);
/// - every acknowledged put reads back;
/// - once the ballast is deleted and the alarm disarmed (etcd's recovery:
///   `etcdctl alarm disarm`), puts are accepted again without a restart;
/// - after SIGKILL and a restart every write is there and HashKV at the
///   same revision is unchanged.
///
/// Needs permission to mount a tmpfs (root, or CAP_SYS_ADMIN); skipped
/// with a message otherwise (`unshare -rm` would give a mount namespace,
/// but the test process would not see the agent's filesystem).
#[tokio::test]
async fn full_disk_refuses_writes_with_nospace_and_recovers() {
    if skip_for_etcd("the disk reserve") {
        return;
    }
    let fs = match Tmpfs::mount("48m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here ({why})");
            return;
        }
    };
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0x5a; 8 << 20]).unwrap();
    let data_dir = fs.path().join("data");
    let mut opts = SubjectOptions::new(cairn_tests::Kind::Cairn);
    opts.command_line = Some(std::sync::Arc::new(move |l| {
        let mut args = member_args(&data_dir, l.client_port, l.peer_port, l.token);
        args.extend([
            "--disk-reserve-bytes".to_string(),
            (12u64 << 20).to_string(),
        ]);
        (args, Vec::new())
    }));
    let mut s = Subject::start_with(opts).await;
    let mut c = s.client().await;

    let value = vec![b'v'; 64 << 10];
    let mut acked = Vec::new();
    let refusal = 'fill: {
        for i in 0..2000 {
            let key = format!("full/{i:05}");
            let put = c.put(key.as_str(), value.clone(), None);
            match tokio::time::timeout(Duration::from_secs(30), put).await {
                Ok(Ok(r)) => acked.push((key, r.header().unwrap().revision())),
                Ok(Err(e)) => break 'fill e.to_string(),
                Err(_) => panic!("put {i} hung on a filling disk\n{}", s.log()),
            }
        }
        panic!("2000 puts of 64 KiB never filled a 48 MiB disk");
    };
    eprintln!(
        "{} puts of 64 KiB acknowledged, then: {refusal}",
        acked.len()
    );
    assert!(refusal.contains(NOSPACE), "{refusal}\n{}", s.log());
    assert!(acked.len() > 100, "refused early: {} puts", acked.len());
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == AlarmType::Nospace),
        "{alarms:?}"
    );
    // Refused again, and reads go on.
    let again = c
        .put("full/again", "x", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains(NOSPACE), "{again}");
    let all = c
        .get(
            "full/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let stored: HashMap<Vec<u8>, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
        .collect();
    for (key, rev) in &acked {
        assert_eq!(
            stored.get(key.as_bytes()),
            Some(rev),
            "acknowledged {key} lost"
        );
    }

    let member_id = c.status().await.unwrap().header().unwrap().member_id();
    // Room made: disarm, and puts are taken again.
    std::fs::remove_file(&ballast).unwrap();
    let after = eventually("a put once space is freed", Duration::from_secs(30), || {
        let mut c = c.clone();
        async move {
            // etcdctl's `alarm disarm`: each raised alarm, by member.
            let mut me = etcd_client::AlarmOptions::new();
            me.with_member(member_id);
            if let Err(e) = c
                .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(me))
                .await
            {
                eprintln!("disarm: {e}");
                return None;
            }
            match c.put("full/after", "ok", None).await {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("put after freeing space: {e}");
                    None
                }
            }
        }
    })
    .await;
    let rev = after.header().unwrap().revision();
    let hash = c.hash_kv(rev).await.unwrap().hash();

    drop(c);
    s.kill9();
    s.restart().await;
    let mut c = s.client().await;
    let h = c.hash_kv(rev).await.unwrap();
    assert_eq!(h.hash(), hash, "HashKV at {rev} changed across the restart");
    let got = c.get("full/after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"ok");
    let n = c
        .get(
            "full/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(n as usize, acked.len() + 1);
}
