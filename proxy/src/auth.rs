//! Auth forwarded to the cluster, with the client's token: the members
//! decide (the proxy holds no auth state).
use cairn_proto::etcdserverpb::auth_client::AuthClient;
use cairn_proto::etcdserverpb::auth_server::Auth;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::Proxy;
use crate::forward::forward;

#[tonic::async_trait]
impl Auth for Proxy {
    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        forward!(self, r, AuthClient, auth_enable, false)
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        forward!(self, r, AuthClient, auth_disable, false)
    }

    async fn auth_status(
        &self,
        r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        forward!(self, r, AuthClient, auth_status, true)
    }

    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        forward!(self, r, AuthClient, authenticate, false)
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        forward!(self, r, AuthClient, user_add, false)
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        forward!(self, r, AuthClient, user_get, true)
    }

    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        forward!(self, r, AuthClient, user_list, true)
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        forward!(self, r, AuthClient, user_delete, false)
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        forward!(self, r, AuthClient, user_change_password, false)
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        forward!(self, r, AuthClient, user_grant_role, false)
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        forward!(self, r, AuthClient, user_revoke_role, false)
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        forward!(self, r, AuthClient, role_add, false)
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        forward!(self, r, AuthClient, role_get, true)
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        forward!(self, r, AuthClient, role_list, true)
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        forward!(self, r, AuthClient, role_delete, false)
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        forward!(self, r, AuthClient, role_grant_permission, false)
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        forward!(self, r, AuthClient, role_revoke_permission, false)
    }
}

/// Asks the cluster every second whether auth is on (AuthStatus needs no
/// permission): the cache serves anonymous reads only while it is off.
pub(crate) async fn probe_loop(inner: std::sync::Weak<crate::Inner>) {
    use std::sync::atomic::Ordering;
    loop {
        let Some(i) = inner.upgrade() else {
            return;
        };
        let off = i
            .call(true, |c| async move {
                AuthClient::new(c).auth_status(AuthStatusRequest {}).await
            })
            .await
            .is_ok_and(|s| !s.enabled);
        i.auth_off.store(off, Ordering::Relaxed);
        drop(i);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
