//! Watch coalescing.
//!
//! Client watchers that start "now" (no start revision) on the same key
//! range with the same `prev_kv` share one upstream watcher: a *group*, one
//! task holding one upstream Watch stream. Filters are applied per client
//! here, so they do not split groups. A watcher with a start revision gets
//! a group of its own (its history is its own), so correctness never
//! depends on catching up a shared stream.
//!
//! The group's `rev` is the revision up to which it has handed every event
//! to its subscribers. A subscriber joining a running group is created at
//! `rev` and gets every event after it; joining and handing out events
//! happen under the group's lock, so nothing falls between the two.
//!
//! Each client stream has one ordered queue ([`Outbox`]) that all its
//! groups feed. Responses (created, events, progress notifications) count
//! against a bound, each by its number of events (at least one): a
//! response can carry several revisions, as etcd's and cairn's watch
//! streams send what is pending together. A group never waits on it: a client stream whose queue
//! is full loses the watcher the group was serving (it gets the events
//! queued so far, then a cancel with a reason, and can watch again from
//! the last revision it received), and the group's other clients are not
//! held back. Cancels and progress answers do not count against the bound
//! (there is at most one per watcher, one per group and probe), so they are
//! never lost and stay in order behind the events before them. Every
//! message names the subscriber it was made for; the stream drops what is
//! queued for a watcher it no longer has, so nothing follows a cancel.
//!
//! Progress: the upstream watch is created with `progress_notify`, and its
//! notifications reach the clients that asked for them, with the group's
//! `rev`. A client's `progress_request` starts a *round*: every group
//! feeding the stream asks its own upstream stream for progress (a group
//! never answers from a request it sent before the round began), and
//! queues its answer behind its events. The client is answered once every
//! group has, with the lowest revision: every event up to it has been sent
//! ahead of the answer. Requests arriving during a round are answered by
//! the next one.
//!
//! When an upstream stream breaks, the group reopens it on the next endpoint
//! from `rev + 1`: clients see neither a gap nor a duplicate. If that
//! revision was compacted meanwhile, its clients are canceled with the
//! compact revision, as a member would do.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::etcdserverpb::{
    RangeRequest, ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion, watch_server::Watch,
};
use cairn_proto::mvccpb::Event;
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::namespace::Namespace;
use crate::upstream::Upstream;
use crate::{BoxStream, Proxy, ProxyConfig, Stats};

/// Events (responses without events count one) queued from groups to one
/// client stream; past this the watcher being served is cut.
const STREAM_QUEUE: usize = 1024;
/// Responses handed to gRPC for one client stream (beyond the queue).
const STREAM_SEND_QUEUE: usize = 64;
/// Watchers one client stream may hold.
const MAX_WATCHERS_PER_STREAM: usize = 100_000;
const SLOW_CLIENT: &str = "cairn proxy: the client did not keep up with its events; \
                           watch again from the last revision received";

/// (key, range_end, prev_kv, 0 for a shared group or a unique number).
type GroupKey = (Vec<u8>, Vec<u8>, bool, u64);
type Groups = Arc<Mutex<HashMap<GroupKey, Arc<Group>>>>;

pub(crate) struct Watches {
    upstream: Upstream,
    ns: Namespace,
    stats: Arc<Stats>,
    groups: Groups,
    unique: AtomicU64,
    subs: AtomicU64,
}

struct Group {
    key: GroupKey,
    /// The token of the client that opened the group: with auth on, the
    /// upstream watch is created as that client (every other subscriber's
    /// permission was checked before it joined).
    token: Option<tonic::metadata::AsciiMetadataValue>,
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

/// One client watcher, as its group sees it (kept small: an idle watcher
/// is this, a map slot here and one in its stream).
struct Sub {
    out: Arc<Outbox>,
    watch_id: i64,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    created: bool,
}

/// What a queued response counts against `STREAM_QUEUE`.
fn weight(resp: &WatchResponse) -> usize {
    resp.events.len().max(1)
}

/// The ordered queue from the groups to one client stream's task.
struct Outbox {
    tx: mpsc::UnboundedSender<Msg>,
    /// What the `Msg::Resp` in `tx` weigh ([`weight`]), bounded by
    /// `STREAM_QUEUE`.
    queued: AtomicUsize,
}

enum Msg {
    /// For subscriber `sub`: counted against the bound.
    Resp { sub: u64, resp: Box<WatchResponse> },
    /// Subscriber `sub` is canceled; the last message made for it.
    End { sub: u64, resp: Box<WatchResponse> },
    /// A group's answer to progress round `probe`; `None` when the group
    /// ended (it feeds nothing any more).
    Progress { probe: u64, rev: Option<i64> },
}

enum Ctl {
    Progress { out: Arc<Outbox>, probe: u64 },
    Close,
}

/// Progress rounds a group's upstream stream is asked for.
#[derive(Default)]
struct Probes {
    /// Answered by the upstream request in flight.
    inflight: Vec<(Arc<Outbox>, u64)>,
    /// Arrived after it was sent: need the next one.
    waiting: Vec<(Arc<Outbox>, u64)>,
}

/// What an upstream response did to the group.
enum Step {
    Continue,
    /// The answer to our progress request, at this revision.
    Progress(i64),
    /// The upstream canceled the watch; the group is over.
    End,
}

fn matches(sub: &Sub, e: &Event) -> bool {
    match e.r#type {
        0 => !sub.no_put,
        _ => !sub.no_delete,
    }
}

// === impl Outbox ===

impl Outbox {
    fn new() -> (Arc<Outbox>, mpsc::UnboundedReceiver<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Outbox {
            tx,
            queued: AtomicUsize::new(0),
        };
        (Arc::new(out), rx)
    }

    /// Queues a response for `sub`; false when the queue is full.
    fn offer(&self, sub: u64, resp: WatchResponse) -> bool {
        let w = weight(&resp);
        if self.queued.fetch_add(w, Ordering::Relaxed) >= STREAM_QUEUE {
            self.queued.fetch_sub(w, Ordering::Relaxed);
            return false;
        }
        let resp = Box::new(resp);
        if self.tx.send(Msg::Resp { sub, resp }).is_err() {
            // The stream is gone; it removes its watchers as it ends.
            self.queued.fetch_sub(w, Ordering::Relaxed);
        }
        true
    }

    fn end(&self, sub: u64, resp: WatchResponse) {
        let resp = Box::new(resp);
        let _ = self.tx.send(Msg::End { sub, resp });
    }

    fn progress(&self, probe: u64, rev: Option<i64>) {
        let _ = self.tx.send(Msg::Progress { probe, rev });
    }
}

// === impl GroupState ===

impl GroupState {
    fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: rev,
            ..self.header
        })
    }

    /// Offers each subscriber what `make` gives it; subscribers whose
    /// stream is full are canceled and leave the group.
    fn send_all(&mut self, stats: &Stats, mut make: impl FnMut(&Sub) -> Option<WatchResponse>) {
        let mut slow = Vec::new();
        for (id, sub) in self.subs.iter_mut() {
            let Some(resp) = make(sub) else { continue };
            let created = resp.created;
            if sub.out.offer(*id, resp) {
                sub.created |= created;
            } else {
                slow.push(*id);
            }
        }
        for id in slow {
            let sub = self.subs.remove(&id).expect("listed above");
            stats.client_watchers.fetch_sub(1, Ordering::Relaxed);
            let resp = WatchResponse {
                header: self.header(self.rev),
                watch_id: sub.watch_id,
                created: !sub.created,
                canceled: true,
                cancel_reason: SLOW_CLIENT.into(),
                ..Default::default()
            };
            sub.out.end(id, resp);
        }
    }

    /// Sends `created` at `rev` to subscribers still waiting for it.
    fn create_pending(&mut self, stats: &Stats, rev: i64) {
        let header = self.header(rev);
        self.send_all(stats, |sub| {
            (!sub.created).then(|| WatchResponse {
                header,
                watch_id: sub.watch_id,
                created: true,
                ..Default::default()
            })
        });
    }
}

// === impl Watches ===

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
        out: Arc<Outbox>,
        token: Option<tonic::metadata::AsciiMetadataValue>,
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
                    let rev = st.rev;
                    st.create_pending(&self.stats, rev);
                }
                drop(st);
                return (g, sub_id);
            }
        }
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let g = Arc::new(Group {
            key: gk.clone(),
            token,
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

// === the group task ===

/// Holds the group's upstream watch until its last subscriber leaves.
async fn run_group(
    g: Arc<Group>,
    start: i64,
    upstream: Upstream,
    ns: Namespace,
    stats: Arc<Stats>,
    groups: Groups,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
) {
    let (key, end, prev_kv, _) = g.key.clone();
    let mut probes = Probes::default();
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
        let create = WatchCreateRequest {
            key: key.clone(),
            range_end: end.clone(),
            start_revision: from,
            progress_notify: true,
            prev_kv,
            ..Default::default()
        };
        let _ = tx.try_send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        });
        // A member sends one revision's events in one message however
        // large; refusing it would wedge the group in a reconnect loop.
        let mut answers = match WatchClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .watch(crate::forward::with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &g.token,
            ))
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
        // Requests sent on a stream that broke are asked again on this one.
        probes.inflight.append(&mut probes.waiting);
        if !probes.inflight.is_empty() {
            let _ = tx.try_send(progress_request());
        }
        let broke = loop {
            tokio::select! {
                c = ctl.recv() => match c {
                    Some(Ctl::Progress { out, probe }) => {
                        if probes.inflight.is_empty() {
                            let _ = tx.send(progress_request()).await;
                            probes.inflight.push((out, probe));
                        } else {
                            probes.waiting.push((out, probe));
                        }
                    }
                    Some(Ctl::Close) | None => break false,
                },
                a = answers.next() => match a {
                    Some(Ok(r)) => {
                        let step = handle(&g, &ns, &stats, r, first);
                        first = false;
                        match step {
                            Step::Continue => {}
                            Step::Progress(rev) => {
                                for (out, probe) in probes.inflight.drain(..) {
                                    out.progress(probe, Some(rev));
                                }
                                if !probes.waiting.is_empty() {
                                    std::mem::swap(&mut probes.inflight, &mut probes.waiting);
                                    let _ = tx.send(progress_request()).await;
                                }
                            }
                            Step::End => break false,
                        }
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
    // Whatever ended the group: it takes no more subscribers, and every
    // progress round waiting on it hears that it feeds nothing.
    {
        let mut all = groups.lock().unwrap();
        let mut st = g.state.lock().unwrap();
        st.closed = true;
        if all.get(&g.key).is_some_and(|x| Arc::ptr_eq(x, &g)) {
            all.remove(&g.key);
        }
    }
    ctl.close();
    for (out, probe) in probes.inflight.drain(..).chain(probes.waiting.drain(..)) {
        out.progress(probe, None);
    }
    while let Ok(c) = ctl.try_recv() {
        if let Ctl::Progress { out, probe } = c {
            out.progress(probe, None);
        }
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// Applies one upstream answer to the group.
fn handle(g: &Group, ns: &Namespace, stats: &Stats, mut r: WatchResponse, first: bool) -> Step {
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
        let n = st.subs.len() as i64;
        for (id, sub) in st.subs.drain() {
            let resp = WatchResponse {
                header: r.header,
                watch_id: sub.watch_id,
                created: !sub.created,
                canceled: true,
                compact_revision: r.compact_revision,
                cancel_reason: r.cancel_reason.clone(),
                ..Default::default()
            };
            sub.out.end(id, resp);
        }
        stats.client_watchers.fetch_sub(n, Ordering::Relaxed);
        st.closed = true;
        return Step::End;
    }
    if r.created {
        let shared = g.key.3 == 0;
        if first && shared {
            // A shared group starts at the member's current revision.
            st.rev = header_rev;
        }
        st.live = true;
        // A watcher with history is created at the member's revision, as
        // the member would answer; a shared one where the group stands.
        let at = if shared { st.rev } else { header_rev };
        st.create_pending(stats, at);
        return Step::Continue;
    }
    if r.events.is_empty() {
        // Progress: all events up to the header's revision were sent.
        st.rev = st.rev.max(header_rev);
        if r.watch_id == -1 {
            return Step::Progress(st.rev);
        }
        let header = st.header(st.rev);
        st.send_all(stats, |sub| {
            (sub.progress_notify && sub.created).then(|| WatchResponse {
                header,
                watch_id: sub.watch_id,
                ..Default::default()
            })
        });
        return Step::Continue;
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
    st.send_all(stats, |sub| {
        if !sub.created {
            return None;
        }
        let events: Vec<Event> = if sub.no_put || sub.no_delete {
            r.events
                .iter()
                .filter(|e| matches(sub, e))
                .cloned()
                .collect()
        } else {
            r.events.clone()
        };
        (!events.is_empty()).then(|| WatchResponse {
            header: r.header,
            watch_id: sub.watch_id,
            events,
            fragment: r.fragment,
            ..Default::default()
        })
    });
    if !r.fragment {
        st.rev = st.rev.max(last);
    }
    Step::Continue
}

// === the client stream task ===

/// The client went away.
struct Gone;

/// A progress request being answered.
struct Round {
    probe: u64,
    /// Groups asked (and yet to answer: `missing`).
    asked: Vec<Arc<Group>>,
    missing: usize,
    low: Option<i64>,
    /// Client requests this round answers.
    requests: usize,
}

struct ClientStream {
    /// The client's auth token: its watchers are checked with it.
    token: Option<tonic::metadata::AsciiMetadataValue>,
    proxy: Proxy,
    out: Arc<Outbox>,
    client_tx: mpsc::Sender<Result<Box<WatchResponse>, Box<Status>>>,
    /// watch id -> (group, subscriber id in it)
    mine: HashMap<i64, (Arc<Group>, u64)>,
    next_id: i64,
    round: Option<Round>,
    /// Requests that arrived during the round: the next round's.
    later: usize,
    probe_seq: u64,
}

impl Proxy {
    /// A client's Watch stream fed by `input`.
    pub fn watch_stream(
        &self,
        token: Option<tonic::metadata::AsciiMetadataValue>,
        input: BoxStream<WatchRequest>,
    ) -> BoxStream<WatchResponse> {
        // Boxed items keep an idle stream's channel blocks small.
        let (client_tx, client_rx) = mpsc::channel(STREAM_SEND_QUEUE);
        let (out, msgs) = Outbox::new();
        let stream = ClientStream {
            token,
            proxy: self.clone(),
            out,
            client_tx,
            mine: HashMap::new(),
            next_id: 0,
            round: None,
            later: 0,
            probe_seq: 0,
        };
        tokio::spawn(stream.run(input, msgs));
        Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(client_rx)
                .map(|r| r.map(|b| *b).map_err(|e| *e)),
        )
    }
}

impl ClientStream {
    async fn run(
        mut self,
        mut input: BoxStream<WatchRequest>,
        mut msgs: mpsc::UnboundedReceiver<Msg>,
    ) {
        loop {
            let step = tokio::select! {
                req = input.next() => match req {
                    Some(Ok(req)) => self.request(req).await,
                    Some(Err(_)) | None => Err(Gone),
                },
                m = msgs.recv() => match m {
                    Some(m) => self.message(m).await,
                    None => Err(Gone),
                },
            };
            if step.is_err() {
                break;
            }
        }
        let w = &self.proxy.0.watches;
        for (_, (g, sub)) in self.mine.drain() {
            w.leave(&g, sub);
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        self.client_tx
            .send(Ok(Box::new(resp)))
            .await
            .map_err(|_| Gone)
    }

    async fn request(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) => {
                // A member answers only the cancel of a watcher it has.
                let Some((g, sub)) = self.mine.remove(&watch_id) else {
                    return Ok(());
                };
                self.proxy.0.watches.leave(&g, sub);
                let mut header = g.state.lock().unwrap().header(0);
                if let Some(h) = &mut header {
                    h.revision = self.proxy.0.stats.upstream_revision.load(Ordering::Relaxed);
                }
                self.send(WatchResponse {
                    header,
                    watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                if self.round.is_some() {
                    self.later += 1;
                    return Ok(());
                }
                self.start_round(1).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.mine.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let refuse = if let Some(denied) = self.permission(&c).await {
            Some(denied)
        } else if self.mine.contains_key(&id) {
            Some("mvcc: duplicate watch ID provided on the WatchStream".to_string())
        } else if self.mine.len() >= MAX_WATCHERS_PER_STREAM {
            Some("cairn: too many watchers on this stream".to_string())
        } else {
            None
        };
        if let Some(reason) = refuse {
            // A member answers a refused create with watch id -1.
            return self
                .send(WatchResponse {
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        let (g, sub) = self
            .proxy
            .0
            .watches
            .join(&c, id, self.out.clone(), self.token.clone());
        // A progress round under way covers this watcher too: its group
        // answers after its created response and the events that follow.
        if let Some(round) = &mut self.round
            && !round.asked.iter().any(|x| Arc::ptr_eq(x, &g))
        {
            let probe = round.probe;
            if g.ctl
                .send(Ctl::Progress {
                    out: self.out.clone(),
                    probe,
                })
                .is_ok()
            {
                round.missing += 1;
            }
            round.asked.push(g.clone());
        }
        self.mine.insert(id, (g, sub));
        Ok(())
    }

    /// With a token, the client may watch only what it may read: a
    /// one-key serializable Range of the watched range with its token
    /// (as etcd's grpc-proxy checks), refused as a member refuses.
    async fn permission(&self, c: &WatchCreateRequest) -> Option<String> {
        let token = self.token.clone()?;
        let ns = &self.proxy.0.ns;
        let probe = RangeRequest {
            key: ns.key(&c.key),
            range_end: ns.range_end(&c.range_end),
            limit: 1,
            keys_only: true,
            serializable: true,
            ..Default::default()
        };
        let token = Some(token);
        match self
            .proxy
            .0
            .call(true, |ch| {
                let req = crate::forward::with_token(probe.clone(), &token);
                async move { KvClient::new(ch).range(req).await }
            })
            .await
        {
            Ok(_) => None,
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::InvalidArgument
                ) =>
            {
                Some(format!(
                    "rpc error: code = {:?} desc = {}",
                    s.code(),
                    s.message()
                ))
            }
            Err(_) => None,
        }
    }

    fn is_mine(&self, watch_id: i64, sub: u64) -> bool {
        self.mine.get(&watch_id).is_some_and(|(_, s)| *s == sub)
    }

    async fn message(&mut self, m: Msg) -> Result<(), Gone> {
        match m {
            Msg::Resp { sub, resp } => {
                self.out.queued.fetch_sub(weight(&resp), Ordering::Relaxed);
                if self.is_mine(resp.watch_id, sub) {
                    self.client_tx.send(Ok(resp)).await.map_err(|_| Gone)?;
                }
                Ok(())
            }
            Msg::End { sub, resp } => {
                if self.is_mine(resp.watch_id, sub) {
                    self.mine.remove(&resp.watch_id);
                    self.client_tx.send(Ok(resp)).await.map_err(|_| Gone)?;
                }
                Ok(())
            }
            Msg::Progress { probe, rev } => {
                let Some(round) = &mut self.round else {
                    return Ok(());
                };
                if round.probe != probe {
                    return Ok(());
                }
                round.missing -= 1;
                round.low = match (round.low, rev) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if round.missing == 0 {
                    self.finish_round().await?;
                }
                Ok(())
            }
        }
    }

    /// Asks every group feeding this stream for progress, on behalf of
    /// `requests` client requests.
    async fn start_round(&mut self, requests: usize) -> Result<(), Gone> {
        self.probe_seq += 1;
        let probe = self.probe_seq;
        let mut asked: Vec<Arc<Group>> = Vec::new();
        let mut missing = 0;
        for (g, _) in self.mine.values() {
            if asked.iter().any(|x| Arc::ptr_eq(x, g)) {
                continue;
            }
            let out = self.out.clone();
            if g.ctl.send(Ctl::Progress { out, probe }).is_ok() {
                missing += 1;
            }
            asked.push(g.clone());
        }
        self.round = Some(Round {
            probe,
            asked,
            missing,
            low: None,
            requests,
        });
        if missing == 0 {
            self.finish_round().await?;
        }
        Ok(())
    }

    async fn finish_round(&mut self) -> Result<(), Gone> {
        let round = self.round.take().expect("a round under way");
        let header = match round.low {
            Some(rev) => round
                .asked
                .first()
                .and_then(|g| g.state.lock().unwrap().header(rev)),
            // No watcher left on the stream: the cluster's revision, as a
            // member answers a stream without watchers.
            None => match current_revision(&self.proxy).await {
                Ok(h) => Some(h),
                Err(s) => {
                    let _ = self.client_tx.send(Err(Box::new(s))).await;
                    return Err(Gone);
                }
            },
        };
        for _ in 0..round.requests {
            self.send(WatchResponse {
                header,
                watch_id: -1,
                ..Default::default()
            })
            .await?;
        }
        let later = std::mem::take(&mut self.later);
        if later > 0 {
            Box::pin(self.start_round(later)).await?;
        }
        Ok(())
    }
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
        let token = crate::forward::token_of(r.metadata());
        let input = r.into_inner().map(|r| r);
        Ok(Response::new(self.watch_stream(token, Box::pin(input))))
    }
}
