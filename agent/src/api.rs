//! The etcd v3 gRPC services. Each is a thin layer over [`Server`]; the JSON
//! gateway (`http.rs`) calls these same methods.
use std::sync::Arc;

use crate::server::Server;

pub mod cluster;
pub mod forward;
pub mod kv;
pub mod lease;
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
