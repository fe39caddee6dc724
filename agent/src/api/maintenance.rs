//! Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader.
use cairn_mvcc::Backend;
use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{Api, BoxStream, status};
use crate::auth::caller_of;
use crate::limits;
use crate::server::ETCD_VERSION;

impl Api {
    /// etcd: listing alarms needs a user (with auth on), changing them an
    /// admin.
    async fn alarm_permitted(&self, r: &Request<AlarmRequest>) -> Result<(), Status> {
        let who = caller_of(self, r).await?;
        if r.get_ref().action == cairn_proto::etcdserverpb::alarm_request::AlarmAction::Get as i32 {
            self.require_user(&who)
        } else {
            self.check_admin(&who)
        }
    }

    /// GET lists the raised alarms (of one type, or all for NONE) as of a
    /// linearizable read; ACTIVATE and DEACTIVATE go through the log and
    /// answer the alarm they changed (etcd sends all three through raft).
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse, Status> {
        let mut resp = if req.action == AlarmAction::Get as i32 {
            self.linearizable_barrier().await?;
            cairn_mvcc::alarm::response(cairn_mvcc::alarm::filter(&self.mvcc.alarms(), req.alarm))
        } else {
            match self.propose(Op::Alarm(req)).await?.result {
                Ok(cairn_mvcc::Response::Alarm(r)) => r,
                Ok(other) => {
                    return Err(status::internal(format!(
                        "unexpected apply result {other:?}"
                    )));
                }
                Err(e) => return Err(status::mvcc(e)),
            }
        };
        resp.header = Some(self.header(self.mvcc.current_revision()));
        Ok(resp)
    }

    pub fn status_response(&self) -> StatusResponse {
        let st = self.node.status();
        let size = self.mvcc.backend().size_bytes() as i64;
        let behind = self.behind();
        let is_learner = st.learners.contains(&st.id);
        StatusResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors: self
                .mvcc
                .alarms()
                .iter()
                .map(crate::alarms::describe)
                .collect(),
            db_size_in_use: size,
            is_learner,
            storage_version: ETCD_VERSION
                .rsplit_once('.')
                .map(|(v, _)| v)
                .unwrap_or("3.6")
                .to_string()
                + ".0",
            db_size_quota: self.quota.bytes() as i64,
            downgrade_info: None,
            cairn_behind_revisions: behind.revisions,
            cairn_behind_ms: behind.ms as i64,
            cairn_role: if is_learner { "learner" } else { "voter" }.to_string(),
        }
    }
}

#[tonic::async_trait]
impl Maintenance for Api {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.alarm_permitted(&r).await?;
        Api::alarm(self, r.into_inner()).await.map(Response::new)
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.require_user(&caller_of(self, &r).await?)?;
        Ok(Response::new(self.status_response()))
    }

    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        // The LSM store reclaims space by merging its tables in the
        // background; Defragment merges them now, without stopping reads or
        // writes (the space compaction freed comes back at once, so that a
        // NOSPACE alarm can be disarmed).
        // First let the last compaction's removal of old versions finish:
        // merging before it would keep what it is about to delete.
        let compacted = self.mvcc.compact_revision();
        let mut done = self.physically_compacted.clone();
        done.wait_for(|&d| d >= compacted)
            .await
            .map_err(|_| status::internal("compactor stopped"))?;
        let api = self.clone();
        tokio::task::spawn_blocking(move || api.mvcc.backend().defragment())
            .await
            .map_err(status::internal)?
            .map_err(|e| status::mvcc(e.into()))?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.header(self.mvcc.current_revision())),
        }))
    }

    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        let hash = self.mvcc.hash_all().map_err(|e| status::mvcc(e.into()))?;
        Ok(Response::new(HashResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            hash,
        }))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        let (hash, compact_revision, hash_revision) = self
            .mvcc
            .hash_kv(r.into_inner().revision)
            .map_err(status::mvcc)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = BoxStream<SnapshotResponse>;

    /// One consistent view of every table, streamed in chunks and closed by
    /// a SHA-256 of everything before it, as etcd closes its snapshots.
    async fn snapshot(
        &self,
        r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let header = self.header(self.mvcc.current_revision());
        let estimate = self.mvcc.backend().size_bytes();
        tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            let mut sent: u64 = 0;
            for chunk in api.mvcc.snapshot_chunks(limits::SNAPSHOT_CHUNK_BYTES) {
                let msg = match chunk {
                    Ok(blob) => {
                        hasher.update(&blob);
                        sent += blob.len() as u64;
                        Ok(SnapshotResponse {
                            header: Some(header),
                            // Only an estimate until the end: never 0 before it.
                            remaining_bytes: estimate.saturating_sub(sent).max(1),
                            blob,
                            version: ETCD_VERSION.to_string(),
                        })
                    }
                    Err(e) => Err(status::internal(e)),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: hasher.finalize().to_vec(),
                version: ETCD_VERSION.to_string(),
            }));
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        let target = r.into_inner().target_id;
        let st = self.node.status();
        if st.leader_id != st.id {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !st.voters.contains(&target) {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        if target != st.id {
            if self.settings.lease_checkpoint_interval.is_some()
                && let Err(e) = super::lease::checkpoint_leases(self, 1).await
            {
                tracing::warn!(error = %e, "lease checkpoint before moving leadership failed");
            }
            let election = std::time::Duration::from_millis(self.settings.election_ms);
            self.node
                .transfer_leader(target, election * 2)
                .await
                .map_err(|e| match e {
                    cairn_raft::ProposeError::Timeout => Status::unavailable(
                        "etcdserver: request timed out, leader transfer took too long",
                    ),
                    e => status::propose(e),
                })?;
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.header(self.mvcc.current_revision())),
        }))
    }

    async fn downgrade(
        &self,
        r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        Err(Status::unimplemented("cairn: downgrade is not supported"))
    }
}
