//! Leases forwarded to the cluster, with keep-alives coalesced: the proxy
//! holds one upstream LeaseKeepAlive stream, and client keep-alives for the
//! same lease share renewals. A client's request is answered by a renewal
//! sent *after* it arrived, never by an older answer, so the TTL a client
//! hears is as true as if it had renewed the lease itself; requests that
//! arrive while a renewal of their lease is in flight wait for the next one,
//! which they then share.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_client::LeaseClient,
    lease_server::Lease,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::upstream::Upstream;
use crate::{BoxStream, Proxy, ProxyConfig, Stats};

type Answer = Result<LeaseKeepAliveResponse, Status>;

pub(crate) struct Leases {
    tx: mpsc::Sender<(i64, oneshot::Sender<Answer>)>,
}

/// Client keep-alives waiting on the coalescer.
const QUEUE: usize = 4096;

impl Leases {
    pub(crate) fn new(_config: &ProxyConfig, upstream: Upstream, stats: Arc<Stats>) -> Leases {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(coalesce(upstream, stats, rx));
        Leases { tx }
    }

    /// One client keep-alive for `id`.
    pub(crate) async fn keep_alive(&self, id: i64) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((id, tx))
            .await
            .map_err(|_| Status::unavailable("proxy stopping"))?;
        rx.await
            .map_err(|_| Status::unavailable("lease keep-alive lost its upstream stream"))?
    }
}

async fn coalesce(
    upstream: Upstream,
    stats: Arc<Stats>,
    mut requests: mpsc::Receiver<(i64, oneshot::Sender<Answer>)>,
) {
    // Renewals sent and not answered, and requests waiting for the next.
    let mut in_flight: HashMap<i64, Vec<oneshot::Sender<Answer>>> = HashMap::new();
    let mut waiting: HashMap<i64, Vec<oneshot::Sender<Answer>>> = HashMap::new();
    let mut stream: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )> = None;
    let mut picked = None;
    loop {
        let got = match stream.as_mut() {
            Some((_, answers)) => tokio::select! {
                r = requests.recv() => Ok(r),
                a = answers.next() => Err(a),
            },
            None => Ok(requests.recv().await),
        };
        match got {
            Ok(None) => return,
            Ok(Some((id, waiter))) => {
                stats.keepalives_client.fetch_add(1, Ordering::Relaxed);
                if in_flight.contains_key(&id) {
                    waiting.entry(id).or_default().push(waiter);
                    continue;
                }
                if stream.is_none() {
                    let (p, channel) = upstream.pick();
                    let (tx, rx) = mpsc::channel(QUEUE);
                    match LeaseClient::new(channel)
                        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await
                    {
                        Ok(r) => {
                            stream = Some((tx, r.into_inner()));
                            picked = Some(p);
                        }
                        Err(e) => {
                            upstream.failed(&p);
                            let _ = waiter.send(Err(e));
                            continue;
                        }
                    }
                }
                let (tx, _) = stream.as_ref().unwrap();
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    let _ = waiter.send(Err(Status::unavailable("lease keep-alive stream broke")));
                    stream = None;
                    continue;
                }
                stats.keepalives_upstream.fetch_add(1, Ordering::Relaxed);
                in_flight.insert(id, vec![waiter]);
            }
            Err(Some(Ok(answer))) => {
                if let Some(h) = &answer.header {
                    stats
                        .upstream_revision
                        .fetch_max(h.revision, Ordering::Relaxed);
                }
                let id = answer.id;
                for w in in_flight.remove(&id).unwrap_or_default() {
                    let _ = w.send(Ok(answer));
                }
                if let Some(next) = waiting.remove(&id)
                    && let Some((tx, _)) = stream.as_ref()
                {
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_ok() {
                        stats.keepalives_upstream.fetch_add(1, Ordering::Relaxed);
                        in_flight.insert(id, next);
                    } else {
                        for w in next {
                            let _ =
                                w.send(Err(Status::unavailable("lease keep-alive stream broke")));
                        }
                    }
                }
            }
            Err(end) => {
                // The upstream stream ended or failed: everyone waiting
                // gets the error (clients retry, as with a member), and the
                // next request opens a stream on the next endpoint.
                let status = match end {
                    Some(Err(s)) => s,
                    _ => Status::unavailable("lease keep-alive stream closed by the cluster"),
                };
                for w in in_flight
                    .drain()
                    .chain(waiting.drain())
                    .flat_map(|(_, v)| v)
                {
                    let _ = w.send(Err(status.clone()));
                }
                stream = None;
                if let Some(p) = picked.take() {
                    upstream.failed(&p);
                }
            }
        }
    }
}

macro_rules! forward {
    ($self:ident, $r:ident, $method:ident, $idempotent:expr) => {{
        let req = $r.into_inner();
        let resp = $self
            .0
            .call($idempotent, |c| {
                let req = req.clone();
                async move { LeaseClient::new(c).$method(req).await }
            })
            .await?;
        $self.0.saw(&resp.header);
        Ok(Response::new(resp))
    }};
}

#[tonic::async_trait]
impl Lease for Proxy {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        forward!(self, r, lease_grant, false)
    }

    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // The keys it held are gone: the cache must not serve them.
        let resp: Result<Response<LeaseRevokeResponse>, Status> =
            forward!(self, r, lease_revoke, false);
        if let Ok(r) = &resp {
            self.0.cache.clear_after(&r.get_ref().header);
        }
        resp
    }

    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let input = r.into_inner().map(|r| r);
        Ok(Response::new(self.keep_alive_stream(Box::pin(input))))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = r.into_inner();
        let mut resp = self
            .0
            .call(true, |c| async move {
                LeaseClient::new(c).lease_time_to_live(req).await
            })
            .await?;
        self.0.saw(&resp.header);
        let ns = &self.0.ns;
        if !ns.is_empty() {
            resp.keys.retain(|k| k.starts_with(ns.prefix()));
            for k in &mut resp.keys {
                ns.strip(k);
            }
        }
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        r: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        forward!(self, r, lease_leases, true)
    }
}

impl Proxy {
    /// A client's keep-alive stream: each request answered in order.
    pub fn keep_alive_stream(
        &self,
        mut input: BoxStream<LeaseKeepAliveRequest>,
    ) -> BoxStream<LeaseKeepAliveResponse> {
        let proxy = self.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(req)) = input.next().await {
                let answer = proxy.0.leases.keep_alive(req.id).await;
                let stop = answer.is_err();
                if tx.send(answer).await.is_err() || stop {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
