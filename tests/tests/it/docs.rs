//! The pages under `docs/` run as written (cairn only): every ```` ```sh ````
//! block of a page, in order, is one `bash -euo pipefail` script, run with
//! the `cairn` under test first on `PATH`, in a temporary directory, in
//! a user, network and PID namespace of its own (`unshare`): the pages'
//! fixed addresses and ports (127.0.0.x:2379/2380) never meet another
//! page's or another test's, and every process a page starts dies with
//! the namespace, also when the page fails or times out. A command that
//! fails fails the page; the test reports every failing page with its
//! output.
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_tests::{Kind, cairn_bin, subject_kind};

/// What one page may take (its agents start, form and stop).
const PAGE_LIMIT_SECS: u32 = 180;

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// Every markdown page under `dir`, sorted.
fn pages(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(pages(&p));
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The `sh` blocks of a markdown page, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block");
    blocks
}

/// Whether this machine lets us make the namespaces a page runs in.
fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--pid", "--fork"])
        .args(["ip", "link", "set", "lo", "up"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs one page's script; `Err` holds why it failed and its output.
fn run_page(script: &str) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("page.sh");
    std::fs::write(&file, script).unwrap();
    let bin_dir = cairn_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("timeout")
        .args(["-k", "5", &PAGE_LIMIT_SECS.to_string()])
        .args(["unshare", "--user", "--map-root-user", "--net", "--pid"])
        .args(["--fork", "--kill-child", "sh", "-c"])
        .arg("ip link set lo up && exec bash -euo pipefail \"$0\"")
        .arg(&file)
        .current_dir(work.path())
        .env("PATH", path)
        .env("TMPDIR", work.path())
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("ETCDCTL_API")
        .output()
        .unwrap();
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[test]
fn the_pages_under_docs_run_as_written() {
    if subject_kind() != Kind::Cairn {
        return;
    }
    if !namespaces_work() {
        eprintln!(
            "unshare cannot make a user and network namespace here: the docs test is skipped"
        );
        return;
    }
    let pages = pages(&docs_dir());
    let mut ran = 0;
    let mut failed = Vec::new();
    for page in &pages {
        let blocks = sh_blocks(&std::fs::read_to_string(page).unwrap());
        if blocks.is_empty() {
            continue;
        }
        ran += 1;
        let name = page.strip_prefix(docs_dir()).unwrap().display().to_string();
        eprintln!("docs/{name}: {} sh blocks", blocks.len());
        if let Err(why) = run_page(&blocks.concat()) {
            failed.push(format!("docs/{name}: {why}"));
        }
    }
    assert!(ran >= 6, "only {ran} pages with sh blocks under docs/");
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn sh_blocks_are_extracted_in_order_and_others_skipped() {
    let md = "text\n```sh\necho one\n```\n```toml\nx = 1\n```\n```sh\necho two\necho three\n```\n";
    assert_eq!(sh_blocks(md), ["echo one\n", "echo two\necho three\n"]);
}
