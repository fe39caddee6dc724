//! The agent's configuration from etcd's flags (`--flag v`, `--flag=v`,
//! Go's `-flag v`), their `ETCD_*` variables, etcd's YAML/JSON
//! `--config-file`, or cairn's TOML `--config` (every key a flag name, for
//! the agent's own settings such as `role`). Precedence: TOML < `ETCD_*` <
//! flags; `--config-file` replaces everything, as etcd's does. Found before
//! any port is bound; every error names the setting and the value.
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<ListenUrl>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<ListenUrl>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: u64,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: u64,
    /// `--disk-reserve-bytes` (cairn): free space on the data directory's
    /// filesystem below which writes are refused with NOSPACE.
    pub disk_reserve_bytes: u64,
    /// `--initial-corrupt-check` (etcd 3.4/3.5: `--experimental-initial-corrupt-check`).
    pub initial_corrupt_check: bool,
    /// `--corrupt-check-time` (etcd 3.4/3.5: `--experimental-corrupt-check-time`);
    /// `None`: no periodic check (etcd's default 0s).
    pub corrupt_check_time: Option<Duration>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub watch_progress_notify_interval: Duration,
    pub socket: Option<PathBuf>,
    /// cairn's TOML `--config` file, whose tables (see [`SECTIONS`]) the
    /// render, DNS and service subsystems read themselves.
    pub config_path: Option<PathBuf>,
    pub log_level: String,
    /// `--log-format json`: one JSON object per log line.
    pub log_json: bool,
    pub enable_v2: bool,
    pub peer_tls: crate::peer::tls::PeerTls,
    /// TLS for `https://` client URLs.
    pub client_tls: crate::serve::tls::ClientTls,
    pub strict_reconfig_check: bool,
    /// `--experimental-lease-checkpoint-interval` unless
    /// `--experimental-enable-lease-checkpoint=false`.
    pub lease_checkpoint_interval: Option<Duration>,
    /// What this agent is: a voting member, a learner read replica or a
    /// stateless proxy (`--role`, TOML `role`).
    pub role: Role,
    /// The cluster's client URLs (`--endpoints`): a learner adds itself
    /// through them, a proxy forwards to them.
    pub endpoints: Vec<String>,
    /// TLS to `https://` endpoints (etcd grpc-proxy's `--cacert`, `--cert`,
    /// `--key`), read when the config is.
    pub endpoints_tls: cairn_discovery::tls::ClientTls,
    /// `--max-learners` (etcd 3.6: `--experimental-max-learners`, default 1;
    /// cairn's default 16).
    pub max_learners: usize,
    /// Permission bits of the local socket (`--socket-mode`, octal).
    pub socket_mode: u32,
    /// Group owning the local socket (`--socket-group`), if set.
    pub socket_group: Option<String>,
    /// A learner, follower or proxy further behind the leader than this
    /// answers serializable reads as linearizable ones (`--max-stale`).
    pub max_stale: Option<Duration>,
    /// Proxy: key prefix every client is confined to (`--namespace`).
    pub namespace: String,
    /// Proxy: entries of the serializable-read cache (0: off).
    pub proxy_cache_entries: usize,
    /// Proxy: how often the endpoint list is refreshed from MemberList
    /// (etcd grpc-proxy's `--endpoints-auto-sync-interval`; 0: never).
    pub endpoints_auto_sync_interval: Duration,
    /// `--auth-token`: `simple` or `jwt,pub-key=...,priv-key=...,sign-method=...`.
    pub auth_token: String,
    /// `--auth-token-ttl` (seconds): a simple token's life after its last use.
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost` for password hashes (4-31, default 10).
    pub bcrypt_cost: u32,
    /// `--auto-compaction-mode`/`--auto-compaction-retention` (None: off).
    pub auto_compaction: Option<crate::compactor::AutoCompaction>,
    /// `--metrics-prefix-depth` (0: off) and `--metrics-prefix-max`.
    pub metrics_prefix_depth: usize,
    pub metrics_prefix_max: usize,
    /// `--tenant-rate-limit` and `--tenant-quota-bytes`.
    pub tenant_rates: Vec<crate::tenants::RateRule>,
    pub tenant_quotas: Vec<crate::tenants::QuotaRule>,
    /// Bootstrap by discovery (`--discovery <url>`, or `--discovery-token`
    /// with `--discovery-endpoints`) instead of `--initial-cluster`.
    pub discovery: Option<cairn_discovery::Method>,
    /// `--discovery-fallback exit|proxy|learner` (etcd's default: proxy).
    pub discovery_fallback: cairn_discovery::Fallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
    Proxy,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Proxy => "proxy",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenUrl {
    pub addr: ListenAddr,
    pub original: String,
    /// An `https://` URL: served with `--cert-file`/`--key-file`.
    pub tls: bool,
}

#[derive(Debug, Clone)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Version,
    Help(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("flag provided but not defined: {0}")]
    UnknownFlag(String),
    #[error("flag needs an argument: {0}")]
    MissingValue(String),
    #[error("invalid value {value:?} for {setting}: {why}")]
    Invalid {
        setting: String,
        value: String,
        why: String,
    },
    #[error("config file {path}: {why}")]
    File { path: String, why: String },
}

/// Flags taking a value, by their etcd name.
const VALUE_FLAGS: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "max-request-bytes",
    "max-txn-ops",
    "quota-backend-bytes",
    "disk-reserve-bytes",
    "corrupt-check-time",
    "experimental-corrupt-check-time",
    "heartbeat-interval",
    "election-timeout",
    "snapshot-count",
    "watch-progress-notify-interval",
    "experimental-watch-progress-notify-interval",
    "socket",
    "log-level",
    "config-file",
    "logger",
    "log-outputs",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-crl-file",
    "tls-min-version",
    "tls-max-version",
    "cipher-suites",
    "experimental-lease-checkpoint-interval",
    "config",
    "role",
    "endpoints",
    "cacert",
    "cert",
    "key",
    "max-learners",
    "experimental-max-learners",
    "socket-mode",
    "socket-group",
    "max-stale",
    "namespace",
    "proxy-cache-entries",
    "endpoints-auto-sync-interval",
    "auth-token",
    "auth-token-ttl",
    "log-format",
    "bcrypt-cost",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-compaction-interval",
    "auto-compaction-busy-rate",
    "auto-compaction-max-delay",
    "metrics-prefix-depth",
    "metrics-prefix-max",
    "tenant-rate-limit",
    "tenant-quota-bytes",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-token",
    "discovery-endpoints",
    "discovery-cacert",
    "discovery-cert",
    "discovery-key",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-srv-nameserver",
];
/// Boolean flags.
const BOOL_FLAGS: &[&str] = &[
    "enable-v2",
    "enable-pprof",
    "no-socket",
    "peer-client-cert-auth",
    "peer-auto-tls",
    "client-cert-auth",
    "auto-tls",
    "strict-reconfig-check",
    "initial-corrupt-check",
    "experimental-initial-corrupt-check",
    "experimental-enable-lease-checkpoint",
];

impl Config {
    pub fn from_args_env<I, T>(
        args: I,
        env: &HashMap<String, String>,
    ) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).skip(1).collect();
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            let Some(body) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
                return Err(ConfigError::UnknownFlag(a.clone()));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            match name.as_str() {
                "h" | "help" => return Ok(Command::Help(help())),
                "version" => return Ok(Command::Version),
                n if BOOL_FLAGS.contains(&n) => {
                    flags.push((name, inline.unwrap_or_else(|| "true".into())))
                }
                n if VALUE_FLAGS.contains(&n) => {
                    let v = match inline {
                        Some(v) => v,
                        None => {
                            let v = args
                                .get(i)
                                .cloned()
                                .ok_or_else(|| ConfigError::MissingValue(format!("-{name}")))?;
                            i += 1;
                            v
                        }
                    };
                    flags.push((name, v));
                }
                _ => return Err(ConfigError::UnknownFlag(format!("-{name}"))),
            }
        }
        let mut settings: HashMap<String, String> = HashMap::new();
        let toml_path = flags
            .iter()
            .rev()
            .find(|(k, _)| k == "config")
            .map(|(_, v)| v.clone())
            .or_else(|| env.get("CAIRN_CONFIG").cloned());
        if let Some(path) = &toml_path {
            settings = read_toml_config(path)?;
        }
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix("ETCD_") {
                let name = rest.to_ascii_lowercase().replace('_', "-");
                if VALUE_FLAGS.contains(&name.as_str()) || BOOL_FLAGS.contains(&name.as_str()) {
                    settings.insert(name, v.clone());
                } else {
                    eprintln!("cairn: warning: unrecognized environment variable {k}={v}");
                }
            }
        }
        for (k, v) in flags {
            settings.insert(k, v);
        }
        if let Some(path) = settings.get("config-file").cloned() {
            settings = read_config_file(&path)?;
        }
        let mut cfg = Self::from_settings(&settings)?;
        if !settings.contains_key("config-file") {
            cfg.config_path = toml_path.map(PathBuf::from);
        }
        Ok(Command::Run(Box::new(cfg)))
    }

    fn from_settings(s: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| s.get(k).map(String::as_str);
        let name = get("name").unwrap_or("default").to_string();
        let adv_peer = list(get("initial-advertise-peer-urls").unwrap_or("http://localhost:2380"));
        let initial_cluster = match get("initial-cluster") {
            Some(v) => cluster(v)?,
            None => adv_peer.iter().map(|u| (name.clone(), u.clone())).collect(),
        };
        let data_dir = PathBuf::from(
            get("data-dir")
                .map(str::to_string)
                .unwrap_or(format!("{name}.cairn")),
        );
        // Default: `cairn.sock` in the runtime directory systemd gives the
        // service (`RuntimeDirectory=cairn` sets $RUNTIME_DIRECTORY), else
        // in `/run/cairn` when that directory exists and is ours to write,
        // else in the data directory. `--socket ""` or `--no-socket` turns
        // it off.
        let socket = match (get("no-socket"), get("socket")) {
            (Some("true"), _) | (_, Some("")) => None,
            (_, Some(p)) => Some(PathBuf::from(p)),
            (_, None) => Some(default_socket(&data_dir)),
        };
        let role = match get("role").unwrap_or("voter") {
            "voter" => Role::Voter,
            "learner" => Role::Learner,
            "proxy" => Role::Proxy,
            v => return Err(invalid("--role", v, "must be voter, learner or proxy")),
        };
        let duration = |k: &str| -> Result<Option<Duration>, ConfigError> {
            match get(k) {
                None | Some("") => Ok(None),
                Some(v) => parse_duration(v).map(Some).ok_or_else(|| {
                    invalid(&format!("--{k}"), v, "not a duration like 5s or 500ms")
                }),
            }
        };
        Ok(Config {
            listen_client_urls: listen_urls(
                "listen-client-urls",
                get("listen-client-urls").unwrap_or("http://localhost:2379"),
            )?,
            advertise_client_urls: list(
                get("advertise-client-urls").unwrap_or("http://localhost:2379"),
            ),
            listen_peer_urls: listen_urls(
                "listen-peer-urls",
                get("listen-peer-urls").unwrap_or("http://localhost:2380"),
            )?,
            initial_advertise_peer_urls: adv_peer,
            initial_cluster,
            initial_cluster_state: match get("initial-cluster-state").unwrap_or("new") {
                "new" => ClusterState::New,
                "existing" => ClusterState::Existing,
                v => {
                    return Err(invalid(
                        "--initial-cluster-state",
                        v,
                        "must be new or existing",
                    ));
                }
            },
            initial_cluster_token: get("initial-cluster-token")
                .unwrap_or("etcd-cluster")
                .to_string(),
            max_request_bytes: num(s, "max-request-bytes", 1_572_864)?,
            max_txn_ops: num(s, "max-txn-ops", 128)? as usize,
            quota_backend_bytes: match num(s, "quota-backend-bytes", 0)? {
                0 => 2 << 30,
                q => q,
            },
            disk_reserve_bytes: num(
                s,
                "disk-reserve-bytes",
                crate::alarms::DEFAULT_DISK_RESERVE_BYTES,
            )?,
            initial_corrupt_check: boolean(s, "initial-corrupt-check", false)?
                || boolean(s, "experimental-initial-corrupt-check", false)?,
            corrupt_check_time: match duration("corrupt-check-time")? {
                Some(d) => Some(d),
                None => duration("experimental-corrupt-check-time")?,
            }
            .filter(|d| !d.is_zero()),
            heartbeat_interval_ms: num(s, "heartbeat-interval", 100)?,
            election_timeout_ms: num(s, "election-timeout", 1000)?,
            snapshot_count: num(s, "snapshot-count", 10_000)?,
            watch_progress_notify_interval: match get("watch-progress-notify-interval")
                .or(get("experimental-watch-progress-notify-interval"))
            {
                Some(v) => parse_duration(v).ok_or_else(|| {
                    invalid(
                        "--watch-progress-notify-interval",
                        v,
                        "not a duration like 10m or 500ms",
                    )
                })?,
                None => Duration::from_secs(600),
            },
            socket,
            config_path: None,
            log_level: get("log-level").unwrap_or("info").to_string(),
            enable_v2: boolean(s, "enable-v2", true)?,
            peer_tls: crate::peer::tls::PeerTls {
                cert_file: get("peer-cert-file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                key_file: get("peer-key-file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                trusted_ca_file: get("peer-trusted-ca-file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                client_cert_auth: boolean(s, "peer-client-cert-auth", false)?,
                auto_tls: boolean(s, "peer-auto-tls", false)?,
            },
            client_tls: crate::serve::tls::ClientTls {
                cert_file: get("cert-file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                key_file: get("key-file").filter(|v| !v.is_empty()).map(PathBuf::from),
                trusted_ca_file: get("trusted-ca-file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                client_cert_auth: boolean(s, "client-cert-auth", false)?,
                crl_file: get("client-crl-file")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                auto_tls: boolean(s, "auto-tls", false)?,
                min_version: get("tls-min-version")
                    .filter(|v| !v.is_empty())
                    .map(str::to_string),
                max_version: get("tls-max-version")
                    .filter(|v| !v.is_empty())
                    .map(str::to_string),
                cipher_suites: list(get("cipher-suites").unwrap_or("")),
            },
            strict_reconfig_check: boolean(s, "strict-reconfig-check", true)?,
            // On by default (etcd: off): a leader change must not give
            // leases their full TTL back.
            lease_checkpoint_interval: match boolean(
                s,
                "experimental-enable-lease-checkpoint",
                true,
            )? {
                false => None,
                true => Some(match get("experimental-lease-checkpoint-interval") {
                    Some(v) => parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                        invalid(
                            "--experimental-lease-checkpoint-interval",
                            v,
                            "not a positive duration like 5m or 10s",
                        )
                    })?,
                    None => Duration::from_secs(300),
                }),
            },
            role,
            endpoints: list(get("endpoints").unwrap_or("")),
            endpoints_tls: client_tls(s, "cacert", "cert", "key")?,
            max_learners: match get("max-learners") {
                Some(_) => num(s, "max-learners", 16)?,
                None => num(s, "experimental-max-learners", 16)?,
            } as usize,
            socket_mode: match get("socket-mode") {
                None => 0o660,
                Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| invalid("--socket-mode", v, "not an octal mode like 0660"))?,
            },
            socket_group: get("socket-group")
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            max_stale: duration("max-stale")?,
            namespace: get("namespace").unwrap_or("").to_string(),
            proxy_cache_entries: num(s, "proxy-cache-entries", 4096)? as usize,
            endpoints_auto_sync_interval: match get("endpoints-auto-sync-interval") {
                None => Duration::from_secs(30),
                Some("0") => Duration::ZERO,
                Some(v) => parse_duration(v).ok_or_else(|| {
                    invalid(
                        "--endpoints-auto-sync-interval",
                        v,
                        "not a duration like 30s",
                    )
                })?,
            },
            log_json: match get("log-format").unwrap_or("text") {
                "json" => true,
                "text" | "console" => false,
                v => return Err(invalid("--log-format", v, "must be text (console) or json")),
            },
            auth_token: {
                let spec = get("auth-token").unwrap_or("simple");
                crate::auth::parse_token_kind(spec)
                    .map_err(|e| invalid("--auth-token", spec, &e))?;
                spec.to_string()
            },
            auth_token_ttl: Duration::from_secs(num(s, "auth-token-ttl", 300)?),
            bcrypt_cost: match num(s, "bcrypt-cost", crate::auth::DEFAULT_BCRYPT_COST as u64)? {
                c @ 4..=31 => c as u32,
                c => {
                    return Err(invalid(
                        "--bcrypt-cost",
                        &c.to_string(),
                        "must be between 4 and 31",
                    ));
                }
            },
            tenant_rates: {
                let v = get("tenant-rate-limit").unwrap_or("");
                crate::tenants::parse_rates(v).map_err(|e| invalid("--tenant-rate-limit", v, &e))?
            },
            tenant_quotas: {
                let v = get("tenant-quota-bytes").unwrap_or("");
                crate::tenants::parse_quotas(v)
                    .map_err(|e| invalid("--tenant-quota-bytes", v, &e))?
            },
            metrics_prefix_depth: num(s, "metrics-prefix-depth", 1)? as usize,
            metrics_prefix_max: num(s, "metrics-prefix-max", 256)? as usize,
            auto_compaction: {
                let mode = get("auto-compaction-mode").unwrap_or("periodic");
                let retention = get("auto-compaction-retention").unwrap_or("0");
                let busy = get("auto-compaction-busy-rate").unwrap_or("1000");
                let busy_rate: f64 =
                    busy.parse()
                        .ok()
                        .filter(|r: &f64| *r >= 0.0)
                        .ok_or_else(|| {
                            invalid(
                                "--auto-compaction-busy-rate",
                                busy,
                                "not a number of requests/s",
                            )
                        })?;
                let max_delay =
                    duration("auto-compaction-max-delay")?.unwrap_or(Duration::from_secs(600));
                crate::compactor::AutoCompaction::parse(
                    mode,
                    retention,
                    duration("auto-compaction-interval")?,
                    busy_rate,
                    max_delay,
                )
                .map_err(|e| {
                    invalid(
                        "--auto-compaction-mode/--auto-compaction-retention",
                        &format!("{mode} {retention}"),
                        &e,
                    )
                })?
            },
            discovery: discovery(s)?,
            discovery_fallback: {
                let v = get("discovery-fallback").unwrap_or("proxy");
                v.parse()
                    .map_err(|why: String| invalid("--discovery-fallback", v, &why))?
            },
            data_dir,
            name,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.discovery.is_some() {
            // The cluster and the endpoints come from the discovery service.
            return self.validate_common();
        }
        if self.role != Role::Voter && self.endpoints.is_empty() {
            return Err(invalid(
                "--endpoints",
                "",
                &format!(
                    "a {} needs the cluster's client URLs (--endpoints http://host:2379,...)",
                    self.role.as_str()
                ),
            ));
        }
        for e in &self.endpoints {
            let u = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            if url::Url::parse(&u)
                .map(|u| u.port().is_none())
                .unwrap_or(true)
            {
                return Err(invalid(
                    "--endpoints",
                    e,
                    "expected host:port or http://host:port",
                ));
            }
        }
        if self.role == Role::Learner && self.initial_cluster_state == ClusterState::Existing {
            // A learner that names the cluster itself joins as before.
        } else if self.role != Role::Voter {
            // Learners add themselves through --endpoints; a proxy has no
            // raft membership: --initial-cluster does not apply.
            return self.validate_common();
        }
        if !self.initial_cluster.iter().any(|(n, _)| n == &self.name) {
            return Err(invalid(
                "--initial-cluster",
                &format!("{:?}", self.initial_cluster),
                &format!(
                    "couldn't find local name {:?} in the initial cluster configuration",
                    self.name
                ),
            ));
        }
        let mine: Vec<&String> = self
            .initial_cluster
            .iter()
            .filter(|(n, _)| n == &self.name)
            .map(|(_, u)| u)
            .collect();
        let mut a: Vec<&String> = mine.clone();
        let mut b: Vec<&String> = self.initial_advertise_peer_urls.iter().collect();
        a.sort();
        b.sort();
        if a != b {
            return Err(invalid(
                "--initial-cluster",
                &format!(
                    "{}={}",
                    self.name,
                    mine.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                &format!(
                    "does not match --initial-advertise-peer-urls={}",
                    self.initial_advertise_peer_urls.join(",")
                ),
            ));
        }
        self.validate_common()
    }

    fn validate_common(&self) -> Result<(), ConfigError> {
        if let Some(u) = self.listen_client_urls.iter().find(|u| u.tls)
            && !self.client_tls.has_certificate()
        {
            return Err(invalid(
                "--listen-client-urls",
                &u.original,
                "an https URL needs --cert-file and --key-file (or --auto-tls)",
            ));
        }
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms {
            return Err(invalid(
                "--election-timeout",
                &self.election_timeout_ms.to_string(),
                &format!(
                    "should be at least as 5 times as --heartbeat-interval[{}ms]",
                    self.heartbeat_interval_ms
                ),
            ));
        }
        if self.election_timeout_ms > 50_000 {
            return Err(invalid(
                "--election-timeout",
                &self.election_timeout_ms.to_string(),
                "is too long, must be at most 50000ms",
            ));
        }
        for (flag, v) in [
            ("--max-request-bytes", self.max_request_bytes),
            ("--max-txn-ops", self.max_txn_ops as u64),
            ("--snapshot-count", self.snapshot_count),
        ] {
            if v == 0 {
                return Err(invalid(flag, "0", "must be positive"));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("--data-dir", "", "must not be empty"));
        }
        Ok(())
    }
}

fn invalid(setting: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// TLS as a client of a cluster from three file flags (`--cacert`,
/// `--cert`, `--key`, or `--discovery-cacert`, ...), read now so that a
/// missing file is named at start.
fn client_tls(
    s: &HashMap<String, String>,
    ca: &str,
    cert: &str,
    key: &str,
) -> Result<cairn_discovery::tls::ClientTls, ConfigError> {
    let get = |k: &str| s.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let file = |f: &str| -> Result<Option<Vec<u8>>, ConfigError> {
        match get(f) {
            None => Ok(None),
            Some(p) => std::fs::read(p)
                .map(Some)
                .map_err(|e| invalid(&format!("--{f}"), p, &e.to_string())),
        }
    };
    let identity = match (file(cert)?, file(key)?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                &format!("--{cert}"),
                get(cert).unwrap_or(""),
                &format!("needs --{key}"),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                &format!("--{key}"),
                get(key).unwrap_or(""),
                &format!("needs --{cert}"),
            ));
        }
    };
    Ok(cairn_discovery::tls::ClientTls {
        ca_pem: file(ca)?,
        identity,
    })
}

fn boolean(s: &HashMap<String, String>, k: &str, default: bool) -> Result<bool, ConfigError> {
    match s.get(k).map(String::as_str) {
        None => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(invalid(&format!("--{k}"), v, "must be true or false")),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn num(s: &HashMap<String, String>, k: &str, default: u64) -> Result<u64, ConfigError> {
    match s.get(k) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| invalid(&format!("--{k}"), v, "not a non-negative integer")),
    }
}

/// `--initial-cluster` as `name=url,...` (also for `cairn snapshot restore`).
pub fn parse_initial_cluster(v: &str) -> Result<Vec<(String, String)>, ConfigError> {
    cluster(v)
}

fn cluster(v: &str) -> Result<Vec<(String, String)>, ConfigError> {
    list(v)
        .into_iter()
        .map(|m| match m.split_once('=') {
            Some((n, u)) if url::Url::parse(u).is_ok() => Ok((n.to_string(), u.to_string())),
            _ => Err(invalid("--initial-cluster", &m, "expected name=url")),
        })
        .collect()
}

fn listen_urls(flag: &str, v: &str) -> Result<Vec<ListenUrl>, ConfigError> {
    list(v)
        .into_iter()
        .map(|original| {
            let bad = |why: &str| invalid(&format!("--{flag}"), &original, why);
            let u = url::Url::parse(&original).map_err(|e| bad(&e.to_string()))?;
            let tls = u.scheme() == "https";
            let addr = match u.scheme() {
                "unix" | "unixs" => ListenAddr::Unix(PathBuf::from(format!(
                    "{}{}",
                    u.host_str().unwrap_or(""),
                    u.path()
                ))),
                "http" | "https" => {
                    let host = match u.host_str() {
                        Some("localhost") => "127.0.0.1",
                        Some(h) => h.trim_start_matches('[').trim_end_matches(']'),
                        None => return Err(bad("missing host")),
                    };
                    if host.parse::<std::net::IpAddr>().is_err() {
                        return Err(bad("listen host must be an IP address or localhost"));
                    }
                    let port = u.port().ok_or_else(|| bad("missing port"))?;
                    let addr = (host, port)
                        .to_socket_addrs()
                        .map_err(|e| bad(&e.to_string()))?
                        .next()
                        .ok_or_else(|| bad("no address"))?;
                    ListenAddr::Tcp(addr)
                }
                s => return Err(bad(&format!("unsupported scheme {s:?}"))),
            };
            Ok(ListenUrl {
                addr,
                original,
                tls,
            })
        })
        .collect()
}

/// Go's duration syntax: "10m", "500ms", "1h30m", "2s".
pub fn parse_duration(v: &str) -> Option<Duration> {
    cairn_view::parse_duration(v)
}

fn default_socket(data_dir: &std::path::Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several directories, separated by ':'.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        if !first.is_empty() {
            return PathBuf::from(first).join("cairn.sock");
        }
    }
    let run = std::path::Path::new("/run/cairn");
    let writable = std::fs::metadata(run).is_ok_and(|m| m.is_dir()) && tempfile_probe(run);
    if writable {
        return run.join("cairn.sock");
    }
    data_dir.join("cairn.sock")
}

/// Whether this process may create files in `dir`.
fn tempfile_probe(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".cairn-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// Tables of the TOML `--config` that are not flags: each belongs to the
/// subsystem that parses it (`[[template]]` and `[render]`: rendering,
/// `[dns]`: the DNS server, `[[service]]`: service registration).
pub const SECTIONS: &[&str] = &["template", "render", "dns", "service"];

/// cairn's own TOML config (`--config`, or `$CAIRN_CONFIG`): each key is a
/// flag's name (`max-stale` or `max_stale`); strings, numbers, booleans,
/// and arrays (joined with commas, for URL lists).
fn read_toml_config(path: &str) -> Result<HashMap<String, String>, ConfigError> {
    let err = |why: String| ConfigError::File {
        path: path.into(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let scalar = |k: &str, v: &toml::Value| -> Result<String, ConfigError> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(err(format!(
                    "key {k:?}: expected a string, number or boolean, found {}",
                    other.type_str()
                )));
            }
        })
    };
    let mut out = HashMap::new();
    for (k, v) in &doc {
        if SECTIONS.contains(&k.as_str()) {
            continue;
        }
        let name = k.replace('_', "-");
        if name == "config" || name == "config-file" {
            return Err(err(format!("key {k:?} cannot be set from a config file")));
        }
        if !VALUE_FLAGS.contains(&name.as_str()) && !BOOL_FLAGS.contains(&name.as_str()) {
            return Err(err(format!("unknown key {k:?}")));
        }
        let s = match v {
            toml::Value::Array(items) => items
                .iter()
                .map(|i| scalar(k, i))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            v => scalar(k, v)?,
        };
        out.insert(name, s);
    }
    Ok(out)
}

fn read_config_file(path: &str) -> Result<HashMap<String, String>, ConfigError> {
    let err = |why: String| ConfigError::File {
        path: path.into(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let doc: HashMap<String, serde_norway::Value> =
        serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut out = HashMap::new();
    for (k, v) in doc {
        if !VALUE_FLAGS.contains(&k.as_str()) && !BOOL_FLAGS.contains(&k.as_str()) {
            return Err(err(format!("unknown key {k:?}")));
        }
        let s = match v {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Null => continue,
            other => return Err(err(format!("key {k:?}: unsupported value {other:?}"))),
        };
        out.insert(k, s);
    }
    Ok(out)
}

/// `--discovery` or `--discovery-token`: at most one bootstrap.
fn discovery(s: &HashMap<String, String>) -> Result<Option<cairn_discovery::Method>, ConfigError> {
    let get = |k: &str| s.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(p) = get("discovery-proxy") {
        return Err(invalid(
            "--discovery-proxy",
            p,
            "an HTTP proxy for the discovery service is not supported",
        ));
    }
    let given = ["discovery", "discovery-token", "discovery-srv"]
        .iter()
        .filter(|k| get(k).is_some())
        .count();
    if given > 1 {
        return Err(invalid(
            "--discovery",
            get("discovery").unwrap_or(""),
            "choose one of --discovery (v2), --discovery-token (v3) or --discovery-srv",
        ));
    }
    let method = match (get("discovery"), get("discovery-token")) {
        (Some(u), _) => cairn_discovery::Method::Url(u.to_string()),
        (None, None) if get("discovery-srv").is_some() => {
            let nameserver = match get("discovery-srv-nameserver") {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    invalid(
                        "--discovery-srv-nameserver",
                        v,
                        "expected ip:port, like 127.0.0.1:53",
                    )
                })?),
            };
            cairn_discovery::Method::Srv(cairn_discovery::srv::Srv {
                domain: get("discovery-srv").unwrap_or("").to_string(),
                service_name: get("discovery-srv-name").unwrap_or("").to_string(),
                nameserver,
            })
        }
        (None, Some(t)) => {
            let endpoints = list(get("discovery-endpoints").unwrap_or(""));
            if endpoints.is_empty() {
                return Err(invalid(
                    "--discovery-endpoints",
                    "",
                    "--discovery-token needs the discovery cluster's client URLs",
                ));
            }
            cairn_discovery::Method::V3 {
                token: t.to_string(),
                endpoints,
                tls: client_tls(s, "discovery-cacert", "discovery-cert", "discovery-key")?,
            }
        }
        (None, None) => return Ok(None),
    };
    if s.contains_key("initial-cluster") {
        return Err(invalid(
            "--initial-cluster",
            s.get("initial-cluster").map(String::as_str).unwrap_or(""),
            "multiple discovery or bootstrap flags are set: choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"",
        ));
    }
    Ok(Some(method))
}

fn help() -> String {
    let mut h =
        String::from("usage: cairn [flags]\n\netcd-compatible flags (also as ETCD_* variables):\n");
    for f in VALUE_FLAGS {
        h.push_str(&format!("  --{f} <value>\n"));
    }
    for f in BOOL_FLAGS {
        h.push_str(&format!("  --{f}[=true|false]\n"));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    #[test]
    fn etcd_doc_command_and_errors() {
        let env = HashMap::new();
        let a = "cairn --name my-etcd-1 --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster my-etcd-1=http://127.0.0.1:2380 --initial-cluster-token tkn --initial-cluster-state new";
        let Command::Run(c) = Config::from_args_env(a.split(' '), &env).unwrap() else {
            panic!()
        };
        c.validate().unwrap();
        assert_eq!(c.name, "my-etcd-1");
        let Command::Run(d) =
            Config::from_args_env(["cairn", "-name=x", "-data-dir", "d"], &env).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.data_dir.to_str(), Some("d"));
        d.validate().unwrap(); // etcd derives the initial cluster from --name
        assert_eq!(d.initial_cluster[0].0, "x");
        let Command::Run(e) = Config::from_args_env(["cairn"], &env).unwrap() else {
            panic!()
        };
        e.validate().unwrap();
        assert_eq!(e.data_dir.to_str(), Some("default.cairn"));
        assert_eq!(
            e.socket.as_deref().and_then(|p| p.to_str()),
            Some("default.cairn/cairn.sock")
        );
        let Command::Run(f) = Config::from_args_env(["cairn", "--socket="], &env).unwrap() else {
            panic!()
        };
        assert!(f.socket.is_none());
        assert!(
            Config::from_args_env(["cairn", "--bogus"], &env)
                .unwrap_err()
                .to_string()
                .contains("-bogus")
        );
        assert!(
            Config::from_args_env(["cairn", "--listen-client-urls", "not-a-url"], &env).is_err()
        );
    }
}
