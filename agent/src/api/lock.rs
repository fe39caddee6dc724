//! v3lock: Lock and Unlock, as etcd's server-side lock
//! (`v3lock/lock.go` over `concurrency.Mutex`), on this member's own
//! proposals and watch hub (`concurrency.rs`).
//!
//! The key Lock returns is `<name>/<lease in hex>`; it exists while the
//! caller holds the lock, and its create revision is the holder's fencing
//! token: it strictly increases from one holder to the next, so a resource
//! that remembers the highest token it has seen can refuse a holder whose
//! lease expired behind its back. `LockResponse.header.revision` (the
//! revision at acquisition) strictly increases as well. Inside etcd, guard
//! writes with `compare(create_revision(key) == token)`.
use cairn_mvcc::auth::AuthInfo;
use cairn_proto::etcdserverpb::DeleteRangeRequest;
use cairn_proto::v3lockpb::lock_server::Lock;
use cairn_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::caller_of;

// === impl Api ===

impl Api {
    /// Waits until the caller holds lock `req.name` under `req.lease` (a
    /// 60 s lease is granted when it is 0, as etcd does). Fails when the
    /// lease expires or is revoked while waiting; a caller that goes away
    /// leaves the queue.
    pub async fn lock(&self, req: LockRequest, who: AuthInfo) -> Result<LockResponse, Status> {
        let prefix = [&req.name[..], b"/"].concat();
        let w = who.clone();
        self.detached(
            who,
            move |api| async move {
                let lease = api.session_lease(req.lease, &w).await?;
                let q = api.enqueue(&prefix, lease, b"", &w).await?;
                Ok((q.slot.clone(), (prefix, q.owner, q.header)))
            },
            |api, slot, (prefix, owner, header)| async move {
                let header = if owner {
                    header
                } else {
                    api.wait_turn(&prefix, &slot, "mutex").await?
                };
                Ok(LockResponse {
                    header: Some(header),
                    key: slot.key,
                })
            },
        )
        .await
    }

    /// Deletes the key Lock returned (etcd's Unlock is a plain delete).
    pub async fn unlock(
        &self,
        req: UnlockRequest,
        who: &AuthInfo,
    ) -> Result<UnlockResponse, Status> {
        let resp = self
            .delete_range(
                DeleteRangeRequest {
                    key: req.key,
                    ..Default::default()
                },
                who,
            )
            .await?;
        Ok(UnlockResponse {
            header: resp.header,
        })
    }
}

#[tonic::async_trait]
impl Lock for Api {
    async fn lock(&self, r: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::lock(self, r.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn unlock(&self, r: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::unlock(self, r.into_inner(), &who)
            .await
            .map(Response::new)
    }
}
