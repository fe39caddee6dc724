//! Lease: Grant, Revoke, KeepAlive, TimeToLive, Leases, and the expiry loop.
//!
//! Deadlines live in the lessor (memory); a lease's existence and its keys
//! live in the store. Expiry is decided here and carried out through the log
//! (a LeaseRevoke command), as etcd's leader does.
use std::collections::HashSet;
use std::time::Duration;

use cairn_mvcc::lease::MAX_LEASE_TTL;
use cairn_mvcc::{MvccError, Response};
use cairn_proto::cairnpb::command::Op;
use cairn_proto::cairnpb::peer_request::Req;
use cairn_proto::etcdserverpb::lease_server::Lease;
use cairn_proto::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use futures::StreamExt;
use rand::Rng;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::{Api, BoxStream, status};
use crate::auth::caller_of;
use crate::limits;
use cairn_mvcc::auth::{Access, AuthError, AuthInfo};

// === impl Api ===

impl Api {
    pub async fn lease_grant(
        &self,
        mut req: LeaseGrantRequest,
        who: &AuthInfo,
    ) -> Result<LeaseGrantResponse, Status> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(status::mvcc(MvccError::LeaseTtlTooLarge));
        }
        // etcd raises a TTL below the minimum to the minimum.
        req.ttl = req.ttl.max(self.min_lease_ttl);
        if req.id == 0 {
            req.id = self.fresh_lease_id()?;
        }
        match self
            .propose_as(Op::LeaseGrant(req), who)
            .await?
            .result
            .map_err(status::mvcc)?
        {
            Response::LeaseGrant(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// A positive int64 no lease has (etcd's IDs are positive as well).
    fn fresh_lease_id(&self) -> Result<i64, Status> {
        let mut rng = rand::rng();
        loop {
            let id = rng.random_range(1..i64::MAX);
            if self
                .mvcc
                .lease(id)
                .map_err(|e| status::mvcc(e.into()))?
                .is_none()
            {
                return Ok(id);
            }
        }
    }

    pub async fn lease_revoke(
        &self,
        req: LeaseRevokeRequest,
        who: &AuthInfo,
    ) -> Result<LeaseRevokeResponse, Status> {
        match self
            .propose_as(Op::LeaseRevoke(req), who)
            .await?
            .result
            .map_err(status::mvcc)?
        {
            Response::LeaseRevoke(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// Remaining TTLs are known to the leader (its deadlines are the ones
    /// renewals move); other members ask it.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
        who: &AuthInfo,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.lease_keys_permitted(who, &[req.id], Access::Read)?;
        let resp = self.on_leader(Req::LeaseTimeToLive(req)).await?;
        let mut r = resp.lease_time_to_live.unwrap_or_default();
        r.header = Some(self.header(self.mvcc.current_revision()));
        Ok(r)
    }

    pub(super) async fn lease_time_to_live_here(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse, Status> {
        self.linearizable_barrier().await?;
        let lease = self
            .mvcc
            .lease(req.id)
            .map_err(|e| status::mvcc(e.into()))?;
        let Some(lease) = lease else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(LeaseTimeToLiveResponse {
                header: Some(self.header(self.mvcc.current_revision())),
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let remaining = self
            .lessor
            .lock()
            .expect("lessor lock")
            .remaining(req.id, self.clock.now_ms())
            .unwrap_or(0);
        let keys = if req.keys {
            self.mvcc
                .lease_keys(req.id)
                .map_err(|e| status::mvcc(e.into()))?
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            id: req.id,
            ttl: remaining,
            granted_ttl: lease.ttl,
            keys,
        })
    }

    pub async fn lease_leases(&self, who: &AuthInfo) -> Result<LeaseLeasesResponse, Status> {
        self.linearizable_barrier().await?;
        let leases = self.mvcc.leases().map_err(|e| status::mvcc(e.into()))?;
        let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
        self.lease_keys_permitted(who, &ids, Access::Read)?;
        Ok(LeaseLeasesResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            leases: leases
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        })
    }

    /// etcd's `checkLeaseRenew`/`checkLeaseTimeToLive`/`checkLeaseLeases`:
    /// with auth on, an admin may; anyone else needs `access` on every key
    /// the leases hold.
    fn lease_keys_permitted(
        &self,
        who: &AuthInfo,
        ids: &[i64],
        access: Access,
    ) -> Result<(), Status> {
        let auth = self.mvcc.auth();
        if !auth.enabled {
            return Ok(());
        }
        if who.user.is_empty() {
            return Err(status::auth(AuthError::UserEmpty));
        }
        if auth.check_admin(who).is_ok() {
            return Ok(());
        }
        for &id in ids {
            for key in self
                .mvcc
                .lease_keys(id)
                .map_err(|e| status::mvcc(e.into()))?
            {
                auth.check(who, &key, &[], access).map_err(status::auth)?;
            }
        }
        Ok(())
    }

    /// Renewals move the leader's deadlines; other members pass them on.
    pub async fn lease_keep_alive_once(
        &self,
        id: i64,
        who: &AuthInfo,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        self.lease_keys_permitted(who, &[id], Access::Write)?;
        let resp = self.on_leader(Req::LeaseKeepAlive(id)).await?;
        let mut r = resp.lease_keep_alive.unwrap_or_default();
        r.id = id;
        r.header = Some(self.header(self.mvcc.current_revision()));
        Ok(r)
    }

    pub(super) async fn lease_keep_alive_here(
        &self,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        // A renewal must not outlive a revocation committed before it.
        self.linearizable_barrier().await?;
        let (ttl, reset) = {
            let mut lessor = self.lessor.lock().expect("lessor lock");
            // etcd: an unknown lease renews to TTL 0
            let ttl = lessor.renew(id, self.clock.now_ms()).unwrap_or(0);
            (ttl, ttl > 0 && lessor.has_checkpoint(id))
        };
        if reset {
            // The store records a remaining TTL from before this renewal: a
            // new leader would start the lease from it and cut it short.
            self.propose(Op::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id,
                    remaining_ttl: 0,
                }],
            }))
            .await?;
        }
        Ok(LeaseKeepAliveResponse {
            header: Some(self.header(self.mvcc.current_revision())),
            id,
            ttl,
        })
    }
}

#[tonic::async_trait]
impl Lease for Api {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::lease_grant(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::lease_revoke(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<Self::LeaseKeepAliveStream>, Status> {
        let meta = r.metadata().clone();
        let cert = crate::auth::cert_name(r.extensions());
        let mut input = r.into_inner();
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(limits::STREAM_SEND_QUEUE);
        tokio::spawn(async move {
            while let Some(Ok(req)) = input.next().await {
                // Each renewal as the stream's caller now (a token may
                // expire while the stream lives).
                let resp = match api.caller(&meta, cert.as_ref()).await {
                    Ok(who) => api.lease_keep_alive_once(req.id, &who).await,
                    Err(e) => Err(e),
                };
                if tx.send(resp).await.is_err() {
                    break;
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<LeaseTimeToLiveResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::lease_time_to_live(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    async fn lease_leases(
        &self,
        r: Request<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::lease_leases(self, &who).await.map(GrpcResponse::new)
    }
}

/// Records, through the log, the remaining TTL of the leases that drifted at
/// least `drift_s` seconds from what the store holds (etcd's lease
/// checkpoints), so that a new leader starts them from there. Leader only.
pub async fn checkpoint_leases(api: &Api, drift_s: i64) -> Result<usize, Status> {
    let mut done = 0;
    loop {
        let due = api.lessor.lock().expect("lessor lock").checkpoints_due(
            api.clock.now_ms(),
            drift_s,
            limits::LEASE_CHECKPOINTS_PER_ENTRY,
        );
        if due.is_empty() {
            return Ok(done);
        }
        let n = due.len();
        api.propose(Op::LeaseCheckpoint(LeaseCheckpointRequest {
            checkpoints: due
                .into_iter()
                .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        }))
        .await?;
        done += n;
        if n < limits::LEASE_CHECKPOINTS_PER_ENTRY {
            return Ok(done);
        }
    }
}

/// Checkpoints drifted leases every `interval` while this member leads.
pub async fn checkpoint_loop(
    api: Api,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Half the interval, so an idle lease is recorded at every tick: the
    // TTL a new leader starts from is at most one interval too long.
    let drift = (interval.as_secs() as i64 / 2).max(1);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !api.is_leader() {
            continue;
        }
        if let Err(e) = checkpoint_leases(&api, drift).await {
            tracing::debug!(error = %e, "lease checkpoint failed");
        }
    }
}

/// Revokes expired leases through the log, a bounded number per pass.
pub async fn expiry_loop(api: Api, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(limits::LEASE_EXPIRY_CHECK_MS));
    let in_flight = std::sync::Arc::new(std::sync::Mutex::new(HashSet::<i64>::new()));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let st = api.node.status();
        if st.leader_id == 0 || st.leader_id != st.id {
            continue;
        }
        let expired = api
            .lessor
            .lock()
            .expect("lessor lock")
            .expired(api.clock.now_ms(), limits::LEASE_REVOKES_PER_PASS);
        for id in expired {
            if !in_flight.lock().expect("lock").insert(id) {
                continue;
            }
            let api = api.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                match api
                    .lease_revoke(LeaseRevokeRequest { id }, &AuthInfo::internal())
                    .await
                {
                    Ok(_) => {
                        api.metrics.leases_expired.inc();
                        tracing::debug!(lease = id, "lease expired");
                    }
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed")
                    }
                }
                in_flight.lock().expect("lock").remove(&id);
            });
        }
    }
}
