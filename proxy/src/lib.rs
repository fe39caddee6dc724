//! The proxy role: no raft and no data directory. Every etcd v3 service is
//! answered by forwarding to the cluster's client endpoints
//! ([`upstream::Upstream`], with failover and endpoint refresh from
//! `MemberList`). Identical watches share one upstream watch
//! (`watch.rs`), lease keep-alives for the same lease share one upstream
//! renewal (`lease.rs`), serializable reads may be answered from a bounded
//! cache kept coherent by a watch (`cache.rs`), and an optional key prefix
//! confines every client to a namespace (`namespace.rs`).
//!
//! [`Proxy`] implements the tonic service traits of
//! `cairn_proto::etcdserverpb`, `v3lockpb` and `v3electionpb`; the agent serves them on its listeners and
//! its local socket exactly as it serves a member's own services.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

mod auth;
mod cache;
mod cluster;
mod concurrency;
mod forward;
mod kv;
mod lease;
mod maintenance;
pub mod namespace;
pub use cairn_discovery::tls;
pub mod upstream;
mod watch;

pub type BoxStream<T> = cairn_proto::service::BoxStream<T>;

/// What the proxy needs to know; the agent fills it from its flags and
/// TOML config.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The cluster's client URLs (`http://host:port` or `host:port`).
    pub endpoints: Vec<String>,
    /// A key prefix every request is confined to (etcd grpc-proxy's
    /// `--namespace`); empty for none.
    pub namespace: Vec<u8>,
    /// Entries of the serializable-read cache; 0 turns it off.
    pub cache_entries: usize,
    /// Serializable reads are forwarded instead of answered from the cache
    /// when the cache's watch is further behind than this.
    pub max_stale: Option<Duration>,
    /// How long to wait for an endpoint to connect.
    pub dial_timeout: Duration,
    /// How long a forwarded unary request may take.
    pub request_timeout: Duration,
    /// How often the endpoint list is refreshed from `MemberList` (zero:
    /// never).
    pub refresh_interval: Duration,
    /// TLS for `https://` endpoints.
    pub tls: tls::ClientTls,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            endpoints: Vec::new(),
            namespace: Vec::new(),
            cache_entries: 4096,
            max_stale: None,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(30),
            tls: tls::ClientTls::default(),
        }
    }
}

/// The proxy: cheap to clone, one per agent.
#[derive(Clone)]
pub struct Proxy(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: ProxyConfig,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) ns: namespace::Namespace,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cache: cache::Cache,
    pub(crate) leases: lease::Leases,
    pub(crate) watches: watch::Watches,
    /// The cluster answered AuthStatus "disabled" within the last probe
    /// period: only then may anonymous reads be answered from the cache
    /// (with auth on, the members decide every read).
    pub(crate) auth_off: std::sync::atomic::AtomicBool,
}

/// Counters the agent exposes in `/metrics` and `Status` for the proxy
/// role. Each module updates its own.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client watchers open on the proxy (`watch.rs`).
    pub client_watchers: AtomicI64,
    /// Watches the proxy holds open upstream (`watch.rs`, and the cache's).
    pub upstream_watches: AtomicI64,
    /// Serializable reads answered from the cache / forwarded (`cache.rs`).
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Keep-alive requests from clients / renewals sent upstream (`lease.rs`).
    pub keepalives_client: AtomicU64,
    pub keepalives_upstream: AtomicU64,
    /// The highest revision seen in any upstream response header.
    pub upstream_revision: AtomicI64,
    /// The revision the cache is coherent up to (its watch's progress).
    pub cache_revision: AtomicI64,
    /// Milliseconds since the epoch when the cache was last known to be
    /// current (its watch caught up with `upstream_revision`); 0 if never.
    pub cache_current_at_ms: AtomicI64,
}

impl Proxy {
    /// Builds the proxy (inside a tokio runtime: it starts the cache's
    /// watch and the endpoint refresh). Fails only on malformed endpoints;
    /// unreachable endpoints are retried per request.
    pub fn new(config: ProxyConfig) -> anyhow::Result<Proxy> {
        let upstream =
            upstream::Upstream::new(&config.endpoints, config.dial_timeout, config.tls.clone())?;
        let ns = namespace::Namespace::new(config.namespace.clone());
        let stats = Arc::new(Stats::default());
        let cache = cache::Cache::new(&config, upstream.clone(), ns.clone(), stats.clone());
        let leases = lease::Leases::new(&config, upstream.clone(), stats.clone());
        let watches = watch::Watches::new(&config, upstream.clone(), ns.clone(), stats.clone());
        let refresh = config.refresh_interval;
        let inner = Arc::new(Inner {
            config,
            upstream,
            ns,
            stats,
            cache,
            leases,
            watches,
            auth_off: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(cluster::refresh_loop(Arc::downgrade(&inner), refresh));
        tokio::spawn(auth::probe_loop(Arc::downgrade(&inner)));
        Ok(Proxy(inner))
    }

    /// How far the proxy's cache is behind: revisions (the newest revision
    /// seen upstream minus the cache's) and milliseconds since the cache was
    /// last known to be current.
    pub fn behind(&self) -> (i64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.0.stats;
        let revs = (s.upstream_revision.load(Relaxed) - s.cache_revision.load(Relaxed)).max(0);
        let at = s.cache_current_at_ms.load(Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let ms = if at == 0 { now } else { now - at };
        (revs, ms.max(0) as u64)
    }

    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    pub fn upstream(&self) -> &upstream::Upstream {
        &self.0.upstream
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.0.config
    }
}

impl cairn_proto::service::StreamCalls for Proxy {
    fn watch_stream(
        &self,
        meta: tonic::metadata::MetadataMap,
        input: BoxStream<cairn_proto::etcdserverpb::WatchRequest>,
    ) -> BoxStream<cairn_proto::etcdserverpb::WatchResponse> {
        Proxy::watch_stream(self, crate::forward::token_of(&meta), input)
    }

    fn keep_alive_once(
        &self,
        meta: tonic::metadata::MetadataMap,
        req: cairn_proto::etcdserverpb::LeaseKeepAliveRequest,
    ) -> cairn_proto::service::BoxFuture<
        '_,
        Result<cairn_proto::etcdserverpb::LeaseKeepAliveResponse, tonic::Status>,
    > {
        match crate::forward::token_of(&meta) {
            Some(token) => self.keep_alive_once_as(token, req.id),
            None => Box::pin(self.0.leases.keep_alive(req.id)),
        }
    }

    fn status_now(
        &self,
        meta: tonic::metadata::MetadataMap,
    ) -> cairn_proto::service::BoxFuture<
        '_,
        Result<cairn_proto::etcdserverpb::StatusResponse, tonic::Status>,
    > {
        Box::pin(Proxy::status_now(self, crate::forward::token_of(&meta)))
    }
}
