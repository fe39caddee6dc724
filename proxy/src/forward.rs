//! One forwarded call: the current endpoint first, then each other one at
//! most once when it cannot be reached, all within `request_timeout`. A
//! request that may have reached a member is tried elsewhere only when it
//! is idempotent (a read); a write that failed after it was sent is
//! reported, never sent twice. Any other answer of the cluster (its errors
//! included) goes back to the client unchanged.
use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::Ordering;

use cairn_proto::etcdserverpb::ResponseHeader;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::Inner;

/// Whether the failure happened before the request left the proxy: the
/// channel could not connect (tonic reports a `ConnectError` in the
/// status's source chain; its message is the fallback).
pub(crate) fn not_sent(s: &Status) -> bool {
    if s.code() != Code::Unavailable {
        return false;
    }
    let mut source = s.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    let m = s.message();
    m.contains("tcp connect error") || m.contains("onnection refused") || m.contains("dns error")
}

/// Whether the connection itself failed (rather than the member answering
/// Unavailable, as it does without a leader): the endpoint is given up.
fn connection_failed(s: &Status) -> bool {
    not_sent(s)
        || s.message().contains("transport error")
        || s.message().contains("connection")
        || s.message().contains("h2 protocol error")
}

/// The auth token a client's request carries (etcd clients send gRPC
/// metadata `token`; the JSON gateway `authorization`), passed on upstream
/// so that the cluster decides permissions for the real client.
pub fn token_of(md: &tonic::metadata::MetadataMap) -> Option<tonic::metadata::AsciiMetadataValue> {
    md.get("token").or_else(|| md.get("authorization")).cloned()
}

/// `msg` as an upstream request carrying the client's token.
pub(crate) fn with_token<T>(
    msg: T,
    token: &Option<tonic::metadata::AsciiMetadataValue>,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.clone());
    }
    r
}

impl Inner {
    /// Forwards one unary (or stream-opening) call made by `f` on an
    /// endpoint's channel.
    pub(crate) async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        self.call_until(idempotent, Some(deadline), f).await
    }

    /// [`Inner::call`] with its own deadline; `None` for calls that wait
    /// as long as the client does (Lock, Campaign).
    pub(crate) async fn call_until<T, F, Fut>(
        &self,
        idempotent: bool,
        deadline: Option<Instant>,
        f: F,
    ) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = Status::unavailable("no cluster endpoint answers");
        for (picked, channel) in self.upstream.candidates() {
            let answer = match deadline {
                Some(d) => tokio::time::timeout_at(d, f(channel)).await,
                None => Ok(f(channel).await),
            };
            match answer {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if s.code() == Code::Unavailable => {
                    let unsent = not_sent(&s);
                    if connection_failed(&s) {
                        self.upstream.failed(&picked);
                    }
                    if !(idempotent || unsent) {
                        return Err(s);
                    }
                    tracing::debug!(endpoint = %picked.url, error = %s, "trying the next endpoint");
                    last = s;
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    // A member that does not answer in time: later requests
                    // start on the next one. This one has no time left.
                    self.upstream.failed(&picked);
                    return Err(Status::unavailable("etcdserver: request timed out"));
                }
            }
        }
        Err(last)
    }

    /// Remembers the newest revision seen upstream.
    pub(crate) fn saw(&self, header: &Option<ResponseHeader>) {
        if let Some(h) = header {
            self.stats
                .upstream_revision
                .fetch_max(h.revision, Ordering::Relaxed);
        }
    }
}

/// One unary RPC of a service forwarded as it is: `$client` is the tonic
/// client type, `$method` the call; the answer's header updates the
/// proxy's view of the cluster's revision.
macro_rules! forward {
    ($self:ident, $r:ident, $client:ident, $method:ident, $idempotent:expr) => {{
        let token = $crate::forward::token_of($r.metadata());
        let req = $r.into_inner();
        let resp = $self
            .0
            .call($idempotent, |c| {
                let req = $crate::forward::with_token(req.clone(), &token);
                async move { $client::new(c).$method(req).await }
            })
            .await?;
        $self.0.saw(&resp.header);
        Ok(tonic::Response::new(resp))
    }};
}
pub(crate) use forward;
