//! Cluster (membership) forwarded to the cluster.
use cairn_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_client::ClusterClient,
    cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

use crate::Proxy;
use crate::forward::forward;

#[tonic::async_trait]
impl Cluster for Proxy {
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        forward!(self, r, ClusterClient, member_add, false)
    }

    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        forward!(self, r, ClusterClient, member_remove, false)
    }

    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        forward!(self, r, ClusterClient, member_update, false)
    }

    async fn member_list(
        &self,
        r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        forward!(self, r, ClusterClient, member_list, true)
    }

    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        forward!(self, r, ClusterClient, member_promote, false)
    }
}

/// Refreshes the endpoint list from MemberList every `every`.
pub(crate) async fn refresh_loop(inner: std::sync::Weak<crate::Inner>, every: std::time::Duration) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let list = inner
            .call(true, |c| async move {
                ClusterClient::new(c)
                    .member_list(MemberListRequest {
                        linearizable: false,
                    })
                    .await
            })
            .await;
        if let Ok(list) = list {
            // As etcd's client Sync: not learners (etcd's refuse most
            // requests) and not members that never started (no name, no
            // client URLs).
            let urls: Vec<String> = list
                .members
                .iter()
                .filter(|m| !m.is_learner && !m.name.is_empty())
                .flat_map(|m| m.client_ur_ls.iter().cloned())
                .collect();
            inner.upstream.set_endpoints(&urls);
        }
    }
}
