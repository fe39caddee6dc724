//! What only the leader can answer, and how other members reach it.
//!
//! Writes need nothing here: raft itself carries a follower's proposal to
//! the leader, and the follower answers its client once it has applied the
//! entry. Lease renewals, a lease's remaining TTL, membership changes (the
//! strict reconfiguration check) and the promotion check
//! depend on the leader's memory (its lease deadlines, its view of each
//! member's log), so a follower sends those requests to the leader over the
//! peer transport, as etcd's followers forward LeaseKeepAlive over HTTP.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cairn_mvcc::Mvcc;
use cairn_proto::cairnpb::{PeerRequest, PeerResponse, peer_request::Req};
use cairn_store::FjallBackend;
use tonic::{Code, Status};

use super::{Api, status};
use crate::peer::{RequestHandler, SnapshotSource};

impl Api {
    pub fn is_leader(&self) -> bool {
        let st = self.node.status();
        st.leader_id != 0 && st.leader_id == st.id
    }

    /// Sends `req` to the leader, or answers it here when this member leads.
    pub async fn on_leader(&self, req: Req) -> Result<PeerResponse, Status> {
        let st = self.node.status();
        if st.leader_id == 0 {
            return Err(status::propose(cairn_raft::ProposeError::NoLeader));
        }
        let resp = if st.leader_id == st.id {
            self.answer(req).await
        } else {
            self.peers
                .request(st.leader_id, &PeerRequest { req: Some(req) })
                .await
                .map_err(|e| {
                    tracing::debug!("forwarding to the leader failed: {e}");
                    Status::unavailable("etcdserver: leader changed")
                })?
        };
        if resp.code != 0 {
            return Err(Status::new(Code::from_i32(resp.code as i32), resp.message));
        }
        Ok(resp)
    }

    /// Answers a request from another member.
    async fn answer(&self, req: Req) -> PeerResponse {
        let leader_only = !matches!(req, Req::JoinInfo(_) | Req::HashKv(_));
        if leader_only && !self.is_leader() {
            return failed(Status::unavailable("etcdserver: leader changed"));
        }
        let r = match req {
            Req::JoinInfo(_) => {
                self.mvcc
                    .members()
                    .map_err(|e| status::mvcc(e.into()))
                    .map(|members| PeerResponse {
                        cluster_id: self.identity.cluster_id,
                        members,
                        ..Default::default()
                    })
            }
            Req::LeaseKeepAlive(id) => self.lease_keep_alive_here(id).await.map(|r| PeerResponse {
                lease_keep_alive: Some(r),
                ..Default::default()
            }),
            Req::LeaseTimeToLive(r) => {
                self.lease_time_to_live_here(r).await.map(|r| PeerResponse {
                    lease_time_to_live: Some(r),
                    ..Default::default()
                })
            }
            Req::MemberPromote(id) => self.member_promote_here(id).await.map(|r| PeerResponse {
                member_promote: Some(r),
                ..Default::default()
            }),
            Req::MemberAdd(r) => self.member_add_here(r).await.map(|r| PeerResponse {
                member_add: Some(r),
                ..Default::default()
            }),
            Req::MemberRemove(id) => self.member_remove_here(id).await.map(|r| PeerResponse {
                member_remove: Some(r),
                ..Default::default()
            }),
            // The answer has MemberRemoveResponse's shape: the members after.
            Req::MemberDemote(id) => self.member_demote_here(id).await.map(|r| PeerResponse {
                member_remove: Some(r),
                ..Default::default()
            }),
            // The corruption checks: this member's hash at a revision,
            // with its current revision in the header.
            Req::HashKv(rev) => self.mvcc.hash_kv(rev).map_err(status::mvcc).map(
                |(hash, compact_revision, hash_revision)| PeerResponse {
                    hash_kv: Some(cairn_proto::etcdserverpb::HashKvResponse {
                        header: Some(self.header(self.mvcc.current_revision())),
                        hash,
                        compact_revision,
                        hash_revision,
                    }),
                    ..Default::default()
                },
            ),
            // The revision and the applied index are read together: a
            // member holding this index holds this revision.
            Req::Progress(_) => {
                let applied = self.node.status().applied_index;
                Ok(PeerResponse {
                    revision: self.mvcc.current_revision(),
                    commit_index: applied,
                    ..Default::default()
                })
            }
        };
        r.unwrap_or_else(failed)
    }
}

fn failed(s: Status) -> PeerResponse {
    PeerResponse {
        code: s.code() as u32,
        message: s.message().to_string(),
        ..Default::default()
    }
}

impl RequestHandler for Api {
    fn handle(&self, req: PeerRequest) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + '_>> {
        Box::pin(async move {
            match req.req {
                Some(r) => self.answer(r).await,
                None => failed(Status::invalid_argument("empty peer request")),
            }
        })
    }
}

/// The store's content for a member that needs a snapshot.
pub struct StoreSnapshots(pub Arc<Mvcc<FjallBackend>>);

impl SnapshotSource for StoreSnapshots {
    fn chunks(&self) -> Box<dyn Iterator<Item = Result<Vec<u8>, String>> + Send> {
        Box::new(
            self.0
                .snapshot_chunks(1 << 20)
                .map(|c| c.map_err(|e| e.to_string())),
        )
    }
}
