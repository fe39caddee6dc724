//! Writing a destination so that readers see the old file or the new one,
//! never a part: a temp file in the destination's directory is written,
//! fsynced, given its mode and owner, checked (the template's `check`),
//! then renamed over the destination, and the directory is fsynced.
//!
//! A rename onto a bind-mounted file fails with EBUSY (and across file
//! systems with EXDEV): the content is then written in place, with a log
//! line that says so (confd's fallback; consul-template just fails, #1436).
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The mode of a new destination when `perms` is not set.
pub const DEFAULT_PERMS: u32 = 0o644;

/// What writing a destination did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The destination already had this content: not touched.
    Unchanged,
    /// Atomically replaced (or created).
    Replaced,
    /// Written in place because the rename was refused (EBUSY/EXDEV).
    InPlace,
}

/// Whether `dest` already holds exactly `content`.
pub fn unchanged(dest: &Path, content: &[u8]) -> bool {
    match std::fs::metadata(dest) {
        Ok(m) if m.is_file() && m.len() == content.len() as u64 => {
            std::fs::read(dest).is_ok_and(|c| c == content)
        }
        _ => false,
    }
}

/// A user or group by name or number, from `/etc/passwd` or `/etc/group`
/// (local accounts; the agent does not ask NSS).
fn lookup_id(db: &str, name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(db)?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {name:?} in {db}")))
}

pub fn user_id(name: &str) -> io::Result<u32> {
    lookup_id("/etc/passwd", name)
}

pub fn group_id(name: &str) -> io::Result<u32> {
    lookup_id("/etc/group", name)
}

/// What the staged file should look like besides its content.
#[derive(Clone, Debug, Default)]
pub struct Attrs {
    /// `None`: the existing destination's mode, else [`DEFAULT_PERMS`].
    pub perms: Option<u32>,
    /// `None`: the existing destination's owner, else the agent's.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Keep the replaced file as `<dest>.bak`.
    pub backup: bool,
}

/// A new version of a destination, written and synced next to it, not yet
/// in place. Dropped without [`Staged::commit`], it is removed.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    content: Vec<u8>,
    mode: u32,
    backup: bool,
    done: bool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn parent(dest: &Path) -> &Path {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

impl Staged {
    /// Writes `content` to a temp file in `dest`'s directory, fsyncs it and
    /// gives it its mode and owner.
    pub fn create(dest: &Path, content: &[u8], attrs: &Attrs) -> io::Result<Staged> {
        let dir = parent(dest);
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let tmp = dir.join(format!(
            ".{}.cairn-{}-{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let old = std::fs::metadata(dest).ok();
        let mode = attrs
            .perms
            .or(old.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(DEFAULT_PERMS);
        let mut staged = Staged {
            tmp,
            dest: dest.to_path_buf(),
            content: content.to_vec(),
            mode,
            backup: attrs.backup,
            done: false,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged.tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        // The owner first: chown clears set-id bits the mode may ask for.
        let uid = attrs.uid.or(old.as_ref().map(|m| m.uid()));
        let gid = attrs.gid.or(old.as_ref().map(|m| m.gid()));
        let meta = f.metadata()?;
        if uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid()) {
            std::os::unix::fs::fchown(&f, uid, gid)?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        staged.done = false;
        Ok(staged)
    }

    /// The staged file, for the template's `check`.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Puts the staged file in place.
    pub fn commit(self) -> io::Result<Written> {
        self.commit_with(|from, to| std::fs::rename(from, to))
    }

    /// [`Staged::commit`] with the rename given (tests force its failures).
    pub fn commit_with(
        mut self,
        rename: impl FnOnce(&Path, &Path) -> io::Result<()>,
    ) -> io::Result<Written> {
        if self.backup && self.dest.exists() {
            let bak = backup_path(&self.dest);
            let _ = std::fs::remove_file(&bak);
            if std::fs::hard_link(&self.dest, &bak).is_err() {
                std::fs::copy(&self.dest, &bak)?;
            }
        }
        match rename(&self.tmp, &self.dest) {
            Ok(()) => {
                self.done = true;
                File::open(parent(&self.dest))?.sync_all()?;
                Ok(Written::Replaced)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ResourceBusy | io::ErrorKind::CrossesDevices
                ) =>
            {
                tracing::warn!(
                    destination = %self.dest.display(),
                    error = %e,
                    "render: cannot rename over the destination (a bind-mounted file, or another file system): writing it in place, which readers may see half-written; mount the directory instead of the file"
                );
                let mut f = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&self.dest)?;
                f.write_all(&self.content)?;
                f.sync_all()?;
                f.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
                Ok(Written::InPlace)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `<dest>.bak`.
pub fn backup_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_os_string();
    s.push(".bak");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_is_a_rename_of_a_synced_temp_file_with_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.conf");
        let s = Staged::create(
            &dest,
            b"one\n",
            &Attrs {
                perms: Some(0o640),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!dest.exists(), "nothing in place before the commit");
        assert_eq!(std::fs::read(s.path()).unwrap(), b"one\n");
        assert_eq!(s.commit().unwrap(), Written::Replaced);
        assert_eq!(std::fs::read(&dest).unwrap(), b"one\n");
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(entries(d.path()), vec!["out.conf"], "no temp file left");
        // Without perms, the existing mode is kept.
        let ino = std::fs::metadata(&dest).unwrap().ino();
        Staged::create(&dest, b"two\n", &Attrs::default())
            .unwrap()
            .commit()
            .unwrap();
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_ne!(m.ino(), ino, "replaced by rename, not rewritten");
        assert!(unchanged(&dest, b"two\n"));
        assert!(!unchanged(&dest, b"two"));
        assert!(!unchanged(&d.path().join("missing"), b""));
    }

    #[test]
    fn a_new_file_gets_0644_and_a_backup_keeps_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("f");
        let attrs = Attrs {
            backup: true,
            ..Default::default()
        };
        Staged::create(&dest, b"v1", &attrs)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(
            std::fs::metadata(&dest).unwrap().mode() & 0o7777,
            DEFAULT_PERMS
        );
        assert!(!backup_path(&dest).exists(), "nothing to back up yet");
        Staged::create(&dest, b"v2", &attrs)
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(std::fs::read(backup_path(&dest)).unwrap(), b"v1");
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2");
    }

    #[test]
    fn a_dropped_stage_leaves_the_old_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        let s = Staged::create(&dest, b"new", &Attrs::default()).unwrap();
        drop(s);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(entries(d.path()), vec!["f"]);
    }

    #[test]
    fn a_refused_rename_falls_back_to_writing_in_place() {
        for errno in [16, 18] {
            // EBUSY (a bind-mounted file), EXDEV (another file system).
            let d = tempfile::tempdir().unwrap();
            let dest = d.path().join("mounted");
            std::fs::write(&dest, b"old content, longer than the new").unwrap();
            let ino = std::fs::metadata(&dest).unwrap().ino();
            let s = Staged::create(
                &dest,
                b"new",
                &Attrs {
                    perms: Some(0o600),
                    ..Default::default()
                },
            )
            .unwrap();
            let w = s
                .commit_with(|_, _| Err(io::Error::from_raw_os_error(errno)))
                .unwrap();
            assert_eq!(w, Written::InPlace, "errno {errno}");
            let m = std::fs::metadata(&dest).unwrap();
            assert_eq!(m.ino(), ino, "the same inode, rewritten");
            assert_eq!(std::fs::read(&dest).unwrap(), b"new");
            assert_eq!(m.mode() & 0o7777, 0o600);
            assert_eq!(entries(d.path()), vec!["mounted"], "temp removed");
        }
        // Any other rename error is an error, and the old file stays.
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("f");
        std::fs::write(&dest, b"old").unwrap();
        let s = Staged::create(&dest, b"new", &Attrs::default()).unwrap();
        assert!(
            s.commit_with(|_, _| Err(io::Error::from_raw_os_error(13)))
                .is_err()
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
    }

    #[test]
    fn owners_by_name_or_number() {
        assert_eq!(user_id("root").unwrap(), 0);
        assert_eq!(group_id("0").unwrap(), 0);
        assert!(user_id("no-such-user-here").is_err());
    }
}
