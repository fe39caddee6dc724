//! Reading cairn's snapshot format without a store: what `cairn snapshot
//! status` reports and how `cairn snapshot restore` checks a file. The
//! format is written by [`crate::Mvcc::snapshot_chunks`]: the magic
//! `CAIRNSNAP1`, records `table u8 | klen u32 | key | vlen u32 | value`,
//! `0xFF`, zero padding to a multiple of 512 bytes.
use std::io::Read;

use crate::store::{hash_kv_of, snapshot_revisions};
use crate::{BackendError, RestoreError, Table};

pub const MAGIC: &[u8; 10] = b"CAIRNSNAP1";
/// The longest key or value a record may hold (as `Mvcc::restore`).
const RECORD_MAX: usize = 64 << 20;

/// The records of a snapshot stream, in order.
pub struct Records<R: Read> {
    r: R,
    done: bool,
}

impl<R: Read> Records<R> {
    /// Checks the magic and starts reading records.
    pub fn new(mut r: R) -> Result<Records<R>, RestoreError> {
        let mut magic = [0u8; 10];
        r.read_exact(&mut magic)
            .map_err(|e| RestoreError::Format(format!("read: {e}")))?;
        if &magic != MAGIC {
            return Err(RestoreError::Format(
                "not a cairn snapshot (bad magic)".into(),
            ));
        }
        Ok(Records { r, done: false })
    }

    fn part(&mut self) -> Result<Vec<u8>, RestoreError> {
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(truncated)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > RECORD_MAX {
            return Err(RestoreError::Format(format!("record of {len} bytes")));
        }
        let mut v = vec![0u8; len];
        self.r.read_exact(&mut v).map_err(truncated)?;
        Ok(v)
    }
}

fn truncated(e: std::io::Error) -> RestoreError {
    RestoreError::Format(format!("truncated or unreadable: {e}"))
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<(Table, Vec<u8>, Vec<u8>), RestoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut tag = [0u8; 1];
        if let Err(e) = self.r.read_exact(&mut tag) {
            self.done = true;
            return Some(Err(truncated(e)));
        }
        if tag[0] == 0xFF {
            self.done = true;
            return None;
        }
        let Some(&t) = Table::ALL.get(tag[0] as usize) else {
            self.done = true;
            return Some(Err(RestoreError::Format(format!(
                "unknown table {}",
                tag[0]
            ))));
        };
        let rec = self.part().and_then(|k| Ok((t, k, self.part()?)));
        if rec.is_err() {
            self.done = true;
        }
        Some(rec)
    }
}

/// What a snapshot holds, as `etcdutl snapshot status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HashKV of the content at `revision` (what `etcdctl endpoint hashkv`
    /// answered at that revision, and what a cluster restored from it
    /// answers).
    pub hash: u32,
    pub revision: i64,
    pub compact_revision: i64,
    /// Records in every table (etcd: keys in every bucket).
    pub total_keys: u64,
}

/// Reads the snapshot twice (`open` gives a fresh reader of the records,
/// magic included): once for its revisions and record count, once for the
/// hash, which needs the compaction point recorded at the end.
pub fn status<R: Read>(
    mut open: impl FnMut() -> std::io::Result<R>,
) -> Result<Status, RestoreError> {
    let io = |e: std::io::Error| RestoreError::Format(format!("read: {e}"));
    let mut meta = Vec::new();
    let mut total_keys = 0u64;
    for r in Records::new(open().map_err(io)?)? {
        let (t, k, v) = r?;
        total_keys += 1;
        if t == Table::Meta {
            meta.push((k, v));
        }
    }
    let (revision, compact) =
        snapshot_revisions(meta.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
    let mut failure = None;
    let kv = Records::new(open().map_err(io)?)?
        .map_while(|r| match r {
            Ok((Table::Kv, k, v)) => Some(Ok((k, v))),
            Ok(_) => None,
            Err(e) => {
                failure = Some(e);
                None
            }
        })
        .map(|r: Result<_, BackendError>| r);
    let hash = hash_kv_of(kv, revision, compact)?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Status {
        hash,
        revision,
        compact_revision: compact,
        total_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemBackend, Mvcc};
    use cairn_proto::cairnpb::{Command, command::Op};
    use cairn_proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn put(m: &Mvcc<MemBackend>, index: u64, k: &str, v: &str) {
        let cmd = Command {
            op: Some(Op::Put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        m.apply(index, &cmd).unwrap().result.unwrap();
    }

    #[test]
    fn status_hash_is_the_stores_hash_kv() {
        let m = Mvcc::open(MemBackend::default()).unwrap();
        for i in 0..50 {
            put(&m, i + 1, &format!("k{}", i % 7), &format!("v{i}"));
        }
        let compact = Command {
            op: Some(Op::Compaction(CompactionRequest {
                revision: 30,
                physical: false,
            })),
            ..Default::default()
        };
        m.apply(51, &compact).unwrap().result.unwrap();
        let bytes: Vec<u8> = m.snapshot_chunks(100).flat_map(|c| c.unwrap()).collect();
        let st = status(|| Ok(bytes.as_slice())).unwrap();
        let (hash, compact_rev, rev) = m.hash_kv(0).unwrap();
        assert_eq!(
            (st.hash, st.revision, st.compact_revision),
            (hash, rev, compact_rev)
        );
        assert!(st.total_keys > 50);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused_with_its_reason() {
        let m = Mvcc::open(MemBackend::default()).unwrap();
        put(&m, 1, "a", "b");
        let bytes: Vec<u8> = m.snapshot_chunks(100).flat_map(|c| c.unwrap()).collect();
        let cut = &bytes[..bytes.len().min(30)];
        let e = status(|| Ok(cut)).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = status(|| Ok(&b"not a snapshot at all"[..]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad magic"), "{e}");
    }
}
