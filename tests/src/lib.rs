//! The subject harness of the black-box suite: starts one single-member
//! server process on loopback — the `cairn` binary, or Debian's etcd with
//! `CONFORMANCE_SUBJECT=etcd` — and hands out clients for it.
//!
//! Both servers get exactly the same command line (cairn takes etcd's flags),
//! so real etcd is the oracle for every expectation the suite holds cairn to.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub mod cluster;
pub mod dns;
pub mod relay;
pub mod v2;

/// Where Debian installs the reference server and client.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// How long a server may take from spawn to answering a linearizable read.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which implementation a [`Subject`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Cairn,
}

/// The implementation under test, from `CONFORMANCE_SUBJECT` (`etcd` or `cairn`,
/// default `cairn`).
pub fn subject_kind() -> Kind {
    match std::env::var("CONFORMANCE_SUBJECT").as_deref() {
        Ok("etcd") => Kind::Etcd,
        Ok("cairn") | Ok("") | Err(_) => Kind::Cairn,
        Ok(other) => panic!("CONFORMANCE_SUBJECT={other:?}: expected `etcd` or `cairn`"),
    }
}

/// True when the suite runs against real etcd (3.4), so a case can skip
/// what etcd 3.4 does not have.
pub fn subject_is_etcd() -> bool {
    subject_kind() == Kind::Etcd
}

/// The cairn binary: `CAIRN_BIN`, else `<target>/debug/cairn` next to the
/// running test or tool.
pub fn cairn_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Test binaries live in <target>/debug/deps/, tools in <target>/debug/.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("cairn");
        if candidate.is_file() {
            return candidate;
        }
    }
    let guess = exe
        .ancestors()
        .nth(2)
        .map(|d| d.join("cairn"))
        .unwrap_or_else(|| PathBuf::from("cairn"));
    panic!(
        "the cairn binary was not found at {}: run `cargo build -p cairn-agent` \
         (with the same CARGO_TARGET_DIR), set CAIRN_BIN=/path/to/cairn, \
         or run against etcd with CONFORMANCE_SUBJECT=etcd",
        guess.display()
    );
}

/// The binary for `kind`.
pub fn bin_for(kind: Kind) -> PathBuf {
    match kind {
        Kind::Etcd => PathBuf::from(ETCD_BIN),
        Kind::Cairn => cairn_bin(),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
/// A port no other test of this process was given: a member killed and
/// restarted on its ports must find them free (the OS hands recently
/// freed ports out again, and tests run side by side).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The flags of a single-member cluster named `n1`, identical for etcd and cairn.
pub fn member_args(data_dir: &Path, client_port: u16, peer_port: u16, token: &str) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name".into(),
        "n1".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("n1={peer}"),
        "--initial-cluster-state".into(),
        "new".into(),
        "--initial-cluster-token".into(),
        token.into(),
    ]
}

/// Where a subject lives, for building a custom command line.
#[derive(Debug)]
pub struct Layout<'a> {
    /// The subject's scratch directory (holds the data dir and the log).
    pub dir: &'a Path,
    pub data_dir: &'a Path,
    pub client_port: u16,
    pub peer_port: u16,
    pub token: &'a str,
}

/// Builds the arguments and extra environment of a custom command line.
pub type CommandLine =
    Arc<dyn Fn(&Layout<'_>) -> (Vec<String>, Vec<(String, String)>) + Send + Sync>;

/// Options for [`Subject::start_with`].
#[derive(Clone)]
pub struct SubjectOptions {
    pub kind: Kind,
    /// The binary; `None` picks [`bin_for`]`(kind)`.
    pub bin: Option<PathBuf>,
    /// Appended after the member flags.
    pub extra_args: Vec<String>,
    /// Replaces the member flags (and `extra_args`) entirely.
    pub command_line: Option<CommandLine>,
}

impl SubjectOptions {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            bin: None,
            extra_args: Vec::new(),
            command_line: None,
        }
    }
}

/// One running single-member server with its own temp data dir and ports.
pub struct Subject {
    kind: Kind,
    bin: PathBuf,
    dir: TempDir,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    token: String,
    extra_args: Vec<String>,
    command_line: Option<CommandLine>,
    log_path: PathBuf,
    child: Option<Child>,
}

// === impl Subject ===

impl Subject {
    /// Starts the subject chosen by `CONFORMANCE_SUBJECT` and waits until it
    /// serves linearizable reads.
    pub async fn start() -> Subject {
        Self::start_with(SubjectOptions::new(subject_kind())).await
    }

    pub async fn start_with(options: SubjectOptions) -> Subject {
        let bin = options.bin.clone().unwrap_or_else(|| bin_for(options.kind));
        let dir = tempfile::Builder::new()
            .prefix("cairn-subject-")
            .tempdir()
            .expect("tempdir");
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        let token = format!(
            "tok-{}-{}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let mut subject = Subject {
            kind: options.kind,
            bin,
            dir,
            data_dir,
            client_port: 0,
            peer_port: 0,
            token,
            extra_args: options.extra_args,
            command_line: options.command_line,
            log_path,
            child: None,
        };
        // A port picked free may be taken before the server binds it: retry
        // with fresh ports when the failure is a bind failure.
        let mut attempt = 0;
        loop {
            attempt += 1;
            subject.client_port = free_port();
            subject.peer_port = free_port();
            while subject.peer_port == subject.client_port {
                subject.peer_port = free_port();
            }
            match subject.spawn_and_wait().await {
                Ok(()) => return subject,
                Err(why) => {
                    let log = subject.log();
                    let in_use = log.contains("address already in use")
                        || log.contains("Address already in use")
                        || log.contains("AddrInUse");
                    if in_use && attempt < 4 {
                        subject.kill9();
                        let _ = std::fs::remove_dir_all(&subject.data_dir);
                        let _ = std::fs::write(&subject.log_path, "");
                        continue;
                    }
                    panic!(
                        "{:?} server {} failed to start: {why}\n--- server output ({}) ---\n{log}",
                        subject.kind,
                        subject.bin.display(),
                        subject.log_path.display()
                    );
                }
            }
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        if let Some(command_line) = &self.command_line {
            let (args, envs) = command_line(&Layout {
                dir: self.dir.path(),
                data_dir: &self.data_dir,
                client_port: self.client_port,
                peer_port: self.peer_port,
                token: &self.token,
            });
            cmd.args(args).envs(envs);
            return cmd;
        }
        cmd.args(member_args(
            &self.data_dir,
            self.client_port,
            self.peer_port,
            &self.token,
        ));
        cmd.args(&self.extra_args);
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.spawn();
        self.wait_ready().await
    }

    /// Polls a linearizable read until it succeeds: the member has a leader
    /// and applies. Fails early if the process exits.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.endpoint();
        let mut last_error = String::from("never answered");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("process exited during startup with {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}; last error: {last_error}"
                ));
            }
            let probe = async {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_secs(2));
                let mut client =
                    etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?;
                client.get("cairn-tests/readiness-probe", None).await
            };
            match tokio::time::timeout(Duration::from_secs(3), probe).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "probe timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn is_etcd(&self) -> bool {
        self.kind == Kind::Etcd
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch directory that lives as long as the subject.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the server printed so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A new etcd-client connection.
    pub async fn client(&self) -> etcd_client::Client {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        etcd_client::Client::connect([self.endpoint()], Some(options))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.endpoint()))
    }

    /// SIGKILL, then reap.
    /// Puts from `writers` concurrent clients under `prefix` (keys
    /// `{prefix}{writer}/{n:06}`) until the agent is killed with SIGKILL
    /// `after` into the run; returns (key, value, revision) of every
    /// acknowledged put.
    pub async fn puts_until_kill9(
        &mut self,
        writers: usize,
        prefix: &str,
        after: Duration,
    ) -> Vec<(String, String, i64)> {
        let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let mut client = self.client().await;
            let acks = acks.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                for i in 0..u64::MAX {
                    let key = format!("{prefix}{w}/{i:06}");
                    let value = format!("{prefix}w{w}i{i}");
                    let put = client.put(key.clone(), value.clone(), None);
                    match tokio::time::timeout(Duration::from_secs(10), put).await {
                        Ok(Ok(resp)) => {
                            let rev = resp.header().unwrap().revision();
                            acks.lock().unwrap().push((key, value, rev));
                        }
                        // The server is gone: stop writing.
                        _ => return,
                    }
                }
            }));
        }
        tokio::time::sleep(after).await;
        self.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *acks.lock().unwrap())
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.kill9();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let earlier = self.log().len();
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(why) => {
                    let log = self.log();
                    let this_run = log.get(earlier..).unwrap_or("");
                    // The old process's sockets may linger for a moment.
                    if attempts < 5 && this_run.contains("in use") {
                        self.kill9();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                    panic!(
                        "{:?} server failed to restart: {why}\n--- server output ---\n{log}",
                        self.kind
                    );
                }
            }
        }
    }

    /// Starts the server again on the same data dir for a start that must
    /// be refused: waits up to `limit` for the process to exit by itself.
    /// Returns its exit status (`None`: still running at `limit`, then
    /// killed) and what this run printed.
    pub async fn restart_expecting_exit(
        &mut self,
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        self.kill9();
        let earlier = self.log().len();
        self.spawn();
        let deadline = Instant::now() + limit;
        let status = loop {
            let child = self.child.as_mut().expect("spawned");
            if let Some(status) = child.try_wait().expect("wait for the server") {
                self.child = None;
                break Some(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = self.log();
        (status, log.get(earlier..).unwrap_or("").to_string())
    }

    /// Runs `/usr/bin/etcdctl --endpoints=<ep> args...` with `ETCDCTL_API=3`.
    pub fn etcdctl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.etcdctl_stdin(args, b"")
    }

    /// Like [`Subject::etcdctl`], feeding `input` on stdin.
    pub fn etcdctl_stdin<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        // An explicit --endpoints replaces the subject's own.
        let own = (!args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--endpoints=")))
        .then(|| format!("--endpoints={}", self.endpoint()));
        let mut child = Command::new(ETCDCTL_BIN)
            .env("ETCDCTL_API", "3")
            .args(own)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input).expect("write etcdctl stdin");
        drop(stdin);
        child.wait_with_output().expect("etcdctl output")
    }

    /// A streaming POST on the client port; see [`http_stream`].
    pub fn http_stream(
        &self,
        path: &str,
        body: &str,
        done: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> (u16, String) {
        http_stream(("127.0.0.1", self.client_port), path, body, done, timeout)
    }

    /// A plain HTTP/1.1 request on the client port; returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_request(("127.0.0.1", self.client_port), method, path, body)
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.1 client (one request per connection), enough for
/// `/health`, `/version`, `/metrics` and the JSON gateway.
pub fn http_request(
    addr: (&str, u16),
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    http_request_with(addr, method, path, body, &[])
}

/// [`http_request`] with extra request headers.
pub fn http_request_with(
    addr: (&str, u16),
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect http");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        addr.1,
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write http");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read http");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        payload = dechunk(&payload);
    }
    (status, String::from_utf8_lossy(&payload).to_string())
}

/// A streaming HTTP/1.1 request (the gateway's `/v3/watch`): reads until
/// `done(body so far)` holds or `timeout` passes, then drops the connection.
pub fn http_stream(
    addr: (&str, u16),
    path: &str,
    body: &str,
    done: impl Fn(&str) -> bool,
    timeout: Duration,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect http");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        addr.1,
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write http");
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let parse = |raw: &[u8]| -> Option<(u16, String)> {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let payload = &raw[split + 4..];
        let payload = if chunked {
            dechunk(payload)
        } else {
            payload.to_vec()
        };
        Some((status, String::from_utf8_lossy(&payload).to_string()))
    };
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read http stream: {e}"),
        }
        if let Some((_, body)) = parse(&raw)
            && done(&body)
        {
            break;
        }
    }
    parse(&raw).unwrap_or((0, String::new()))
}

pub(crate) fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]).to_string();
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of a process's resident memory (heap and stacks, not
/// its executable's pages mapped from the page cache), in bytes.
pub fn rss_anon_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Polls `f` until it gives `Some`, failing the test after `limit`. For
/// conditions that become true eventually (replication, a cache
/// invalidated by a watch); never a measure of speed.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP health endpoint on loopback for service checks: every request
/// is answered 200 while `up` is true, 503 otherwise. Returns its port.
pub async fn health_endpoint(up: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let status = if up.load(std::sync::atomic::Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
            });
        }
    });
    port
}
