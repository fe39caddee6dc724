//! Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot, MoveLeader.
use cairn_mvcc::Backend;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{Api, BoxStream, status};
use crate::limits;
use crate::server::ETCD_VERSION;

impl Api {
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
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner,
            storage_version: ETCD_VERSION
                .rsplit_once('.')
                .map(|(v, _)| v)
                .unwrap_or("3.6")
                .to_string()
                + ".0",
            db_size_quota: 0,
            downgrade_info: None,
            cairn_behind_revisions: behind.revisions,
            cairn_behind_ms: behind.ms as i64,
            cairn_role: if is_learner { "learner" } else { "voter" }.to_string(),
        }
    }
}

#[tonic::async_trait]
impl Maintenance for Api {
    async fn alarm(&self, _r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm can be raised yet (NOSPACE and CORRUPT come with quotas
        // and corruption checks): GET lists none; ACTIVATE/DEACTIVATE of an
        // alarm that is not raised change nothing, as in etcd.
        Ok(Response::new(AlarmResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            alarms: Vec::new(),
        }))
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.status_response()))
    }

    async fn defragment(
        &self,
        _r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // The LSM store reclaims space by compaction in the background, so
        // there is nothing to stop the world for.
        Ok(Response::new(DefragmentResponse {
            header: Some(self.header(self.mvcc.current_revision())),
        }))
    }

    async fn hash(&self, _r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let hash = self.mvcc.hash_all().map_err(|e| status::mvcc(e.into()))?;
        Ok(Response::new(HashResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            hash,
        }))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
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
        _r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
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
        _r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("cairn: downgrade is not supported"))
    }
}
