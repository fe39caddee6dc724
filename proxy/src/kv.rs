//! KV forwarded to the cluster, keys confined to the namespace.
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, RequestOp, ResponseOp,
    TxnRequest, TxnResponse, kv_client::KvClient, kv_server::Kv, request_op, response_op,
};
use cairn_proto::mvccpb::KeyValue;
use tonic::{Request, Response, Status};

use crate::Proxy;
use crate::forward::{token_of, with_token};
use crate::namespace::Namespace;

/// What a member says of an empty key. With a namespace, the prefix would
/// make an empty key valid (and name the prefix itself), so the proxy
/// refuses it as the member would have.
fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

fn txn_keys_given(t: &TxnRequest) -> bool {
    t.compare.iter().all(|c| !c.key.is_empty())
        && t.success
            .iter()
            .chain(t.failure.iter())
            .all(|op| match &op.request {
                Some(request_op::Request::RequestRange(r)) => !r.key.is_empty(),
                Some(request_op::Request::RequestPut(p)) => !p.key.is_empty(),
                Some(request_op::Request::RequestDeleteRange(d)) => !d.key.is_empty(),
                Some(request_op::Request::RequestTxn(t)) => txn_keys_given(t),
                None => true,
            })
}

fn range_in(ns: &Namespace, r: &mut RangeRequest) {
    r.range_end = ns.range_end(&r.range_end);
    r.key = ns.key(&r.key);
}

fn kvs_out(ns: &Namespace, kvs: &mut [KeyValue]) {
    for kv in kvs {
        ns.strip(&mut kv.key);
    }
}

fn txn_in(ns: &Namespace, t: &mut TxnRequest) {
    for c in &mut t.compare {
        c.range_end = ns.range_end(&c.range_end);
        c.key = ns.key(&c.key);
    }
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        op_in(ns, op);
    }
}

fn op_in(ns: &Namespace, op: &mut RequestOp) {
    match &mut op.request {
        Some(request_op::Request::RequestRange(r)) => range_in(ns, r),
        Some(request_op::Request::RequestPut(p)) => p.key = ns.key(&p.key),
        Some(request_op::Request::RequestDeleteRange(d)) => {
            d.range_end = ns.range_end(&d.range_end);
            d.key = ns.key(&d.key);
        }
        Some(request_op::Request::RequestTxn(t)) => txn_in(ns, t),
        None => {}
    }
}

fn txn_out(ns: &Namespace, t: &mut TxnResponse) {
    for r in &mut t.responses {
        op_out(ns, r);
    }
}

fn op_out(ns: &Namespace, op: &mut ResponseOp) {
    match &mut op.response {
        Some(response_op::Response::ResponseRange(r)) => kvs_out(ns, &mut r.kvs),
        Some(response_op::Response::ResponsePut(p)) => {
            if let Some(kv) = &mut p.prev_kv {
                ns.strip(&mut kv.key);
            }
        }
        Some(response_op::Response::ResponseDeleteRange(d)) => kvs_out(ns, &mut d.prev_kvs),
        Some(response_op::Response::ResponseTxn(t)) => txn_out(ns, t),
        None => {}
    }
}

/// A txn with writes must not be sent twice.
fn txn_writes(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .any(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => false,
            Some(request_op::Request::RequestTxn(t)) => txn_writes(t),
            _ => true,
        })
}

#[tonic::async_trait]
impl Kv for Proxy {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        // The cache answers only anonymous reads, and only while the
        // cluster has auth off: a member decides who may read what.
        let cacheable =
            token.is_none() && self.0.auth_off.load(std::sync::atomic::Ordering::Relaxed);
        if cacheable && let Some(hit) = self.0.cache.get(&req) {
            return Ok(Response::new(hit));
        }
        let asked = req.clone();
        range_in(&self.0.ns, &mut req);
        let mut resp = self
            .0
            .call(true, |c| {
                let req = with_token(req.clone(), &token);
                async move { KvClient::new(c).range(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        kvs_out(&self.0.ns, &mut resp.kvs);
        if cacheable {
            self.0.cache.put(&asked, &resp);
        }
        Ok(Response::new(resp))
    }

    type RangeStreamStream = crate::BoxStream<RangeStreamResponse>;

    async fn range_stream(
        &self,
        r: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        range_in(&self.0.ns, &mut req);
        let ns = self.0.ns.clone();
        let stream = self
            .0
            .call(true, |c| {
                let req = with_token(req.clone(), &token);
                async move { KvClient::new(c).range_stream(req).await }
            })
            .await?;
        use futures::StreamExt;
        Ok(Response::new(Box::pin(stream.map(move |r| {
            r.map(|mut r| {
                if let Some(rr) = &mut r.range_response {
                    kvs_out(&ns, &mut rr.kvs);
                }
                r
            })
        }))))
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        let asked = req.key.clone();
        req.key = self.0.ns.key(&req.key);
        let mut resp = self
            .0
            .call(false, |c| {
                let req = with_token(req.clone(), &token);
                async move { KvClient::new(c).put(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        self.0.cache.wrote(&asked, &[], &resp.header);
        if let Some(kv) = &mut resp.prev_kv {
            self.0.ns.strip(&mut kv.key);
        }
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        let (key, end) = (req.key.clone(), req.range_end.clone());
        req.range_end = self.0.ns.range_end(&req.range_end);
        req.key = self.0.ns.key(&req.key);
        let mut resp = self
            .0
            .call(false, |c| {
                let req = with_token(req.clone(), &token);
                async move { KvClient::new(c).delete_range(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        self.0.cache.wrote(&key, &end, &resp.header);
        kvs_out(&self.0.ns, &mut resp.prev_kvs);
        Ok(Response::new(resp))
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let token = token_of(r.metadata());
        let mut req = r.into_inner();
        if !txn_keys_given(&req) {
            return Err(empty_key());
        }
        let writes = txn_writes(&req);
        txn_in(&self.0.ns, &mut req);
        let mut resp = self
            .0
            .call(!writes, |c| {
                let req = with_token(req.clone(), &token);
                async move { KvClient::new(c).txn(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        if writes {
            // Which keys changed is not worth working out: start afresh.
            self.0.cache.clear_after(&resp.header);
        }
        txn_out(&self.0.ns, &mut resp);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let token = token_of(r.metadata());
        let req = r.into_inner();
        let resp = self
            .0
            .call(false, |c| {
                let req = with_token(req, &token);
                async move { KvClient::new(c).compact(req).await }
            })
            .await?;
        self.0.saw(&resp.header);
        Ok(Response::new(resp))
    }
}
