//! The hickory-server request handler: one index read per question, the
//! answer built by [`crate::answer`], EDNS honoured, forwarding of names
//! outside the zones.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::answer::{Outcome, answer};
use crate::index::Index;

/// How long one upstream may take before the next is tried.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP payload we advertise or send, whatever the client says
/// (RFC 6891 allows a responder to cap it; 1232 is the DNS flag day value
/// that avoids fragmentation, a client asking for more still gets up to
/// its own size up to this cap).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// What the server and the indexer share.
pub struct Shared {
    pub index: RwLock<Arc<Index>>,
    pub forward: Vec<SocketAddr>,
    pub queries: AtomicU64,
    pub forwarded: AtomicU64,
}

impl Shared {
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The [`RequestHandler`] of the DNS server.
#[derive(Clone)]
pub struct Handler(pub Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> ResponseInfo {
        self.0.queries.fetch_add(1, Ordering::Relaxed);
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            out.set_version(0);
            out
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut meta = hickory_proto::op::Metadata::response_from_request(&request.metadata);
        meta.recursion_available = !self.0.forward.is_empty();
        let queries = request.queries.queries();
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            meta.response_code = ResponseCode::NotImp;
            return send(&mut handle, builder.build(meta, [], [], [], []), request).await;
        }
        if queries.len() != 1 {
            meta.response_code = ResponseCode::FormErr;
            return send(&mut handle, builder.build(meta, [], [], [], []), request).await;
        }
        let q = queries[0].original();
        let index = self.0.index();
        match answer(&index, q.name(), q.query_type(), Instant::now()) {
            Outcome::Reply(reply) => {
                meta.authoritative = true;
                meta.response_code = reply.rcode;
                let resp = builder.build(
                    meta,
                    reply.answers.iter(),
                    reply.authority.iter(),
                    [],
                    reply.additional.iter(),
                );
                send(&mut handle, resp, request).await
            }
            Outcome::Refused => {
                meta.response_code = ResponseCode::Refused;
                send(&mut handle, builder.build(meta, [], [], [], []), request).await
            }
            Outcome::Forward => {
                self.0.forwarded.fetch_add(1, Ordering::Relaxed);
                match forward(&self.0.forward, request.as_slice()).await {
                    Some(m) => {
                        meta.response_code = m.metadata.response_code;
                        // Relayed, not ours: never authoritative.
                        meta.authoritative = false;
                        meta.truncation = m.metadata.truncation;
                        meta.authentic_data = m.metadata.authentic_data;
                        let resp = builder.build(
                            meta,
                            m.answers.iter(),
                            m.authorities.iter(),
                            [],
                            m.additionals.iter(),
                        );
                        send(&mut handle, resp, request).await
                    }
                    None => {
                        meta.response_code = ResponseCode::ServFail;
                        send(&mut handle, builder.build(meta, [], [], [], []), request).await
                    }
                }
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    resp: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(resp).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: sending a response failed");
            let mut m = hickory_proto::op::Metadata::response_from_request(&request.metadata);
            m.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata: m,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// Sends the client's query, as it came, to each upstream in turn; the
/// first answer wins.
async fn forward(upstreams: &[SocketAddr], query: &[u8]) -> Option<Message> {
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let attempt = async {
            let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
            sock.connect(up).await.ok()?;
            sock.send(query).await.ok()?;
            let mut buf = vec![0u8; 65_535];
            let n = sock.recv(&mut buf).await.ok()?;
            Message::from_vec(&buf[..n]).ok()
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, attempt).await {
            Ok(Some(m)) => return Some(m),
            _ => tracing::debug!(upstream = %up, "dns: upstream did not answer"),
        }
    }
    None
}
