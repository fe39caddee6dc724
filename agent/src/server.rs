//! The node: storage, the raft driver, the MVCC store and the runtime pieces
//! around them (watch hub, lessor, compactor). The gRPC services, the JSON
//! gateway and the HTTP endpoints all call the operations defined here, so
//! every protocol behaves the same (design invariant 4).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_mvcc::auth::{Access, AuthInfo};
use cairn_mvcc::lease::Lessor;
use cairn_mvcc::{Applied, Mvcc};
use cairn_proto::cairnpb::{Command, Member, PeerRequest, command::Op, peer_request};
use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_raft::{ConfChange, ConfChangeType, ConfState, Node, NodeConfig, Snapshot, StateMachine};
use cairn_store::{Db, FjallBackend};
use prost::Message;
use tokio::sync::watch;
use tonic::Status;

use crate::api::status;
use crate::identity::{self, Identity};
use crate::limits;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::watch_hub::WatchHub;

/// Settings the running node needs (a subset of the config, after validation).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub data_dir: std::path::PathBuf,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub cluster_token: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
    pub progress_notify_interval: Duration,
    /// (name, peer URL) pairs of `--initial-cluster`.
    pub initial_cluster: Vec<(String, String)>,
    /// `--initial-cluster-state existing`: join a running cluster.
    pub join_existing: bool,
    pub strict_reconfig_check: bool,
    /// How often the leader checkpoints leases' remaining TTLs (None: never).
    pub lease_checkpoint_interval: Option<Duration>,
    /// Serializable reads become linearizable when this member is further
    /// behind the leader than this (`--max-stale`).
    pub max_stale: Option<Duration>,
    /// `--max-learners`: MemberAdd refuses more learners than this.
    pub max_learners: usize,
    /// A learner that has no data yet adds itself to the cluster through
    /// these client URLs (`--role learner --endpoints ...`).
    pub add_self_via: Vec<String>,
    /// TLS to `https://` URLs of `add_self_via` (`--cacert`, `--cert`, `--key`).
    pub add_self_tls: cairn_proxy::tls::ClientTls,
    /// `--auth-token` (validated by the config).
    pub auth_token: String,
    /// `--auth-token-ttl`.
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// `--quota-backend-bytes` (0: etcd's default, 2 GiB).
    pub quota_bytes: u64,
    /// `--disk-reserve-bytes`.
    pub disk_reserve_bytes: u64,
    /// `--metrics-prefix-depth` (0: off) and `--metrics-prefix-max`.
    pub prefix_depth: usize,
    pub prefix_max: usize,
    /// `--tenant-rate-limit`, `--tenant-quota-bytes`.
    pub tenant_rates: Vec<crate::tenants::RateRule>,
    pub tenant_quotas: Vec<crate::tenants::QuotaRule>,
    /// `--enable-v2`: serve the v2 keys API (emulated on the v3 store).
    pub enable_v2: bool,
    /// Bootstrap by discovery when the data directory is new.
    pub discovery: Option<cairn_discovery::Bootstrap>,
}

impl NodeSettings {
    /// What `cairn snapshot restore` needs to make a new cluster's first
    /// member records and log entries (the rest is not used).
    pub fn for_restore(
        name: &str,
        data_dir: &std::path::Path,
        peer_urls: Vec<String>,
        cluster_token: String,
        initial_cluster: Vec<(String, String)>,
    ) -> NodeSettings {
        NodeSettings {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            peer_urls,
            client_urls: Vec::new(),
            cluster_token,
            max_request_bytes: 0,
            max_txn_ops: 0,
            heartbeat_ms: 100,
            election_ms: 1000,
            snapshot_count: 0,
            progress_notify_interval: Duration::ZERO,
            initial_cluster,
            join_existing: false,
            strict_reconfig_check: true,
            lease_checkpoint_interval: None,
            max_stale: None,
            max_learners: 0,
            add_self_via: Vec::new(),
            add_self_tls: Default::default(),
            auth_token: "simple".into(),
            auth_token_ttl: Duration::ZERO,
            bcrypt_cost: crate::auth::DEFAULT_BCRYPT_COST,
            quota_bytes: 0,
            disk_reserve_bytes: 0,
            prefix_depth: 0,
            prefix_max: 0,
            tenant_rates: Vec::new(),
            tenant_quotas: Vec::new(),
            enable_v2: false,
            discovery: None,
        }
    }
}

/// The etcd API version cairn speaks; reported by Status and /version.
pub const ETCD_VERSION: &str = "3.6.0";

pub struct Server {
    pub settings: NodeSettings,
    pub identity: Identity,
    pub db: Db,
    pub mvcc: Arc<Mvcc<FjallBackend>>,
    pub node: Node<Applied>,
    pub peers: Arc<Peers>,
    pub hub: Arc<WatchHub>,
    pub lessor: Arc<Mutex<Lessor>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub min_lease_ttl: i64,
    /// Revision up to which old versions have been physically removed.
    pub physically_compacted: watch::Receiver<i64>,
    /// How far this member is behind the leader.
    pub staleness: crate::staleness::Staleness,
    /// Auth tokens this member accepts.
    pub tokens: Arc<crate::auth::Tokens>,
    /// The MVCC tables' space quota (NOSPACE).
    pub quota: Arc<crate::alarms::Quota>,
    /// Requests, bytes and keys by key prefix.
    pub prefix_stats: Arc<crate::prefix_stats::PrefixStats>,
    /// Tenant rate limits and space quotas.
    pub tenants: Arc<crate::tenants::Tenants>,
}

/// Monotonic milliseconds since the process started: the only clock the
/// lessor sees.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    #[error("cannot open the MVCC store")]
    Mvcc(#[from] cairn_mvcc::MvccError),
    #[error("cannot start raft: {0}")]
    Raft(String),
    #[error("data directory {dir}: {msg}")]
    Identity { dir: String, msg: String },
    #[error("{0}")]
    Join(String),
    #[error("{0}")]
    Config(String),
    /// Discovery found the cluster full and the fallback is the proxy role.
    #[error("discovery: cluster is full; falling back to proxy")]
    FallbackProxy(Vec<String>),
    #[error(
        "this member ({0:x}) was removed from the cluster; to bring this host back, \
         `etcdctl member add` it again and start it on an empty --data-dir with \
         --initial-cluster-state existing"
    )]
    Removed(u64),
}

/// Key of the agent record naming a snapshot file whose restore began and
/// has not finished.
const RESTORING: &str = "restoring_snapshot";

// === impl Server ===

impl Server {
    /// Opens (or initialises) the data directory, finds this member's
    /// identity (stored, derived from `--initial-cluster`, or asked of the
    /// running cluster when joining) and starts the raft node.
    pub async fn start(
        mut settings: NodeSettings,
        peers: Arc<Peers>,
    ) -> Result<Arc<Server>, StartError> {
        let dir = settings.data_dir.clone();
        let db = tokio::task::block_in_place(|| Db::open(&dir))?;
        let mvcc = Arc::new(Mvcc::open(db.mvcc_backend())?);
        finish_interrupted_restore(&db, &mvcc)?;
        // Where the other members are: the records this member keeps, else
        // the initial cluster, else what the running cluster told a joiner.
        let mut known = mvcc.members().map_err(cairn_mvcc::MvccError::from)?;
        let stored = load_identity(&db, &settings)?;
        if stored.is_none()
            && let Some(d) = settings.discovery.clone()
        {
            discover(&mut settings, &d).await?;
        }
        let (identity, bootstrap) = match stored {
            Some(id) => (id, Vec::new()),
            None if settings.join_existing || !settings.add_self_via.is_empty() => {
                if !settings.add_self_via.is_empty() {
                    settings.initial_cluster = add_self_as_learner(&settings).await?;
                }
                let (id, members) = join(&db, &settings, &peers).await?;
                known.extend(members);
                (id, Vec::new())
            }
            None => new_cluster(&db, &settings)?,
        };
        if known.is_empty() {
            known = initial_members(&settings.initial_cluster, &settings.cluster_token);
        }
        peers.set_member_id(identity.member_id);
        peers.set_cluster_id(identity.cluster_id);
        peers.set_addresses(known.into_iter().map(|m| (m.id, m.peer_urls)));
        let removed = mvcc
            .removed_members()
            .map_err(cairn_mvcc::MvccError::from)?;
        if removed.contains(&identity.member_id) {
            return Err(StartError::Removed(identity.member_id));
        }
        peers.set_removed(removed);

        let clock = Clock(Instant::now());
        let mut lessor = Lessor::new();
        lessor.restore(
            &mvcc.leases().map_err(cairn_mvcc::MvccError::from)?,
            clock.now_ms(),
        );
        let lessor = Arc::new(Mutex::new(lessor));
        let hub = Arc::new(WatchHub::new(mvcc.current_revision()));
        let metrics = Arc::new(Metrics::new());
        let (compact_tx, compact_rx) = watch::channel(mvcc.compact_revision());
        let (pending_tx, pending_rx) = watch::channel(mvcc.compact_revision());
        spawn_compactor(mvcc.clone(), pending_rx, compact_tx);
        let quota = Arc::new(crate::alarms::Quota::new(
            settings.quota_bytes,
            settings.disk_reserve_bytes,
        ));
        metrics.quota_bytes.set(quota.bytes() as i64);
        let (nospace_tx, nospace_rx) = tokio::sync::mpsc::unbounded_channel();

        let tokens = Arc::new(crate::auth::Tokens::new(
            crate::auth::parse_token_kind(&settings.auth_token).map_err(StartError::Config)?,
            settings.auth_token_ttl,
            settings.bcrypt_cost,
        ));
        let tenants = Arc::new(crate::tenants::Tenants::new(
            settings.tenant_rates.clone(),
            settings.tenant_quotas.clone(),
        ));
        let prefix_stats = Arc::new(crate::prefix_stats::PrefixStats::new(
            settings.prefix_depth,
            settings.prefix_max,
            tenants.quota_prefixes(),
        ));
        let applier = Applier {
            prefix_stats: prefix_stats.clone(),
            tokens: tokens.clone(),
            quota: quota.clone(),
            nospace: nospace_tx,
            mvcc: mvcc.clone(),
            hub: hub.clone(),
            lessor: lessor.clone(),
            clock,
            compact: pending_tx,
            metrics: metrics.clone(),
            peers: peers.clone(),
            db: db.clone(),
        };
        let election_ticks = (settings.election_ms / settings.heartbeat_ms.max(1)).max(2) as usize;
        let log = db.raft_log();
        let node = tokio::task::block_in_place(|| {
            Node::start(
                NodeConfig {
                    id: identity.member_id,
                    heartbeat_interval: Duration::from_millis(settings.heartbeat_ms),
                    election_ticks,
                    max_pending_proposals: limits::MAX_PENDING_PROPOSALS,
                    snapshot_count: settings.snapshot_count,
                    bootstrap,
                    on_sync: Some(cairn_raft::SyncObserver({
                        let m = metrics.clone();
                        Arc::new(move |d: Duration| m.wal_fsync.observe(d.as_secs_f64()))
                    })),
                },
                log,
                applier,
                peers.transport(),
            )
        })
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let min_lease_ttl =
            cairn_mvcc::lease::min_lease_ttl(settings.election_ms, settings.heartbeat_ms);
        let server = Arc::new(Server {
            settings,
            identity,
            db,
            mvcc,
            node,
            peers,
            hub,
            lessor,
            clock,
            metrics,
            min_lease_ttl,
            physically_compacted: compact_rx,
            staleness: crate::staleness::Staleness::new(),
            tokens,
            quota,
            prefix_stats,
            tenants,
        });
        if server.prefix_stats.tracking() {
            let s = server.clone();
            tokio::task::spawn_blocking(move || {
                let r = s.prefix_stats.initial_scan(
                    || s.mvcc.current_revision(),
                    |rev, from| {
                        let page = s
                            .mvcc
                            .range(&RangeRequest {
                                key: from.to_vec(),
                                range_end: vec![0],
                                revision: rev,
                                limit: 10_000,
                                ..Default::default()
                            })
                            .map_err(|e| e.to_string())?;
                        Ok(page
                            .kvs
                            .into_iter()
                            .map(|kv| (kv.key, kv.value.len()))
                            .collect())
                    },
                );
                if let Err(e) = r {
                    tracing::warn!(error = %e, "counting stored bytes by prefix failed");
                }
            });
        }
        tokio::spawn(crate::alarms::nospace_loop(
            Arc::downgrade(&server),
            nospace_rx,
        ));
        Ok(server)
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: self.node.status().term,
        }
    }

    /// Fills in the identity fields of a header the MVCC layer started.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let rev = header
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.mvcc.current_revision());
        *header = Some(self.header(rev));
    }

    /// Replicates one command the server makes on its own behalf (lease
    /// expiry, membership records, checkpoints): permissions do not apply.
    pub async fn propose(&self, op: Op) -> Result<Applied, Status> {
        self.propose_as(op, &AuthInfo::internal()).await
    }

    /// Replicates one client command and returns what applying it produced.
    /// With auth on, the applier checks `who`'s permissions at the entry's
    /// place in the log.
    pub async fn propose_as(&self, op: Op, who: &AuthInfo) -> Result<Applied, Status> {
        self.check_quota(&op).await?;
        let bytes = Command {
            op: Some(op),
            username: who.user.clone(),
            auth_revision: who.revision,
        }
        .encode_to_vec();
        // etcd refuses a request whose log entry would exceed the limit.
        if bytes.len() > self.settings.max_request_bytes {
            return Err(status::request_too_large());
        }
        self.metrics.proposals_pending.inc();
        let out = self.node.propose(bytes).await;
        self.metrics.proposals_pending.dec();
        match out {
            Ok(applied) => Ok(applied),
            Err(e) => {
                self.metrics.proposals_failed.inc();
                Err(status::propose(e))
            }
        }
    }

    /// Waits until this member has applied everything committed before the
    /// call: the ReadIndex protocol.
    pub async fn linearizable_barrier(&self) -> Result<(), Status> {
        self.node
            .read_index()
            .await
            .map(|_| ())
            .map_err(status::propose)
    }

    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        cairn_mvcc::validate::check_range(req).map_err(status::mvcc)?;
        if !req.serializable || self.too_stale() {
            self.linearizable_barrier().await?;
        }
        self.metrics.range_total.inc();
        self.prefix_stats.request(&req.key);
        let mut resp = self.mvcc.range(req).map_err(status::mvcc)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// Range as `who`: READ permission on the range first; a read during
    /// which the auth store changed is refused as etcd's `doSerialize`
    /// does ("revision of auth store is old"), and the client retries.
    pub async fn range_as(
        &self,
        req: &RangeRequest,
        who: &AuthInfo,
    ) -> Result<RangeResponse, Status> {
        let auth = self.mvcc.auth();
        if !auth.enabled {
            return self.range(req).await;
        }
        auth.check(who, &req.key, &req.range_end, Access::Read)
            .map_err(status::auth)?;
        let resp = self.range(req).await?;
        if who.revision != 0 && who.revision != self.mvcc.auth().revision {
            return Err(status::auth(cairn_mvcc::auth::AuthError::AuthOldRevision));
        }
        Ok(resp)
    }

    /// etcd's `IsAdminPermitted` for `who`.
    pub fn check_admin(&self, who: &AuthInfo) -> Result<(), Status> {
        self.mvcc.auth().check_admin(who).map_err(status::auth)
    }

    /// etcd's `requireAuthInfo` (Status, alarm list): with auth on, the
    /// caller must be someone.
    pub fn require_user(&self, who: &AuthInfo) -> Result<(), Status> {
        if self.mvcc.auth().enabled && who.user.is_empty() {
            return Err(status::auth(cairn_mvcc::auth::AuthError::UserEmpty));
        }
        Ok(())
    }

    /// How far behind the leader this member is now.
    pub fn behind(&self) -> crate::staleness::Behind {
        let st = self.node.status();
        if st.leader_id != 0 && st.leader_id == st.id {
            return crate::staleness::Behind::default();
        }
        self.staleness
            .behind(st.applied_index, self.mvcc.current_revision())
    }

    /// `--max-stale` is set and this member may be further behind.
    pub fn too_stale(&self) -> bool {
        self.settings
            .max_stale
            .is_some_and(|max| self.behind().ms > max.as_millis() as u64)
    }

    pub fn has_leader(&self) -> bool {
        self.node.status().leader_id != 0
    }
}

/// Asks the discovery service who the cluster is and turns the decision
/// into the settings of a new member (or a learner, or the proxy fallback).
async fn discover(s: &mut NodeSettings, d: &cairn_discovery::Bootstrap) -> Result<(), StartError> {
    use cairn_discovery::Decision;
    let token = d.cluster_token();
    let id = identity::member_id(&s.peer_urls, &token);
    match d
        .run(&format!("{id:x}"))
        .await
        .map_err(|e| StartError::Join(e.to_string()))?
    {
        Decision::Voter { initial_cluster } => {
            // This member's URLs as the others know them (a DNS SRV record
            // may name it by a host its advertised URL resolves to).
            let mine: Vec<String> = initial_cluster
                .iter()
                .filter(|(n, _)| n == &s.name)
                .map(|(_, u)| u.clone())
                .collect();
            if !mine.is_empty() {
                s.peer_urls = mine;
            }
            s.initial_cluster = initial_cluster;
            s.cluster_token = token;
        }
        Decision::Learner { endpoints } => s.add_self_via = endpoints,
        Decision::Proxy { endpoints } => return Err(StartError::FallbackProxy(endpoints)),
        Decision::Exit(msg) => return Err(StartError::Join(msg)),
    }
    Ok(())
}

fn load_identity(db: &Db, s: &NodeSettings) -> Result<Option<Identity>, StartError> {
    let err = |msg: String| StartError::Identity {
        dir: s.data_dir.display().to_string(),
        msg,
    };
    let get = |k: &str| -> Result<Option<String>, StartError> {
        Ok(db
            .get_meta(k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    };
    let Some(member) = get("member_id")? else {
        return Ok(None);
    };
    let member_id = u64::from_str_radix(&member, 16)
        .map_err(|_| err(format!("stored member id {member:?} is not valid")))?;
    let cluster = get("cluster_id")?.ok_or_else(|| err("cluster id missing".into()))?;
    let cluster_id = u64::from_str_radix(&cluster, 16)
        .map_err(|_| err(format!("stored cluster id {cluster:?} is not valid")))?;
    let name = get("name")?.unwrap_or_else(|| s.name.clone());
    let peer_urls = get("peer_urls")?
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| s.peer_urls.clone());
    if name != s.name {
        tracing::warn!(stored = %name, flag = %s.name, "member name differs from the data directory's; keeping the stored one");
    }
    Ok(Some(Identity {
        name,
        member_id,
        cluster_id,
        peer_urls,
        client_urls: s.client_urls.clone(),
    }))
}

/// Records the identity before raft starts: a crash in between leaves a
/// directory that starts as the same member again.
fn save_identity(db: &Db, s: &NodeSettings, id: &Identity) -> Result<(), StartError> {
    db.put_meta("name", s.name.as_bytes())?;
    db.put_meta("peer_urls", s.peer_urls.join(",").as_bytes())?;
    db.put_meta("cluster_token", s.cluster_token.as_bytes())?;
    db.put_meta("cluster_id", format!("{:x}", id.cluster_id).as_bytes())?;
    db.put_meta("member_id", format!("{:x}", id.member_id).as_bytes())?;
    Ok(())
}

/// The members of `--initial-cluster`, each with the ID etcd would give it
/// (a hash of its peer URLs and the cluster token).
pub fn initial_members(initial: &[(String, String)], token: &str) -> Vec<Member> {
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for (name, url) in initial {
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.clone()),
            None => by_name.push((name.clone(), vec![url.clone()])),
        }
    }
    let mut members: Vec<Member> = by_name
        .into_iter()
        .map(|(name, peer_urls)| Member {
            id: identity::member_id(&peer_urls, token),
            name,
            peer_urls,
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    members
}

/// A new cluster from `--initial-cluster`: every initial member derives the
/// same IDs and the same first log entries.
pub fn new_cluster(db: &Db, s: &NodeSettings) -> Result<(Identity, Vec<ConfChange>), StartError> {
    let members = initial_members(&s.initial_cluster, &s.cluster_token);
    let member_id = identity::member_id(&s.peer_urls, &s.cluster_token);
    let cluster_id = identity::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
    let identity = Identity {
        name: s.name.clone(),
        member_id,
        cluster_id,
        peer_urls: s.peer_urls.clone(),
        client_urls: s.client_urls.clone(),
    };
    save_identity(db, s, &identity)?;
    let bootstrap = members
        .into_iter()
        .map(|m| {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = m.id;
            cc.context = m.encode_to_vec().into();
            cc
        })
        .collect();
    Ok((identity, bootstrap))
}

/// `--initial-cluster-state existing`: asks the running members for the
/// membership and finds this member in it by its peer URLs (it must have
/// been added with `member add` first).
/// A learner with an empty data directory adds itself to the cluster
/// (`MemberAdd` with `isLearner`) through the client URLs it was given, and
/// returns the membership as `--initial-cluster` would name it. A member
/// with our peer URLs that has not started yet is ours from an earlier
/// attempt that stopped before it saved its identity.
async fn add_self_as_learner(s: &NodeSettings) -> Result<Vec<(String, String)>, StartError> {
    use cairn_proto::etcdserverpb::{
        MemberAddRequest, MemberListRequest, cluster_client::ClusterClient,
    };
    let mut errors = Vec::new();
    // The leader refuses changes for a while after members (re)connect
    // ("unhealthy cluster"), and a starting cluster may have no leader yet.
    for attempt in 0..30 {
        for url in &s.add_self_via {
            let url = if url.contains("://") {
                url.clone()
            } else {
                format!("http://{url}")
            };
            let channel = match s.add_self_tls.endpoint(&url, Duration::from_secs(2)) {
                Ok(ep) => ep.connect().await,
                Err(e) => return Err(StartError::Join(format!("--endpoints {url}: {e:#}"))),
            };
            let mut client = match channel {
                Ok(c) => ClusterClient::new(c),
                Err(e) => {
                    errors.push(format!("{url}: {e}"));
                    continue;
                }
            };
            let added = client
                .member_add(MemberAddRequest {
                    peer_ur_ls: s.peer_urls.clone(),
                    is_learner: true,
                })
                .await;
            let members = match added {
                Ok(r) => {
                    let r = r.into_inner();
                    if let Some(m) = &r.member {
                        tracing::info!(member_id = format_args!("{:x}", m.id), via = %url, "added this host to the cluster as a learner");
                    }
                    r.members
                }
                Err(e) if e.message().contains("Peer URLs already exists") => {
                    let list = client
                        .member_list(MemberListRequest { linearizable: true })
                        .await
                        .map_err(|e| {
                            StartError::Join(format!("{url}: member list: {}", e.message()))
                        })?
                        .into_inner()
                        .members;
                    let mut mine = s.peer_urls.clone();
                    mine.sort();
                    let me = list.iter().find(|m| {
                        let mut u = m.peer_ur_ls.clone();
                        u.sort();
                        u == mine
                    });
                    match me {
                        Some(m) if m.name.is_empty() => list,
                        _ => {
                            return Err(StartError::Join(format!(
                                "a started member already has peer URLs {}; remove it                                  (etcdctl member remove) before adding this host again",
                                s.peer_urls.join(",")
                            )));
                        }
                    }
                }
                Err(e) => {
                    errors.push(format!("{url}: {}", e.message()));
                    continue;
                }
            };
            let mut cluster = Vec::new();
            for m in members {
                let name = if m.name.is_empty() {
                    format!("{:x}", m.id)
                } else {
                    m.name
                };
                for u in m.peer_ur_ls {
                    if !s.peer_urls.contains(&u) {
                        cluster.push((name.clone(), u));
                    }
                }
            }
            cluster.extend(s.peer_urls.iter().map(|u| (s.name.clone(), u.clone())));
            return Ok(cluster);
        }
        if attempt < 29 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Err(StartError::Join(format!(
        "could not add this host as a learner through --endpoints: {}",
        errors
            .iter()
            .rev()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

async fn join(
    db: &Db,
    s: &NodeSettings,
    peers: &Peers,
) -> Result<(Identity, Vec<Member>), StartError> {
    let mut mine = s.peer_urls.clone();
    mine.sort();
    let others: Vec<&(String, String)> = s
        .initial_cluster
        .iter()
        .filter(|(n, _)| n != &s.name)
        .collect();
    if others.is_empty() {
        return Err(StartError::Join(
            "--initial-cluster-state existing needs the running members in --initial-cluster"
                .into(),
        ));
    }
    let req = PeerRequest {
        req: Some(peer_request::Req::JoinInfo(true)),
    };
    let mut errors = Vec::new();
    let mut missing = None;
    for attempt in 0..10 {
        for (name, url) in &others {
            match peers.request_url(url, &req).await {
                Ok(resp) => {
                    let Some(me) = resp.members.iter().find(|m| {
                        let mut u = m.peer_urls.clone();
                        u.sort();
                        u == mine
                    }) else {
                        // The member that took the MemberAdd may be ahead
                        // of the one asked: ask again before giving up.
                        missing = Some(format!(
                            "the cluster (asked {name} at {url}) has no member with peer URLs {}; \
                             add it first (etcdctl member add {} --peer-urls={})",
                            s.peer_urls.join(","),
                            s.name,
                            s.peer_urls.join(",")
                        ));
                        continue;
                    };
                    let identity = Identity {
                        name: s.name.clone(),
                        member_id: me.id,
                        cluster_id: resp.cluster_id,
                        peer_urls: s.peer_urls.clone(),
                        client_urls: s.client_urls.clone(),
                    };
                    save_identity(db, s, &identity)?;
                    tracing::info!(
                        member_id = format_args!("{:x}", me.id),
                        cluster_id = format_args!("{:x}", resp.cluster_id),
                        "joining the running cluster"
                    );
                    return Ok((identity, resp.members));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if attempt < 9 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if let Some(m) = missing {
        return Err(StartError::Join(m));
    }
    errors.dedup();
    Err(StartError::Join(format!(
        "cannot reach any member of --initial-cluster to join: {}",
        errors.join("; ")
    )))
}

/// A snapshot restore that a crash interrupted is redone from its file
/// before anything reads the store.
fn finish_interrupted_restore(db: &Db, mvcc: &Mvcc<FjallBackend>) -> Result<(), StartError> {
    let Some(path) = db.get_meta(RESTORING)? else {
        return Ok(());
    };
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&path).into_owned());
    let dir = db.dir().display().to_string();
    tracing::warn!(file = %path.display(), "finishing a snapshot restore a crash interrupted");
    let f = std::fs::File::open(&path).map_err(|e| StartError::Identity {
        dir: dir.clone(),
        msg: format!(
            "a snapshot restore was interrupted and its file {} cannot be read: {e}",
            path.display()
        ),
    })?;
    mvcc.restore(std::io::BufReader::new(f))
        .map_err(|e| StartError::Identity {
            dir,
            msg: format!("redoing the interrupted snapshot restore: {e}"),
        })?;
    db.delete_meta(RESTORING)?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// On becoming leader, lease deadlines restart from their checkpointed
/// remaining TTL, or their full TTL (etcd's lessor promotion): renewals went
/// to the old leader, so the deadlines this member kept are stale.
pub async fn on_leadership(server: Arc<Server>) {
    let mut st = server.node.subscribe();
    let mut leading = false;
    loop {
        let now_leading = {
            let s = st.borrow_and_update();
            s.leader_id != 0 && s.leader_id == s.id
        };
        if now_leading && !leading {
            match server.mvcc.leases() {
                Ok(leases) => {
                    let mut lessor = server.lessor.lock().expect("lessor lock");
                    lessor.restore(&leases, server.clock.now_ms());
                    tracing::info!(
                        leases = leases.len(),
                        "became leader; lease deadlines restarted"
                    );
                }
                Err(e) => tracing::error!(error = %e, "reading leases failed"),
            }
        }
        leading = now_leading;
        if st.changed().await.is_err() {
            return;
        }
    }
}

/// Records this member's name and client URLs in the membership once a
/// leader exists (etcd's publish), and again whenever they differ.
pub async fn publish_attributes(server: Arc<Server>) {
    use cairn_proto::cairnpb::MemberAttributes;
    let id = server.identity.member_id;
    loop {
        let current = server
            .mvcc
            .members()
            .ok()
            .and_then(|ms| ms.into_iter().find(|m| m.id == id));
        let Some(m) = current else {
            // Not recorded yet (joining, or still replaying): wait.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if m.name == server.settings.name && m.client_urls == server.settings.client_urls {
            return;
        }
        if server.has_leader() {
            let attrs = MemberAttributes {
                id,
                name: server.settings.name.clone(),
                client_urls: server.settings.client_urls.clone(),
            };
            match server.propose(Op::MemberAttributes(attrs)).await {
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes failed; retrying")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A leader that stops hands leadership to the most up-to-date voter
/// first, so the cluster does not wait an election timeout for a new one.
pub async fn hand_over_leadership(server: &Server) {
    let st = server.node.status();
    if st.leader_id != st.id || st.voters.len() < 2 {
        return;
    }
    let Ok(Some(p)) = server.node.progress().await else {
        return;
    };
    let best = p
        .matched
        .iter()
        .filter(|(id, _)| *id != st.id && st.voters.contains(id) && p.active.contains(id))
        .max_by_key(|(_, m)| *m)
        .map(|(id, _)| *id);
    if let Some(to) = best {
        let timeout = Duration::from_millis(server.settings.election_ms);
        match server.node.transfer_leader(to, timeout).await {
            Ok(()) => tracing::info!(to = format_args!("{to:x}"), "handed leadership over"),
            Err(e) => tracing::warn!(error = %e, "leader transfer before stopping failed"),
        }
    }
}

/// Removes old versions after a logical compaction, in small steps, off the
/// apply path, and reports how far it got (for `Compact{physical: true}`).
fn spawn_compactor(
    mvcc: Arc<Mvcc<FjallBackend>>,
    mut pending: watch::Receiver<i64>,
    done: watch::Sender<i64>,
) {
    std::thread::Builder::new()
        .name("cairn-compactor".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("compactor runtime");
            rt.block_on(async move {
                loop {
                    let target = *pending.borrow_and_update();
                    if target > *done.borrow() {
                        loop {
                            let step = Instant::now();
                            match mvcc.compact_physical(limits::COMPACTION_STEP) {
                                Ok(true) => break,
                                // Out of the traffic's way: short steps (a
                                // write waits behind one small batch at
                                // most) and a pause as long as the step,
                                // so compaction takes at most half a core.
                                Ok(false) => std::thread::sleep(
                                    step.elapsed().max(limits::COMPACTION_MIN_PAUSE),
                                ),
                                Err(e) => {
                                    tracing::error!(error = %e, "physical compaction failed");
                                    return;
                                }
                            }
                        }
                        done.send_replace(target);
                    }
                    if pending.changed().await.is_err() {
                        return;
                    }
                }
            });
        })
        .expect("spawn compactor thread");
}

/// Key commands applied as one store write (a run of committed entries
/// longer than this is split).
const MAX_APPLY_RUN: usize = 256;

fn decode_command(index: u64, data: &[u8]) -> Command {
    Command::decode(data).unwrap_or_else(|e| {
        fatal(format!(
            "raft entry {index} does not decode as a command: {e}"
        ))
    })
}

/// Applies committed entries on the raft driver thread, in log order, and
/// hands their side effects (events, lease deadlines, compaction) to the
/// runtime.
struct Applier {
    prefix_stats: Arc<crate::prefix_stats::PrefixStats>,
    tokens: Arc<crate::auth::Tokens>,
    mvcc: Arc<Mvcc<FjallBackend>>,
    hub: Arc<WatchHub>,
    lessor: Arc<Mutex<Lessor>>,
    clock: Clock,
    compact: watch::Sender<i64>,
    metrics: Arc<Metrics>,
    peers: Arc<Peers>,
    db: Db,
    quota: Arc<crate::alarms::Quota>,
    /// Asks the runtime to raise NOSPACE.
    nospace: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Applier {
    /// Tells the transport where members are, after the records changed.
    fn refresh_peers(&self) {
        match (self.mvcc.members(), self.mvcc.removed_members()) {
            (Ok(ms), Ok(removed)) => {
                self.peers
                    .set_addresses(ms.into_iter().map(|m| (m.id, m.peer_urls)));
                self.peers.set_removed(removed);
            }
            (Err(e), _) | (_, Err(e)) => fatal(format!("reading the membership failed: {e}")),
        }
    }

    /// What follows a command's application: metrics, watch events,
    /// lease deadlines, compaction, membership, tokens, the space quota.
    fn after_apply(&mut self, cmd: &Command, mut applied: Applied) -> Applied {
        self.metrics.applied.inc();
        if !applied.events.is_empty() {
            self.prefix_stats.applied(applied.revision, &applied.events);
            let events = std::mem::take(&mut applied.events);
            self.hub.publish(applied.revision, events);
        }
        if !applied.leases_granted.is_empty() || !applied.leases_revoked.is_empty() {
            let now = self.clock.now_ms();
            let mut lessor = self.lessor.lock().expect("lessor lock");
            for &(id, ttl) in &applied.leases_granted {
                lessor.grant(id, ttl, now);
            }
            for &id in &applied.leases_revoked {
                lessor.revoke(id);
            }
        }
        if !applied.leases_checkpointed.is_empty() {
            let mut lessor = self.lessor.lock().expect("lessor lock");
            for &(id, remaining) in &applied.leases_checkpointed {
                lessor.checkpointed(id, remaining);
            }
        }
        if let Some(rev) = applied.compacted {
            self.compact.send_replace(rev);
        }
        if matches!(cmd.op, Some(Op::MemberPeerUrls(_))) {
            self.refresh_peers();
        }
        if let Ok(cairn_mvcc::Response::Auth(a)) = &applied.result {
            if let Some((user, token)) = &a.issued {
                self.tokens.issued(user.clone(), token.clone());
            }
            if let Some(user) = &a.invalidate_user {
                self.tokens.invalidate_user(user);
            }
            if a.disabled {
                self.tokens.clear();
            }
        }
        if applied.result.is_ok()
            && let Some(op) = &cmd.op
            && self
                .quota
                .exceeded_after_apply(self.mvcc.backend(), op, &self.mvcc.alarms())
        {
            let _ = self.nospace.send(());
        }
        applied
    }

    fn restore_file(&mut self, path: &std::path::Path) -> Result<(), String> {
        let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.db
            .put_meta(RESTORING, path.to_string_lossy().as_bytes())
            .map_err(|e| e.to_string())?;
        self.mvcc
            .restore(std::io::BufReader::new(f))
            .map_err(|e| format!("restoring {}: {e}", path.display()))?;
        self.db.delete_meta(RESTORING).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }
}

impl StateMachine for Applier {
    type Output = Applied;

    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> Applied {
        let cmd = decode_command(index, data);
        let applied = match self.mvcc.apply(index, &cmd) {
            Ok(a) => a,
            Err(e) => fatal(format!("applying raft entry {index} failed: {e}")),
        };
        self.after_apply(&cmd, applied)
    }

    fn apply_batch(&mut self, entries: &[(u64, u64, &[u8])]) -> Vec<Applied> {
        let cmds: Vec<(u64, Command)> = entries
            .iter()
            .map(|&(index, _, data)| (index, decode_command(index, data)))
            .collect();
        let mut out = Vec::with_capacity(cmds.len());
        let mut rest = &cmds[..];
        while let Some((index, cmd)) = rest.first() {
            // Key commands go to the store as one write, at most
            // MAX_APPLY_RUN of them; anything else alone.
            let n = rest
                .iter()
                .take(MAX_APPLY_RUN)
                .take_while(|(_, c)| Mvcc::<FjallBackend>::batchable(c))
                .count();
            if n == 0 {
                let applied = match self.mvcc.apply(*index, cmd) {
                    Ok(a) => a,
                    Err(e) => fatal(format!("applying raft entry {index} failed: {e}")),
                };
                out.push(self.after_apply(cmd, applied));
                rest = &rest[1..];
                continue;
            }
            let (run, tail) = rest.split_at(n);
            let refs: Vec<(u64, &Command)> = run.iter().map(|(i, c)| (*i, c)).collect();
            let applied = match self.mvcc.apply_many(&refs) {
                Ok(a) => a,
                Err(e) => fatal(format!(
                    "applying raft entries {}..={} failed: {e}",
                    run[0].0,
                    run[n - 1].0
                )),
            };
            for ((_, cmd), a) in run.iter().zip(applied) {
                out.push(self.after_apply(cmd, a));
            }
            rest = tail;
        }
        out
    }

    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange, _cs: &ConfState) -> Applied {
        let ty = cc.get_change_type();
        let cmd = cairn_mvcc::conf_change_command(
            cc.node_id,
            ty == ConfChangeType::RemoveNode,
            ty == ConfChangeType::AddLearnerNode,
            &cc.context,
        )
        .unwrap_or_else(|e| {
            fatal(format!(
                "raft entry {index}: conf change carries no member record: {e}"
            ))
        });
        let applied = match self.mvcc.apply(index, &cmd) {
            Ok(a) => a,
            Err(e) => fatal(format!("applying raft entry {index} failed: {e}")),
        };
        self.refresh_peers();
        applied
    }

    fn restore(&mut self, snap: &Snapshot) -> Result<(), String> {
        let path = std::path::PathBuf::from(String::from_utf8_lossy(&snap.data).into_owned());
        self.restore_file(&path)?;
        let current = self.mvcc.current_revision();
        self.hub.reset(current);
        let leases = self.mvcc.leases().map_err(|e| e.to_string())?;
        {
            let mut lessor = self.lessor.lock().expect("lessor lock");
            *lessor = Lessor::new();
            lessor.restore(&leases, self.clock.now_ms());
        }
        self.compact.send_replace(self.mvcc.compact_revision());
        self.refresh_peers();
        tracing::info!(
            revision = current,
            applied = self.mvcc.applied_index(),
            "store replaced by the leader's snapshot"
        );
        Ok(())
    }

    fn apply_empty(&mut self, index: u64) {
        if let Err(e) = self.mvcc.mark_applied(index) {
            fatal(format!("recording applied index {index} failed: {e}"));
        }
    }

    fn applied_index(&self) -> u64 {
        self.mvcc.applied_index()
    }
}

/// A storage failure while applying: the node must stop rather than diverge
/// from its log. Everything acknowledged is in the fsynced raft log and is
/// re-applied on restart.
fn fatal(msg: String) -> ! {
    tracing::error!("{msg}; stopping");
    eprintln!("cairn: fatal: {msg}");
    std::process::exit(2);
}
