//! The proxy role: no raft and no data directory. Every etcd v3 service is
//! answered by forwarding to the cluster's client endpoints
//! ([`upstream::Upstream`], with failover and endpoint refresh from
//! `MemberList`). Identical watches share one upstream watch
//! (`watch.rs`), lease keep-alives for the same lease share one upstream
//! renewal (`lease.rs`), serializable reads may be answered from a bounded
//! cache kept coherent by a watch (`cache.rs`), and an optional key prefix
//! confines every client to a namespace (`namespace.rs`).
//!
//! [`Proxy`] implements the five tonic service traits of
//! `cairn_proto::etcdserverpb`; the agent serves them on its listeners and
//! its local socket exactly as it serves a member's own services.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

mod cache;
mod cluster;
mod kv;
mod lease;
mod maintenance;
pub mod namespace;
pub mod upstream;
mod watch;

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
    /// How often the endpoint list is refreshed from `MemberList`.
    pub refresh_interval: Duration,
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
    /// Builds the proxy. Fails only on malformed endpoints; unreachable
    /// endpoints are retried per request.
    pub fn new(config: ProxyConfig) -> anyhow::Result<Proxy> {
        let upstream = upstream::Upstream::new(&config.endpoints, config.dial_timeout)?;
        let ns = namespace::Namespace::new(config.namespace.clone());
        let stats = Arc::new(Stats::default());
        let cache = cache::Cache::new(&config, upstream.clone(), ns.clone(), stats.clone());
        let leases = lease::Leases::new(&config, upstream.clone(), stats.clone());
        let watches = watch::Watches::new(&config, upstream.clone(), ns.clone(), stats.clone());
        Ok(Proxy(Arc::new(Inner {
            config,
            upstream,
            ns,
            stats,
            cache,
            leases,
            watches,
        })))
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
