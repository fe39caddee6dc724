//! Lock and Election forwarded to the cluster, confined to the namespace
//! like every other key (etcd's grpc-proxy forwards them without it).
//! Lock and Campaign wait as long as their client does: no request
//! timeout, and a client that goes away cancels the upstream call, so the
//! member withdraws its queued key.
use cairn_proto::v3electionpb::election_client::ElectionClient;
use cairn_proto::v3electionpb::election_server::Election;
use cairn_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use cairn_proto::v3lockpb::lock_client::LockClient;
use cairn_proto::v3lockpb::lock_server::Lock;
use cairn_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::forward::{forward, token_of, with_token};
use crate::namespace::Namespace;
use crate::{BoxStream, Proxy};

fn up_leader(ns: &Namespace, l: &mut Option<LeaderKey>) {
    if let Some(l) = l {
        l.name = ns.key(&l.name);
        l.key = ns.key(&l.key);
    }
}

fn down_leader(ns: &Namespace, l: &mut Option<LeaderKey>) {
    if let Some(l) = l {
        ns.strip(&mut l.name);
        ns.strip(&mut l.key);
    }
}

fn down_kv(ns: &Namespace, r: &mut LeaderResponse) {
    if let Some(kv) = &mut r.kv {
        ns.strip(&mut kv.key);
    }
}

#[tonic::async_trait]
impl Lock for Proxy {
    async fn lock(&self, r: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        req.name = self.0.ns.key(&req.name);
        let mut resp = self
            .0
            .call_until(false, None, |c| {
                let req = with_token(req.clone(), &token);
                async move { LockClient::new(c).lock(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        self.0.ns.strip(&mut resp.key);
        Ok(Response::new(resp))
    }

    async fn unlock(
        &self,
        mut r: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = self.0.ns.key(&r.get_ref().key);
        r.get_mut().key = key;
        forward!(self, r, LockClient, unlock, false)
    }
}

#[tonic::async_trait]
impl Election for Proxy {
    async fn campaign(
        &self,
        r: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        req.name = self.0.ns.key(&req.name);
        let mut resp = self
            .0
            .call_until(false, None, |c| {
                let req = with_token(req.clone(), &token);
                async move { ElectionClient::new(c).campaign(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        down_leader(&self.0.ns, &mut resp.leader);
        Ok(Response::new(resp))
    }

    async fn proclaim(
        &self,
        mut r: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        up_leader(&self.0.ns, &mut r.get_mut().leader);
        forward!(self, r, ElectionClient, proclaim, false)
    }

    async fn leader(
        &self,
        mut r: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let name = self.0.ns.key(&r.get_ref().name);
        r.get_mut().name = name;
        let mut resp: Result<Response<LeaderResponse>, Status> =
            forward!(self, r, ElectionClient, leader, true);
        if let Ok(resp) = &mut resp {
            down_kv(&self.0.ns, resp.get_mut());
        }
        resp
    }

    type ObserveStream = BoxStream<LeaderResponse>;

    async fn observe(
        &self,
        r: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        req.name = self.0.ns.key(&req.name);
        let upstream = self
            .0
            .call(true, |c| {
                let req = with_token(req.clone(), &token);
                async move { ElectionClient::new(c).observe(req).await }
            })
            .await?;
        let ns = self.0.ns.clone();
        let stream = upstream.map(move |r| {
            r.map(|mut resp| {
                down_kv(&ns, &mut resp);
                resp
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        mut r: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        up_leader(&self.0.ns, &mut r.get_mut().leader);
        forward!(self, r, ElectionClient, resign, false)
    }
}
