//! The peer transport: raft messages, snapshots and member-to-member
//! requests over QUIC with TLS 1.3 (see `tls.rs`).
//!
//! One QUIC connection per pair of members and direction, made on demand and
//! kept. On it:
//! - one unidirectional stream carries this member's raft messages to that
//!   member, in order (`R`): a hello, then length-prefixed frames;
//! - a snapshot goes on a unidirectional stream of its own (`S`): the
//!   `MsgSnapshot` frame, then the store's content to the end of the stream;
//!   the receiver writes it to a file, fsyncs it, and only then hands the
//!   message to raft;
//! - a request (`Q`, bidirectional): one frame each way.
//!
//! Every stream starts with a hello naming the cluster, the sender, the
//! receiver and the sender's incarnation (random per process start). A
//! stream from another cluster (a different `--initial-cluster-token` or
//! `--initial-cluster`) is refused, and both sides log why. A hello from a
//! new incarnation of a member means it restarted: the connection to its
//! previous process is dropped at once and redialed, instead of carrying
//! raft messages into the void until QUIC's idle timeout (10 s) noticed;
//! a restarted member would otherwise hear nothing from the leader for
//! that long, and without it a quorum could stay leaderless.
//!
//! Sending never blocks the raft thread: each peer has a bounded queue and a
//! task; what does not fit is dropped and raft retransmits it.
pub mod tls;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cairn_mvcc::Applied;
use cairn_proto::cairnpb::{PeerRequest, PeerResponse};
use cairn_raft::{Message, MessageType, Node, Transport};
use prost::Message as _;
use protobuf::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::limits;

const KIND_RAFT: u8 = b'R';
const KIND_SNAPSHOT: u8 = b'S';
const KIND_REQUEST: u8 = b'Q';
/// Stream error code: the hello names another cluster or member.
const REFUSED: u32 = 1;
/// Stream error code: the sender was removed from the cluster.
const REMOVED: u32 = 3;
/// Largest frame accepted (a raft append is bounded by max_size_per_msg
/// plus one request of at most --max-request-bytes).
const MAX_FRAME: usize = 64 << 20;
/// Largest UDP payload peer QUIC sends or accepts (a jumbo frame's 9000
/// bytes less IPv6 and UDP headers).
const PEER_MAX_UDP_PAYLOAD: u16 = 8952;
/// Book entry used to reach a member by URL before its ID is known.
const UNKNOWN_MEMBER: u64 = u64::MAX;

/// Answers requests from other members (implemented by the API layer).
pub trait RequestHandler: Send + Sync + 'static {
    fn handle(
        &self,
        req: PeerRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = PeerResponse> + Send + '_>>;
}

/// The content of a snapshot for a member, read from the state machine.
pub trait SnapshotSource: Send + Sync + 'static {
    fn chunks(&self) -> Box<dyn Iterator<Item = Result<Vec<u8>, String>> + Send>;
}

pub struct Peers {
    member_id: AtomicU64,
    cluster_id: AtomicU64,
    endpoint: quinn::Endpoint,
    book: RwLock<HashMap<u64, Vec<String>>>,
    conns: Arc<tokio::sync::Mutex<HashMap<u64, Dialed>>>,
    queues: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    node: OnceLock<Node<Applied>>,
    handler: OnceLock<Arc<dyn RequestHandler>>,
    snapshots: OnceLock<Arc<dyn SnapshotSource>>,
    snap_dir: PathBuf,
    rt: tokio::runtime::Handle,
    /// Last time a connection failure to each member was logged.
    complained: Mutex<HashMap<u64, Instant>>,
    /// Members removed from the cluster: their streams are refused.
    removed: RwLock<std::collections::HashSet<u64>>,
    /// A received snapshot larger than this is refused (and its file
    /// removed): a bound on what a peer can make this member write.
    max_snapshot_bytes: u64,
    /// Set when another member refused us as removed.
    we_are_removed: tokio::sync::watch::Sender<bool>,
    /// This process's incarnation, sent in every hello.
    incarnation: u64,
    /// The last incarnation each member's hello carried.
    incarnations: Mutex<HashMap<u64, u64>>,
}

/// A connection this member dialed, and when.
struct Dialed {
    conn: quinn::Connection,
    at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no address known for member {0:x}")]
    NoAddress(u64),
    #[error("connecting to member {id:x} at {addr}: {why}")]
    Connect { id: u64, addr: String, why: String },
    #[error("talking to member {id:x}: {why}")]
    Stream { id: u64, why: String },
}

fn stream_err(id: u64) -> impl Fn(String) -> PeerError {
    move |why| PeerError::Stream { id, why }
}

/// host:port of a URL (`http://h:p` or `h:p`).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split('/').next()?;
    let (h, p) = rest.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    Some((h.to_string(), p.parse().ok()?))
}

const HELLO_LEN: usize = 33;

fn hello(kind: u8, cluster: u64, from: u64, to: u64, incarnation: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(HELLO_LEN);
    b.push(kind);
    b.extend_from_slice(&cluster.to_be_bytes());
    b.extend_from_slice(&from.to_be_bytes());
    b.extend_from_slice(&to.to_be_bytes());
    b.extend_from_slice(&incarnation.to_be_bytes());
    b
}

fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

async fn read_frame(r: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes is over the limit"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok(Some(body))
}

// === impl Peers ===

impl Peers {
    /// Binds the peer endpoint. `cluster_id` may be 0 while a joining member
    /// does not know it yet.
    pub fn bind(
        addr: SocketAddr,
        configs: tls::Configs,
        member_id: u64,
        cluster_id: u64,
        snap_dir: PathBuf,
        max_snapshot_bytes: u64,
    ) -> anyhow::Result<Arc<Peers>> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(1)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_secs(10)).expect("10s fits"),
            ))
            .max_concurrent_uni_streams(256u32.into())
            .max_concurrent_bidi_streams(256u32.into());
        // Raft's own acknowledgements ride on its messages; QUIC's only
        // feed loss recovery. Asking the other member to acknowledge every
        // 16 packets (or after 5 ms) instead of every 2 saves a datagram
        // each way per few raft messages (README "Benchmark").
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(quinn::VarInt::from_u32(16))
            .max_ack_delay(Some(Duration::from_millis(5)));
        transport.ack_frequency_config(Some(acks));
        // Packets as large as the path carries: MTU discovery probes up to
        // PEER_MAX_UDP_PAYLOAD and settles on what gets through (1452 on
        // plain Ethernet, more on jumbo frames or loopback). A leader's
        // append of a dozen puts then fits one packet instead of three,
        // each of which costs encryption, a system call and an
        // acknowledgement.
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(PEER_MAX_UDP_PAYLOAD);
        transport.mtu_discovery_config(Some(mtu));
        let transport = Arc::new(transport);
        let server = quinn::crypto::rustls::QuicServerConfig::try_from(configs.server)
            .map_err(|e| anyhow::anyhow!("peer TLS: {e}"))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport.clone());
        let client = quinn::crypto::rustls::QuicClientConfig::try_from(configs.client)
            .map_err(|e| anyhow::anyhow!("peer TLS: {e}"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport);
        // What this member accepts (QUIC's max_udp_payload_size transport
        // parameter), so that the other members' discovery can go as high.
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(PEER_MAX_UDP_PAYLOAD)
            .map_err(|e| anyhow::anyhow!("peer QUIC: {e}"))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| anyhow::anyhow!("peer QUIC: no async runtime"))?;
        let mut endpoint = std::net::UdpSocket::bind(addr)
            .and_then(|socket| quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime))
            .map_err(|e| anyhow::anyhow!("listen udp {addr} (--listen-peer-urls): {e}"))?;
        endpoint.set_default_client_config(client);
        std::fs::create_dir_all(&snap_dir)?;
        // A snapshot whose receipt a crash cut short is of no use.
        for e in std::fs::read_dir(&snap_dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Arc::new(Peers {
            member_id: AtomicU64::new(member_id),
            cluster_id: AtomicU64::new(cluster_id),
            endpoint,
            book: RwLock::new(HashMap::new()),
            conns: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            queues: Mutex::new(HashMap::new()),
            node: OnceLock::new(),
            handler: OnceLock::new(),
            snapshots: OnceLock::new(),
            snap_dir,
            rt: tokio::runtime::Handle::current(),
            complained: Mutex::new(HashMap::new()),
            removed: RwLock::new(Default::default()),
            max_snapshot_bytes,
            we_are_removed: tokio::sync::watch::channel(false).0,
            incarnation: u64::from_be_bytes(cairn_raft::boot_nonce()),
            incarnations: Mutex::new(HashMap::new()),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn set_member_id(&self, id: u64) {
        self.member_id.store(id, Ordering::Release);
    }

    fn member_id(&self) -> u64 {
        self.member_id.load(Ordering::Acquire)
    }

    pub fn set_cluster_id(&self, id: u64) {
        self.cluster_id.store(id, Ordering::Release);
    }

    fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }

    /// Where each member listens (from the membership records).
    /// A member whose URLs changed (MemberUpdate) loses its connection, so
    /// that the next message dials the new address.
    pub fn set_addresses(&self, members: impl IntoIterator<Item = (u64, Vec<String>)>) {
        let mut book = self.book.write().expect("book lock");
        let members: HashMap<u64, Vec<String>> = members.into_iter().collect();
        let moved: Vec<u64> = members
            .iter()
            .filter(|(id, urls)| book.get(id).is_some_and(|old| old != *urls))
            .map(|(id, _)| *id)
            .collect();
        *book = members;
        drop(book);
        if !moved.is_empty() {
            let conns = self.conns.clone();
            self.rt.spawn(async move {
                let mut conns = conns.lock().await;
                for id in moved {
                    if let Some(d) = conns.remove(&id) {
                        d.conn.close(0u32.into(), b"peer URLs changed");
                    }
                }
            });
        }
    }

    /// The members removed from the cluster (from the store).
    pub fn set_removed(&self, ids: impl IntoIterator<Item = u64>) {
        let mut removed = self.removed.write().expect("removed lock");
        removed.clear();
        removed.extend(ids);
    }

    /// Becomes true when a member refuses this one as removed from the
    /// cluster (a removed member that was down when it was removed, or that
    /// restarted, learns it this way).
    pub fn removed_from_cluster(&self) -> tokio::sync::watch::Receiver<bool> {
        self.we_are_removed.subscribe()
    }

    pub fn attach(
        &self,
        node: Node<Applied>,
        handler: Arc<dyn RequestHandler>,
        snapshots: Arc<dyn SnapshotSource>,
    ) {
        let _ = self.node.set(node);
        let _ = self.handler.set(handler);
        let _ = self.snapshots.set(snapshots);
    }

    pub fn transport(self: &Arc<Self>) -> QuicTransport {
        QuicTransport(self.clone())
    }

    fn complain(&self, id: u64, e: &dyn std::fmt::Display) {
        let mut last = self.complained.lock().expect("lock");
        let now = Instant::now();
        if last
            .get(&id)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(10))
        {
            tracing::warn!(peer = format_args!("{id:x}"), "{e}");
            last.insert(id, now);
        }
    }

    async fn connection(&self, id: u64) -> Result<quinn::Connection, PeerError> {
        let mut conns = self.conns.lock().await;
        if let Some(d) = conns.get(&id) {
            if d.conn.close_reason().is_none() {
                return Ok(d.conn.clone());
            }
            conns.remove(&id);
        }
        let urls = self
            .book
            .read()
            .expect("book lock")
            .get(&id)
            .cloned()
            .unwrap_or_default();
        let mut last_err = PeerError::NoAddress(id);
        for url in urls {
            let Some((host, port)) = host_port(&url) else {
                continue;
            };
            let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last_err = PeerError::Connect {
                        id,
                        addr: url.clone(),
                        why: e.to_string(),
                    };
                    continue;
                }
            };
            for addr in addrs {
                let connect = |why: String| PeerError::Connect {
                    id,
                    addr: url.clone(),
                    why,
                };
                let attempt = async {
                    self.endpoint
                        .connect(addr, &host)
                        .map_err(|e| connect(e.to_string()))?
                        .await
                        .map_err(|e| connect(e.to_string()))
                };
                match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                    Ok(Ok(c)) => {
                        conns.insert(
                            id,
                            Dialed {
                                conn: c.clone(),
                                at: Instant::now(),
                            },
                        );
                        return Ok(c);
                    }
                    Ok(Err(e)) => last_err = e,
                    Err(_) => last_err = connect("timed out".into()),
                }
            }
        }
        Err(last_err)
    }

    fn queue(self: &Arc<Self>, to: u64) -> mpsc::Sender<Message> {
        let mut queues = self.queues.lock().expect("queues lock");
        if let Some(q) = queues.get(&to)
            && !q.is_closed()
        {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(limits::PEER_SEND_QUEUE);
        queues.insert(to, tx.clone());
        self.rt.spawn(self.clone().send_loop(to, rx));
        tx
    }

    /// Carries raft messages to one member, reconnecting as needed.
    async fn send_loop(self: Arc<Self>, to: u64, mut rx: mpsc::Receiver<Message>) {
        let mut buf = Vec::new();
        let mut batch = Vec::new();
        'connect: loop {
            let Some(first) = rx.recv().await else { return };
            let stream = async {
                let conn = self.connection(to).await?;
                let mut s = conn
                    .open_uni()
                    .await
                    .map_err(|e| stream_err(to)(e.to_string()))?;
                let h = hello(
                    KIND_RAFT,
                    self.cluster_id(),
                    self.member_id(),
                    to,
                    self.incarnation,
                );
                s.write_all(&h)
                    .await
                    .map_err(|e| stream_err(to)(e.to_string()))?;
                Ok::<_, PeerError>(s)
            };
            let mut s = match stream.await {
                Ok(s) => s,
                Err(e) => {
                    self.complain(to, &e);
                    if let Some(n) = self.node.get() {
                        n.report_unreachable(to);
                    }
                    // What queued meanwhile is stale; raft resends.
                    while rx.try_recv().is_ok() {}
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'connect;
                }
            };
            batch.push(first);
            loop {
                buf.clear();
                for m in batch.drain(..) {
                    match m.write_to_bytes() {
                        Ok(b) => frame(&mut buf, &b),
                        Err(e) => tracing::error!(error = %e, "raft message does not encode"),
                    }
                }
                if let Err(e) = s.write_all(&buf).await {
                    let e = match s.stopped().await {
                        Ok(Some(code)) if code.into_inner() == REMOVED as u64 => {
                            tracing::warn!(
                                "member {to:x} refused our raft messages: this member was \
                                 removed from the cluster"
                            );
                            self.we_are_removed.send_replace(true);
                            return;
                        }
                        Ok(Some(code)) if code.into_inner() == REFUSED as u64 => format!(
                            "member {to:x} refused our raft messages (different cluster ID or \
                             member ID; check --initial-cluster-token and --initial-cluster): {e}"
                        ),
                        _ => e.to_string(),
                    };
                    self.complain(to, &stream_err(to)(e));
                    if let Some(n) = self.node.get() {
                        n.report_unreachable(to);
                    }
                    continue 'connect;
                }
                match rx.recv().await {
                    Some(m) => batch.push(m),
                    None => return,
                }
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
            }
        }
    }

    /// Streams a snapshot to `msg.to`, then tells raft how it went.
    async fn send_snapshot(self: Arc<Self>, msg: Message) {
        let to = msg.to;
        let index = msg.get_snapshot().get_metadata().index;
        let started = Instant::now();
        let result = self.clone().stream_snapshot(msg).await;
        match &result {
            Ok(bytes) => tracing::info!(
                peer = format_args!("{to:x}"),
                index,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "sent a snapshot"
            ),
            Err(e) => tracing::warn!(
                peer = format_args!("{to:x}"),
                index,
                "sending a snapshot failed: {e}"
            ),
        }
        if let Some(n) = self.node.get() {
            n.report_snapshot(to, result.is_ok());
        }
    }

    async fn stream_snapshot(self: Arc<Self>, msg: Message) -> Result<u64, PeerError> {
        let to = msg.to;
        let err = stream_err(to);
        let source = self
            .snapshots
            .get()
            .ok_or_else(|| err("no snapshot source".into()))?
            .clone();
        let conn = self.connection(to).await?;
        let mut s = conn.open_uni().await.map_err(|e| err(e.to_string()))?;
        let mut head = hello(
            KIND_SNAPSHOT,
            self.cluster_id(),
            self.member_id(),
            to,
            self.incarnation,
        );
        frame(
            &mut head,
            &msg.write_to_bytes().map_err(|e| err(e.to_string()))?,
        );
        s.write_all(&head).await.map_err(|e| err(e.to_string()))?;
        // The store is read on a blocking thread, a few chunks ahead.
        let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, String>>(4);
        tokio::task::spawn_blocking(move || {
            for c in source.chunks() {
                if tx.blocking_send(c).is_err() {
                    return;
                }
            }
        });
        let mut bytes = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(&err)?;
            bytes += chunk.len() as u64;
            s.write_all(&chunk).await.map_err(|e| err(e.to_string()))?;
        }
        s.finish().map_err(|e| err(e.to_string()))?;
        match s.stopped().await {
            Ok(None) => Ok(bytes),
            Ok(Some(code)) => Err(err(format!("receiver stopped the stream ({code})"))),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Sends one request to whoever listens at `url` (a joining member
    /// asks before it knows anyone's ID).
    pub async fn request_url(
        &self,
        url: &str,
        req: &PeerRequest,
    ) -> Result<PeerResponse, PeerError> {
        self.book
            .write()
            .expect("book lock")
            .insert(UNKNOWN_MEMBER, vec![url.to_string()]);
        self.conns.lock().await.remove(&UNKNOWN_MEMBER);
        self.request(UNKNOWN_MEMBER, req).await
    }

    /// Sends one request to member `to` and waits for its answer.
    pub async fn request(&self, to: u64, req: &PeerRequest) -> Result<PeerResponse, PeerError> {
        let err = stream_err(to);
        let conn = self.connection(to).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(e.to_string()))?;
        let mut out = hello(
            KIND_REQUEST,
            self.cluster_id(),
            self.member_id(),
            to,
            self.incarnation,
        );
        frame(&mut out, &req.encode_to_vec());
        send.write_all(&out).await.map_err(|e| err(e.to_string()))?;
        send.finish().map_err(|e| err(e.to_string()))?;
        let body = read_frame(&mut recv)
            .await
            .map_err(&err)?
            .ok_or_else(|| err("no answer".into()))?;
        PeerResponse::decode(body.as_slice()).map_err(|e| err(e.to_string()))
    }

    /// Accepts connections from other members until the endpoint closes.
    pub async fn serve(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let peers = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%remote, "refused a peer connection: {e}");
                        return;
                    }
                };
                peers.serve_connection(conn).await;
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        loop {
            tokio::select! {
                s = conn.accept_uni() => match s {
                    Ok(s) => { tokio::spawn(self.clone().serve_uni(s)); }
                    Err(_) => return,
                },
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => { tokio::spawn(self.clone().serve_bi(send, recv)); }
                    Err(_) => return,
                },
            }
        }
    }

    /// Reads and checks a stream's hello; returns (kind, sender).
    async fn read_hello(&self, r: &mut quinn::RecvStream) -> Result<(u8, u64), String> {
        let mut h = [0u8; HELLO_LEN];
        r.read_exact(&mut h).await.map_err(|e| e.to_string())?;
        let kind = h[0];
        let cluster = u64::from_be_bytes(h[1..9].try_into().expect("8"));
        let from = u64::from_be_bytes(h[9..17].try_into().expect("8"));
        let to = u64::from_be_bytes(h[17..25].try_into().expect("8"));
        let incarnation = u64::from_be_bytes(h[25..33].try_into().expect("8"));
        let ours = self.cluster_id();
        // A joining member asks before it knows the cluster's ID.
        let ask = kind == KIND_REQUEST && cluster == 0;
        if !ask && ours != 0 && cluster != ours {
            let msg = format!(
                "refused a stream from member {from:x}: its cluster ID {cluster:x} is not ours \
                 ({ours:x}); check --initial-cluster-token and --initial-cluster"
            );
            tracing::error!("{msg}");
            let _ = r.stop(REFUSED.into());
            return Err(msg);
        }
        if !ask && to != self.member_id() {
            let msg = format!(
                "refused a stream from member {from:x}: it is addressed to member {to:x}, this is \
                 {:x}",
                self.member_id()
            );
            tracing::error!("{msg}");
            let _ = r.stop(REFUSED.into());
            return Err(msg);
        }
        if self.removed.read().expect("removed lock").contains(&from) {
            let msg =
                format!("refused a stream from member {from:x}: it was removed from the cluster");
            tracing::warn!("{msg}");
            let _ = r.stop(REMOVED.into());
            return Err(msg);
        }
        let previous = self
            .incarnations
            .lock()
            .expect("incarnations lock")
            .insert(from, incarnation);
        if previous.is_some_and(|p| p != incarnation) {
            // The member restarted: what we hold is a connection to its
            // previous process. Dropped from a task of its own: the
            // connection table stays locked while another member is dialed,
            // and this stream's messages must not wait for that. Only a
            // connection dialed before this hello: one dialed since reaches
            // the new process already.
            let seen = Instant::now();
            let conns = self.conns.clone();
            tokio::spawn(async move {
                let mut conns = conns.lock().await;
                if conns.get(&from).is_some_and(|d| d.at <= seen)
                    && let Some(d) = conns.remove(&from)
                {
                    tracing::info!(
                        peer = format_args!("{from:x}"),
                        "member restarted: reconnecting to it"
                    );
                    d.conn.close(0u32.into(), b"peer restarted");
                }
            });
        }
        Ok((kind, from))
    }

    async fn serve_uni(self: Arc<Self>, mut r: quinn::RecvStream) {
        let Ok((kind, from)) = self.read_hello(&mut r).await else {
            return;
        };
        let Some(node) = self.node.get().cloned() else {
            return;
        };
        match kind {
            KIND_RAFT => loop {
                match read_frame(&mut r).await {
                    Ok(Some(body)) => match Message::parse_from_bytes(&body) {
                        Ok(m) => node.step(m),
                        Err(e) => {
                            tracing::warn!(
                                peer = format_args!("{from:x}"),
                                "bad raft message: {e}"
                            );
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(peer = format_args!("{from:x}"), "raft stream ended: {e}");
                        return;
                    }
                }
            },
            KIND_SNAPSHOT => match self.receive_snapshot(&mut r).await {
                Ok(m) => node.step(m),
                Err(e) => {
                    tracing::warn!(
                        peer = format_args!("{from:x}"),
                        "receiving a snapshot failed: {e}"
                    );
                    let _ = r.stop(2u32.into());
                }
            },
            other => tracing::warn!(
                peer = format_args!("{from:x}"),
                kind = other,
                "unknown stream kind"
            ),
        }
    }

    /// Writes a snapshot's content to a file, synced, and returns its
    /// message with the file's path as the snapshot data.
    async fn receive_snapshot(&self, r: &mut quinn::RecvStream) -> Result<Message, String> {
        let mut part = None;
        let out = self.receive_snapshot_into(r, &mut part).await;
        if out.is_err()
            && let Some(p) = part
        {
            let _ = tokio::fs::remove_file(p).await;
        }
        out
    }

    async fn receive_snapshot_into(
        &self,
        r: &mut quinn::RecvStream,
        part_path: &mut Option<PathBuf>,
    ) -> Result<Message, String> {
        let body = read_frame(r).await?.ok_or("no snapshot message")?;
        let mut msg = Message::parse_from_bytes(&body).map_err(|e| e.to_string())?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err("the first frame is not a snapshot message".into());
        }
        let index = msg.get_snapshot().get_metadata().index;
        let part = self.snap_dir.join(format!("{index:016x}.part"));
        let done = self.snap_dir.join(format!("{index:016x}.snap"));
        *part_path = Some(part.clone());
        let mut f = tokio::fs::File::create(&part)
            .await
            .map_err(|e| format!("{}: {e}", part.display()))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        while let Some(n) = r.read(&mut buf).await.map_err(|e| e.to_string())? {
            f.write_all(&buf[..n])
                .await
                .map_err(|e| format!("{}: {e}", part.display()))?;
            bytes += n as u64;
            if bytes > self.max_snapshot_bytes {
                return Err(format!(
                    "the snapshot is larger than {} bytes (twice --quota-backend-bytes); refused",
                    self.max_snapshot_bytes
                ));
            }
        }
        f.sync_all()
            .await
            .map_err(|e| format!("{}: {e}", part.display()))?;
        drop(f);
        tokio::fs::rename(&part, &done)
            .await
            .map_err(|e| format!("{}: {e}", done.display()))?;
        tracing::info!(index, bytes, "received a snapshot");
        msg.mut_snapshot().data = done.to_string_lossy().into_owned().into_bytes().into();
        Ok(msg)
    }

    async fn serve_bi(self: Arc<Self>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Ok((kind, from)) = self.read_hello(&mut recv).await else {
            return;
        };
        if kind != KIND_REQUEST {
            return;
        }
        let req = match read_frame(&mut recv).await {
            Ok(Some(b)) => match PeerRequest::decode(b.as_slice()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(peer = format_args!("{from:x}"), "bad request: {e}");
                    return;
                }
            },
            _ => return,
        };
        let Some(handler) = self.handler.get().cloned() else {
            return;
        };
        let resp = handler.handle(req).await;
        let mut out = Vec::new();
        frame(&mut out, &resp.encode_to_vec());
        if send.write_all(&out).await.is_ok() {
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    }

    /// Closes every connection (graceful shutdown).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// The raft node's side of the transport.
pub struct QuicTransport(Arc<Peers>);

impl Transport for QuicTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.to == self.0.member_id() {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.0.rt.spawn(self.0.clone().send_snapshot(m));
                continue;
            }
            let to = m.to;
            if self.0.queue(to).try_send(m).is_err() {
                tracing::debug!(
                    peer = format_args!("{to:x}"),
                    "peer queue full; dropping a raft message"
                );
            }
        }
    }
}
