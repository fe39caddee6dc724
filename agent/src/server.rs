//! The node: storage, the raft driver, the MVCC store and the runtime pieces
//! around them (watch hub, lessor, compactor). The gRPC services, the JSON
//! gateway and the HTTP endpoints all call the operations defined here, so
//! every protocol behaves the same (design invariant 4).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_mvcc::lease::Lessor;
use cairn_mvcc::{Applied, Mvcc};
use cairn_proto::cairnpb::{Command, command::Op};
use cairn_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use cairn_raft::{Node, NodeConfig, StateMachine};
use cairn_store::{Db, FjallBackend};
use prost::Message;
use tokio::sync::watch;
use tonic::Status;

use crate::api::status;
use crate::identity::{self, Identity};
use crate::limits;
use crate::metrics::Metrics;
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
}

/// The etcd API version cairn speaks; reported by Status and /version.
pub const ETCD_VERSION: &str = "3.6.0";

pub struct Server {
    pub settings: NodeSettings,
    pub identity: Identity,
    pub db: Db,
    pub mvcc: Arc<Mvcc<FjallBackend>>,
    pub node: Node<Applied>,
    pub hub: Arc<WatchHub>,
    pub lessor: Arc<Mutex<Lessor>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub min_lease_ttl: i64,
    /// Revision up to which old versions have been physically removed.
    pub physically_compacted: watch::Receiver<i64>,
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
    #[error("{0}")]
    Store(#[from] cairn_store::StoreError),
    #[error("cannot open the MVCC store: {0}")]
    Mvcc(#[from] cairn_mvcc::MvccError),
    #[error("cannot start raft: {0}")]
    Raft(String),
    #[error("data directory {dir}: {msg}")]
    Identity { dir: String, msg: String },
}

// === impl Server ===

impl Server {
    /// Opens (or initialises) the data directory and starts the raft node.
    pub fn start(settings: NodeSettings) -> Result<Arc<Server>, StartError> {
        let db = Db::open(&settings.data_dir)?;
        let identity = load_identity(&db, &settings)?;
        let mvcc = Arc::new(Mvcc::open(db.mvcc_backend())?);
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

        let applier = Applier {
            mvcc: mvcc.clone(),
            hub: hub.clone(),
            lessor: lessor.clone(),
            clock,
            compact: pending_tx,
            metrics: metrics.clone(),
        };
        let election_ticks = (settings.election_ms / settings.heartbeat_ms.max(1)).max(2) as usize;
        let node = Node::start(
            NodeConfig {
                id: identity.member_id,
                heartbeat_interval: Duration::from_millis(settings.heartbeat_ms),
                election_ticks,
                max_pending_proposals: limits::MAX_PENDING_PROPOSALS,
                snapshot_count: settings.snapshot_count,
            },
            db.raft_log(),
            applier,
        )
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let min_lease_ttl =
            cairn_mvcc::lease::min_lease_ttl(settings.election_ms, settings.heartbeat_ms);
        Ok(Arc::new(Server {
            settings,
            identity,
            db,
            mvcc,
            node,
            hub,
            lessor,
            clock,
            metrics,
            min_lease_ttl,
            physically_compacted: compact_rx,
        }))
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

    /// Replicates one command and returns what applying it produced.
    pub async fn propose(&self, op: Op) -> Result<Applied, Status> {
        let bytes = Command { op: Some(op) }.encode_to_vec();
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
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        self.metrics.range_total.inc();
        let mut resp = self.mvcc.range(req).map_err(status::mvcc)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub fn has_leader(&self) -> bool {
        self.node.status().leader_id != 0
    }
}

fn load_identity(db: &Db, s: &NodeSettings) -> Result<Identity, StartError> {
    let err = |msg: String| StartError::Identity {
        dir: s.data_dir.display().to_string(),
        msg,
    };
    let get = |k: &str| -> Result<Option<String>, StartError> {
        Ok(db
            .get_meta(k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    };
    if let Some(member) = get("member_id")? {
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
        return Ok(Identity {
            name,
            member_id,
            cluster_id,
            peer_urls,
            client_urls: s.client_urls.clone(),
        });
    }
    let member_id = identity::member_id(&s.peer_urls, &s.cluster_token);
    let cluster_id = identity::cluster_id(&[member_id]);
    // Written before raft starts: a crash in between leaves a directory that
    // starts as the same member again.
    db.put_meta("name", s.name.as_bytes())?;
    db.put_meta("peer_urls", s.peer_urls.join(",").as_bytes())?;
    db.put_meta("cluster_token", s.cluster_token.as_bytes())?;
    db.put_meta("cluster_id", format!("{cluster_id:x}").as_bytes())?;
    db.put_meta("member_id", format!("{member_id:x}").as_bytes())?;
    Ok(Identity {
        name: s.name.clone(),
        member_id,
        cluster_id,
        peer_urls: s.peer_urls.clone(),
        client_urls: s.client_urls.clone(),
    })
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
                            match mvcc.compact_physical(limits::COMPACTION_STEP) {
                                Ok(true) => break,
                                Ok(false) => std::thread::yield_now(),
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

/// Applies committed entries on the raft driver thread, in log order, and
/// hands their side effects (events, lease deadlines, compaction) to the
/// runtime.
struct Applier {
    mvcc: Arc<Mvcc<FjallBackend>>,
    hub: Arc<WatchHub>,
    lessor: Arc<Mutex<Lessor>>,
    clock: Clock,
    compact: watch::Sender<i64>,
    metrics: Arc<Metrics>,
}

impl StateMachine for Applier {
    type Output = Applied;

    fn apply(&mut self, index: u64, _term: u64, data: &[u8]) -> Applied {
        let cmd = match Command::decode(data) {
            Ok(c) => c,
            Err(e) => fatal(format!(
                "raft entry {index} does not decode as a command: {e}"
            )),
        };
        let mut applied = match self.mvcc.apply(index, &cmd) {
            Ok(a) => a,
            Err(e) => fatal(format!("applying raft entry {index} failed: {e}")),
        };
        self.metrics.applied.inc();
        if !applied.events.is_empty() {
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
        if let Some(rev) = applied.compacted {
            self.compact.send_replace(rev);
        }
        applied
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
