//! The one place where cairn's errors become the gRPC status codes and
//! messages etcd clients know (etcd's `api/v3rpc/rpctypes/error.go`).
use cairn_mvcc::MvccError;
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
        Backend(e) => {
            tracing::error!(error = %e, "storage failure");
            return Status::internal(format!("etcdserver: {e}"));
        }
        other => return Status::unknown(format!("etcdserver: {other}")),
    };
    Status::new(code, msg)
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
    }
}
