// protobuf 2 messages are built field by field.
#![allow(clippy::field_reassign_with_default)]

use super::*;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

#[test]
fn backend_commits_scans_and_isolates_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let b = db.mvcc_backend();
    let mut batch = Batch::default();
    for k in ["a", "b", "c", "d"] {
        batch.put(Table::Kv, k.into(), k.to_uppercase().into());
    }
    b.commit(batch, true).unwrap();
    let snap = b.snapshot();
    let mut batch = Batch::default();
    batch.delete(Table::Kv, b"b".to_vec());
    batch.put(Table::Kv, b"e".to_vec(), b"E".to_vec());
    b.commit(batch, false).unwrap();
    let keys = |s: &FjallSnapshot, start: &[u8], end: Option<&[u8]>, rev| -> Vec<Vec<u8>> {
        s.scan(Table::Kv, start, end, rev)
            .map(|r| r.unwrap().0)
            .collect()
    };
    assert_eq!(keys(&snap, b"a", Some(b"d"), false), [b"a", b"b", b"c"]);
    assert_eq!(keys(&snap, b"b", None, true), [b"d", b"c", b"b"]);
    assert_eq!(
        snap.get(Table::Kv, b"e").unwrap(),
        None,
        "snapshot saw a later commit"
    );
    let now = b.snapshot();
    assert_eq!(keys(&now, b"", None, false), [b"a", b"c", b"d", b"e"]);
    assert_eq!(
        now.get(Table::Meta, b"a").unwrap(),
        None,
        "tables are separate"
    );
    drop((snap, now, b, db));
    let db = Db::open(dir.path()).unwrap();
    let s = db.mvcc_backend().snapshot();
    assert_eq!(s.get(Table::Kv, b"e").unwrap(), Some(b"E".to_vec()));
    assert_eq!(s.get(Table::Kv, b"b").unwrap(), None);
}

#[test]
fn log_appends_replaces_suffix_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let mut log = db.raft_log();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (1, 0)
        );
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 3;
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &[i as u8])).collect();
        log.append(&ents, Some(&hs), true).unwrap();
        // a new leader overwrites 4..5 with one entry of term 2
        log.append(&[entry(4, 2, b"x")], None, true).unwrap();
        assert_eq!(log.last_index().unwrap(), 4);
        assert_eq!(log.term(4).unwrap(), 2);
        assert_eq!(log.term(3).unwrap(), 1);
        assert!(log.term(5).is_err());
        let got = log.entries(2, 5, None, ctx()).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3, 4]);
        // max_size keeps at least one entry
        assert_eq!(log.entries(1, 5, 1, ctx()).unwrap().len(), 1);
        let mut cs = ConfState::default();
        cs.voters = vec![7];
        log.set_conf_state(&cs).unwrap();
        log.compact(2).unwrap();
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
        assert!(matches!(
            log.entries(2, 4, None, ctx()),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
    }
    let db = Db::open(dir.path()).unwrap();
    let log = db.raft_log();
    let st = log.initial_state().unwrap();
    assert_eq!((st.hard_state.term, st.hard_state.commit), (2, 3));
    assert_eq!(st.conf_state.voters, vec![7]);
    assert_eq!(
        (log.first_index().unwrap(), log.last_index().unwrap()),
        (3, 4)
    );
    assert_eq!(&log.entries(4, 5, None, ctx()).unwrap()[0].data[..], b"x");
}

fn corrupt_entry(dir: &Path, index: u64) {
    let db = Db::open(dir).unwrap();
    let mut raw = db
        .shared
        .raft_log
        .get(index.to_be_bytes())
        .unwrap()
        .unwrap()
        .to_vec();
    let last = raw.len() - 1;
    raw[last] ^= 0xFF;
    db.shared.raft_log.insert(index.to_be_bytes(), raw).unwrap();
    db.shared.db.persist(PersistMode::SyncAll).unwrap();
}

#[test]
fn torn_tail_is_dropped_and_corrupt_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let ents: Vec<Entry> = (1..=4).map(|i| entry(i, 1, b"payload")).collect();
        let mut hs = HardState::default();
        hs.commit = 4;
        db.raft_log().append(&ents, Some(&hs), true).unwrap();
    }
    corrupt_entry(dir.path(), 4);
    {
        let db = Db::open(dir.path()).unwrap();
        let log = db.raft_log();
        assert_eq!(log.last_index().unwrap(), 3, "torn tail dropped");
        let commit = log.initial_state().unwrap().hard_state.commit;
        assert_eq!(commit, 3, "commit lowered to the log's end");
    }
    corrupt_entry(dir.path(), 2);
    let err = Db::open(dir.path())
        .err()
        .expect("corrupt entry refused")
        .to_string();
    assert!(err.contains("entry 2") && err.contains("corrupt"), "{err}");
}

#[test]
fn refuses_foreign_directories_and_keeps_meta() {
    let etcd = tempfile::tempdir().unwrap();
    std::fs::create_dir(etcd.path().join("member")).unwrap();
    let err = Db::open(etcd.path()).err().unwrap().to_string();
    assert!(err.contains("etcd data directory"), "{err}");

    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "x").unwrap();
    assert!(matches!(
        Db::open(other.path()),
        Err(StoreError::NotCairn(_))
    ));

    let file = other.path().join("notes.txt");
    assert!(matches!(Db::open(&file), Err(StoreError::Io { .. })));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cairn.sock"), "").unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        db.put_meta("member_id", b"abc").unwrap();
    }
    let db = Db::open(dir.path()).unwrap();
    assert_eq!(db.get_meta("member_id").unwrap(), Some(b"abc".to_vec()));
    assert_eq!(db.get_meta("nope").unwrap(), None);
    drop(db);
    std::fs::write(dir.path().join(FORMAT_FILE), "cairn-data 9\n").unwrap();
    assert!(matches!(
        Db::open(dir.path()),
        Err(StoreError::Format { .. })
    ));
}

/// The newest journal of a closed data directory, and its bytes.
fn newest_journal(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = std::fs::read_dir(dir.join("db"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| {
            p.file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .expect("a journal");
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// A directory whose journal holds entries 1..=6 (one batch each) and
/// the byte position of `needle` inside the batch of entry 3.
fn journal_with_entries() -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path()).unwrap();
        let mut log = db.raft_log();
        for i in 1..=6 {
            let mut hs = HardState::default();
            hs.commit = i;
            let data = format!("payload-of-entry-{i}");
            log.append(&[entry(i, 1, data.as_bytes())], Some(&hs), true)
                .unwrap();
        }
    }
    let (_, bytes) = newest_journal(dir.path());
    let at = bytes
        .windows(18)
        .position(|w| w == b"payload-of-entry-3")
        .expect("entry 3 in the journal");
    (dir, at)
}

#[test]
fn journal_layout_is_read_as_fjall_writes_it() {
    let (dir, at) = journal_with_entries();
    let (_, bytes) = newest_journal(dir.path());
    let batches = journal::batches(&bytes);
    assert!(batches.len() >= 6, "{} batches", batches.len());
    assert!(batches.iter().any(|b| b.range.contains(&at)));
    assert!(journal::check(&dir.path().join("db")).unwrap().is_ok());
}

#[test]
fn journal_torn_tail_is_repaired_by_fjall() {
    let (dir, _) = journal_with_entries();
    let (path, bytes) = newest_journal(dir.path());
    let last = journal::batches(&bytes).pop().unwrap();
    let cut = last.range.start + last.range.len() / 2;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let db = Db::open(dir.path()).expect("a torn tail is repaired");
    let log = db.raft_log();
    assert_eq!(log.last_index().unwrap(), 5, "the torn batch held entry 6");
    assert_eq!(log.initial_state().unwrap().hard_state.commit, 5);
}

#[test]
fn journal_damage_in_the_middle_is_refused_with_file_and_byte() {
    // A changed byte of an entry: the batch checksum fails.
    let (dir, at) = journal_with_entries();
    let (path, mut bytes) = newest_journal(dir.path());
    bytes[at + 3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = Db::open(dir.path()).err().expect("refused").to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("fails its checksum"),
        "{err}"
    );

    // A changed record header: fjall alone would stop reading there and
    // drop entries 3 to 6 without a word.
    let (dir, at) = journal_with_entries();
    let (path, mut bytes) = newest_journal(dir.path());
    let batch = journal::batches(&bytes)
        .into_iter()
        .find(|b| b.range.contains(&at))
        .unwrap();
    let item = batch
        .items
        .iter()
        .find(|i| i.contains(&at))
        .unwrap()
        .clone();
    bytes[item.start] = 0x7f; // not a record tag
    std::fs::write(&path, &bytes).unwrap();
    let err = Db::open(dir.path()).err().expect("refused").to_string();
    assert!(
        err.contains(&path.display().to_string())
            && err.contains(&format!("byte {}", batch.range.start))
            && err.contains("an intact batch follows"),
        "{err}"
    );
}

/// The in-memory tail of the log (`recent`) answers exactly what the store
/// on disk does, through overwritten suffixes, compactions, snapshots and
/// more entries than it holds.
#[test]
fn recent_entries_match_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let mut log = db.raft_log();
    let mut model: Vec<Entry> = Vec::new(); // entries first..=last
    let mut first = 1u64;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut term = 1;
    for step in 0..400 {
        let last = first + model.len() as u64 - 1;
        match next(10) {
            // An append at the end or over a suffix (a new leader's log).
            0..=6 => {
                let from = if model.is_empty() || next(4) != 0 {
                    last + 1
                } else {
                    term += 1;
                    first + next(model.len() as u64)
                };
                // Mostly small entries; now and then large ones, so the
                // in-memory tail has to drop its oldest.
                let size = if next(8) == 0 { 300_000 } else { 1 + next(64) };
                let n = 1 + next(20);
                let ents: Vec<Entry> = (from..from + n)
                    .map(|i| entry(i, term, &vec![(i % 251) as u8; size as usize]))
                    .collect();
                log.append(&ents, None, next(2) == 0).unwrap();
                model.truncate((from - first) as usize);
                model.extend(ents);
            }
            // Compaction of an applied prefix.
            7 | 8 if model.len() > 1 => {
                let to = first + next(model.len() as u64 - 1);
                log.compact(to).unwrap();
                model.drain(..(to + 1 - first) as usize);
                first = to + 1;
            }
            // A snapshot from the leader replaces the whole log.
            9 => {
                let mut md = SnapshotMetadata::default();
                md.index = last + 5;
                md.term = term;
                md.mut_conf_state().voters = vec![1];
                log.apply_snapshot(&md).unwrap();
                model.clear();
                first = md.index + 1;
            }
            _ => {}
        }
        let last = first + model.len() as u64 - 1;
        assert_eq!(log.first_index().unwrap(), first, "step {step}");
        assert_eq!(log.last_index().unwrap(), last, "step {step}");
        if model.is_empty() {
            continue;
        }
        let fresh = FjallLogStore::open(db.shared.clone()).unwrap();
        let lo = first + next(model.len() as u64);
        let hi = lo + 1 + next(last + 1 - lo);
        let max = [None, Some(1), Some(500_000)][next(3) as usize];
        let got = log.entries(lo, hi, max, ctx()).unwrap();
        assert_eq!(
            got,
            fresh.entries(lo, hi, max, ctx()).unwrap(),
            "step {step}: entries {lo}..{hi} (max {max:?}) differ from the disk's"
        );
        let want = &model[(lo - first) as usize..(lo - first) as usize + got.len()];
        assert_eq!(got, want, "step {step}: entries {lo}..{hi}");
        if max.is_none() {
            assert_eq!(got.len() as u64, hi - lo, "step {step}");
        }
    }
}
