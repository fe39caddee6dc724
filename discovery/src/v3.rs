//! v3 discovery (etcd 3.6's `--discovery-token` with
//! `--discovery-endpoints`): the same protocol on v3 keys,
//! `/_etcd/registry/<token>/_config/size` and
//! `/_etcd/registry/<token>/members/<id>`. cairn records client URLs under
//! `/_etcd/registry/<token>/_clients/<id>`.
use std::time::Duration;

use cairn_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op::Request as Op,
    watch_client::WatchClient,
    watch_request::RequestUnion,
};
use cairn_proto::mvccpb::event::EventType;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::registry::{DiscoveryError, Me, Registration, Registry};

const PREFIX: &str = "/_etcd/registry";

#[derive(Clone)]
pub struct V3Registry {
    token: String,
    endpoints: Vec<String>,
    tls: crate::tls::ClientTls,
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn unreachable(e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Unreachable(e.to_string())
}

impl V3Registry {
    pub fn new(
        token: &str,
        endpoints: &[String],
        tls: crate::tls::ClientTls,
    ) -> Result<Self, DiscoveryError> {
        if token.is_empty() || token.contains('/') {
            return Err(DiscoveryError::Other(format!(
                "--discovery-token {token:?}: must be a non-empty name without '/'"
            )));
        }
        if endpoints.is_empty() {
            return Err(DiscoveryError::Other(
                "--discovery-token needs --discovery-endpoints".into(),
            ));
        }
        Ok(V3Registry {
            token: token.to_string(),
            endpoints: endpoints.to_vec(),
            tls,
        })
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{PREFIX}/{}/{rest}", self.token).into_bytes()
    }

    async fn channel(&self) -> Result<Channel, DiscoveryError> {
        let mut last = String::new();
        for ep in &self.endpoints {
            let conn = self
                .tls
                .endpoint(ep, Duration::from_secs(3))
                .map_err(|e| DiscoveryError::Other(format!("{ep}: {e:#}")))?
                .timeout(Duration::from_secs(10))
                .connect()
                .await;
            match conn {
                Ok(c) => return Ok(c),
                Err(e) => last = format!("{ep}: {e}"),
            }
        }
        Err(DiscoveryError::Unreachable(last))
    }

    async fn range_prefix(
        &self,
        rest: &str,
    ) -> Result<(Vec<cairn_proto::mvccpb::KeyValue>, i64), DiscoveryError> {
        let key = self.key(rest);
        let req = RangeRequest {
            range_end: prefix_end(&key),
            key,
            ..RangeRequest::default()
        };
        let resp = KvClient::new(self.channel().await?)
            .range(req)
            .await
            .map_err(unreachable)?
            .into_inner();
        Ok((resp.kvs, resp.header.map(|h| h.revision).unwrap_or(0)))
    }

    /// Writes `size` for a new token (`cairn discovery new --v3`).
    pub async fn create(&self, size: usize) -> Result<(), DiscoveryError> {
        let key = self.key("_config/size");
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.clone(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::CreateRevision(0)),
            }],
            success: vec![put(key, size.to_string().into_bytes())],
            failure: Vec::new(),
        };
        let resp = KvClient::new(self.channel().await?)
            .txn(txn)
            .await
            .map_err(unreachable)?
            .into_inner();
        if !resp.succeeded {
            return Err(DiscoveryError::Other(format!(
                "token {} already exists",
                self.token
            )));
        }
        Ok(())
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            ..PutRequest::default()
        })),
    }
}

fn registration(kv: &cairn_proto::mvccpb::KeyValue) -> Option<Registration> {
    let key = String::from_utf8_lossy(&kv.key);
    Some(Registration {
        id: key.rsplit('/').next()?.to_string(),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        created: kv.create_revision,
    })
}

impl Registry for V3Registry {
    async fn size(&self) -> Result<usize, DiscoveryError> {
        let (kvs, _) = self.range_prefix("_config/size").await?;
        let kv = kvs
            .into_iter()
            .find(|kv| kv.key == self.key("_config/size"))
            .ok_or(DiscoveryError::SizeNotFound)?;
        String::from_utf8_lossy(&kv.value)
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(DiscoveryError::BadSizeKey)
    }

    async fn members(&self) -> Result<(Vec<Registration>, i64), DiscoveryError> {
        let (kvs, rev) = self.range_prefix("members/").await?;
        Ok((kvs.iter().filter_map(registration).collect(), rev))
    }

    async fn register(&self, me: &Me) -> Result<(), DiscoveryError> {
        let key = self.key(&format!("members/{}", me.id));
        let mut success = vec![put(key.clone(), me.value.clone().into_bytes())];
        if !me.client_urls.is_empty() {
            success.push(put(
                self.key(&format!("_clients/{}", me.id)),
                me.client_urls.join(",").into_bytes(),
            ));
        }
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.clone(),
                range_end: Vec::new(),
                target_union: Some(TargetUnion::CreateRevision(0)),
            }],
            success,
            failure: vec![RequestOp {
                request: Some(Op::RequestRange(RangeRequest {
                    key,
                    ..RangeRequest::default()
                })),
            }],
        };
        let resp = KvClient::new(self.channel().await?)
            .txn(txn)
            .await
            .map_err(unreachable)?
            .into_inner();
        if resp.succeeded {
            return Ok(());
        }
        let same = resp.responses.iter().any(|r| {
            matches!(&r.response, Some(cairn_proto::etcdserverpb::response_op::Response::ResponseRange(rr))
                if rr.kvs.iter().any(|kv| kv.value == me.value.as_bytes()))
        });
        if same {
            Ok(())
        } else {
            Err(DiscoveryError::DuplicateId)
        }
    }

    async fn next_after(&self, index: i64) -> Result<Option<(Registration, i64)>, DiscoveryError> {
        let key = self.key("members/");
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                range_end: prefix_end(&key),
                key,
                start_revision: index + 1,
                ..WatchCreateRequest::default()
            })),
        };
        let input = futures::stream::iter([create]).chain(futures::stream::pending());
        let mut stream = WatchClient::new(self.channel().await?)
            .watch(input)
            .await
            .map_err(unreachable)?
            .into_inner();
        while let Some(resp) = stream.next().await {
            let resp = resp.map_err(unreachable)?;
            if resp.canceled {
                return Ok(None);
            }
            for ev in resp.events {
                if ev.r#type == EventType::Put as i32
                    && let Some(kv) = &ev.kv
                    && kv.version == 1
                    && let Some(r) = registration(kv)
                {
                    return Ok(Some((r, kv.mod_revision)));
                }
            }
        }
        Err(DiscoveryError::Unreachable("the watch ended".into()))
    }

    async fn client_urls(&self) -> Result<Vec<String>, DiscoveryError> {
        let (kvs, _) = self.range_prefix("_clients/").await?;
        let mut urls: Vec<String> = kvs
            .iter()
            .flat_map(|kv| {
                String::from_utf8_lossy(&kv.value)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }
}
