//! etcd's auth store: users, roles, key-range permissions, the on/off switch
//! and the auth revision (etcd's `server/auth/store.go`). Pure: the state is
//! a value, changed only by [`AuthState::apply`] when a raft entry is applied
//! and persisted by the MVCC store in the same batch as the entry's applied
//! index. Tokens and password hashing live in the agent.
//!
//! Rules kept from etcd:
//! - auth can be enabled only when the user `root` exists and has the role
//!   `root`; while it is enabled, `root` cannot be deleted, lose the `root`
//!   role, and the `root` role cannot be deleted;
//! - a user with the `root` role may do anything; others need a READ or
//!   WRITE (or READWRITE) permission covering the whole key range asked;
//! - every change bumps the auth revision (enabling does not); a request made
//!   with an older revision than the store's is refused
//!   (`ErrAuthOldRevision`) so that the client re-authenticates;
//! - with auth enabled, a request without a user is refused with
//!   `ErrUserEmpty`.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use cairn_proto::authpb::{Permission, Role, User, UserAddOptions, permission::Type as PermType};
use cairn_proto::cairnpb::auth_command::Op;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// The auth revision carried by commands the server proposes on its own
/// behalf (lease expiry): they are never refused by permissions.
pub const INTERNAL_REVISION: u64 = u64::MAX;

/// etcd's auth errors; `agent/src/api/status.rs` maps them to etcd's codes
/// and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExist,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExist,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("revision of auth store is old")]
    AuthOldRevision,
}

/// Who a request runs as: the user its token or certificate named and the
/// auth revision the token was checked at. The default (no user, revision
/// 0) is an anonymous client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

impl AuthInfo {
    /// The server itself (lease expiry): passes every check.
    pub fn internal() -> AuthInfo {
        AuthInfo {
            user: String::new(),
            revision: INTERNAL_REVISION,
        }
    }

    pub fn is_internal(&self) -> bool {
        self.revision == INTERNAL_REVISION
    }
}

/// What a permission asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A key interval `[start, end)`; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// A permission's interval: an empty `range_end` is the single key,
    /// `"\0"` everything from `key` on.
    fn of_permission(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => {
                let mut e = key.to_vec();
                e.push(0);
                Some(e)
            }
            [0] => None,
            e => Some(e.to_vec()),
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }
}

/// A user's merged permissions, intervals sorted by start.
#[derive(Debug, Clone, Default)]
struct Perms {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

fn contains_point(ivs: &[Interval], key: &[u8]) -> bool {
    ivs.iter()
        .any(|iv| iv.start.as_slice() <= key && iv.end.as_deref().is_none_or(|e| key < e))
}

/// Whether the union of `ivs` (sorted by start) covers `[start, end)`.
fn covers(ivs: &[Interval], start: &[u8], end: Option<&[u8]>) -> bool {
    let mut reached: Vec<u8> = start.to_vec();
    for iv in ivs {
        if iv.start.as_slice() > reached.as_slice() {
            return false; // a gap before this interval
        }
        match &iv.end {
            None => return true,
            Some(e) if e.as_slice() > reached.as_slice() => reached = e.clone(),
            Some(_) => {}
        }
        if end.is_some_and(|end| reached.as_slice() >= end) {
            return true;
        }
    }
    false
}

fn has_root_role(u: &User) -> bool {
    u.roles.iter().any(|r| r == ROOT_ROLE)
}

/// What applying an auth command did that the agent must act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthApplied {
    /// A simple token was issued: (user, token).
    pub issued: Option<(String, String)>,
    /// This user's tokens are no longer valid (deleted, new password).
    pub invalidate_user: Option<String>,
    /// Auth was switched off: every token is void.
    pub disabled: bool,
    /// The auth revision after the command (what a JWT records).
    pub revision: u64,
}

/// The whole auth store. Cloned and replaced as a value on every change.
#[derive(Debug, Clone)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    perms: HashMap<String, Perms>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perms: HashMap::new(),
        }
    }
}

/// Keys and values an auth change writes to the meta table (`None`:
/// delete).
pub type AuthWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

pub(crate) const META_AUTH_ENABLED: &[u8] = b"auth/enabled";
pub(crate) const META_AUTH_REVISION: &[u8] = b"auth/revision";
pub(crate) const META_AUTH_USER: &[u8] = b"auth/user/";
pub(crate) const META_AUTH_ROLE: &[u8] = b"auth/role/";

fn user_key(name: &str) -> Vec<u8> {
    [META_AUTH_USER, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [META_AUTH_ROLE, name.as_bytes()].concat()
}

/// The root role's permission as RoleGet shows it: everything.
pub fn root_permission() -> Permission {
    Permission {
        perm_type: PermType::Readwrite as i32,
        key: Vec::new(),
        range_end: vec![0],
    }
}

/// etcd's `isValidPermissionRange`: a key is required; a range end, when
/// given, is "\0" (to the end) or above the key.
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

impl AuthState {
    /// Builds the state from stored records.
    pub fn from_parts(
        enabled: bool,
        revision: u64,
        users: impl IntoIterator<Item = User>,
        roles: impl IntoIterator<Item = Role>,
    ) -> AuthState {
        let mut s = AuthState {
            enabled,
            revision: revision.max(1),
            users: users
                .into_iter()
                .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
                .collect(),
            roles: roles
                .into_iter()
                .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
                .collect(),
            perms: HashMap::new(),
        };
        s.refresh_perms();
        s
    }

    fn refresh_perms(&mut self) {
        self.perms = self
            .users
            .iter()
            .map(|(name, u)| {
                let mut p = Perms::default();
                for role in u.roles.iter().filter_map(|r| self.roles.get(r)) {
                    for perm in &role.key_permission {
                        let iv = Interval::of_permission(&perm.key, &perm.range_end);
                        match PermType::try_from(perm.perm_type).unwrap_or(PermType::Read) {
                            PermType::Read => p.read.push(iv),
                            PermType::Write => p.write.push(iv),
                            PermType::Readwrite => {
                                p.read.push(iv.clone());
                                p.write.push(iv);
                            }
                        }
                    }
                }
                p.read.sort_by(|a, b| a.start.cmp(&b.start));
                p.write.sort_by(|a, b| a.start.cmp(&b.start));
                (name.clone(), p)
            })
            .collect();
    }

    /// etcd's `IsAdminPermitted`: with auth on, the caller must be a user
    /// holding the `root` role.
    pub fn check_admin(&self, ai: &AuthInfo) -> Result<(), AuthError> {
        if !self.enabled || ai.is_internal() {
            return Ok(());
        }
        if ai.user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = self.users.get(&ai.user).ok_or(AuthError::UserNotFound)?;
        if has_root_role(u) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `isOpPermitted`: `range_end` empty asks for one key, `"\0"`
    /// for every key from `key` on.
    pub fn check(
        &self,
        ai: &AuthInfo,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled || ai.is_internal() {
            return Ok(());
        }
        if ai.revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if ai.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let u = self
            .users
            .get(&ai.user)
            .ok_or(AuthError::PermissionDenied)?;
        if has_root_role(u) {
            return Ok(());
        }
        let Some(p) = self.perms.get(&ai.user) else {
            return Err(AuthError::PermissionDenied);
        };
        let ivs = match access {
            Access::Read => &p.read,
            Access::Write => &p.write,
        };
        let ok = match range_end {
            [] => contains_point(ivs, key),
            [0] => covers(ivs, key, None),
            end if end <= key => contains_point(ivs, key),
            end => covers(ivs, key, Some(end)),
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// The caller holds `role` (etcd lets a user read its own roles).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Applies one auth command at raft index `index` for `ai`, returning
    /// what changed in storage. On error nothing changed.
    pub fn apply(
        &mut self,
        op: &Op,
        ai: &AuthInfo,
        index: u64,
    ) -> Result<(AuthApplied, AuthWrites), AuthError> {
        use AuthError::*;
        if !matches!(op, Op::Authenticate(_)) {
            self.check_admin(ai)?;
        }
        let mut out = AuthApplied::default();
        let mut users = BTreeSet::new();
        let mut roles = BTreeSet::new();
        let mut bump = true;
        match op {
            Op::Enable(_) => {
                bump = false;
                if !self.enabled {
                    let root = self.users.get(ROOT_USER).ok_or(RootUserNotExist)?;
                    if !has_root_role(root) {
                        return Err(RootRoleNotExist);
                    }
                    self.enabled = true;
                }
            }
            Op::Disable(_) => {
                if !self.enabled {
                    bump = false;
                } else {
                    self.enabled = false;
                    out.disabled = true;
                }
            }
            Op::Authenticate(a) => {
                bump = false;
                if !self.enabled {
                    return Err(AuthNotEnabled);
                }
                let u = self.users.get(&a.name).ok_or(AuthFailed)?;
                if u.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(AuthFailed);
                }
                out.issued = Some((a.name.clone(), format!("{}.{index}", a.token_prefix)));
            }
            Op::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(UserAlreadyExist);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password {
                    Vec::new()
                } else {
                    r.hashed_password.as_bytes().to_vec()
                };
                self.users.insert(
                    r.name.clone(),
                    User {
                        name: r.name.as_bytes().to_vec(),
                        password,
                        roles: Vec::new(),
                        options: Some(options),
                    },
                );
                users.insert(r.name.clone());
            }
            Op::UserDelete(r) => {
                if self.enabled && r.name == ROOT_USER {
                    return Err(InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(UserNotFound);
                }
                users.insert(r.name.clone());
                out.invalidate_user = Some(r.name.clone());
            }
            Op::UserChangePassword(r) => {
                let u = self.users.get_mut(&r.name).ok_or(UserNotFound)?;
                if !u.options.as_ref().is_some_and(|o| o.no_password) {
                    u.password = r.hashed_password.as_bytes().to_vec();
                }
                users.insert(r.name.clone());
                out.invalidate_user = Some(r.name.clone());
            }
            Op::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(UserNotFound);
                }
                if r.role != ROOT_ROLE && !self.roles.contains_key(&r.role) {
                    return Err(RoleNotFound);
                }
                let u = self.users.get_mut(&r.user).expect("checked");
                if u.roles.contains(&r.role) {
                    bump = false;
                } else {
                    u.roles.push(r.role.clone());
                    u.roles.sort();
                    users.insert(r.user.clone());
                }
            }
            Op::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    return Err(InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&r.name).ok_or(UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|x| x != &r.role);
                if u.roles.len() == before {
                    return Err(RoleNotGranted);
                }
                users.insert(r.name.clone());
            }
            Op::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(RoleAlreadyExist);
                }
                self.roles.insert(
                    r.name.clone(),
                    Role {
                        name: r.name.as_bytes().to_vec(),
                        key_permission: Vec::new(),
                    },
                );
                roles.insert(r.name.clone());
            }
            Op::RoleDelete(r) => {
                if self.enabled && r.role == ROOT_ROLE {
                    return Err(InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(RoleNotFound);
                }
                roles.insert(r.role.clone());
                for (name, u) in self.users.iter_mut() {
                    let before = u.roles.len();
                    u.roles.retain(|x| x != &r.role);
                    if u.roles.len() != before {
                        users.insert(name.clone());
                    }
                }
            }
            Op::RoleGrantPermission(r) => {
                let perm = r.perm.as_ref().ok_or(PermissionNotGiven)?;
                if !valid_permission_range(&perm.key, &perm.range_end) {
                    return Err(InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(&r.name).ok_or(RoleNotFound)?;
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        role.key_permission.push(Permission {
                            perm_type: perm.perm_type,
                            key: perm.key.clone(),
                            range_end: perm.range_end.clone(),
                        });
                        role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                roles.insert(r.name.clone());
            }
            Op::RoleRevokePermission(r) => {
                let role = self.roles.get_mut(&r.role).ok_or(RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                if role.key_permission.len() == before {
                    return Err(PermissionNotGranted);
                }
                roles.insert(r.role.clone());
            }
        }
        if bump {
            self.revision += 1;
        }
        self.refresh_perms();
        out.revision = self.revision;
        let mut writes: AuthWrites = vec![
            (
                META_AUTH_ENABLED.to_vec(),
                Some(vec![u8::from(self.enabled)]),
            ),
            (
                META_AUTH_REVISION.to_vec(),
                Some(self.revision.to_be_bytes().to_vec()),
            ),
        ];
        use prost::Message;
        for name in users {
            let v = self.users.get(&name).map(|u| u.encode_to_vec());
            writes.push((user_key(&name), v));
        }
        for name in roles {
            let v = self.roles.get(&name).map(|r| r.encode_to_vec());
            writes.push((role_key(&name), v));
        }
        Ok((out, writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::cairnpb::Authenticate;
    use cairn_proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
        AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
        AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
    };

    fn root() -> AuthInfo {
        AuthInfo {
            user: "root".into(),
            revision: u64::MAX - 1,
        }
    }

    fn add_user(s: &mut AuthState, name: &str) {
        s.apply(
            &Op::UserAdd(AuthUserAddRequest {
                name: name.into(),
                hashed_password: "h".into(),
                ..Default::default()
            }),
            &root(),
            1,
        )
        .unwrap();
    }

    fn grant(s: &mut AuthState, role: &str, key: &[u8], end: &[u8], ty: PermType) {
        s.apply(
            &Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(Permission {
                    perm_type: ty as i32,
                    key: key.to_vec(),
                    range_end: end.to_vec(),
                }),
            }),
            &root(),
            1,
        )
        .unwrap();
    }

    fn enabled_with_user() -> AuthState {
        let mut s = AuthState::default();
        add_user(&mut s, "root");
        let g = |u: &str, r: &str| {
            Op::UserGrantRole(AuthUserGrantRoleRequest {
                user: u.into(),
                role: r.into(),
            })
        };
        s.apply(&g("root", "root"), &root(), 1).unwrap();
        add_user(&mut s, "alice");
        s.apply(
            &Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
            &root(),
            1,
        )
        .unwrap();
        s.apply(&g("alice", "r"), &root(), 1).unwrap();
        s.apply(&Op::Enable(AuthEnableRequest {}), &root(), 1)
            .unwrap();
        s
    }

    fn alice(s: &AuthState) -> AuthInfo {
        AuthInfo {
            user: "alice".into(),
            revision: s.revision,
        }
    }

    #[test]
    fn enabling_needs_root_with_the_root_role() {
        let mut s = AuthState::default();
        let en = Op::Enable(AuthEnableRequest {});
        assert_eq!(
            s.apply(&en, &AuthInfo::default(), 1).unwrap_err(),
            AuthError::RootUserNotExist
        );
        add_user(&mut s, "root");
        assert_eq!(
            s.apply(&en, &AuthInfo::default(), 1).unwrap_err(),
            AuthError::RootRoleNotExist
        );
        let rev = s.revision;
        s.apply(
            &Op::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            &root(),
            1,
        )
        .unwrap();
        s.apply(&en, &AuthInfo::default(), 1).unwrap();
        assert!(s.enabled);
        assert_eq!(s.revision, rev + 1, "grant bumps, enable does not");
        // While enabled: root is protected, and only admins change things.
        let del = Op::UserDelete(AuthUserDeleteRequest {
            name: "root".into(),
        });
        assert_eq!(
            s.apply(&del, &root(), 1).unwrap_err(),
            AuthError::InvalidAuthMgmt
        );
        let revoke = Op::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        });
        assert_eq!(
            s.apply(&revoke, &root(), 1).unwrap_err(),
            AuthError::InvalidAuthMgmt
        );
        let del_role = Op::RoleDelete(AuthRoleDeleteRequest {
            role: "root".into(),
        });
        assert_eq!(
            s.apply(&del_role, &root(), 1).unwrap_err(),
            AuthError::InvalidAuthMgmt
        );
        assert_eq!(
            s.apply(
                &Op::RoleAdd(AuthRoleAddRequest { name: "x".into() }),
                &AuthInfo::default(),
                1
            )
            .unwrap_err(),
            AuthError::UserEmpty
        );
    }

    #[test]
    fn permissions_cover_points_ranges_and_open_ends() {
        let mut s = enabled_with_user();
        grant(&mut s, "r", b"a", b"", PermType::Read);
        grant(&mut s, "r", b"k", b"m", PermType::Readwrite);
        grant(&mut s, "r", b"m", b"p", PermType::Write);
        grant(&mut s, "r", b"x", b"\0", PermType::Read);
        let ai = alice(&s);
        let ok = |k: &[u8], e: &[u8], a| s.check(&ai, k, e, a).is_ok();
        assert!(ok(b"a", b"", Access::Read));
        assert!(!ok(b"a", b"", Access::Write));
        assert!(!ok(b"a", b"b", Access::Read), "a point is not a range");
        assert!(ok(b"a", b"a\0", Access::Read), "the point as a range");
        assert!(ok(b"k", b"m", Access::Read));
        assert!(!ok(b"k", b"n", Access::Read));
        assert!(ok(b"k", b"p", Access::Write), "adjacent ranges merge");
        assert!(!ok(b"j", b"l", Access::Write));
        assert!(ok(b"y", b"\0", Access::Read));
        assert!(ok(b"zzz", b"", Access::Read));
        assert!(!ok(b"w", b"\0", Access::Read));
        assert!(!ok(b"\0", b"\0", Access::Read), "all keys");
        // Revoking one piece leaves a gap.
        s.apply(
            &Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"k".to_vec(),
                range_end: b"m".to_vec(),
            }),
            &root(),
            1,
        )
        .unwrap();
        let old = ai;
        assert_eq!(
            s.check(&old, b"m", b"", Access::Write).unwrap_err(),
            AuthError::AuthOldRevision
        );
        let ai = alice(&s);
        assert!(s.check(&ai, b"m", b"", Access::Write).is_ok());
        assert!(s.check(&ai, b"k", b"p", Access::Write).is_err());
    }

    #[test]
    fn anonymous_and_unknown_users_are_refused_and_root_passes() {
        let s = enabled_with_user();
        assert_eq!(
            s.check(&AuthInfo::default(), b"a", b"", Access::Read)
                .unwrap_err(),
            AuthError::UserEmpty
        );
        let ghost = AuthInfo {
            user: "ghost".into(),
            revision: s.revision,
        };
        assert_eq!(
            s.check(&ghost, b"a", b"", Access::Read).unwrap_err(),
            AuthError::PermissionDenied
        );
        assert_eq!(s.check_admin(&ghost).unwrap_err(), AuthError::UserNotFound);
        assert_eq!(
            s.check_admin(&alice(&s)).unwrap_err(),
            AuthError::PermissionDenied
        );
        let r = AuthInfo {
            user: "root".into(),
            revision: s.revision,
        };
        assert!(s.check(&r, b"\0", b"\0", Access::Write).is_ok());
        assert!(
            s.check(&AuthInfo::internal(), b"a", b"", Access::Write)
                .is_ok()
        );
    }

    #[test]
    fn deleting_a_role_takes_it_from_users_and_authenticate_issues_tokens() {
        let mut s = enabled_with_user();
        grant(&mut s, "r", b"a", b"", PermType::Read);
        let (out, _) = s
            .apply(
                &Op::Authenticate(Authenticate {
                    name: "alice".into(),
                    token_prefix: "abc".into(),
                }),
                &AuthInfo::default(),
                42,
            )
            .unwrap();
        assert_eq!(out.issued, Some(("alice".into(), "abc.42".into())));
        s.apply(
            &Op::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }),
            &root(),
            1,
        )
        .unwrap();
        assert!(!s.has_role("alice", "r"));
        assert!(s.check(&alice(&s), b"a", b"", Access::Read).is_err());
        let unknown = Op::Authenticate(Authenticate {
            name: "bob".into(),
            token_prefix: "x".into(),
        });
        assert_eq!(
            s.apply(&unknown, &AuthInfo::default(), 1).unwrap_err(),
            AuthError::AuthFailed
        );
    }
}
