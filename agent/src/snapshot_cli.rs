//! `cairn snapshot save|status|restore`: etcdutl's and etcdctl's snapshot
//! commands for cairn's snapshot format (the stream Maintenance.Snapshot
//! sends: the store's records, then a SHA-256 of everything before it, as
//! etcd closes its snapshots; `etcdctl snapshot save` against cairn writes
//! the same file). etcd's bbolt snapshots are not read.
//!
//! `restore` makes a data directory that starts a new cluster with the
//! snapshot's keys, leases and revisions: the identity the flags give
//! (member and cluster IDs as etcd derives them), the new membership as the
//! first log entries, the old membership and alarms dropped.
use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use cairn_mvcc::Mvcc;
use cairn_mvcc::snapshot::{self, Status};
use cairn_proto::etcdserverpb::SnapshotRequest;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use sha2::{Digest, Sha256};

use crate::server::{NodeSettings, initial_members, new_cluster};

const USAGE: &str = "usage:
  cairn snapshot save <file> [--endpoints http://127.0.0.1:2379]
  cairn snapshot status <file> [-w simple|table|json]
  cairn snapshot restore <file> [--data-dir <name>.cairn] [--name default]
      [--initial-cluster default=http://localhost:2380] [--initial-cluster-token etcd-cluster]
      [--initial-advertise-peer-urls http://localhost:2380]
      [--bump-revision N --mark-compacted] [--skip-hash-check]";

const SHA_BYTES: u64 = 32;

/// Runs `cairn snapshot <args>`.
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn snapshot: {e:#}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    file: PathBuf,
    flags: HashMap<String, String>,
}

const VALUE_FLAGS: &[&str] = &[
    "endpoints",
    "w",
    "write-out",
    "data-dir",
    "name",
    "initial-cluster",
    "initial-cluster-token",
    "initial-advertise-peer-urls",
    "bump-revision",
];
const BOOL_FLAGS: &[&str] = &["mark-compacted", "skip-hash-check"];

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut file = None;
    let mut flags = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            if file.replace(PathBuf::from(a)).is_some() {
                bail!("more than one snapshot file given\n{USAGE}");
            }
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if BOOL_FLAGS.contains(&name) {
            flags.insert(name.to_string(), inline.unwrap_or_else(|| "true".into()));
        } else if VALUE_FLAGS.contains(&name) {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("--{name} needs a value"))?,
            };
            flags.insert(name.to_string(), v);
        } else {
            bail!("unknown flag {a}\n{USAGE}");
        }
    }
    Ok(Args {
        file: file.with_context(|| format!("no snapshot file given\n{USAGE}"))?,
        flags,
    })
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "save" => save(&parse(rest)?),
        "status" => status(&parse(rest)?),
        "restore" => restore(&parse(rest)?),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

// === save ===

fn save(a: &Args) -> anyhow::Result<()> {
    let endpoint = a
        .flags
        .get("endpoints")
        .map(|e| e.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "http://127.0.0.1:2379".into());
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let part = a.file.with_extension("part");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(download(&endpoint, &part));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, &a.file)
        .with_context(|| format!("renaming {} to {}", part.display(), a.file.display()))?;
    println!("Snapshot saved at {}", a.file.display());
    Ok(())
}

async fn download(endpoint: &str, part: &Path) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("--endpoints {endpoint}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .with_context(|| format!("snapshot from {endpoint}"))?
        .into_inner();
    let mut f =
        std::fs::File::create(part).with_context(|| format!("creating {}", part.display()))?;
    while let Some(msg) = stream
        .message()
        .await
        .with_context(|| format!("snapshot from {endpoint}"))?
    {
        f.write_all(&msg.blob)
            .with_context(|| format!("writing {}", part.display()))?;
    }
    f.sync_all()?;
    drop(f);
    // A file that does not check out is not kept.
    verify(part).map(|_| ())
}

// === the file ===

/// Checks that `path` is a whole cairn snapshot: the magic, and the
/// SHA-256 the server appended matches the content. Returns the content's
/// length (without the checksum).
fn verify(path: &Path) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let size = f.metadata()?.len();
    let mut head = [0u8; 24];
    let n = read_up_to(&mut f, &mut head)?;
    if head[..n].starts_with(snapshot::MAGIC) {
        // ours
    } else if n >= 20 && head[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
        bail!(
            "{} is an etcd (bbolt) snapshot; cairn restores only snapshots taken from cairn",
            path.display()
        );
    } else {
        bail!("{} is not a cairn snapshot (bad magic)", path.display());
    }
    if size < SHA_BYTES + snapshot::MAGIC.len() as u64 || !(size - SHA_BYTES).is_multiple_of(512) {
        bail!(
            "{}: {size} bytes is not a whole snapshot (content in 512-byte pages plus a \
             32-byte SHA-256): the file is truncated",
            path.display()
        );
    }
    let content = size - SHA_BYTES;
    f.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    std::io::copy(&mut BufReader::new(&mut f).take(content), &mut h)?;
    let mut want = [0u8; SHA_BYTES as usize];
    f.seek(SeekFrom::Start(content))?;
    f.read_exact(&mut want)?;
    if h.finalize().as_slice() != want {
        bail!(
            "{}: the SHA-256 at its end does not match its content: the file is corrupt",
            path.display()
        );
    }
    Ok(content)
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn open_records(path: &Path) -> std::io::Result<BufReader<std::fs::File>> {
    Ok(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path)?,
    ))
}

fn file_status(path: &Path) -> anyhow::Result<(Status, u64)> {
    verify(path)?;
    let size = std::fs::metadata(path)?.len();
    let st =
        snapshot::status(|| open_records(path)).with_context(|| format!("{}", path.display()))?;
    Ok((st, size))
}

// === status ===

fn status(a: &Args) -> anyhow::Result<()> {
    let (st, size) = file_status(&a.file)?;
    let format = a
        .flags
        .get("write-out")
        .or_else(|| a.flags.get("w"))
        .map(String::as_str)
        .unwrap_or("simple");
    match format {
        "simple" => println!(
            "{:x}, {}, {}, {}",
            st.hash,
            st.revision,
            st.total_keys,
            human_bytes(size)
        ),
        "json" => println!(
            "{}",
            serde_json::json!({
                "hash": st.hash,
                "revision": st.revision,
                "totalKey": st.total_keys,
                "totalSize": size,
            })
        ),
        "table" => print!(
            "{}",
            table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[
                    format!("{:x}", st.hash),
                    st.revision.to_string(),
                    st.total_keys.to_string(),
                    human_bytes(size),
                ],
            )
        ),
        other => bail!("-w {other}: expected simple, table or json"),
    }
    Ok(())
}

/// Sizes as etcdctl prints them (go-humanize: SI units, 1.2 MB).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let v = n as f64 / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{:.1} {}", v, UNITS[e])
    } else {
        format!("{:.0} {}", v, UNITS[e])
    }
}

/// etcdctl's table: a header row and one data row.
fn table(head: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = head
        .iter()
        .zip(row)
        .map(|(h, r)| h.len().max(r.len()) + 2)
        .collect();
    let line = || {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(*w));
            s.push('+');
        }
        s.push('\n');
        s
    };
    // Headers centred, values right-aligned, as etcdctl's tablewriter.
    let cells = |cells: Vec<&str>, centre: bool| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            if centre {
                s.push_str(&format!("{c:^w$}|"));
            } else {
                s.push_str(&format!("{c:>v$} |", v = w - 1));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line();
    out.push_str(&cells(head.to_vec(), true));
    out.push_str(&line());
    out.push_str(&cells(row.iter().map(String::as_str).collect(), false));
    out.push_str(&line());
    out
}

// === restore ===

fn restore(a: &Args) -> anyhow::Result<()> {
    let flag = |k: &str| a.flags.get(k).map(String::as_str);
    let name = flag("name").unwrap_or("default").to_string();
    let data_dir = PathBuf::from(
        flag("data-dir")
            .map(str::to_string)
            .unwrap_or(format!("{name}.cairn")),
    );
    let peer_urls: Vec<String> = flag("initial-advertise-peer-urls")
        .unwrap_or("http://localhost:2380")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let initial_cluster = match flag("initial-cluster") {
        Some(v) => crate::config::parse_initial_cluster(v)
            .map_err(|e| anyhow::anyhow!("--initial-cluster: {e}"))?,
        None => peer_urls
            .iter()
            .map(|u| (name.clone(), u.clone()))
            .collect(),
    };
    let token = flag("initial-cluster-token")
        .unwrap_or("etcd-cluster")
        .to_string();
    let bump: i64 = match flag("bump-revision") {
        None => 0,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n: &i64| *n >= 0)
            .with_context(|| format!("--bump-revision {v:?}: not a non-negative number"))?,
    };
    let mark_compacted = flag("mark-compacted").is_some_and(|v| v == "true");
    // etcdutl's rule: a bumped revision must be marked compacted, so that
    // no watcher resumes across the gap, and only then.
    if bump > 0 && !mark_compacted {
        bail!("--mark-compacted is required when --bump-revision is greater than 0");
    }
    if bump == 0 && mark_compacted {
        bail!("--mark-compacted is only allowed with --bump-revision greater than 0");
    }
    if !initial_cluster
        .iter()
        .any(|(n, u)| *n == name && peer_urls.contains(u))
    {
        bail!(
            "--initial-cluster has no member {name} with --initial-advertise-peer-urls {}",
            peer_urls.join(",")
        );
    }
    if data_dir.exists() && std::fs::read_dir(&data_dir)?.next().is_some() {
        bail!(
            "data-dir {} exists and is not empty; restore makes a new one",
            data_dir.display()
        );
    }
    let content = if flag("skip-hash-check").is_some_and(|v| v == "true") {
        std::fs::metadata(&a.file)
            .with_context(|| format!("{}", a.file.display()))?
            .len()
    } else {
        verify(&a.file)?
    };
    let settings = NodeSettings::for_restore(&name, &data_dir, peer_urls, token, initial_cluster);
    let made = do_restore(&a.file, content, &settings, bump, mark_compacted);
    if let Err(e) = made {
        // Nothing half-made is left behind to be started by mistake.
        let _ = std::fs::remove_dir_all(&data_dir);
        return Err(e);
    }
    let st = file_status_quiet(&a.file);
    println!(
        "restored snapshot {} into {} as member {} of a new cluster{}",
        a.file.display(),
        data_dir.display(),
        name,
        match st {
            Some(st) if bump > 0 => format!(
                " (revision {} bumped to {}, marked compacted)",
                st.revision,
                st.revision + bump
            ),
            Some(st) => format!(" (revision {})", st.revision),
            None => String::new(),
        }
    );
    Ok(())
}

fn file_status_quiet(path: &Path) -> Option<Status> {
    snapshot::status(|| open_records(path)).ok()
}

fn do_restore(
    file: &Path,
    content: u64,
    settings: &NodeSettings,
    bump: i64,
    mark_compacted: bool,
) -> anyhow::Result<()> {
    let db = cairn_store::Db::open(&settings.data_dir)?;
    let mvcc = Mvcc::open(db.mvcc_backend())?;
    let f = open_records(file).with_context(|| format!("{}", file.display()))?;
    mvcc.restore(f.take(content))
        .with_context(|| format!("restoring {}", file.display()))?;
    let members = initial_members(&settings.initial_cluster, &settings.cluster_token);
    mvcc.prepare_restored(&members, bump, mark_compacted)?;
    let (_identity, bootstrap) = new_cluster(&db, settings)?;
    let mut log = db.raft_log();
    cairn_raft::write_bootstrap(&mut log, &bootstrap)
        .map_err(|e| anyhow::anyhow!("writing the new cluster's first log entries: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_etcdctls() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(2_109_440), "2.1 MB");
        assert_eq!(human_bytes(20_480), "20 kB");
    }

    #[test]
    fn bump_needs_mark_compacted() {
        let args: Vec<String> = ["restore", "x.snap", "--bump-revision", "10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = run(&args).unwrap_err().to_string();
        assert!(e.contains("--mark-compacted is required"), "{e}");
    }
}
