//! On-disk storage: one fjall database holding the MVCC tables, the raft log,
//! the raft hard state and a little agent metadata.
//!
//! Layout of a data directory:
//! - `<dir>/cairn.format`: a text marker (`cairn-data 1\n`), written on the
//!   first open and checked on every later one;
//! - `<dir>/db/`: the fjall database, with keyspaces `kv`, `rev`, `lease`,
//!   `meta` (the MVCC tables), `raft_log`, `raft_state` and `agent_meta`.
#![forbid(unsafe_code)]

mod backend;
mod log;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub use backend::{FjallBackend, FjallSnapshot};
pub use log::FjallLogStore;

/// Name of the marker file identifying a cairn data directory.
pub const FORMAT_FILE: &str = "cairn.format";
/// Content of the marker file for the current on-disk format.
pub const FORMAT_CONTENT: &str = "cairn-data 1\n";
const DB_DIR: &str = "db";
/// Entries that may exist in a directory we have not initialised yet: the
/// agent binds its unix socket (`cairn.sock`) in the data directory before
/// opening the database, and a crash may leave the marker's temp file.
const IGNORED_NEW_DIR_ENTRIES: &[&str] = &["cairn.sock", "cairn.format.tmp", "lost+found"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "data directory {} looks like an etcd data directory (member/); cairn cannot read it: \
         restore a snapshot into an empty directory instead",
        .0.display()
    )]
    EtcdDataDir(PathBuf),
    #[error(
        "data directory {} has an unknown format marker {found:?} in {FORMAT_FILE} \
         (expected {FORMAT_CONTENT:?}); refusing to open it",
        path.display()
    )]
    UnknownFormat { path: PathBuf, found: String },
    #[error(
        "data directory {} is not empty and has no {FORMAT_FILE} (found {found}); \
         it is not a cairn data directory, refusing to use it",
        path.display()
    )]
    NotOurs { path: PathBuf, found: String },
    #[error(
        "fjall database {} is locked: another cairn process is using this data directory",
        .0.display()
    )]
    Locked(PathBuf),
    #[error("fjall database {}: {source}", path.display())]
    Fjall {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error("raft log in {}: entry {index} is corrupt ({reason}); refusing to start", path.display())]
    CorruptLogEntry {
        path: PathBuf,
        index: u64,
        reason: String,
    },
    #[error("raft log in {}: {what}", path.display())]
    CorruptLog { path: PathBuf, what: String },
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) db: Database,
    /// Indexed like `cairn_mvcc::Table::ALL`.
    pub(crate) tables: [Keyspace; 4],
    pub(crate) raft_log: Keyspace,
    pub(crate) raft_state: Keyspace,
    pub(crate) agent_meta: Keyspace,
    pub(crate) log: Mutex<log::LogState>,
}

impl Inner {
    pub(crate) fn fjall_err(&self, source: fjall::Error) -> StoreError {
        StoreError::Fjall {
            path: self.path.clone(),
            source,
        }
    }
}

/// The data directory's database. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks `dir` and writes the format marker when the directory is new.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(StoreError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    if dir.join("member").exists() {
        return Err(StoreError::EtcdDataDir(dir.to_path_buf()));
    }
    let marker = dir.join(FORMAT_FILE);
    match std::fs::read(&marker) {
        Ok(bytes) => {
            if bytes != FORMAT_CONTENT.as_bytes() {
                return Err(StoreError::UnknownFormat {
                    path: dir.to_path_buf(),
                    found: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !IGNORED_NEW_DIR_ENTRIES.contains(&n.as_str()))
                .collect();
            if !names.is_empty() {
                names.sort();
                names.truncate(5);
                return Err(StoreError::NotOurs {
                    path: dir.to_path_buf(),
                    found: names.join(", "),
                });
            }
            // Marker first: a crash before the database exists leaves a
            // directory we still recognise as ours.
            let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
                f.write_all(FORMAT_CONTENT.as_bytes())
                    .map_err(io_err(&tmp))?;
                f.sync_all().map_err(io_err(&tmp))?;
            }
            std::fs::rename(&tmp, &marker).map_err(io_err(&marker))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
            Ok(())
        }
        Err(e) => Err(io_err(&marker)(e)),
    }
}

impl Db {
    /// Opens (creating if needed) the data directory `dir`, and checks the
    /// raft log (a torn last entry is dropped, any other corruption refused).
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        prepare_dir(dir)?;
        let path = dir.join(DB_DIR);
        let fj = |source: fjall::Error| match source {
            fjall::Error::Locked => StoreError::Locked(path.clone()),
            source => StoreError::Fjall {
                path: path.clone(),
                source,
            },
        };
        let db = Database::builder(&path).open().map_err(fj)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let tables = [
            ks(cairn_mvcc::Table::Kv.name()).map_err(fj)?,
            ks(cairn_mvcc::Table::Rev.name()).map_err(fj)?,
            ks(cairn_mvcc::Table::Lease.name()).map_err(fj)?,
            ks(cairn_mvcc::Table::Meta.name()).map_err(fj)?,
        ];
        let raft_log = ks("raft_log").map_err(fj)?;
        let raft_state = ks("raft_state").map_err(fj)?;
        let agent_meta = ks("agent_meta").map_err(fj)?;
        let state = log::load(&path, &db, &raft_log, &raft_state)?;
        Ok(Db {
            inner: Arc::new(Inner {
                path,
                db,
                tables,
                raft_log,
                raft_state,
                agent_meta,
                log: Mutex::new(state),
            }),
        })
    }

    /// The MVCC tables as a `cairn_mvcc::Backend`.
    pub fn mvcc_backend(&self) -> FjallBackend {
        FjallBackend::new(self.inner.clone())
    }

    /// The raft log and hard state as a `cairn_raft::LogStore`. All handles
    /// share one state; the raft driver should own the only one in use.
    pub fn raft_log(&self) -> FjallLogStore {
        FjallLogStore::new(self.inner.clone())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let v = self
            .inner
            .agent_meta
            .get(key.as_bytes())
            .map_err(|e| self.inner.fjall_err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    /// Stores `value` under `key` and fsyncs before returning.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut b = self.inner.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&self.inner.agent_meta, key.as_bytes(), value);
        b.commit().map_err(|e| self.inner.fjall_err(e))
    }

    /// Approximate bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }

    /// The directory of the fjall database (`<dir>/db`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}
