//! Listeners: the etcd API (gRPC and plain HTTP on the same port, h2c and
//! HTTP/1.1) on every client URL and on the local Unix socket.
use std::future::Future;
use std::path::Path;

use anyhow::Context;
use cairn_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;

use crate::api::Api;
use crate::limits;

/// Every route of the client port: gRPC services first, HTTP after.
pub fn routes(api: &Api) -> Routes {
    let max_recv = api.settings.max_request_bytes + limits::GRPC_OVERHEAD_BYTES;
    let max_send = limits::GRPC_MAX_SEND_BYTES;
    macro_rules! svc {
        ($s:ident) => {
            $s::new(api.clone())
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(max_send)
        };
    }
    Routes::from(crate::http::router(api.clone()).fallback(fallback))
        .add_service(svc!(KvServer))
        .add_service(svc!(WatchServer))
        .add_service(svc!(LeaseServer))
        .add_service(svc!(MaintenanceServer))
        .add_service(svc!(ClusterServer))
}

/// gRPC clients asking for a service we do not have get `Unimplemented`;
/// anything else a 404.
async fn fallback(req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let msg = format!("unknown service or method {}", req.uri().path());
        tonic::Status::unimplemented(msg)
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        (http::StatusCode::NOT_FOUND, "404 page not found\n").into_response()
    }
}

fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(7200)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .concurrency_limit_per_connection(limits::MAX_CONNECTIONS)
}

pub async fn serve_tcp(
    api: Api,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    server()
        .add_routes(routes(&api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .context("serving the client port")
}

pub async fn serve_unix(
    api: Api,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    server()
        .add_routes(routes(&api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("serving the local socket")
}

/// Binds the local socket, replacing a stale socket file left by a process
/// that is gone, but never a file that is not a socket or one still served.
pub fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use by another process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("listen unix {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting permissions on {}", path.display()))?;
    Ok(l)
}
