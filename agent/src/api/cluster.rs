//! Cluster: the membership of this single-member cluster. Changes to the
//! membership arrive with multi-member support.
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::Api;

impl Api {
    pub fn members(&self) -> MemberListResponse {
        let id = &self.identity;
        MemberListResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            members: vec![Member {
                id: id.member_id,
                name: id.name.clone(),
                peer_ur_ls: id.peer_urls.clone(),
                client_ur_ls: id.client_urls.clone(),
                is_learner: false,
            }],
        }
    }
}

fn single_member() -> Status {
    Status::unimplemented(
        "cairn: membership changes are not supported by this version (single-member clusters only)",
    )
}

#[tonic::async_trait]
impl Cluster for Api {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(single_member())
    }
    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(single_member())
    }
    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(single_member())
    }
    async fn member_list(
        &self,
        r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if r.into_inner().linearizable {
            self.linearizable_barrier().await?;
        }
        Ok(Response::new(self.members()))
    }
    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(single_member())
    }
}
