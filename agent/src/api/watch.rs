//! Watch: one bidi stream multiplexing many watchers.
//!
//! Each stream is served by one task that owns its watchers. The task sends
//! events by stepping every watcher forward together from the lowest
//! revision any of them still needs, reading a bounded step of revisions from
//! the hub's ring or, when the stream lags behind the ring, from the store.
//! Sending waits on a bounded queue, so a slow client holds back only its own
//! task, which later resumes from where its watchers are: events stay
//! ordered, are never duplicated or skipped, and memory stays bounded.
use std::collections::BTreeMap;
use std::time::Duration;

use cairn_mvcc::MvccError;
use cairn_mvcc::watch::WatchFilter;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use cairn_proto::mvccpb::Event;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, BoxStream};
use crate::auth::ClientCertName;
use crate::limits;
use crate::watch_hub::RevisionEvents;
use cairn_mvcc::auth::Access;

struct Watcher {
    filter: WatchFilter,
    /// The next revision this watcher has not been sent yet.
    next_rev: i64,
    progress_notify: bool,
    fragment: bool,
}

struct WatchStream {
    api: Api,
    /// The client's metadata and certificate name: who creates watchers.
    meta: tonic::metadata::MetadataMap,
    cert: Option<ClientCertName>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

/// The client went away: stop the stream's task.
struct Gone;

#[tonic::async_trait]
impl Watch for Api {
    type WatchStream = BoxStream<WatchResponse>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let meta = req.metadata().clone();
        let cert = crate::auth::cert_name(req.extensions());
        let input: Streaming<WatchRequest> = req.into_inner();
        Ok(Response::new(self.watch_stream(meta, cert, input)))
    }
}

impl Api {
    /// Serves one watch stream: requests in, responses out. Used by gRPC and
    /// by the JSON gateway.
    pub fn watch_stream<S>(
        &self,
        meta: tonic::metadata::MetadataMap,
        cert: Option<ClientCertName>,
        input: S,
    ) -> BoxStream<WatchResponse>
    where
        S: futures::Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(limits::STREAM_SEND_QUEUE);
        let stream = WatchStream {
            api: self.clone(),
            meta,
            cert,
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(input));
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

// === impl WatchStream ===

impl WatchStream {
    async fn run<S>(mut self, mut input: S)
    where
        S: futures::Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        self.api.metrics.watch_streams.inc();
        let mut revisions = self.api.hub.subscribe();
        let interval = self.api.settings.progress_notify_interval;
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + interval,
            interval.max(Duration::from_millis(10)),
        );
        loop {
            let step = tokio::select! {
                msg = input.next() => match msg {
                    Some(Ok(req)) => self.handle(req).await,
                    Some(Err(_)) | None => Err(Gone),
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => self.deliver().await,
                    Err(_) => Err(Gone),
                },
                _ = progress.tick() => self.progress_notify().await,
            };
            if step.is_err() {
                break;
            }
        }
        self.api.metrics.watchers.dec_by(self.watchers.len() as i64);
        self.api.metrics.watch_streams.dec();
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.api.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers only a cancel of a watcher that exists.
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.api.metrics.watchers.dec();
                    let mut r = self.response(c.watch_id, self.api.hub.current());
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Everything up to the revision we report must have been sent
                // first: a progress response promises later events are newer.
                let rev = self.deliver_to(self.api.hub.current()).await?;
                self.send(self.response(-1, rev)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let current = self.api.hub.current();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let refuse = if let Some(denied) = self.permission(&c).await {
            Some(denied)
        } else if self.watchers.contains_key(&id) {
            Some("mvcc: duplicate watch ID provided on the WatchStream".to_string())
        } else if self.watchers.len() >= limits::MAX_WATCHERS_PER_STREAM {
            Some("cairn: too many watchers on this stream".to_string())
        } else {
            None
        };
        let mut created = self.response(
            // etcd answers a refused create with watch id -1.
            if refuse.is_some() { -1 } else { id },
            current,
        );
        created.created = true;
        if let Some(reason) = refuse {
            created.canceled = true;
            created.cancel_reason = reason;
            return self.send(created).await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        let next_rev = if c.start_revision > 0 {
            c.start_revision
        } else {
            current + 1
        };
        self.watchers.insert(
            id,
            Watcher {
                filter: WatchFilter::from_request(&c),
                next_rev,
                progress_notify: c.progress_notify,
                fragment: c.fragment,
            },
        );
        self.api.metrics.watchers.inc();
        self.send(created).await?;
        if next_rev <= current {
            self.deliver().await?;
        }
        Ok(())
    }

    /// etcd's `isWatchPermitted`: READ on the watched range, as the
    /// stream's caller now. The refusal reads as grpc-go prints the status.
    async fn permission(&self, c: &WatchCreateRequest) -> Option<String> {
        if !self.api.mvcc.auth().enabled {
            return None;
        }
        let denied = match self.api.caller(&self.meta, self.cert.as_ref()).await {
            Err(s) => s,
            Ok(who) => match self
                .api
                .mvcc
                .auth()
                .check(&who, &c.key, &c.range_end, Access::Read)
            {
                Ok(()) => return None,
                Err(e) => crate::api::status::auth(e),
            },
        };
        Some(format!(
            "rpc error: code = {} desc = {}",
            go_code_name(denied.code()),
            denied.message()
        ))
    }

    async fn deliver(&mut self) -> Result<(), Gone> {
        self.deliver_to(self.api.hub.current()).await.map(|_| ())
    }

    /// Sends every watcher its events up to `target`; returns `target`.
    async fn deliver_to(&mut self, target: i64) -> Result<i64, Gone> {
        loop {
            let Some(from) = self
                .watchers
                .values()
                .map(|w| w.next_rev)
                .filter(|&r| r <= target)
                .min()
            else {
                return Ok(target);
            };
            let to = target.min(from + limits::WATCH_CATCHUP_REVISIONS as i64 - 1);
            let revs = match self.read(from, to) {
                Ok(revs) => revs,
                Err(MvccError::Compacted) => {
                    self.cancel_compacted().await?;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading watch events failed");
                    return Err(Gone);
                }
            };
            let ids: Vec<i64> = self.watchers.keys().copied().collect();
            for id in ids {
                let w = &self.watchers[&id];
                if w.next_rev > to {
                    continue;
                }
                let events: Vec<Event> = revs
                    .iter()
                    .filter(|(rev, _)| *rev >= w.next_rev)
                    .flat_map(|(_, evs)| evs.iter())
                    .filter(|e| w.filter.matches(e))
                    .filter_map(|e| w.filter.shape(e))
                    .collect();
                let fragment = w.fragment;
                if !events.is_empty() {
                    self.send_events(id, to, events, fragment).await?;
                }
                if let Some(w) = self.watchers.get_mut(&id) {
                    w.next_rev = to + 1;
                }
            }
        }
    }

    fn read(&self, from: i64, to: i64) -> Result<Vec<RevisionEvents>, MvccError> {
        // The ring may still hold revisions a compaction has removed: a
        // watcher starting there is canceled exactly as one that reads the
        // store would be.
        if from < self.api.mvcc.compact_revision() {
            return Err(MvccError::Compacted);
        }
        if let Some(revs) = self.api.hub.get(from, to) {
            return Ok(revs);
        }
        self.api.metrics.watch_catchup_reads.inc();
        let events = self
            .api
            .mvcc
            .events(from, to, limits::WATCH_CATCHUP_REVISIONS, true)?;
        let mut out: Vec<RevisionEvents> = Vec::new();
        let mut cur: Vec<Event> = Vec::new();
        let mut cur_rev = 0;
        for e in events {
            let rev = e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default();
            if rev != cur_rev && !cur.is_empty() {
                out.push((cur_rev, std::sync::Arc::new(std::mem::take(&mut cur))));
            }
            cur_rev = rev;
            cur.push(e);
        }
        if !cur.is_empty() {
            out.push((cur_rev, std::sync::Arc::new(cur)));
        }
        Ok(out)
    }

    /// Watchers that need revisions older than the compaction point are
    /// canceled with `compact_revision`, as etcd does; the client re-lists.
    async fn cancel_compacted(&mut self) -> Result<(), Gone> {
        let compact = self.api.mvcc.compact_revision();
        let doomed: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next_rev < compact)
            .map(|(id, _)| *id)
            .collect();
        if doomed.is_empty() {
            // The ring evicted what a watcher needed between two reads and
            // the store refused it: nothing we can still deliver. Cancel all
            // lagging watchers rather than skip events.
            return Err(Gone);
        }
        for id in doomed {
            self.watchers.remove(&id);
            self.api.metrics.watchers.dec();
            let mut r = self.response(id, self.api.hub.current());
            r.canceled = true;
            r.compact_revision = compact;
            self.send(r).await?;
        }
        Ok(())
    }

    async fn send_events(
        &self,
        id: i64,
        revision: i64,
        events: Vec<Event>,
        fragment: bool,
    ) -> Result<(), Gone> {
        let max = self.api.settings.max_request_bytes;
        let size: usize = events.iter().map(|e| e.encoded_len()).sum();
        if fragment && size > max {
            // Split into fragments below the request limit; every part but
            // the last says `fragment`.
            let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
            let mut part_size = 0;
            for e in events {
                let sz = e.encoded_len();
                if part_size + sz > max && !parts.last().expect("non-empty").is_empty() {
                    parts.push(Vec::new());
                    part_size = 0;
                }
                part_size += sz;
                parts.last_mut().expect("non-empty").push(e);
            }
            let n = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                let mut r = self.response(id, revision);
                r.events = part;
                r.fragment = i + 1 < n;
                self.send(r).await?;
            }
            return Ok(());
        }
        for chunk in chunk_at_revisions(events, limits::WATCH_EVENTS_PER_RESPONSE) {
            let mut r = self.response(id, revision);
            r.events = chunk;
            self.send(r).await?;
        }
        Ok(())
    }

    async fn progress_notify(&mut self) -> Result<(), Gone> {
        if !self.watchers.values().any(|w| w.progress_notify) {
            return Ok(());
        }
        let rev = self.deliver_to(self.api.hub.current()).await?;
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.send(self.response(id, rev)).await?;
        }
        Ok(())
    }
}

/// Splits a long list of events into responses of at most `max` events,
/// never splitting one revision's events across two responses.
/// grpc-go's name of a status code (`codes.Code.String()`).
fn go_code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn chunk_at_revisions(events: Vec<Event>, max: usize) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    let rev_of = |e: &Event| e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or_default();
    for e in events {
        if cur.len() >= max && cur.last().map(rev_of) != Some(rev_of(&e)) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn ev(rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_never_split_a_revision() {
        let events = vec![ev(1), ev(2), ev(2), ev(2), ev(3)];
        let chunks = chunk_at_revisions(events, 2);
        let revs: Vec<Vec<i64>> = chunks
            .iter()
            .map(|c| {
                c.iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect()
            })
            .collect();
        assert_eq!(revs, vec![vec![1, 2, 2, 2], vec![3]]);
    }
}
