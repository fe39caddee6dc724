//! Watch coalescing.
//!
//! Client watchers that start "now" (no start revision) on the same key
//! range with the same `prev_kv` share one upstream watcher: a *group*, one
//! task holding one upstream Watch stream. A watcher with a start revision
//! gets a group of its own (its history is its own), so correctness never
//! depends on catching up a shared stream.
//!
//! The group's `rev` is the revision up to which it has handed every event
//! to its subscribers. A subscriber joining a running group is created at
//! `rev` and gets every event after it; joining and handing out events
//! happen under the group's lock, so nothing falls between the two. Events
//! go to each client stream's task through a bounded channel that preserves
//! their order; a client too slow to drain it loses its watcher (canceled,
//! with a reason) rather than slowing down the other clients of the group.
//!
//! Progress: the upstream watch is created with `progress_notify`, and its
//! notifications reach the clients that asked for them. A client's
//! `progress_request` is answered after every group feeding its stream has
//! answered a progress request of its own upstream: the answer is the
//! lowest of their revisions, and every event up to it has already been
//! queued to the client, ahead of the answer.
//!
//! When an upstream stream breaks, the group reopens it on the next endpoint
//! from `rev + 1`: clients see neither a gap nor a duplicate. If that
//! revision was compacted meanwhile, its clients are canceled with the
//! compact revision, as a member would do.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::etcdserverpb::{
    RangeRequest, ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion, watch_server::Watch,
};
use cairn_proto::mvccpb::Event;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status, Streaming};

use crate::namespace::Namespace;
use crate::upstream::Upstream;
use crate::{BoxStream, Proxy, ProxyConfig, Stats};

/// Messages queued from groups to one client stream.
const STREAM_QUEUE: usize = 1024;
/// Watchers one client stream may hold.
const MAX_WATCHERS_PER_STREAM: usize = 100_000;

/// (key, range_end, prev_kv, 0 for a shared group or a unique number).
type GroupKey = (Vec<u8>, Vec<u8>, bool, u64);

pub(crate) struct Watches {
    upstream: Upstream,
    ns: Namespace,
    stats: Arc<Stats>,
    groups: Arc<Mutex<HashMap<GroupKey, Arc<Group>>>>,
    unique: AtomicU64,
    subs: AtomicU64,
}

struct Group {
    key: GroupKey,
    state: Mutex<GroupState>,
    ctl: mpsc::UnboundedSender<Ctl>,
}

struct GroupState {
    subs: HashMap<u64, Sub>,
    /// Every event up to here has been handed to the subscribers.
    rev: i64,
    live: bool,
    closed: bool,
    header: ResponseHeader,
}

/// One client watcher, as its group sees it.
struct Sub {
    out: mpsc::Sender<Msg>,
    lost: Arc<Lost>,
    watch_id: i64,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    created: bool,
}

/// Watchers a group had to drop because their client did not keep up.
#[derive(Default)]
struct Lost {
    ids: Mutex<Vec<i64>>,
    notify: Notify,
}

enum Msg {
    Resp(Box<WatchResponse>),
    /// A group's answer to a progress probe.
    Progress {
        probe: u64,
        rev: i64,
    },
}

enum Ctl {
    Progress { out: mpsc::Sender<Msg>, probe: u64 },
    Close,
}

fn filtered(sub: &Sub, events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| match e.r#type {
            0 => !sub.no_put,
            _ => !sub.no_delete,
        })
        .cloned()
        .collect()
}

impl Group {
    /// Queues `resp` to a subscriber; a full queue drops the subscriber.
    fn offer(sub: &Sub, resp: WatchResponse) -> bool {
        if sub.out.try_send(Msg::Resp(Box::new(resp))).is_ok() {
            return true;
        }
        sub.lost.ids.lock().unwrap().push(sub.watch_id);
        sub.lost.notify.notify_one();
        false
    }
}

impl GroupState {
    fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: rev,
            ..self.header
        })
    }

    /// Sends `created` to subscribers still waiting for it.
    fn create_pending(&mut self, stats: &Stats) {
        let header = self.header(self.rev);
        let mut dropped = Vec::new();
        for (id, sub) in self.subs.iter_mut().filter(|(_, s)| !s.created) {
            sub.created = true;
            let r = WatchResponse {
                header,
                watch_id: sub.watch_id,
                created: true,
                ..Default::default()
            };
            if !Group::offer(sub, r) {
                dropped.push(*id);
            }
        }
        for id in dropped {
            self.subs.remove(&id);
            stats.client_watchers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Watches {
    pub(crate) fn new(
        _config: &ProxyConfig,
        upstream: Upstream,
        ns: Namespace,
        stats: Arc<Stats>,
    ) -> Watches {
        Watches {
            upstream,
            ns,
            stats,
            groups: Arc::new(Mutex::new(HashMap::new())),
            unique: AtomicU64::new(1),
            subs: AtomicU64::new(1),
        }
    }

    /// Adds a subscriber to the group for `c` (creating it), and returns
    /// the group and the subscriber's id in it.
    fn join(
        &self,
        c: &WatchCreateRequest,
        watch_id: i64,
        out: mpsc::Sender<Msg>,
        lost: Arc<Lost>,
    ) -> (Arc<Group>, u64) {
        let key = self.ns.key(&c.key);
        let end = self.ns.range_end(&c.range_end);
        let unique = if c.start_revision > 0 {
            self.unique.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let gk: GroupKey = (key, end, c.prev_kv, unique);
        let sub_id = self.subs.fetch_add(1, Ordering::Relaxed);
        let sub = Sub {
            out,
            lost,
            watch_id,
            no_put: c.filters.contains(&0),
            no_delete: c.filters.contains(&1),
            progress_notify: c.progress_notify,
            created: false,
        };
        self.stats.client_watchers.fetch_add(1, Ordering::Relaxed);
        let mut groups = self.groups.lock().unwrap();
        if let Some(g) = groups.get(&gk).cloned() {
            let mut st = g.state.lock().unwrap();
            if !st.closed {
                st.subs.insert(sub_id, sub);
                if st.live {
                    st.create_pending(&self.stats);
                }
                drop(st);
                return (g, sub_id);
            }
        }
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let g = Arc::new(Group {
            key: gk.clone(),
            state: Mutex::new(GroupState {
                subs: HashMap::from([(sub_id, sub)]),
                rev: c.start_revision.saturating_sub(1).max(0),
                live: false,
                closed: false,
                header: ResponseHeader::default(),
            }),
            ctl,
        });
        groups.insert(gk, g.clone());
        tokio::spawn(run_group(
            g.clone(),
            c.start_revision,
            self.upstream.clone(),
            self.ns.clone(),
            self.stats.clone(),
            self.groups.clone(),
            ctl_rx,
        ));
        (g, sub_id)
    }

    /// Removes a subscriber; the last one out closes the group.
    fn leave(&self, g: &Arc<Group>, sub_id: u64) {
        let mut groups = self.groups.lock().unwrap();
        let mut st = g.state.lock().unwrap();
        if st.subs.remove(&sub_id).is_some() {
            self.stats.client_watchers.fetch_sub(1, Ordering::Relaxed);
        }
        if st.subs.is_empty() && !st.closed {
            st.closed = true;
            if groups.get(&g.key).is_some_and(|x| Arc::ptr_eq(x, g)) {
                groups.remove(&g.key);
            }
            let _ = g.ctl.send(Ctl::Close);
        }
    }
}

/// Holds the group's upstream watch until its last subscriber leaves.
async fn run_group(
    g: Arc<Group>,
    start: i64,
    upstream: Upstream,
    ns: Namespace,
    stats: Arc<Stats>,
    groups: Arc<Mutex<HashMap<GroupKey, Arc<Group>>>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let (key, end, prev_kv, _) = g.key.clone();
    let mut probes: Vec<(mpsc::Sender<Msg>, u64)> = Vec::new();
    let mut first = true;
    'reconnect: loop {
        let from = {
            let st = g.state.lock().unwrap();
            if st.closed {
                break;
            }
            if first && start == 0 { 0 } else { st.rev + 1 }
        };
        let (picked, channel) = upstream.pick();
        let (tx, rx) = mpsc::channel::<WatchRequest>(16);
        let _ = tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.clone(),
                    range_end: end.clone(),
                    start_revision: from,
                    progress_notify: true,
                    prev_kv,
                    ..Default::default()
                })),
            })
            .await;
        let mut answers = match WatchClient::new(channel)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::debug!(error = %e, "upstream watch failed");
                upstream.failed(&picked);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        stats.upstream_watches.fetch_add(1, Ordering::Relaxed);
        // Probes sent before a reconnect are asked again on this stream.
        for _ in 0..probes.len().min(1) {
            let _ = tx.try_send(progress_request());
        }
        let broke = loop {
            tokio::select! {
                c = ctl.recv() => match c {
                    Some(Ctl::Progress { out, probe }) => {
                        if probes.is_empty() {
                            let _ = tx.send(progress_request()).await;
                        }
                        probes.push((out, probe));
                    }
                    Some(Ctl::Close) | None => break false,
                },
                a = answers.next() => match a {
                    Some(Ok(r)) => {
                        if !handle(&g, &ns, &stats, r, first, &mut probes) {
                            break false;
                        }
                        first = false;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "upstream watch stream failed");
                        break true;
                    }
                    None => break true,
                },
            }
        };
        stats.upstream_watches.fetch_sub(1, Ordering::Relaxed);
        drop(tx);
        if !broke {
            break 'reconnect;
        }
        upstream.failed(&picked);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whatever ended the group: it takes no more subscribers.
    let mut all = groups.lock().unwrap();
    let mut st = g.state.lock().unwrap();
    st.closed = true;
    if all.get(&g.key).is_some_and(|x| Arc::ptr_eq(x, &g)) {
        all.remove(&g.key);
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// Applies one upstream answer; false when the group must end.
fn handle(
    g: &Group,
    ns: &Namespace,
    stats: &Stats,
    mut r: WatchResponse,
    first: bool,
    probes: &mut Vec<(mpsc::Sender<Msg>, u64)>,
) -> bool {
    let mut st = g.state.lock().unwrap();
    if let Some(h) = &r.header {
        st.header = ResponseHeader { revision: 0, ..*h };
        stats
            .upstream_revision
            .fetch_max(h.revision, Ordering::Relaxed);
    }
    let header_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
    if r.canceled {
        // Compacted (or refused): every subscriber is canceled as a member
        // would cancel it.
        for sub in st.subs.values() {
            let resp = WatchResponse {
                header: r.header,
                watch_id: sub.watch_id,
                created: !sub.created,
                canceled: true,
                compact_revision: r.compact_revision,
                cancel_reason: r.cancel_reason.clone(),
                ..Default::default()
            };
            Group::offer(sub, resp);
        }
        let n = st.subs.len() as i64;
        st.subs.clear();
        stats.client_watchers.fetch_sub(n, Ordering::Relaxed);
        st.closed = true;
        return false;
    }
    if r.created {
        if first && g.key.3 == 0 {
            // A shared group starts at the member's current revision.
            st.rev = header_rev;
        }
        st.live = true;
        st.create_pending(stats);
        return true;
    }
    if r.events.is_empty() {
        // Progress: all events up to the header's revision were sent.
        st.rev = st.rev.max(header_rev);
        let rev = st.rev;
        if r.watch_id == -1 {
            for (out, probe) in probes.drain(..) {
                let _ = out.try_send(Msg::Progress { probe, rev });
            }
        } else {
            let header = st.header(rev);
            for sub in st.subs.values().filter(|s| s.progress_notify && s.created) {
                let resp = WatchResponse {
                    header,
                    watch_id: sub.watch_id,
                    ..Default::default()
                };
                Group::offer(sub, resp);
            }
        }
        return true;
    }
    for e in &mut r.events {
        if let Some(kv) = &mut e.kv {
            ns.strip(&mut kv.key);
        }
        if let Some(kv) = &mut e.prev_kv {
            ns.strip(&mut kv.key);
        }
    }
    let last = r
        .events
        .last()
        .and_then(|e| e.kv.as_ref())
        .map(|kv| kv.mod_revision)
        .unwrap_or(header_rev);
    let mut dropped = Vec::new();
    for (id, sub) in st.subs.iter().filter(|(_, s)| s.created) {
        let events = filtered(sub, &r.events);
        if events.is_empty() {
            continue;
        }
        let resp = WatchResponse {
            header: r.header,
            watch_id: sub.watch_id,
            events,
            fragment: r.fragment,
            ..Default::default()
        };
        if !Group::offer(sub, resp) {
            dropped.push(*id);
        }
    }
    for id in dropped {
        st.subs.remove(&id);
        stats.client_watchers.fetch_sub(1, Ordering::Relaxed);
    }
    if !r.fragment {
        st.rev = st.rev.max(last);
    }
    true
}

impl Proxy {
    /// A client's Watch stream fed by `input`.
    pub fn watch_stream(&self, mut input: BoxStream<WatchRequest>) -> BoxStream<WatchResponse> {
        // Boxed items keep an idle stream's channel blocks small.
        let (client_tx, client_rx) = mpsc::channel::<Result<Box<WatchResponse>, Box<Status>>>(64);
        let (msg_tx, mut msgs) = mpsc::channel::<Msg>(STREAM_QUEUE);
        let lost = Arc::new(Lost::default());
        let proxy = self.clone();
        tokio::spawn(async move {
            let w = &proxy.0.watches;
            let mut mine: HashMap<i64, (Arc<Group>, u64)> = HashMap::new();
            let mut next_id: i64 = 0;
            // (probe id, answers missing, lowest revision answered)
            let mut probe: Option<(u64, usize, i64)> = None;
            let mut probe_seq = 0u64;
            let mut pending_probes = 0usize;
            loop {
                tokio::select! {
                    req = input.next() => {
                        let Some(Ok(req)) = req else { break };
                        match req.request_union {
                            Some(RequestUnion::CreateRequest(c)) => {
                                let id = if c.watch_id != 0 { c.watch_id } else {
                                    while mine.contains_key(&next_id) { next_id += 1; }
                                    next_id
                                };
                                if mine.contains_key(&id) || mine.len() >= MAX_WATCHERS_PER_STREAM {
                                    let reason = if mine.contains_key(&id) {
                                        "mvcc: duplicate watch ID provided on the WatchStream"
                                    } else {
                                        "cairn: too many watchers on this stream"
                                    };
                                    let r = WatchResponse {
                                        watch_id: -1, created: true, canceled: true,
                                        cancel_reason: reason.into(), ..Default::default()
                                    };
                                    if client_tx.send(Ok(Box::new(r))).await.is_err() { break; }
                                    continue;
                                }
                                if c.watch_id == 0 { next_id += 1; }
                                let joined = w.join(&c, id, msg_tx.clone(), lost.clone());
                                mine.insert(id, joined);
                            }
                            Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) => {
                                if let Some((g, sub)) = mine.remove(&watch_id) {
                                    w.leave(&g, sub);
                                    let r = WatchResponse {
                                        header: g.state.lock().unwrap().header(0).map(|mut h| { h.revision = proxy.0.stats.upstream_revision.load(Ordering::Relaxed); h }),
                                        watch_id, canceled: true, ..Default::default()
                                    };
                                    if client_tx.send(Ok(Box::new(r))).await.is_err() { break; }
                                }
                            }
                            Some(RequestUnion::ProgressRequest(_)) => {
                                if probe.is_some() {
                                    pending_probes += 1;
                                    continue;
                                }
                                probe_seq += 1;
                                let groups = distinct(&mine);
                                if groups.is_empty() {
                                    let r = current_revision(&proxy).await;
                                    if client_tx.send(r.map(|h| Box::new(WatchResponse { header: Some(h), watch_id: -1, ..Default::default() })).map_err(Box::new)).await.is_err() { break; }
                                    continue;
                                }
                                for g in &groups {
                                    let _ = g.ctl.send(Ctl::Progress { out: msg_tx.clone(), probe: probe_seq });
                                }
                                probe = Some((probe_seq, groups.len(), i64::MAX));
                            }
                            None => {}
                        }
                    }
                    m = msgs.recv() => {
                        let Some(m) = m else { break };
                        match m {
                            Msg::Resp(r) => {
                                if client_tx.send(Ok(r)).await.is_err() { break; }
                            }
                            Msg::Progress { probe: p, rev } => {
                                let Some((id, missing, low)) = probe.as_mut() else { continue };
                                if *id != p { continue; }
                                *missing -= 1;
                                *low = (*low).min(rev);
                                if *missing == 0 {
                                    let rev = *low;
                                    probe = None;
                                    let header = mine.values().next().and_then(|(g, _)| g.state.lock().unwrap().header(rev));
                                    let n = 1 + std::mem::take(&mut pending_probes);
                                    for _ in 0..n {
                                        let r = WatchResponse { header, watch_id: -1, ..Default::default() };
                                        if client_tx.send(Ok(Box::new(r))).await.is_err() { break; }
                                    }
                                }
                            }
                        }
                    }
                    _ = lost.notify.notified() => {
                        let ids: Vec<i64> = std::mem::take(&mut *lost.ids.lock().unwrap());
                        for id in ids {
                            if let Some((g, sub)) = mine.remove(&id) {
                                w.leave(&g, sub);
                                let r = WatchResponse {
                                    watch_id: id, canceled: true,
                                    cancel_reason: "cairn proxy: the client did not keep up with its events; watch again from the last revision received".into(),
                                    ..Default::default()
                                };
                                if client_tx.send(Ok(Box::new(r))).await.is_err() { break; }
                            }
                        }
                    }
                }
            }
            for (_, (g, sub)) in mine.drain() {
                w.leave(&g, sub);
            }
        });
        Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(client_rx)
                .map(|r| r.map(|b| *b).map_err(|e| *e)),
        )
    }
}

fn distinct(mine: &HashMap<i64, (Arc<Group>, u64)>) -> Vec<Arc<Group>> {
    let mut out: Vec<Arc<Group>> = Vec::new();
    for (g, _) in mine.values() {
        if !out.iter().any(|x| Arc::ptr_eq(x, g)) {
            out.push(g.clone());
        }
    }
    out
}

/// The cluster's current revision (for a progress request on a stream
/// with no watchers).
async fn current_revision(proxy: &Proxy) -> Result<ResponseHeader, Status> {
    let resp = proxy
        .0
        .call(true, |c| async move {
            KvClient::new(c)
                .range(RangeRequest {
                    key: vec![0],
                    count_only: true,
                    limit: 1,
                    ..Default::default()
                })
                .await
        })
        .await?;
    resp.header
        .ok_or_else(|| Status::internal("upstream answered without a header"))
}

#[tonic::async_trait]
impl Watch for Proxy {
    type WatchStream = BoxStream<WatchResponse>;

    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let input = r.into_inner().map(|r| r);
        Ok(Response::new(self.watch_stream(Box::pin(input))))
    }
}
