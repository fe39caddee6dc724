//! Auth: enable/disable/status, Authenticate, users and roles (etcd's
//! `Auth` service). Changes go through the log and are decided by
//! `cairn_mvcc::auth` when applied (admin rights included); reads of the
//! auth store are linearizable and checked here, as etcd's applier does.
use cairn_mvcc::Response;
use cairn_mvcc::auth::{AuthError, AuthInfo, ROOT_ROLE, root_permission};
use cairn_proto::cairnpb::command::Op;
use cairn_proto::cairnpb::{AuthCommand, Authenticate, auth_command::Op as AuthOp};
use cairn_proto::etcdserverpb::auth_server::Auth;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response as GrpcResponse, Status};

use super::{Api, status};
use crate::auth::{Tokens, caller_of, hash_password, verify_password};

impl Api {
    /// Proposes an auth change as `who`; the header of the answer.
    async fn auth_change(
        &self,
        op: AuthOp,
        who: &AuthInfo,
    ) -> Result<(Option<ResponseHeader>, cairn_mvcc::auth::AuthApplied), Status> {
        let applied = self
            .propose_as(Op::Auth(AuthCommand { op: Some(op) }), who)
            .await?;
        match applied.result.map_err(status::mvcc)? {
            Response::Auth(a) => Ok((Some(self.header(applied.revision)), a)),
            other => Err(status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// etcd's Authenticate: the password is checked here (bcrypt, off the
    /// async threads) against a linearizable view of the store, then the
    /// token is issued through the log; if the auth store changed in
    /// between, again.
    pub async fn authenticate(
        &self,
        r: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, Status> {
        let err = |e: AuthError| status::auth(e);
        loop {
            self.linearizable_barrier().await?;
            let auth = self.mvcc.auth();
            if !auth.enabled {
                return Err(err(AuthError::AuthNotEnabled));
            }
            let user = auth
                .users
                .get(&r.name)
                .ok_or_else(|| err(AuthError::AuthFailed))?;
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(err(AuthError::AuthFailed));
            }
            if !verify_password(r.password.clone(), user.password.clone()).await {
                tracing::warn!(user = %r.name, "authentication failed: wrong password");
                return Err(err(AuthError::AuthFailed));
            }
            let checked = auth.revision;
            let (header, out) = self
                .auth_change(
                    AuthOp::Authenticate(Authenticate {
                        name: r.name.clone(),
                        token_prefix: Tokens::prefix(),
                    }),
                    &AuthInfo::default(),
                )
                .await?;
            if checked != self.mvcc.auth().revision {
                continue; // a change raced the check: decide again
            }
            let token = match self.tokens.sign(&r.name, out.revision) {
                Some(signed) => signed.map_err(status::internal)?,
                None => out
                    .issued
                    .map(|(_, t)| t)
                    .ok_or_else(|| status::internal("no token issued"))?,
            };
            return Ok(AuthenticateResponse { header, token });
        }
    }

    /// A linearizable look at the auth store.
    async fn auth_view(&self) -> Result<std::sync::Arc<cairn_mvcc::auth::AuthState>, Status> {
        self.linearizable_barrier().await?;
        Ok(self.mvcc.auth())
    }

    fn auth_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.mvcc.current_revision()))
    }
}

macro_rules! change {
    ($self:ident, $r:ident, $variant:ident, $resp:ident) => {{
        let who = caller_of($self, &$r).await?;
        let (header, _) = $self
            .auth_change(AuthOp::$variant($r.into_inner()), &who)
            .await?;
        Ok(GrpcResponse::new($resp { header }))
    }};
}

#[tonic::async_trait]
impl Auth for Api {
    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<GrpcResponse<AuthEnableResponse>, Status> {
        change!(self, r, Enable, AuthEnableResponse)
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<GrpcResponse<AuthDisableResponse>, Status> {
        change!(self, r, Disable, AuthDisableResponse)
    }

    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<GrpcResponse<AuthStatusResponse>, Status> {
        let auth = self.auth_view().await?;
        Ok(GrpcResponse::new(AuthStatusResponse {
            header: self.auth_header(),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<GrpcResponse<AuthenticateResponse>, Status> {
        Api::authenticate(self, r.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<GrpcResponse<AuthUserAddResponse>, Status> {
        let who = caller_of(self, &r).await?;
        let mut req = r.into_inner();
        if !req.options.is_some_and(|o| o.no_password) {
            let password = std::mem::take(&mut req.password);
            req.hashed_password = hash_password(password, self.tokens.bcrypt_cost).await?;
        } else {
            req.password.clear();
            req.hashed_password.clear();
        }
        let (header, _) = self.auth_change(AuthOp::UserAdd(req), &who).await?;
        Ok(GrpcResponse::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<GrpcResponse<AuthUserGetResponse>, Status> {
        let who = caller_of(self, &r).await?;
        let name = r.into_inner().name;
        let auth = self.auth_view().await?;
        if let Err(e) = auth.check_admin(&who)
            && name != who.user
        {
            return Err(status::auth(e));
        }
        let user = auth
            .users
            .get(&name)
            .ok_or_else(|| status::auth(AuthError::UserNotFound))?;
        Ok(GrpcResponse::new(AuthUserGetResponse {
            header: self.auth_header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<GrpcResponse<AuthUserListResponse>, Status> {
        let who = caller_of(self, &r).await?;
        let auth = self.auth_view().await?;
        auth.check_admin(&who).map_err(status::auth)?;
        Ok(GrpcResponse::new(AuthUserListResponse {
            header: self.auth_header(),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<GrpcResponse<AuthUserDeleteResponse>, Status> {
        change!(self, r, UserDelete, AuthUserDeleteResponse)
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<GrpcResponse<AuthUserChangePasswordResponse>, Status> {
        let who = caller_of(self, &r).await?;
        let mut req = r.into_inner();
        if !req.password.is_empty() {
            let password = std::mem::take(&mut req.password);
            req.hashed_password = hash_password(password, self.tokens.bcrypt_cost).await?;
        }
        let (header, _) = self
            .auth_change(AuthOp::UserChangePassword(req), &who)
            .await?;
        Ok(GrpcResponse::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserGrantRoleResponse>, Status> {
        change!(self, r, UserGrantRole, AuthUserGrantRoleResponse)
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserRevokeRoleResponse>, Status> {
        change!(self, r, UserRevokeRole, AuthUserRevokeRoleResponse)
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<GrpcResponse<AuthRoleAddResponse>, Status> {
        change!(self, r, RoleAdd, AuthRoleAddResponse)
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<GrpcResponse<AuthRoleGetResponse>, Status> {
        let who = caller_of(self, &r).await?;
        let role = r.into_inner().role;
        let auth = self.auth_view().await?;
        if let Err(e) = auth.check_admin(&who)
            && !auth.has_role(&who.user, &role)
        {
            return Err(status::auth(e));
        }
        let found = auth
            .roles
            .get(&role)
            .ok_or_else(|| status::auth(AuthError::RoleNotFound))?;
        let perm = if role == ROOT_ROLE {
            vec![root_permission()]
        } else {
            found.key_permission.clone()
        };
        Ok(GrpcResponse::new(AuthRoleGetResponse {
            header: self.auth_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<GrpcResponse<AuthRoleListResponse>, Status> {
        let who = caller_of(self, &r).await?;
        let auth = self.auth_view().await?;
        auth.check_admin(&who).map_err(status::auth)?;
        Ok(GrpcResponse::new(AuthRoleListResponse {
            header: self.auth_header(),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<GrpcResponse<AuthRoleDeleteResponse>, Status> {
        change!(self, r, RoleDelete, AuthRoleDeleteResponse)
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleGrantPermissionResponse>, Status> {
        change!(
            self,
            r,
            RoleGrantPermission,
            AuthRoleGrantPermissionResponse
        )
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleRevokePermissionResponse>, Status> {
        change!(
            self,
            r,
            RoleRevokePermission,
            AuthRoleRevokePermissionResponse
        )
    }
}
