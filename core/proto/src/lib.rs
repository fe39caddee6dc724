//! Generated etcd v3 API types and services, plus cairn's internal messages.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}
pub mod cairnpb {
    include!(concat!(env!("OUT_DIR"), "/cairnpb.rs"));
}

/// The part of the etcd API the JSON gateway cannot call through tonic's
/// service traits (their streaming methods take a `tonic::Streaming`, which
/// only a gRPC body can produce). Every role's service implements it next
/// to the five tonic traits, so the gateway is written once for all roles.
pub mod service {
    use std::future::Future;
    use std::pin::Pin;

    use crate::etcdserverpb::{
        LeaseKeepAliveRequest, LeaseKeepAliveResponse, StatusResponse, WatchRequest, WatchResponse,
    };

    pub type BoxStream<T> =
        Pin<Box<dyn futures_core::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;
    pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

    pub trait StreamCalls: Clone + Send + Sync + 'static {
        /// A Watch stream fed by `input`.
        fn watch_stream(&self, input: BoxStream<WatchRequest>) -> BoxStream<WatchResponse>;
        /// One LeaseKeepAlive request's answer.
        fn keep_alive_once(
            &self,
            req: LeaseKeepAliveRequest,
        ) -> BoxFuture<'_, Result<LeaseKeepAliveResponse, tonic::Status>>;
        /// What `Status` answers, for `/v3/maintenance/status`.
        fn status_now(&self) -> BoxFuture<'_, Result<StatusResponse, tonic::Status>>;
    }
}
