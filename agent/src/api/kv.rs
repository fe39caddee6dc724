//! KV: Range, RangeStream, Put, DeleteRange, Txn, Compact.
use cairn_mvcc::{Response, validate};
use cairn_proto::cairnpb::command::Op;
use cairn_proto::etcdserverpb::kv_server::Kv;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RangeStreamResponse, TxnRequest, TxnResponse,
};
use tonic::{Request, Response as GrpcResponse, Status};

use super::{Api, BoxStream, status};
use crate::auth::caller_of;
use crate::limits;
use cairn_mvcc::auth::AuthInfo;

// === impl Api ===

impl Api {
    pub async fn put(&self, req: PutRequest, who: &AuthInfo) -> Result<PutResponse, Status> {
        validate::check_put(&req).map_err(status::mvcc)?;
        self.prefix_stats.request(&req.key);
        self.tenants.admit(&req.key, &who.user)?;
        self.tenant_space(&[(&req.key, req.value.len(), req.ignore_value)])?;
        match self.applied(Op::Put(req), who).await? {
            Response::Put(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
        who: &AuthInfo,
    ) -> Result<DeleteRangeResponse, Status> {
        validate::check_delete(&req).map_err(status::mvcc)?;
        self.prefix_stats.request(&req.key);
        self.tenants.admit(&req.key, &who.user)?;
        match self.applied(Op::DeleteRange(req), who).await? {
            Response::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, req: TxnRequest, who: &AuthInfo) -> Result<TxnResponse, Status> {
        validate::check_txn(&req, self.settings.max_txn_ops).map_err(status::mvcc)?;
        let mut puts = Vec::new();
        let mut first: Option<&[u8]> = req.compare.first().map(|c| c.key.as_slice());
        for op in req.success.iter().chain(&req.failure) {
            use cairn_proto::etcdserverpb::request_op::Request as R;
            let key = match &op.request {
                Some(R::RequestRange(r)) => &r.key,
                Some(R::RequestPut(r)) => {
                    puts.push((r.key.as_slice(), r.value.len(), r.ignore_value));
                    &r.key
                }
                Some(R::RequestDeleteRange(r)) => &r.key,
                _ => continue,
            };
            self.prefix_stats.request(key);
            first.get_or_insert(key.as_slice());
        }
        if let Some(k) = first {
            self.tenants.admit(k, &who.user)?;
        }
        self.tenant_space(&puts)?;
        match self.applied(Op::Txn(req), who).await? {
            Response::Txn(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn compact(
        &self,
        req: CompactionRequest,
        who: &AuthInfo,
    ) -> Result<CompactionResponse, Status> {
        // etcd: compaction is for admins.
        self.check_admin(who)?;
        let physical = req.physical;
        let rev = req.revision;
        match self.applied(Op::Compaction(req), who).await? {
            Response::Compaction(mut r) => {
                if physical {
                    // etcd answers a physical compaction only once the old
                    // versions are gone from the backend.
                    let mut done = self.physically_compacted.clone();
                    done.wait_for(|&d| d >= rev)
                        .await
                        .map_err(|_| status::internal("compactor stopped"))?;
                }
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Refuses puts that would take a tenant past its space quota
    /// (`tenants.rs`): each put grows its prefix by the new value's size
    /// less the old one's, or by key and value when the key is new.
    fn tenant_space(&self, puts: &[(&[u8], usize, bool)]) -> Result<(), Status> {
        if self.tenants.quotas.is_empty() || puts.is_empty() {
            return Ok(());
        }
        let mut growth = Vec::with_capacity(puts.len());
        for &(key, vlen, ignore_value) in puts {
            let old = self
                .mvcc
                .range(&RangeRequest {
                    key: key.to_vec(),
                    serializable: true,
                    ..Default::default()
                })
                .map_err(status::mvcc)?
                .kvs
                .into_iter()
                .next();
            let add = match old {
                _ if ignore_value => 0,
                Some(kv) => vlen as i64 - kv.value.len() as i64,
                None => (key.len() + vlen) as i64,
            };
            growth.push((key.to_vec(), add));
        }
        self.tenants
            .check_space(&growth, |p| self.prefix_stats.bytes_under(p))
    }

    /// Proposes and turns the apply result into the response or etcd error.
    async fn applied(&self, op: Op, who: &AuthInfo) -> Result<Response, Status> {
        let applied = self.propose_as(op, who).await?;
        applied.result.map_err(status::mvcc)
    }

    /// etcd 3.7's RangeStream: the result of Range, cut into chunks of keys
    /// read one after the other at one pinned revision, so neither side holds
    /// the whole result. `count` and `more` come with the last chunk only.
    fn range_chunks(
        &self,
        req: RangeRequest,
        who: AuthInfo,
    ) -> Result<BoxStream<RangeStreamResponse>, Status> {
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let result = api.stream_range(req, &who, &tx).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn stream_range(
        &self,
        req: RangeRequest,
        who: &AuthInfo,
        tx: &tokio::sync::mpsc::Sender<Result<RangeStreamResponse, Status>>,
    ) -> Result<(), Status> {
        // Sorting by anything but key, or filtering, needs the whole result
        // before the first key can be sent: answer it as one chunk.
        let sorted = req.sort_order != 0 && !(req.sort_target == 0 && req.sort_order == 1);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        if sorted || filtered || req.count_only || req.range_end.is_empty() {
            let r = self.0.range_as(&req, who).await?;
            let _ = tx
                .send(Ok(RangeStreamResponse {
                    range_response: Some(r),
                }))
                .await;
            return Ok(());
        }
        // Pin the revision with a first (possibly linearizable) read.
        let mut first = req.clone();
        first.limit =
            limits::RANGE_STREAM_CHUNK_KEYS.min(if req.limit > 0 { req.limit } else { i64::MAX });
        let mut page = self.0.range_as(&first, who).await?;
        let revision = page.header.as_ref().map(|h| h.revision).unwrap_or_default();
        let mut sent: i64 = 0;
        loop {
            let last_key = page.kvs.last().map(|kv| kv.key.clone());
            sent += page.kvs.len() as i64;
            let budget_left = req.limit == 0 || sent < req.limit;
            let more_in_store = page.more;
            if !(more_in_store && budget_left) {
                // Final chunk: count and more as Range would report them.
                let mut count_req = req.clone();
                count_req.revision = revision;
                count_req.count_only = true;
                count_req.serializable = true;
                let counted = self.mvcc.range(&count_req).map_err(status::mvcc)?;
                page.count = counted.count;
                page.more = req.limit > 0 && counted.count > sent;
                self.fill(&mut page.header);
                let _ = tx
                    .send(Ok(RangeStreamResponse {
                        range_response: Some(page),
                    }))
                    .await;
                return Ok(());
            }
            let chunk = std::mem::take(&mut page.kvs);
            let msg = RangeStreamResponse {
                range_response: Some(RangeResponse {
                    kvs: chunk,
                    ..Default::default()
                }),
            };
            if tx.send(Ok(msg)).await.is_err() {
                return Ok(()); // client went away
            }
            let mut next = req.clone();
            let mut start = last_key.expect("a page with more has keys");
            start.push(0);
            next.key = start;
            next.revision = revision;
            next.serializable = true;
            next.limit = limits::RANGE_STREAM_CHUNK_KEYS.min(if req.limit > 0 {
                req.limit - sent
            } else {
                i64::MAX
            });
            page = self.mvcc.range(&next).map_err(status::mvcc)?;
        }
    }
}

fn unexpected(r: Response) -> Status {
    status::internal(format!("unexpected apply result {r:?}"))
}

#[tonic::async_trait]
impl Kv for Api {
    async fn range(&self, r: Request<RangeRequest>) -> Result<GrpcResponse<RangeResponse>, Status> {
        let who = caller_of(self, &r).await?;
        self.tenants.admit(&r.get_ref().key, &who.user)?;
        self.0
            .range_as(&r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    type RangeStreamStream = BoxStream<RangeStreamResponse>;

    async fn range_stream(
        &self,
        r: Request<RangeRequest>,
    ) -> Result<GrpcResponse<Self::RangeStreamStream>, Status> {
        let who = caller_of(self, &r).await?;
        let req = r.into_inner();
        validate::check_range(&req).map_err(status::mvcc)?;
        self.tenants.admit(&req.key, &who.user)?;
        self.range_chunks(req, who).map(GrpcResponse::new)
    }

    async fn put(&self, r: Request<PutRequest>) -> Result<GrpcResponse<PutResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::put(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::delete_range(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    async fn txn(&self, r: Request<TxnRequest>) -> Result<GrpcResponse<TxnResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::txn(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }

    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        let who = caller_of(self, &r).await?;
        Api::compact(self, r.into_inner(), &who)
            .await
            .map(GrpcResponse::new)
    }
}
