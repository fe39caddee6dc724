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
use std::time::Duration;

use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_client::LeaseClient,
    lease_server::Lease,
};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use crate::forward::{forward, token_of, with_token};
use crate::upstream::{Picked, Upstream};
use crate::{BoxStream, Proxy, ProxyConfig, Stats};

type Answer = Result<LeaseKeepAliveResponse, Status>;
type Waiters = Vec<oneshot::Sender<Answer>>;

pub(crate) struct Leases {
    tx: mpsc::Sender<(i64, oneshot::Sender<Answer>)>,
}

/// Client keep-alives waiting on the coalescer, and renewals queued on the
/// upstream stream.
const QUEUE: usize = 4096;

/// Upstream streams that may break in a row, with nothing answered, before
/// the requests waiting on them are failed rather than sent again.
const BREAKS_MAX: usize = 3;

impl Leases {
    pub(crate) fn new(config: &ProxyConfig, upstream: Upstream, stats: Arc<Stats>) -> Leases {
        let (tx, rx) = mpsc::channel(QUEUE);
        let coalescer = Coalescer {
            upstream,
            stats,
            open_timeout: config.request_timeout,
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            stream: None,
            breaks: 0,
        };
        tokio::spawn(coalescer.run(rx));
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

/// The one upstream LeaseKeepAlive stream.
struct Open {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    answers: Streaming<LeaseKeepAliveResponse>,
    picked: Picked,
}

/// Owns the upstream stream and which client requests wait on which
/// renewal. A renewal of lease L answers exactly the requests for L that
/// arrived before it was sent; a request that arrives while a renewal of L
/// is in flight waits for the next one.
struct Coalescer {
    upstream: Upstream,
    stats: Arc<Stats>,
    open_timeout: Duration,
    /// Renewals sent on the current stream and not answered yet.
    in_flight: HashMap<i64, Waiters>,
    /// Requests that arrived after their lease's renewal in flight was sent.
    waiting: HashMap<i64, Waiters>,
    stream: Option<Open>,
    /// Streams that broke in a row without answering anything.
    breaks: usize,
}

enum Event {
    Request(Option<(i64, oneshot::Sender<Answer>)>),
    Answer(Option<Result<LeaseKeepAliveResponse, Status>>),
}

fn fail(pending: HashMap<i64, Waiters>, status: &Status) {
    for w in pending.into_values().flatten() {
        let _ = w.send(Err(status.clone()));
    }
}

impl Coalescer {
    async fn run(mut self, mut requests: mpsc::Receiver<(i64, oneshot::Sender<Answer>)>) {
        loop {
            let event = match self.stream.as_mut() {
                Some(open) => tokio::select! {
                    r = requests.recv() => Event::Request(r),
                    a = open.answers.next() => Event::Answer(a),
                },
                None => Event::Request(requests.recv().await),
            };
            match event {
                Event::Request(None) => return,
                Event::Request(Some((id, waiter))) => {
                    self.stats.keepalives_client.fetch_add(1, Ordering::Relaxed);
                    if self.in_flight.contains_key(&id) {
                        self.waiting.entry(id).or_default().push(waiter);
                    } else {
                        self.dispatch(HashMap::from([(id, vec![waiter])])).await;
                    }
                }
                Event::Answer(Some(Ok(answer))) => {
                    self.breaks = 0;
                    if let Some(h) = &answer.header {
                        self.stats
                            .upstream_revision
                            .fetch_max(h.revision, Ordering::Relaxed);
                    }
                    let id = answer.id;
                    for w in self.in_flight.remove(&id).unwrap_or_default() {
                        let _ = w.send(Ok(answer));
                    }
                    if let Some(next) = self.waiting.remove(&id) {
                        self.dispatch(HashMap::from([(id, next)])).await;
                    }
                }
                Event::Answer(end) => {
                    if let Some(Err(s)) = &end {
                        tracing::debug!(error = %s, "upstream lease keep-alive stream failed");
                    }
                    let pending = self.lose_stream();
                    self.dispatch(pending).await;
                }
            }
        }
    }

    /// The stream is gone: every request it had not answered needs a
    /// renewal sent after it arrived, which one on a new stream is.
    fn lose_stream(&mut self) -> HashMap<i64, Waiters> {
        if let Some(open) = self.stream.take() {
            self.upstream.failed(&open.picked);
        }
        self.breaks += 1;
        let mut pending = std::mem::take(&mut self.in_flight);
        for (id, w) in self.waiting.drain() {
            pending.entry(id).or_default().extend(w);
        }
        pending
    }

    /// Sends one renewal for each lease in `pending` (none of them in
    /// flight), opening a stream if there is none.
    async fn dispatch(&mut self, mut pending: HashMap<i64, Waiters>) {
        loop {
            if pending.is_empty() {
                return;
            }
            let Some(open) = self.stream.as_ref() else {
                if self.breaks > BREAKS_MAX {
                    self.breaks = 0;
                    fail(
                        pending,
                        &Status::unavailable("lease keep-alive stream keeps breaking"),
                    );
                    return;
                }
                let ids: Vec<i64> = pending.keys().copied().collect();
                match self.open(&ids).await {
                    Ok(open) => {
                        self.stream = Some(open);
                        self.stats
                            .keepalives_upstream
                            .fetch_add(ids.len() as u64, Ordering::Relaxed);
                        self.in_flight.extend(pending);
                    }
                    Err(s) => fail(pending, &s),
                }
                return;
            };
            let mut broke = false;
            for id in pending.keys().copied().collect::<Vec<_>>() {
                if open.tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    broke = true;
                    break;
                }
                self.stats
                    .keepalives_upstream
                    .fetch_add(1, Ordering::Relaxed);
                let w = pending.remove(&id).unwrap_or_default();
                self.in_flight.insert(id, w);
            }
            if !broke {
                return;
            }
            for (id, w) in self.lose_stream() {
                pending.entry(id).or_default().extend(w);
            }
        }
    }

    /// Opens a stream on the first endpoint that takes it, each tried once.
    /// The first renewals are queued before the call: a member may send its
    /// response headers only with its first answer (etcd does).
    async fn open(&self, first: &[i64]) -> Result<Open, Status> {
        let mut last = Status::unavailable("no cluster endpoint answers");
        for (picked, channel) in self.upstream.candidates() {
            let (tx, rx) = mpsc::channel(QUEUE.max(2 * first.len()));
            for &id in first {
                let _ = tx.try_send(LeaseKeepAliveRequest { id });
            }
            let mut client = LeaseClient::new(channel);
            let call = client.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx));
            match tokio::time::timeout(self.open_timeout, call).await {
                Ok(Ok(r)) => {
                    return Ok(Open {
                        tx,
                        answers: r.into_inner(),
                        picked,
                    });
                }
                Ok(Err(s)) => {
                    tracing::debug!(endpoint = %picked.url, error = %s, "lease keep-alive stream not opened");
                    self.upstream.failed(&picked);
                    last = s;
                }
                Err(_) => {
                    self.upstream.failed(&picked);
                    last = Status::unavailable("etcdserver: request timed out");
                }
            }
        }
        Err(last)
    }
}

impl Proxy {
    /// A keep-alive stream forwarded as is with the client's token (not
    /// coalesced: the members check each renewal against its caller).
    pub(crate) fn keep_alive_as(
        &self,
        token: tonic::metadata::AsciiMetadataValue,
        input: BoxStream<LeaseKeepAliveRequest>,
    ) -> futures::future::BoxFuture<'static, Result<BoxStream<LeaseKeepAliveResponse>, Status>>
    {
        let (picked, channel) = self.0.upstream.pick();
        let upstream = self.0.upstream.clone();
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            let mut input = input;
            while let Some(Ok(r)) = input.next().await {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let req = with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &Some(token),
        );
        Box::pin(async move {
            match LeaseClient::new(channel).lease_keep_alive(req).await {
                Ok(resp) => Ok(Box::pin(resp.into_inner()) as BoxStream<_>),
                Err(e) => {
                    upstream.failed(&picked);
                    Err(e)
                }
            }
        })
    }

    /// One renewal as the client (the JSON gateway's keep-alive).
    pub fn keep_alive_once_as(
        &self,
        token: tonic::metadata::AsciiMetadataValue,
        id: i64,
    ) -> futures::future::BoxFuture<'static, Result<LeaseKeepAliveResponse, Status>> {
        let input = futures::stream::iter([Ok(LeaseKeepAliveRequest { id })]);
        let open = self.keep_alive_as(token, Box::pin(input));
        Box::pin(async move {
            let mut answers = open.await?;
            answers
                .next()
                .await
                .unwrap_or_else(|| Err(Status::unavailable("keep-alive stream ended")))
        })
    }
}

#[tonic::async_trait]
impl Lease for Proxy {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        forward!(self, r, LeaseClient, lease_grant, false)
    }

    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // The keys it held are gone: the cache must not serve them.
        let resp: Result<Response<LeaseRevokeResponse>, Status> =
            forward!(self, r, LeaseClient, lease_revoke, false);
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
        let token = token_of(r.metadata());
        let input = r.into_inner().map(|r| r);
        if let Some(token) = token {
            // With auth, renewals are the client's: its own upstream stream.
            return self
                .keep_alive_as(token, Box::pin(input))
                .await
                .map(Response::new);
        }
        Ok(Response::new(self.keep_alive_stream(Box::pin(input))))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let token = token_of(r.metadata());
        let req = r.into_inner();
        let mut resp = self
            .0
            .call(true, |c| {
                let req = with_token(req, &token);
                async move { LeaseClient::new(c).lease_time_to_live(req).await }
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
        forward!(self, r, LeaseClient, lease_leases, true)
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
