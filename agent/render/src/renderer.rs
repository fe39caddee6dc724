//! The runtime: which templates are due, one round of renders at one
//! revision, the writes, checks and commands, and the agent's long-running
//! loop (view changes, template file edits, SIGHUP, quiet periods).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_view::{Interest, Snapshot, View};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::{RenderConfig, Source, Template};
use crate::status::{Status, TemplateStatus};
use crate::template::{Compiled, Outcome};
use crate::write::{self, Attrs, Staged, Written};

/// Passes of one round: each pass can discover ranges read through values
/// of the previous one (a key named by another key).
const MAX_PASSES: usize = 16;
/// How long a round waits for the view to watch newly read ranges.
const WANT_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes (with their fsyncs and checks) in flight at once.
const PARALLEL_WRITES: usize = 16;
/// After a round could not run (the view is stale or did not answer).
const RETRY: Duration = Duration::from_millis(500);
/// Output of a failed `check` or `command` kept in the error.
const OUTPUT_MAX: usize = 2048;

/// How a round treats its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write files and run commands.
    Write,
    /// Print each rendered template on stdout; write nothing.
    DryRun,
}

/// One template and what the renderer knows of it.
struct Slot {
    t: Template,
    text: Option<String>,
    compiled: Result<Compiled, String>,
    /// What its last render read (its dependencies).
    reads: Vec<Interest>,
    /// Changes up to this revision have been seen (rendered or pending).
    seen_rev: i64,
    /// First and last change not yet rendered; urgent ignores the wait.
    pending: Option<(Instant, Instant, bool)>,
    st: TemplateStatus,
}

impl Slot {
    fn new(t: Template) -> Slot {
        let mut s = Slot {
            st: TemplateStatus::new(&t),
            t,
            text: None,
            compiled: Err("not loaded".into()),
            reads: Vec::new(),
            seen_rev: 0,
            pending: Some((Instant::now(), Instant::now(), true)),
        };
        s.load();
        s
    }

    /// (Re)reads and compiles the template; true when its text changed.
    fn load(&mut self) -> bool {
        let text = self.t.text().map_err(|e| format!("{e:#}"));
        if let (Ok(t), Some(old)) = (&text, &self.text)
            && t == old
            && self.compiled.is_ok()
        {
            return false;
        }
        self.compiled = match text {
            Ok(text) => {
                let c = Compiled::new(&self.t, text.clone());
                self.text = Some(text);
                c
            }
            Err(e) => {
                self.text = None;
                Err(e)
            }
        };
        true
    }

    fn mark(&mut self, now: Instant, urgent: bool) {
        self.pending = Some(match self.pending {
            None => (now, now, urgent),
            Some((first, _, u)) => (first, now, u || urgent),
        });
    }

    fn due_at(&self) -> Option<Instant> {
        let (first, last, urgent) = self.pending?;
        if urgent {
            return Some(first);
        }
        Some((last + self.t.wait.min).min(first + self.t.wait.max))
    }
}

/// What a round did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// The revision every template of the round was rendered at.
    pub revision: i64,
    pub rendered: usize,
    pub written: usize,
    pub failed: Vec<(String, String)>,
    /// Why the round did not run (the view is stale or did not answer).
    pub deferred: Option<String>,
}

/// The templates, their state and the published status.
pub struct Engine {
    slots: Vec<Slot>,
    view: View,
    status: Arc<Mutex<Status>>,
    retry_at: Option<Instant>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    match s.char_indices().rev().nth(OUTPUT_MAX) {
        Some((i, _)) => format!("…{}", &s[i..]),
        None => s.to_string(),
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Runs `sh -c cmd` with a timeout; the error has its exit status and
/// output.
async fn run_shell(
    what: &str,
    cmd: &str,
    envs: &[(&str, &Path)],
    timeout: Duration,
) -> Result<(), String> {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        c.env(k, v);
    }
    let child = c
        .spawn()
        .map_err(|e| format!("{what} `{cmd}` could not start: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{what} `{cmd}` did not finish within {timeout:?}: killed"
        )),
        Ok(Err(e)) => Err(format!("{what} `{cmd}`: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut output = tail(&out.stderr);
            if output.is_empty() {
                output = tail(&out.stdout);
            }
            Err(format!("{what} `{cmd}` failed ({}): {output}", out.status))
        }
    }
}

fn attrs(t: &Template) -> Result<Attrs, String> {
    let uid = t
        .user
        .as_deref()
        .map(write::user_id)
        .transpose()
        .map_err(|e| format!("user: {e}"))?;
    let gid = t
        .group
        .as_deref()
        .map(write::group_id)
        .transpose()
        .map_err(|e| format!("group: {e}"))?;
    Ok(Attrs {
        perms: t.perms,
        uid,
        gid,
        backup: t.backup,
    })
}

/// Stage, check, commit. `Ok(Unchanged)` when the file already holds the
/// output (nothing written, no command).
async fn write_one(t: Template, text: String) -> Result<Written, String> {
    let dest = t.destination.clone();
    let a = attrs(&t)?;
    let staged = tokio::task::spawn_blocking(move || {
        if write::unchanged(&dest, text.as_bytes()) {
            return Ok(None);
        }
        if let Some(dir) = dest.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("creating the directory {}: {e}", dir.display()))?;
        }
        Staged::create(&dest, text.as_bytes(), &a)
            .map(Some)
            .map_err(|e| format!("writing next to {}: {e}", dest.display()))
    })
    .await
    .map_err(|e| e.to_string())??;
    let Some(staged) = staged else {
        return Ok(Written::Unchanged);
    };
    if let Some(check) = &t.check {
        let path = staged.path().to_path_buf();
        let cmd = check
            .replace("{{path}}", &shell_quote(&path))
            .replace("{{ path }}", &shell_quote(&path));
        // Dropping `staged` on failure removes it: the old file stays.
        run_shell(
            "check",
            &cmd,
            &[
                ("CAIRN_STAGED", &path),
                ("CAIRN_DESTINATION", &t.destination),
            ],
            t.command_timeout,
        )
        .await?;
    }
    let dest = t.destination.clone();
    tokio::task::spawn_blocking(move || staged.commit())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("replacing {}: {e}", dest.display()))
}

// === impl Engine ===

impl Engine {
    pub fn new(view: View, cfg: &RenderConfig) -> Engine {
        let slots: Vec<Slot> = cfg.templates.iter().cloned().map(Slot::new).collect();
        let status = Arc::new(Mutex::new(Status::default()));
        let e = Engine {
            slots,
            view,
            status,
            retry_at: None,
        };
        e.publish(&e.view.current());
        e
    }

    pub fn status(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    fn publish(&self, snap: &Snapshot) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.revision = snap.revision();
        st.stale = snap.stale().map(str::to_string);
        st.watched_ranges = snap.interests().count();
        st.templates = self.slots.iter().map(|s| s.st.clone()).collect();
    }

    fn count(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Marks every template whose data changed in `snap` since it last
    /// looked.
    pub fn observe(&mut self, snap: &Snapshot) {
        let now = Instant::now();
        let rev = snap.revision();
        if snap.stale().is_none() {
            self.retry_at = None;
            for s in &mut self.slots {
                if s.reads.iter().any(|i| snap.changed_since(i, s.seen_rev)) {
                    s.mark(now, false);
                }
                s.seen_rev = s.seen_rev.max(rev);
            }
        }
        self.publish(snap);
    }

    /// The templates whose file is one of `paths`, re-read; true if one
    /// changed.
    pub fn files_changed(&mut self, paths: &[PathBuf]) -> bool {
        let now = Instant::now();
        let mut any = false;
        for s in &mut self.slots {
            if let Source::File(p) = &s.t.source
                && paths.iter().any(|c| c == p)
                && s.load()
            {
                tracing::info!(template = %s.t.name(), "render: template file changed");
                s.mark(now, true);
                any = true;
            }
        }
        any
    }

    /// Replaces the templates; those defined exactly as before keep their
    /// state (no render, no command), the others render at once.
    pub fn replace(&mut self, cfg: &RenderConfig) {
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(Some)
            .collect();
        for t in &cfg.templates {
            let kept = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|o| o.t == *t))
                .and_then(Option::take);
            self.slots
                .push(kept.unwrap_or_else(|| Slot::new(t.clone())));
        }
        self.publish(&self.view.current());
    }

    /// Every template file, for the file watcher.
    pub fn sources(&self) -> Vec<PathBuf> {
        self.slots
            .iter()
            .filter_map(|s| match &s.t.source {
                Source::File(p) => Some(p.clone()),
                Source::Inline(_) => None,
            })
            .collect()
    }

    /// When the next template is due.
    pub fn next_due(&self) -> Option<Instant> {
        let due = self.slots.iter().filter_map(Slot::due_at).min()?;
        Some(match self.retry_at {
            Some(r) => due.max(r),
            None => due,
        })
    }

    fn take_due(&mut self, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].due_at().is_some_and(|d| d <= now))
            .collect()
    }

    /// Renders every due template in one round.
    pub async fn run_due(&mut self, mode: Mode) -> RoundReport {
        let due = self.take_due(Instant::now());
        if due.is_empty() {
            return RoundReport::default();
        }
        let r = self.round(&due, mode).await;
        if let Some(why) = &r.deferred {
            tracing::debug!(reason = %why, "render: round deferred");
            self.retry_at = Some(Instant::now() + RETRY);
        }
        r
    }

    /// Renders every template now (the `--once` and `--dry-run` round).
    pub async fn run_all(&mut self, mode: Mode) -> RoundReport {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.round(&all, mode).await
    }

    /// One round: every template of `due` from one snapshot (more passes
    /// while renders read ranges not watched yet), then the writes, then
    /// each distinct command of the changed files once.
    async fn round(&mut self, due: &[usize], mode: Mode) -> RoundReport {
        let mut report = RoundReport::default();
        let mut snap = self.view.current();
        let mut outcomes: Vec<Option<Outcome>> = Vec::new();
        for pass in 0.. {
            if let Some(why) = snap.stale() {
                report.deferred = Some(format!("the view is stale: {why}"));
                self.publish(&snap);
                return report;
            }
            outcomes = due
                .iter()
                .map(|&i| {
                    self.slots[i]
                        .compiled
                        .as_ref()
                        .ok()
                        .map(|c| c.render(&snap))
                })
                .collect();
            let mut wants: Vec<Interest> = outcomes
                .iter()
                .flatten()
                .filter_map(|o| match o {
                    Outcome::NeedData { wants, .. } => Some(wants.iter().cloned()),
                    _ => None,
                })
                .flatten()
                .collect();
            if wants.is_empty() || pass + 1 == MAX_PASSES {
                break;
            }
            wants.sort();
            wants.dedup();
            snap = match self.view.want(wants, WANT_TIMEOUT).await {
                Ok(s) => s,
                Err(e) => {
                    report.deferred = Some(format!("{e:#}"));
                    return report;
                }
            };
        }
        let rev = snap.revision();
        report.revision = rev;
        let now = now_unix();
        // The writes, in parallel; results by slot.
        let permits = Arc::new(Semaphore::new(PARALLEL_WRITES));
        let mut writes = tokio::task::JoinSet::new();
        let mut results: BTreeMap<usize, Result<Written, String>> = BTreeMap::new();
        for (&i, outcome) in due.iter().zip(outcomes) {
            let s = &mut self.slots[i];
            s.pending = None;
            s.seen_rev = s.seen_rev.max(rev);
            let outcome = match (&s.compiled, outcome) {
                (Err(e), _) => {
                    results.insert(i, Err(format!("template: {e}")));
                    continue;
                }
                (Ok(_), None) => unreachable!("a compiled template has an outcome"),
                (Ok(_), Some(o)) => o,
            };
            s.reads = outcome.reads().to_vec();
            s.st.interests = s.reads.iter().map(crate::status::interest).collect();
            match outcome {
                Outcome::NeedData { wants, .. } => {
                    results.insert(
                        i,
                        Err(format!(
                            "still reading new ranges after {MAX_PASSES} passes: {wants:?}"
                        )),
                    );
                }
                Outcome::Failed { error, .. } => {
                    results.insert(i, Err(error));
                }
                Outcome::Done { text, .. } => {
                    report.rendered += 1;
                    s.st.last_render_revision = Some(rev);
                    s.st.renders += 1;
                    if mode == Mode::DryRun {
                        println!("> {}\n{text}", s.t.destination.display());
                        results.insert(i, Ok(Written::Unchanged));
                        continue;
                    }
                    let (t, permits) = (s.t.clone(), permits.clone());
                    writes.spawn(async move {
                        let _p = permits.acquire_owned().await;
                        (i, write_one(t, text).await)
                    });
                }
            }
        }
        while let Some(r) = writes.join_next().await {
            match r {
                Ok((i, w)) => {
                    results.insert(i, w);
                }
                Err(e) => tracing::error!(error = %e, "render: a write task failed"),
            }
        }
        // Commands of the changed files, each distinct one once.
        let mut commands: BTreeMap<(String, Duration), Vec<usize>> = BTreeMap::new();
        for (&i, r) in &results {
            let s = &mut self.slots[i];
            match r {
                Ok(Written::Unchanged) => s.st.last_error = None,
                Ok(w) => {
                    report.written += 1;
                    s.st.last_error = None;
                    s.st.writes += 1;
                    s.st.last_written_revision = Some(rev);
                    s.st.last_written_unix = Some(now);
                    s.st.last_written = Some(crate::status::rfc3339(now));
                    s.st.in_place = *w == Written::InPlace;
                    tracing::info!(template = %s.t.name(), revision = rev, in_place = s.st.in_place, "render: file written");
                    if let Some(c) = &s.t.command {
                        commands
                            .entry((c.clone(), s.t.command_timeout))
                            .or_default()
                            .push(i);
                    }
                }
                Err(e) => {
                    tracing::warn!(template = %s.t.name(), revision = rev, error = %e, "render: keeping the last good file");
                    s.st.fail(e.clone(), now);
                    report.failed.push((s.t.name(), e.clone()));
                }
            }
        }
        for ((cmd, timeout), users) in commands {
            let dest = self.slots[users[0]].t.destination.clone();
            let r = run_shell("command", &cmd, &[("CAIRN_DESTINATION", &dest)], timeout).await;
            self.count(|st| st.commands_total += 1);
            for i in users {
                let s = &mut self.slots[i];
                s.st.commands += 1;
                if let Err(e) = &r {
                    tracing::warn!(template = %s.t.name(), error = %e, "render: command failed");
                    s.st.fail(e.clone(), now);
                    report.failed.push((s.t.name(), e.clone()));
                }
            }
        }
        let errors = report.failed.len() as u64;
        let (rendered, written) = (report.rendered as u64, report.written as u64);
        self.count(|st| {
            st.renders_total += rendered;
            st.writes_total += written;
            st.errors_total += errors;
        });
        self.publish(&snap);
        report
    }
}

/// Options of the long-running renderer.
pub struct Options {
    /// The config file, re-read on SIGHUP and when it changes.
    pub config_file: Option<PathBuf>,
    /// Turns true when the agent stops.
    pub stop: watch::Receiver<bool>,
    /// Told (once) when the first full render is done: every template
    /// tried with complete data (the agent's systemd `READY=1` waits on it).
    pub first_render: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A running renderer: its status for the HTTP routes.
#[derive(Clone)]
pub struct Renderer {
    status: Arc<Mutex<Status>>,
}

impl Renderer {
    /// Starts rendering `cfg` from `view` in a task; returns at once.
    pub fn spawn(view: View, cfg: RenderConfig, opts: Options) -> Renderer {
        let engine = Engine::new(view.clone(), &cfg);
        let status = engine.status();
        tokio::spawn(run(engine, view, opts));
        Renderer { status }
    }

    pub fn status(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }
}

/// Watches the template files' and the config's directories (a rename
/// over a file replaces its inode, so the directory is what is watched).
fn watch_files(
    files: &[PathBuf],
    tx: mpsc::UnboundedSender<Vec<PathBuf>>,
) -> Option<
    notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
> {
    let mut d = match notify_debouncer_full::new_debouncer(
        Duration::from_millis(100),
        None,
        move |res: notify_debouncer_full::DebounceEventResult| {
            if let Ok(events) = res {
                let paths: Vec<PathBuf> = events.into_iter().flat_map(|e| e.event.paths).collect();
                let _ = tx.send(paths);
            }
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "render: cannot watch template files; edits need a SIGHUP");
            return None;
        }
    };
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = d.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "render: cannot watch a template directory");
        }
    }
    Some(d)
}

fn files_of(engine: &Engine, config: &Option<PathBuf>) -> Vec<PathBuf> {
    let mut files = engine.sources();
    files.extend(config.iter().cloned());
    files
}

async fn run(mut engine: Engine, view: View, mut opts: Options) {
    let config_file = opts
        .config_file
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let (fs_tx, mut fs_rx) = mpsc::unbounded_channel();
    let mut watcher = watch_files(&files_of(&engine, &config_file), fs_tx.clone());
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "render: no SIGHUP handler; the config is not reloaded");
            None
        }
    };
    let mut snaps = view.subscribe();
    let mut first_render = opts.first_render.take();
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let next = engine
            .next_due()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(far);
        let mut reload = false;
        tokio::select! {
            r = opts.stop.changed() => {
                if r.is_err() || *opts.stop.borrow() {
                    break;
                }
            }
            r = snaps.changed() => {
                if r.is_err() {
                    break;
                }
                let s = snaps.borrow_and_update().clone();
                engine.observe(&s);
            }
            Some(paths) = fs_rx.recv() => {
                if config_file.as_ref().is_some_and(|c| paths.contains(c)) {
                    reload = true;
                }
                engine.files_changed(&paths);
            }
            Some(()) = async {
                match &mut hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("render: SIGHUP: reloading the templates");
                reload = true;
            }
            () = tokio::time::sleep_until(next) => {
                let r = engine.run_due(Mode::Write).await;
                if first_render.is_some() && r.deferred.is_none() && engine.next_due().is_none() {
                    tracing::info!("render: first full render done");
                    if let Some(tx) = first_render.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        if reload {
            match config_file.as_deref().map(RenderConfig::from_file) {
                None => {
                    tracing::warn!("render: no config file to reload (started without --config)")
                }
                Some(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "render: the new config is refused; keeping the old one");
                    engine.count(|st| st.reloads_refused += 1);
                }
                Some(Ok(cfg)) => {
                    let cfg = cfg.unwrap_or_default();
                    engine.replace(&cfg);
                    engine.count(|st| st.reloads += 1);
                    tracing::info!(templates = cfg.templates.len(), "render: config reloaded");
                    drop(watcher.take());
                    watcher = watch_files(&files_of(&engine, &config_file), fs_tx.clone());
                }
            }
        }
    }
    drop(watcher);
}

/// Renders every template once (`cairn render --once` / `--dry-run`):
/// waits for the view to sync, runs one round, reports.
pub async fn render_once(
    view: View,
    cfg: &RenderConfig,
    mode: Mode,
    timeout: Duration,
) -> anyhow::Result<RoundReport> {
    let mut snaps = view.subscribe();
    let synced = snaps.wait_for(|s| s.stale().is_none());
    match tokio::time::timeout(timeout, synced).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => anyhow::bail!("the view stopped"),
        Err(_) => anyhow::bail!(
            "the agent did not answer within {timeout:?}: {}",
            view.current().stale().unwrap_or("no answer")
        ),
    }
    let mut engine = Engine::new(view, cfg);
    let r = engine.run_all(mode).await;
    if let Some(why) = &r.deferred {
        anyhow::bail!("{why}");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent that cannot be reached: rounds are deferred, nothing is
    /// written, and the status says why (fail static).
    #[tokio::test]
    async fn a_stale_view_defers_rounds_and_keeps_the_files() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out");
        std::fs::write(&dest, "last good").unwrap();
        let doc: toml::Table = toml::from_str(&format!(
            "[[template]]\ndestination = {:?}\ncontents = \"{{{{ key('/k') }}}}\"\n",
            dest.display().to_string()
        ))
        .unwrap();
        let cfg = RenderConfig::from_doc(&doc, d.path()).unwrap().unwrap();
        // Port 1 on loopback: nothing listens there.
        let view = View::connect("http://127.0.0.1:1").unwrap();
        let mut engine = Engine::new(view, &cfg);
        let r = engine.run_due(Mode::Write).await;
        let why = r.deferred.expect("deferred");
        assert!(why.contains("stale"), "{why}");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "last good");
        let st = engine.status().lock().unwrap().clone();
        assert!(st.stale.is_some(), "{st:?}");
        assert_eq!(st.templates[0].writes, 0);
        assert!(engine.next_due().is_some(), "still due, retried later");
        let err = render_once(
            View::connect("http://127.0.0.1:1").unwrap(),
            &cfg,
            Mode::Write,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("did not answer"), "{err:#}");
    }
}
