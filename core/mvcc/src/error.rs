//! Errors of the data model. Each variant is one etcd error; the mapping to
//! gRPC status codes and etcd's exact messages lives in the agent
//! (`agent/src/api/status.rs`), in one place.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The NOSPACE alarm is raised, or this write would exceed the quota.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// The CORRUPT alarm is raised: writes are refused.
    #[error("corrupt cluster")]
    Corrupt,
    /// Storage failed: fatal for the node, never a client's fault.
    #[error(transparent)]
    Backend(#[from] crate::BackendError),
}
