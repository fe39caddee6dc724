//! The one place where cairn's errors become the gRPC status codes and
//! messages etcd clients know (etcd's `api/v3rpc/rpctypes/error.go`).
use cairn_mvcc::MvccError;
use cairn_mvcc::auth::AuthError;
use cairn_raft::ProposeError;
use tonic::{Code, Status};

pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";

pub fn mvcc(e: MvccError) -> Status {
    use MvccError::*;
    let (code, msg) = match e {
        Compacted => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        FutureRevision => (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
        KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
        ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
        LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
        TooManyOps => (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
        DuplicateKey => (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        ),
        LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
        LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
        LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
        InvalidSortOption => (Code::InvalidArgument, "etcdserver: invalid sort option"),
        Auth(e) => return auth(e),
        NoSpace => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        Corrupt => (Code::DataLoss, "etcdserver: corrupt cluster"),
        Backend(e) => {
            tracing::error!(error = %e, "storage failure");
            return Status::internal(format!("etcdserver: {e}"));
        }
        other => return Status::unknown(format!("etcdserver: {other}")),
    };
    Status::new(code, msg)
}

/// etcd's auth errors (`ErrGRPCUserEmpty`, `ErrGRPCPermissionDenied`, ...).
pub fn auth(e: AuthError) -> Status {
    use AuthError::*;
    let code = match e {
        UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
        | AuthOldRevision => Code::InvalidArgument,
        PermissionDenied => Code::PermissionDenied,
        InvalidAuthToken => Code::Unauthenticated,
        RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
        | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
        | AuthNotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, format!("etcdserver: {e}"))
}

pub fn propose(e: ProposeError) -> Status {
    match e {
        ProposeError::TooManyRequests => {
            Status::resource_exhausted("etcdserver: too many requests")
        }
        ProposeError::NoLeader => Status::unavailable("etcdserver: no leader"),
        ProposeError::Stopped => Status::unavailable("etcdserver: server stopped"),
        ProposeError::Timeout => Status::unavailable("etcdserver: request timed out"),
        other => Status::unavailable(other.to_string()),
    }
}

pub fn request_too_large() -> Status {
    Status::invalid_argument(REQUEST_TOO_LARGE)
}

/// etcd's `concurrency.ErrElectionNotLeader`. etcd's Lock and Election
/// services return their own errors as plain errors, which gRPC reports as
/// Unknown.
pub fn election_not_leader() -> Status {
    Status::unknown("election: not leader")
}

/// etcd's `concurrency.ErrElectionNoLeader`.
pub fn election_no_leader() -> Status {
    Status::unknown("election: no leader")
}

/// etcd's `v3election.ErrMissingLeaderKey`.
pub fn missing_leader_key() -> Status {
    Status::unknown("\"leader\" field must be provided")
}

/// A Lock (`what` = "mutex", etcd's `ErrSessionExpired`) or Campaign
/// ("election") whose own key disappeared while it waited.
pub fn session_expired(what: &str) -> Status {
    Status::unknown(format!("{what}: session is expired"))
}

pub fn internal(msg: impl std::fmt::Display) -> Status {
    Status::internal(format!("etcdserver: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_maps_to_etcds_code_and_message() {
        let s = mvcc(MvccError::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = mvcc(MvccError::LeaseNotFound);
        assert_eq!(s.code(), Code::NotFound);
        let s = mvcc(MvccError::Auth(AuthError::PermissionDenied));
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_eq!(s.message(), "etcdserver: permission denied");
        let s = auth(AuthError::AuthOldRevision);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: revision of auth store is old");
    }
}
