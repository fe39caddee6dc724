//! Prometheus metrics, named as etcd names them where etcd has the metric,
//! so existing dashboards keep working.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub applied: Counter,
    pub db_size: Gauge,
    pub quota_bytes: Gauge,
    pub current_revision: Gauge,
    pub compact_revision: Gauge,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub watch_catchup_reads: Counter,
    pub range_total: Counter,
    pub leases_expired: Counter<u64, AtomicU64>,
    pub is_learner: Gauge,
    pub behind_revisions: Gauge,
    pub behind_ms: Gauge,
    pub compactions_postponed: Counter,
    pub wal_fsync: prometheus_client::metrics::histogram::Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        Metrics {
            wal_fsync: reg!(
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14)
                )
            ),
            compactions_postponed: reg!(
                "cairn_auto_compaction_postponed",
                "Times a due automatic compaction was put off because the member was busy (adaptive mode).",
                Counter::default()
            ),
            quota_bytes: reg!(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
                Gauge::default()
            ),
            is_learner: reg!(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                Gauge::default()
            ),
            behind_revisions: reg!(
                "cairn_behind_revisions",
                "Revisions this member's data is behind the leader's (0 on the leader).",
                Gauge::default()
            ),
            behind_ms: reg!(
                "cairn_behind_milliseconds",
                "Milliseconds since this member last held everything the leader had applied (0 on the leader).",
                Gauge::default()
            ),
            has_leader: reg!(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
                Gauge::default()
            ),
            is_leader: reg!(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                Gauge::default()
            ),
            proposals_committed: reg!(
                "etcd_server_proposals_committed",
                "The total number of consensus proposals committed.",
                Gauge::default()
            ),
            proposals_applied: reg!(
                "etcd_server_proposals_applied",
                "The total number of consensus proposals applied.",
                Gauge::default()
            ),
            proposals_pending: reg!(
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
                Gauge::default()
            ),
            proposals_failed: reg!(
                "etcd_server_proposals_failed",
                "The total number of failed proposals seen.",
                Counter::default()
            ),
            applied: reg!(
                "cairn_apply",
                "Commands applied to the MVCC store.",
                Counter::default()
            ),
            db_size: reg!(
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                Gauge::default()
            ),
            current_revision: reg!(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                Gauge::default()
            ),
            compact_revision: reg!(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                Gauge::default()
            ),
            watch_streams: reg!(
                "etcd_debugging_mvcc_watch_stream",
                "Total number of watch streams.",
                Gauge::default()
            ),
            watchers: reg!(
                "etcd_debugging_mvcc_watcher",
                "Total number of watchers.",
                Gauge::default()
            ),
            watch_catchup_reads: reg!(
                "cairn_watch_catchup_reads",
                "Times a lagging watch stream read events from the store instead of memory.",
                Counter::default()
            ),
            range_total: reg!(
                "etcd_mvcc_range",
                "Total number of ranges seen by this member.",
                Counter::default()
            ),
            leases_expired: reg!(
                "cairn_lease_expired",
                "Leases revoked because their TTL ran out.",
                Counter::default()
            ),
            registry: r,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
