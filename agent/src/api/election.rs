//! v3election: Campaign, Proclaim, Leader, Observe, Resign, as etcd's
//! server-side election (`v3election/election.go` over
//! `concurrency.Election`), on this member's own proposals and watch hub.
//!
//! An election named `N` is a queue of keys `N/<lease in hex>`
//! (`concurrency.rs`): the leader is the key with the lowest create
//! revision, and its value is the leader's proclamation. `LeaderKey.rev`
//! (the key's create revision) is the leader's fencing token: guard writes
//! with `compare(create_revision(key) == rev)`.
use cairn_mvcc::auth::AuthInfo;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RequestOp, ResponseHeader, TxnRequest, request_op,
};
use cairn_proto::mvccpb::{KeyValue, event::EventType};
use cairn_proto::v3electionpb::election_server::Election;
use cairn_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::concurrency::{Slot, first_created};
use super::{Api, BoxStream, status};
use crate::auth::caller_of;
use crate::limits;

fn prefix_of(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

fn guarded(key: &[u8], rev: i64, then: RequestOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::CreateRevision(rev)),
        }],
        success: vec![then],
        failure: Vec::new(),
    }
}

// === impl Api ===

impl Api {
    /// Waits until the caller leads election `req.name`, with `req.value`
    /// proclaimed. Campaigning again with the same lease finds the same key
    /// (and proclaims the new value). Fails when the lease expires or is
    /// revoked while waiting; a caller that goes away leaves the queue.
    pub async fn campaign(
        &self,
        req: CampaignRequest,
        who: AuthInfo,
    ) -> Result<CampaignResponse, Status> {
        let w = who.clone();
        self.detached(
            who,
            move |api| async move {
                let prefix = prefix_of(&req.name);
                let lease = api.session_lease(req.lease, &w).await?;
                let q = api.enqueue(&prefix, lease, &req.value, &w).await?;
                if q.existing_value.as_ref().is_some_and(|v| *v != req.value)
                    && let Err(e) = api.proclaim_slot(&q.slot, &req.value, &w).await
                {
                    api.withdraw(&q.slot, &w).await;
                    return Err(e);
                }
                Ok((q.slot.clone(), (prefix, req.name, q.owner, q.header)))
            },
            |api, slot, (prefix, name, owner, header)| async move {
                if !owner {
                    api.wait_turn(&prefix, &slot, "election").await?;
                }
                // etcd answers with the header of the txn that queued.
                Ok(CampaignResponse {
                    header: Some(header),
                    leader: Some(LeaderKey {
                        name,
                        key: slot.key,
                        rev: slot.rev,
                        lease: slot.lease,
                    }),
                })
            },
        )
        .await
    }

    /// Puts `value` on the leader's key if it still is the one created at
    /// `slot.rev`.
    async fn proclaim_slot(
        &self,
        slot: &Slot,
        value: &[u8],
        who: &AuthInfo,
    ) -> Result<ResponseHeader, Status> {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: slot.key.clone(),
                value: value.to_vec(),
                lease: slot.lease,
                ..Default::default()
            })),
        };
        let resp = self.txn(guarded(&slot.key, slot.rev, put), who).await?;
        if !resp.succeeded {
            return Err(status::election_not_leader());
        }
        Ok(resp.header.unwrap_or_default())
    }

    pub async fn proclaim(
        &self,
        req: ProclaimRequest,
        who: &AuthInfo,
    ) -> Result<ProclaimResponse, Status> {
        let leader = req.leader.ok_or_else(status::missing_leader_key)?;
        let lease = self.session_lease(leader.lease, who).await?;
        let slot = Slot {
            key: leader.key,
            rev: leader.rev,
            lease,
        };
        let header = self.proclaim_slot(&slot, &req.value, who).await?;
        Ok(ProclaimResponse {
            header: Some(header),
        })
    }

    /// Deletes the leader's key if it still is the one created at
    /// `leader.rev`; resigning a leadership already lost is not an error.
    pub async fn resign(
        &self,
        req: ResignRequest,
        who: &AuthInfo,
    ) -> Result<ResignResponse, Status> {
        let leader = req.leader.ok_or_else(status::missing_leader_key)?;
        let delete = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..Default::default()
                },
            )),
        };
        let resp = self
            .txn(guarded(&leader.key, leader.rev, delete), who)
            .await?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    /// The leader's key and proclamation (linearizable).
    pub async fn leader(
        &self,
        req: LeaderRequest,
        who: &AuthInfo,
    ) -> Result<LeaderResponse, Status> {
        let resp = self
            .0
            .range_as(&first_created(&prefix_of(&req.name)), who)
            .await?;
        let kv = resp
            .kvs
            .into_iter()
            .next()
            .ok_or_else(status::election_no_leader)?;
        Ok(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        })
    }

    /// Streams the leader and each of its proclamations, then the next
    /// leader, in order, until the client goes away.
    pub fn observe_stream(&self, req: LeaderRequest, who: AuthInfo) -> BoxStream<LeaderResponse> {
        let (tx, rx) = mpsc::channel(limits::STREAM_SEND_QUEUE);
        let api = self.clone();
        tokio::spawn(async move {
            if let Err(s) = api.observe(&prefix_of(&req.name), &who, &tx).await {
                let _ = tx.send(Err(s)).await;
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Observe's loop: puts on the leader's key are sent as they come (from
    /// the hub's ring); when the leader's key is deleted, a first key
    /// appears, or the ring no longer covers what came since the last look,
    /// the leader is read again from the store and sent if it changed (as
    /// etcd's Observe, which promises the latest value, not every one).
    async fn observe(
        &self,
        prefix: &[u8],
        who: &AuthInfo,
        tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
    ) -> Result<(), Status> {
        let mut revisions = self.hub.subscribe();
        // The first read checks READ permission and is linearizable.
        let first = self.0.range_as(&first_created(prefix), who).await?;
        let mut seen = first.header.map(|h| h.revision).unwrap_or_default();
        let mut leader: Option<KeyValue> = None;
        self.observe_send(tx, &mut leader, first.kvs.into_iter().next(), seen)
            .await?;
        loop {
            tokio::select! {
                _ = tx.closed() => return Ok(()),
                changed = revisions.changed() => changed
                    .map_err(|_| Status::unavailable("etcdserver: server stopped"))?,
            }
            let current = *revisions.borrow_and_update();
            if current <= seen {
                continue;
            }
            let mut reread = false;
            match self.hub.get(seen + 1, current) {
                None => reread = true,
                Some(revs) => {
                    'revs: for (rev, events) in &revs {
                        for e in events.iter() {
                            let Some(kv) = e.kv.as_ref().filter(|kv| kv.key.starts_with(prefix))
                            else {
                                continue;
                            };
                            let put = e.r#type == EventType::Put as i32;
                            let leaders = leader.as_ref().is_some_and(|l| l.key == kv.key);
                            if leaders && put {
                                self.observe_send(tx, &mut leader, Some(kv.clone()), *rev)
                                    .await?;
                            } else if leaders || (leader.is_none() && put) {
                                reread = true;
                                break 'revs;
                            }
                        }
                    }
                }
            }
            if reread {
                let mut req = first_created(prefix);
                req.serializable = true;
                let now = self.mvcc.range(&req).map_err(status::mvcc)?;
                seen = now.header.map(|h| h.revision).unwrap_or_default();
                self.observe_send(tx, &mut leader, now.kvs.into_iter().next(), seen)
                    .await?;
            } else {
                seen = current;
            }
        }
    }

    /// Sends `kv` as the leader if it differs from the last one sent.
    async fn observe_send(
        &self,
        tx: &mpsc::Sender<Result<LeaderResponse, Status>>,
        leader: &mut Option<KeyValue>,
        kv: Option<KeyValue>,
        revision: i64,
    ) -> Result<(), Status> {
        let same = match (&*leader, &kv) {
            (Some(a), Some(b)) => a.key == b.key && a.mod_revision == b.mod_revision,
            (None, None) => true,
            _ => false,
        };
        *leader = kv;
        if same {
            return Ok(());
        }
        let Some(kv) = leader.clone() else {
            return Ok(());
        };
        let resp = LeaderResponse {
            header: Some(self.header(revision)),
            kv: Some(kv),
        };
        tx.send(Ok(resp))
            .await
            .map_err(|_| Status::cancelled("observer went away"))
    }
}

#[tonic::async_trait]
impl Election for Api {
    async fn campaign(
        &self,
        r: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::campaign(self, r.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn proclaim(
        &self,
        r: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::proclaim(self, r.into_inner(), &who)
            .await
            .map(Response::new)
    }

    async fn leader(&self, r: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::leader(self, r.into_inner(), &who)
            .await
            .map(Response::new)
    }

    type ObserveStream = BoxStream<LeaderResponse>;

    async fn observe(
        &self,
        r: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let who = caller_of(self, &r).await?;
        Ok(Response::new(self.observe_stream(r.into_inner(), who)))
    }

    async fn resign(&self, r: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::resign(self, r.into_inner(), &who)
            .await
            .map(Response::new)
    }
}
