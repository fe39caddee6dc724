//! Cluster: the membership. Raft's configuration changes through conf-change
//! entries, each carrying the member's record (name, URLs, learner flag),
//! which the applier stores beside the data (`Mvcc::members`), so every
//! member answers MemberList from its own replica.
use cairn_proto::cairnpb::command::Op;
use cairn_proto::cairnpb::peer_request::Req;
use cairn_proto::cairnpb::{self, MemberPeerUrls};
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use cairn_raft::{ConfChange, ConfChangeType};
use prost::Message;
use tonic::{Code, Request, Response, Status};

use super::{Api, status};
use crate::auth::caller_of;

fn to_etcd(m: cairnpb::Member) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn failed(msg: &str) -> Status {
    Status::new(Code::FailedPrecondition, msg)
}

fn not_found() -> Status {
    Status::not_found("etcdserver: member not found")
}

/// Peer URLs for a member (`id`, 0 for a new one): well formed, and no
/// other member's.
fn check_peer_urls(urls: &[String], records: &[cairnpb::Member], id: u64) -> Result<(), Status> {
    if urls.is_empty() || urls.iter().any(|u| crate::peer::host_port(u).is_none()) {
        return Err(Status::invalid_argument(
            "etcdserver: given member URLs are invalid",
        ));
    }
    if records
        .iter()
        .filter(|m| m.id != id)
        .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    {
        return Err(failed("etcdserver: Peer URLs already exists"));
    }
    Ok(())
}

/// A learner may be promoted once its log matches at least this share of
/// the leader's (etcd's readyPercentThreshold).
const PROMOTE_READY: f64 = 0.9;

impl Api {
    fn records(&self) -> Result<Vec<cairnpb::Member>, Status> {
        self.mvcc.members().map_err(|e| status::mvcc(e.into()))
    }

    pub fn members(&self) -> Result<MemberListResponse, Status> {
        let mut members: Vec<Member> = self.records()?.into_iter().map(to_etcd).collect();
        if members.is_empty() {
            // A store from before membership records were kept.
            let id = &self.identity;
            members.push(Member {
                id: id.member_id,
                name: id.name.clone(),
                peer_ur_ls: id.peer_urls.clone(),
                client_ur_ls: id.client_urls.clone(),
                is_learner: false,
            });
        }
        Ok(MemberListResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            members,
        })
    }

    async fn change(&self, cc: ConfChange) -> Result<(), Status> {
        self.node
            .propose_conf_change(cc)
            .await
            .map_err(status::propose)?;
        Ok(())
    }

    /// etcd's `--strict-reconfig-check` rules, on the leader (only it knows
    /// which voters it hears from). Adding a voter needs every voter
    /// connected (a learner too); removing one needs a quorum of the rest
    /// connected, unless the member removed is itself down.
    /// `adding`: `Some(is_voter)` for MemberAdd, `None` for removing `removed`.
    async fn check_reconfig(&self, adding: Option<bool>, removed: u64) -> Result<(), Status> {
        if !self.settings.strict_reconfig_check {
            return Ok(());
        }
        let Some(p) = self.node.progress().await.map_err(status::propose)? else {
            return Err(Status::unavailable("etcdserver: leader changed"));
        };
        let voters = self.node.status().voters;
        let records = self.records()?;
        let started = |id: &u64| records.iter().any(|m| m.id == *id && !m.name.is_empty());
        let active = |id: &u64| *id == p.leader || p.active.contains(id);
        let not_started =
            || failed("etcdserver: re-configuration failed due to not enough started members");
        let unhealthy = || Status::unavailable("etcdserver: unhealthy cluster");
        if let Some(voter) = adding {
            let members = voters.len() + 1;
            if voter && voters.iter().filter(|v| started(v)).count() < members / 2 + 1 {
                return Err(not_started());
            }
            if !voters.iter().all(active) {
                return Err(unhealthy());
            }
            return Ok(());
        }
        let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != removed).collect();
        if rest.iter().filter(|v| started(v)).count() < rest.len() / 2 + 1 || rest.is_empty() {
            return Err(not_started());
        }
        if removed != p.leader && !p.active.contains(&removed) {
            return Ok(()); // a member that is down is not part of the quorum
        }
        let connected = voters.iter().filter(|v| active(v)).count();
        if connected.saturating_sub(1) < 1 + (voters.len() - 1) / 2 {
            return Err(unhealthy());
        }
        Ok(())
    }

    /// MemberAdd from any member: the leader checks and proposes it.
    pub async fn member_add_req(&self, req: MemberAddRequest) -> Result<MemberAddResponse, Status> {
        let resp = self.on_leader(Req::MemberAdd(req)).await?;
        let mut out = resp.member_add.unwrap_or_default();
        out.header = Some(self.header(self.mvcc.current_revision()));
        Ok(out)
    }

    /// MemberRemove from any member, as MemberAdd.
    pub async fn member_remove_req(&self, id: u64) -> Result<MemberRemoveResponse, Status> {
        let resp = self.on_leader(Req::MemberRemove(id)).await?;
        let mut out = resp.member_remove.unwrap_or_default();
        out.header = Some(self.header(self.mvcc.current_revision()));
        Ok(out)
    }

    pub(super) async fn member_add_here(
        &self,
        req: MemberAddRequest,
    ) -> Result<MemberAddResponse, Status> {
        let records = self.records()?;
        check_peer_urls(&req.peer_ur_ls, &records, 0)?;
        if req.is_learner {
            let learners = records.iter().filter(|m| m.is_learner).count();
            if learners >= self.settings.max_learners {
                return Err(failed("etcdserver: too many learner members in cluster"));
            }
        }
        self.check_reconfig(Some(!req.is_learner), 0).await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let id = crate::identity::member_id(
            &req.peer_ur_ls,
            &format!("{}{nanos}", self.settings.cluster_token),
        );
        if records.iter().any(|m| m.id == id) {
            return Err(failed("etcdserver: member ID already exist"));
        }
        let record = cairnpb::Member {
            id,
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        });
        cc.node_id = id;
        cc.context = record.encode_to_vec().into();
        self.change(cc).await?;
        let list = self.members()?;
        Ok(MemberAddResponse {
            header: list.header,
            member: Some(to_etcd(record)),
            members: list.members,
        })
    }

    pub(super) async fn member_remove_here(&self, id: u64) -> Result<MemberRemoveResponse, Status> {
        let records = self.records()?;
        let Some(m) = records.iter().find(|m| m.id == id) else {
            return Err(not_found());
        };
        if !m.is_learner {
            self.check_reconfig(None, id).await?;
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = id;
        self.change(cc).await?;
        let list = self.members()?;
        Ok(MemberRemoveResponse {
            header: list.header,
            members: list.members,
        })
    }

    /// Turns a voter into a learner (cairn's own operation: etcd has none).
    /// The voter leaves the quorum, so the rules of removing one apply; the
    /// leader itself must hand leadership over first.
    pub(super) async fn member_demote_here(&self, id: u64) -> Result<MemberRemoveResponse, Status> {
        let records = self.records()?;
        let Some(m) = records.into_iter().find(|m| m.id == id) else {
            return Err(not_found());
        };
        if m.is_learner {
            return Err(failed("cairn: the member is already a learner"));
        }
        if id == self.node.status().id {
            return Err(failed(
                "cairn: the leader cannot be demoted; move leadership first (etcdctl move-leader)",
            ));
        }
        if self.node.status().voters.len() <= 1 {
            return Err(failed("cairn: the last voter cannot be demoted"));
        }
        self.check_reconfig(None, id).await?;
        let mut record = m;
        record.is_learner = true;
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        cc.node_id = id;
        cc.context = record.encode_to_vec().into();
        self.change(cc).await?;
        let list = self.members()?;
        Ok(MemberRemoveResponse {
            header: list.header,
            members: list.members,
        })
    }

    /// `POST /v3/cluster/member/demote {"ID": ...}` on any member.
    pub async fn member_demote_req(&self, id: u64) -> Result<MemberRemoveResponse, Status> {
        let resp = self.on_leader(Req::MemberDemote(id)).await?;
        let mut out = resp.member_remove.unwrap_or_default();
        out.header = Some(self.header(self.mvcc.current_revision()));
        Ok(out)
    }

    pub async fn member_update_req(
        &self,
        req: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, Status> {
        let records = self.records()?;
        if !records.iter().any(|m| m.id == req.id) {
            return Err(not_found());
        }
        check_peer_urls(&req.peer_ur_ls, &records, req.id)?;
        self.propose(Op::MemberPeerUrls(MemberPeerUrls {
            id: req.id,
            peer_urls: req.peer_ur_ls,
        }))
        .await?;
        let list = self.members()?;
        Ok(MemberUpdateResponse {
            header: list.header,
            members: list.members,
        })
    }

    /// Runs on the leader: only it knows how far the learner's log is.
    pub(super) async fn member_promote_here(
        &self,
        id: u64,
    ) -> Result<MemberPromoteResponse, Status> {
        let records = self.records()?;
        let Some(m) = records.into_iter().find(|m| m.id == id) else {
            return Err(not_found());
        };
        if !m.is_learner {
            return Err(failed("etcdserver: can only promote a learner member"));
        }
        let p = self
            .node
            .progress()
            .await
            .map_err(status::propose)?
            .ok_or_else(|| Status::unavailable("etcdserver: leader changed"))?;
        let matched = |who: u64| {
            p.matched
                .iter()
                .find(|(i, _)| *i == who)
                .map(|(_, m)| *m)
                .unwrap_or(0)
        };
        let (leader, learner) = (matched(p.leader), matched(id));
        if (learner as f64) < (leader as f64) * PROMOTE_READY {
            return Err(failed(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ));
        }
        let mut record = m;
        record.is_learner = false;
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = id;
        cc.context = record.encode_to_vec().into();
        self.change(cc).await?;
        let list = self.members()?;
        Ok(MemberPromoteResponse {
            header: list.header,
            members: list.members,
        })
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        self.member_add_req(r.into_inner()).await.map(Response::new)
    }
    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        self.member_remove_req(r.into_inner().id)
            .await
            .map(Response::new)
    }
    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        self.member_update_req(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn member_list(
        &self,
        r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if r.into_inner().linearizable {
            self.linearizable_barrier().await?;
        }
        self.members().map(Response::new)
    }
    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check_admin(&caller_of(self, &r).await?)?;
        let id = r.into_inner().id;
        let resp = self.on_leader(Req::MemberPromote(id)).await?;
        let mut out = resp.member_promote.unwrap_or_default();
        out.header = Some(self.header(self.mvcc.current_revision()));
        Ok(Response::new(out))
    }
}
