//! Builds data directories from fuzzer input, for the `log_recovery` fuzz
//! target (`tests/fuzzing`, `fuzz/`). Nothing here runs in the agent.
//!
//! Two shapes of input, chosen by the first byte:
//! - even: **files**, a data directory as an archive of
//!   `[u8 name length][name][u32 LE length][bytes]` records (the journal,
//!   fjall's version and keyspace files, `cairn.format`), as on disk;
//! - odd: **records**, raw `raft_log`/`raft_state` key-value pairs
//!   `[u8 table][u8 key length][key][u16 LE length][value]` written
//!   through fjall, so that fjall's own checksums hold and the input
//!   reaches cairn's checks (entry CRCs, gaps, the compaction record, hard
//!   state) instead of stopping at fjall's journal checksum.
use std::path::Path;

use fjall::PersistMode;

use crate::{Db, FORMAT, FORMAT_FILE};

/// Writes the data directory `data` describes into `dir` (which must be
/// empty). Malformed archive records end the archive; names that would
/// leave `dir` are skipped.
pub fn build_dir(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(());
    };
    if mode % 2 == 0 {
        unpack(dir, rest)
    } else {
        write_records(dir, rest)
    }
}

/// The archive of a data directory, the inverse of the files shape (for
/// making seeds from directories the store wrote).
pub fn pack(dir: &Path) -> std::io::Result<Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            if e.file_type()?.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if name == "db/lock" || name.len() > 255 {
                continue;
            }
            let mut bytes = std::fs::read(&path)?;
            if name.ends_with(".jnl") {
                // Journals are preallocated with zeros; their data is what
                // comes before (fjall reads a shorter file the same way).
                let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                bytes.truncate(used);
            }
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        Ok(())
    }
    let mut out = vec![0];
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Raw records of the raft keyspaces as the records shape encodes them.
pub fn dump_records(db: &Db) -> Vec<u8> {
    let mut out = vec![1];
    for (which, ks) in [(0u8, &db.shared.raft_log), (1, &db.shared.raft_state)] {
        for g in ks.iter() {
            let (k, v) = g.into_inner().expect("readable");
            if k.len() > 255 || v.len() > u16::MAX as usize {
                continue;
            }
            out.push(which);
            out.push(k.len() as u8);
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u16).to_le_bytes());
            out.extend_from_slice(&v);
        }
    }
    out
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    (data.len() >= n).then(|| {
        let (head, tail) = data.split_at(n);
        *data = tail;
        head
    })
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn unpack(dir: &Path, mut data: &[u8]) -> std::io::Result<()> {
    for _ in 0..64 {
        let Some(&[len]) = take(&mut data, 1) else {
            break;
        };
        let Some(name) = take(&mut data, len as usize) else {
            break;
        };
        let Some(size) = take(&mut data, 4) else {
            break;
        };
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
        let size = size.min(data.len());
        let bytes = take(&mut data, size).expect("bounded");
        let name = String::from_utf8_lossy(name);
        if !safe_name(&name) {
            continue;
        }
        let path = dir.join(&*name);
        if let Some(parent) = path.parent()
            && std::fs::create_dir_all(parent).is_err()
        {
            continue;
        }
        // A name that is also a directory (or under a file) is skipped.
        let _ = std::fs::write(&path, bytes);
    }
    Ok(())
}

fn write_records(dir: &Path, mut data: &[u8]) -> std::io::Result<()> {
    std::fs::write(dir.join(FORMAT_FILE), FORMAT)?;
    let db = Db::open(dir).map_err(std::io::Error::other)?;
    let mut b = db.shared.db.batch();
    for _ in 0..4096 {
        let Some(&[which]) = take(&mut data, 1) else {
            break;
        };
        let Some(&[klen]) = take(&mut data, 1) else {
            break;
        };
        let Some(key) = take(&mut data, klen as usize) else {
            break;
        };
        let Some(vlen) = take(&mut data, 2) else {
            break;
        };
        let vlen = u16::from_le_bytes(vlen.try_into().expect("2 bytes")) as usize;
        let vlen = vlen.min(data.len());
        let value = take(&mut data, vlen).expect("bounded");
        if key.is_empty() {
            // fjall refuses empty keys.
            continue;
        }
        let ks = if which % 2 == 0 {
            &db.shared.raft_log
        } else {
            &db.shared.raft_state
        };
        b.insert(ks, key, value);
    }
    b.commit().map_err(std::io::Error::other)?;
    db.shared
        .db
        .persist(PersistMode::SyncAll)
        .map_err(std::io::Error::other)?;
    Ok(())
}
