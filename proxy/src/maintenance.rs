//! Maintenance forwarded to the member the proxy talks to. Status answers
//! for that member, plus the proxy's own role and how far its cache is
//! behind.
use cairn_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_client::MaintenanceClient, maintenance_server::Maintenance,
};
use tonic::{Request, Response, Status};

use crate::Proxy;
use crate::forward::{forward, token_of, with_token};

impl Proxy {
    /// Status of the member the proxy talks to, as the proxy reports it.
    pub async fn status_now(
        &self,
        token: Option<tonic::metadata::AsciiMetadataValue>,
    ) -> Result<StatusResponse, Status> {
        let mut resp = self
            .0
            .call(true, |c| {
                let req = with_token(StatusRequest {}, &token);
                async move { MaintenanceClient::new(c).status(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        let (revs, ms) = self.behind();
        resp.cairn_role = "proxy".into();
        resp.cairn_behind_revisions = revs;
        resp.cairn_behind_ms = ms as i64;
        Ok(resp)
    }
}

#[tonic::async_trait]
impl Maintenance for Proxy {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let idempotent = r.get_ref().action == 0; // GET
        forward!(self, r, MaintenanceClient, alarm, idempotent)
    }

    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(
            self.status_now(token_of(r.metadata())).await?,
        ))
    }

    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        forward!(self, r, MaintenanceClient, defragment, false)
    }

    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        forward!(self, r, MaintenanceClient, hash, true)
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        forward!(self, r, MaintenanceClient, hash_kv, true)
    }

    type SnapshotStream = crate::BoxStream<SnapshotResponse>;

    async fn snapshot(
        &self,
        r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let token = token_of(r.metadata());
        let req = r.into_inner();
        let stream = self
            .0
            .call(true, |c| {
                let req = with_token(req, &token);
                async move { MaintenanceClient::new(c).snapshot(req).await }
            })
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        forward!(self, r, MaintenanceClient, move_leader, false)
    }

    async fn downgrade(
        &self,
        r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        forward!(self, r, MaintenanceClient, downgrade, false)
    }
}
