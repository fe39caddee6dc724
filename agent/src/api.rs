//! The etcd v3 gRPC services. Each is a thin layer over [`Server`]; the JSON
//! gateway (`http.rs`) calls these same methods.
use std::sync::Arc;

use crate::server::Server;

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod election;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod status;
pub mod watch;

/// The handle every service implementation holds.
#[derive(Clone)]
pub struct Api(pub Arc<Server>);

impl std::ops::Deref for Api {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

pub type BoxStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

impl cairn_proto::service::StreamCalls for Api {
    fn watch_stream(
        &self,
        meta: tonic::metadata::MetadataMap,
        input: cairn_proto::service::BoxStream<cairn_proto::etcdserverpb::WatchRequest>,
    ) -> cairn_proto::service::BoxStream<cairn_proto::etcdserverpb::WatchResponse> {
        Api::watch_stream(self, meta, None, input)
    }

    fn keep_alive_once(
        &self,
        meta: tonic::metadata::MetadataMap,
        req: cairn_proto::etcdserverpb::LeaseKeepAliveRequest,
    ) -> cairn_proto::service::BoxFuture<
        '_,
        Result<cairn_proto::etcdserverpb::LeaseKeepAliveResponse, tonic::Status>,
    > {
        Box::pin(async move {
            let who = self.caller(&meta, None).await?;
            self.lease_keep_alive_once(req.id, &who).await
        })
    }

    fn status_now(
        &self,
        meta: tonic::metadata::MetadataMap,
    ) -> cairn_proto::service::BoxFuture<
        '_,
        Result<cairn_proto::etcdserverpb::StatusResponse, tonic::Status>,
    > {
        Box::pin(async move {
            let who = self.caller(&meta, None).await?;
            self.require_user(&who)?;
            Ok(self.status_response())
        })
    }
}
