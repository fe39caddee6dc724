//! Listeners: the etcd API (gRPC and plain HTTP on the same port, h2c and
//! HTTP/1.1) on every client URL and on the local Unix socket. Every
//! accepted connection is read through `authority::AuthorityRewriter`,
//! which repairs etcdctl 3.4's malformed HTTP/2 `:authority`.
mod authority;
pub mod tls;

use std::future::Future;
use std::path::Path;

use anyhow::Context;
use cairn_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use cairn_proto::v3electionpb::election_server::ElectionServer;
use cairn_proto::v3lockpb::lock_server::LockServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;

use crate::api::Api;
use crate::limits;
use authority::AuthorityRewriter;

/// Every route of a member's client port: gRPC services first, HTTP after
/// (the member's own, then `apps`: services, DNS and render status).
pub fn routes(api: &Api, apps: &crate::apps::Apps) -> Routes {
    service_routes(
        api.clone(),
        api.settings.max_request_bytes,
        apps.wrap(crate::http::router(api.clone())),
    )
}

/// The etcd services of any role (a member's `Api`, the proxy) with
/// the role's plain-HTTP routes behind them.
pub fn service_routes<S>(svc: S, max_request_bytes: usize, http: axum::Router) -> Routes
where
    S: cairn_proto::etcdserverpb::kv_server::Kv
        + cairn_proto::etcdserverpb::watch_server::Watch
        + cairn_proto::etcdserverpb::lease_server::Lease
        + cairn_proto::etcdserverpb::maintenance_server::Maintenance
        + cairn_proto::etcdserverpb::cluster_server::Cluster
        + cairn_proto::etcdserverpb::auth_server::Auth
        + cairn_proto::v3lockpb::lock_server::Lock
        + cairn_proto::v3electionpb::election_server::Election
        + Clone,
{
    let max_recv = max_request_bytes + limits::GRPC_OVERHEAD_BYTES;
    let max_send = limits::GRPC_MAX_SEND_BYTES;
    macro_rules! svc {
        ($s:ident) => {
            $s::new(svc.clone())
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(max_send)
        };
    }
    let routes = Routes::from(http.fallback(fallback))
        .add_service(svc!(KvServer))
        .add_service(svc!(WatchServer))
        .add_service(svc!(LeaseServer))
        .add_service(svc!(MaintenanceServer))
        .add_service(svc!(ClusterServer))
        .add_service(svc!(AuthServer))
        .add_service(svc!(LockServer))
        .add_service(svc!(ElectionServer));
    Routes::from(
        routes
            .into_axum_router()
            // A plain function, not axum's async middleware: it runs for
            // every response, and an async one costs a boxed future each.
            .layer(tower::util::MapResponseLayer::new(
                etcd_size_status as fn(axum::response::Response) -> axum::response::Response,
            )),
    )
}

/// tonic refuses an oversized request message with its own wording; etcd
/// clients (and scripts matching on errors) know grpc-go's:
/// `ResourceExhausted: grpc: received message larger than max (N vs. M)`.
fn etcd_size_status(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers();
    if h.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return resp;
    }
    let Some(msg) = h.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return resp;
    };
    let msg = percent_decode(msg);
    let Some(rest) = msg.strip_prefix("Error, decoded message length too large: found ") else {
        return resp;
    };
    let nums: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    if let [found, limit] = nums[..] {
        let text = format!("grpc: received message larger than max ({found} vs. {limit})");
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(v) = http::HeaderValue::from_str(&text.replace(' ', "%20")) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
        // HTTP/2's own stream limit, not a tower concurrency layer (a
        // semaphore taken by every request).
        .max_concurrent_streams(Some(limits::MAX_STREAMS_PER_CONNECTION))
}

pub async fn serve_tcp(
    routes: Routes,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    // The server's own tcp_nodelay applies only to listeners it binds: set
    // it on every accepted connection, or small replies wait for the peer's
    // delayed ACK (40 ms).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.map(|c| {
            if let Err(e) = c.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY failed");
            }
            AuthorityRewriter::new(c)
        })
    });
    server()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the client port")
}

/// Starts serving `routes()` on every client listener (TLS where the URL was
/// https) and local socket, each task ending when `stop` turns true. Every
/// role serves its listeners through this.
pub fn spawn_listeners(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    routes: impl Fn() -> Routes,
    tcp: Vec<(TcpListener, bool)>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    unix: Vec<UnixListener>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    for (l, https) in tcp {
        match (https, &tls) {
            (true, Some(config)) => {
                tracing::info!(addr = %l.local_addr()?, "serving client requests (TLS)");
                tasks.spawn(serve_tls(
                    routes(),
                    l,
                    config.clone(),
                    stopped(stop.clone()),
                ));
            }
            _ => {
                tracing::info!(addr = %l.local_addr()?, "serving client requests");
                tasks.spawn(serve_tcp(routes(), l, stopped(stop.clone())));
            }
        }
    }
    for l in unix {
        tracing::info!(path = ?l.local_addr()?.as_pathname(), "serving the local socket");
        tasks.spawn(serve_unix(routes(), l, stopped(stop.clone())));
    }
    Ok(())
}

/// Serves `routes` over TLS: each connection's handshake runs in a task of
/// its own (bounded by a timeout), so a slow client cannot hold up accepts.
pub async fn serve_tls(
    routes: Routes,
    listener: TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(limits::TLS_ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let cert_name = client_cert_name(&tls);
                        let _ = tx
                            .send(Ok::<_, std::io::Error>(AuthorityRewriter::new(TlsConn(
                                tls, cert_name,
                            ))))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    server()
        .add_routes(routes)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
        .await
        .context("serving the client port (TLS)")
}

/// A TLS connection as tonic's server takes it, with the name its
/// verified client certificate gives.
struct TlsConn(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Option<crate::auth::ClientCertName>,
);

/// What tonic puts in each request's extensions for a TLS connection.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub tcp: tonic::transport::server::TcpConnectInfo,
    pub cert_name: Option<crate::auth::ClientCertName>,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TlsConnectInfo {
            tcp: self.0.get_ref().0.connect_info(),
            cert_name: self.1.clone(),
        }
    }
}

/// The common name of the client's certificate (verified by the handshake
/// against `--trusted-ca-file`; only asked for with `--client-cert-auth`).
fn client_cert_name(
    tls: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Option<crate::auth::ClientCertName> {
    let der = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(crate::auth::ClientCertName(cn.to_string()))
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

pub async fn serve_unix(
    routes: Routes,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityRewriter::new));
    server()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the local socket")
}

/// Binds the local socket, replacing a stale socket file left by a process
/// that is gone, but never a file that is not a socket or one still served.
/// The socket gets `mode` and, when given, `group` (a name from
/// `/etc/group` or a numeric gid), so that local applications in that group
/// can use it.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<UnixListener> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions on {}", path.display()))?;
    if let Some(g) = group {
        let gid = group_id(g)?;
        std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
            format!(
                "--socket-group {g}: changing the group of {}",
                path.display()
            )
        })?;
    }
    Ok(l)
}

/// A group's id from its name (`/etc/group`) or a number.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .with_context(|| format!("--socket-group {group}: no such group in /etc/group"))
}
