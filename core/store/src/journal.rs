//! A read-only look at fjall's journal files before fjall opens them.
//!
//! fjall replays its journal (`db/<n>.jnl`: batches of records, each batch
//! a start record, its items and an end record carrying an xxh3 checksum
//! of the items) and tolerates a damaged tail: at the first record it
//! cannot decode it truncates the file there and goes on. That is right
//! for a write torn by a crash, but a damaged record header in the middle
//! of the journal looks the same to it, and everything after it —
//! acknowledged, fsynced raft entries — would be dropped without a word.
//! So cairn reads the journals first and refuses to start when the damage
//! is followed by intact batches, or sits in a journal that is not the
//! newest (a sealed journal was complete when the next one began), or is
//! a complete batch whose checksum fails. It names the file and the byte.
//!
//! The price: after a power loss (not a process crash), pages written after
//! the last fsync may reach the disk out of order, so a hole followed by an
//! intact unsynced batch is possible and is refused too, though nothing
//! acknowledged follows it (every acknowledged write was fsynced before).
//! The message names the byte; cutting the journal there (`truncate -s`)
//! is then the repair, which is what fjall would have done.
//!
//! The layout read here is fjall 3's (`fjall::journal::entry`); a test in
//! `tests.rs` writes real journals through the store and reads them back.
use std::ops::Range;
use std::path::{Path, PathBuf};

const START: u8 = 1;
const ITEM: u8 = 2;
const END: u8 = 3;
const CLEAR: u8 = 4;
const TRAILER: &[u8] = b"FJL\x03";
const ITEM_HEADER: usize = 1 + 1 + 1 + 8 + 2 + 4 + 4;

/// Damage that is not a torn tail.
#[derive(Debug)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: u64,
    pub reason: String,
}

enum Bad {
    /// The bytes end inside the batch (a torn write).
    Short,
    /// A record that does not decode, or a batch that does not add up.
    Invalid(&'static str),
    /// A complete batch whose checksum fails.
    Checksum,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// An intact batch of a journal: where it lies, and where each of its
/// records (item header and bytes) lies.
#[derive(Debug, Clone)]
pub struct Batch {
    pub range: Range<usize>,
    pub items: Vec<Range<usize>>,
}

/// The intact batches at the start of a journal's bytes, up to the first
/// damage or the end (for tests and tools that alter journals on purpose).
pub fn batches(buf: &[u8]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(b) = batch(buf, pos) {
        pos = b.range.end;
        out.push(b);
    }
    out
}

/// The batch starting at `pos`, or why it is not a batch.
fn batch(buf: &[u8], pos: usize) -> Result<Batch, Bad> {
    let short = |end: usize| {
        if end > buf.len() {
            Err(Bad::Short)
        } else {
            Ok(())
        }
    };
    short(pos + 13)?;
    if buf[pos] != START {
        return Err(Bad::Invalid("not a batch start"));
    }
    let count = u32_at(buf, pos + 1).expect("in bounds");
    let mut at = pos + 13;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut items = Vec::new();
    for _ in 0..count {
        short(at + 1)?;
        let len = match buf[at] {
            ITEM => {
                short(at + ITEM_HEADER)?;
                let key = u16::from_le_bytes([buf[at + 11], buf[at + 12]]) as usize;
                let stored = u32_at(buf, at + 17).expect("in bounds") as usize;
                ITEM_HEADER + key + stored
            }
            CLEAR => 9,
            END => return Err(Bad::Invalid("the batch ends before its last item")),
            _ => return Err(Bad::Invalid("unknown record")),
        };
        short(at + len)?;
        hasher.update(&buf[at..at + len]);
        items.push(at..at + len);
        at += len;
    }
    short(at + 13)?;
    if buf[at] != END {
        return Err(Bad::Invalid("more items than the batch start counts"));
    }
    if &buf[at + 9..at + 13] != TRAILER {
        return Err(Bad::Invalid("bad batch trailer"));
    }
    if u64_at(buf, at + 1).expect("in bounds") != hasher.digest() {
        return Err(Bad::Checksum);
    }
    Ok(Batch {
        range: pos..at + 13,
        items,
    })
}

/// Checks one journal's bytes; `newest`: the journal being written.
fn check_bytes(buf: &[u8], newest: bool) -> Result<(), (u64, String)> {
    // fjall preallocates journals (64 MiB of zeros); a complete batch ends
    // with its non-zero trailer, so trailing zeros are never part of one.
    let used = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let buf = &buf[..used];
    let mut pos = 0;
    while pos < buf.len() {
        let what = match batch(buf, pos) {
            Ok(b) => {
                pos = b.range.end;
                continue;
            }
            Err(Bad::Checksum) => {
                return Err((pos as u64, "a batch fails its checksum".into()));
            }
            Err(Bad::Short) => "a batch is cut short",
            Err(Bad::Invalid(what)) => what,
        };
        // A torn tail (what fjall drops), unless an intact batch follows
        // the damage or a newer journal was begun after this one.
        if let Some(later) =
            (pos + 1..buf.len()).find(|&p| buf[p] == START && batch(buf, p).is_ok())
        {
            return Err((
                pos as u64,
                format!("{what}, and an intact batch follows at byte {later}"),
            ));
        }
        if !newest {
            return Err((
                pos as u64,
                format!("{what} in a journal that is not the newest"),
            ));
        }
        return Ok(());
    }
    Ok(())
}

/// A journal's bytes up to the end of its last written extent: the
/// preallocated rest is a hole and is not read (all of it is read where
/// the filesystem cannot tell).
fn read_data(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let end = data_end(&file, len).unwrap_or(len);
    // The extent search moved the file's position.
    (&file).seek(std::io::SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(end as usize);
    (&file).take(end).read_to_end(&mut buf)?;
    Ok(buf)
}

fn data_end(file: &std::fs::File, len: u64) -> rustix::io::Result<u64> {
    use rustix::fs::{SeekFrom, seek};
    let mut end = 0;
    while end < len {
        let data = match seek(file, SeekFrom::Data(end)) {
            Ok(at) => at,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e),
        };
        end = seek(file, SeekFrom::Hole(data))?;
    }
    Ok(end.min(len))
}

/// Checks the journals of the fjall database in `db_dir` (absent: fine).
pub fn check(db_dir: &Path) -> std::io::Result<Result<(), Damage>> {
    let mut journals: Vec<(u64, PathBuf)> = match std::fs::read_dir(db_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let n = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".jnl")?
                    .parse()
                    .ok()?;
                Some((n, path))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(())),
        Err(e) => return Err(e),
    };
    journals.sort();
    let newest = journals.last().map(|(n, _)| *n);
    for (n, path) in journals {
        let buf = read_data(&path)?;
        if let Err((offset, reason)) = check_bytes(&buf, Some(n) == newest) {
            return Ok(Err(Damage {
                file: path,
                offset,
                reason,
            }));
        }
    }
    Ok(Ok(()))
}
