//! One forwarded call: the current endpoint first, the next ones when it
//! cannot be reached. A request that may have reached a member is retried
//! only when it is idempotent (a read); a write that failed after it was
//! sent is reported, never sent twice.
use std::future::Future;
use std::sync::atomic::Ordering;

use cairn_proto::etcdserverpb::ResponseHeader;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::Inner;

/// Whether the failure happened before the request left the proxy.
fn not_sent(s: &Status) -> bool {
    let m = s.message();
    s.code() == Code::Unavailable
        && (m.contains("tcp connect error")
            || m.contains("Connection refused")
            || m.contains("connection refused")
            || m.contains("dns error"))
}

impl Inner {
    pub(crate) async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let tries = self.upstream.endpoints().len().max(1);
        let mut last = Status::unavailable("no cluster endpoint answers");
        for _ in 0..tries {
            let (picked, channel) = self.upstream.pick();
            match tokio::time::timeout(self.config.request_timeout, f(channel)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if s.code() == Code::Unavailable => {
                    let retry = idempotent || not_sent(&s);
                    if not_sent(&s) || s.message().contains("transport error") {
                        self.upstream.failed(&picked);
                    }
                    if !retry {
                        return Err(s);
                    }
                    last = s;
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    if !idempotent {
                        return Err(Status::unavailable("etcdserver: request timed out"));
                    }
                    self.upstream.failed(&picked);
                    last = Status::unavailable("etcdserver: request timed out");
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
