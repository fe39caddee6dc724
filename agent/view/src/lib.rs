//! A locally watched, consistent view of key ranges.
//!
//! Render, DNS and service registration never read the store or raft: they
//! read a [`Snapshot`] of this view, which is a client of the etcd v3 API of
//! the agent it runs in (its local socket or client URL), so it works the
//! same on a voter, a learner and a proxy.
//!
//! - **One watcher per distinct range.** Consumers declare [`Interest`]s (a
//!   key or a prefix). An interest already covered by a watched prefix costs
//!   nothing; any other gets one Range and one watcher on the view's single
//!   watch stream, however many consumers ask for it.
//! - **One revision.** A snapshot is published only when the server has said,
//!   with a progress response on the stream, that every event up to revision
//!   `P` has been delivered, and none newer was applied: every range in a
//!   snapshot is then exactly the store at `P` (no half-applied transaction
//!   across two prefixes).
//! - **Fail static.** When the stream breaks or the agent is unreachable the
//!   last snapshot stays readable, marked [`Snapshot::stale`] with the reason;
//!   the view reconnects, ranges everything again at one revision and goes on.
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_proto::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use cairn_proto::mvccpb::{Event, event::EventType};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

pub mod skydns;

/// What a consumer reads: one key, or every key under a prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interest {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
}

impl Interest {
    pub fn key(k: impl Into<Vec<u8>>) -> Interest {
        Interest::Key(k.into())
    }

    pub fn prefix(p: impl Into<Vec<u8>>) -> Interest {
        Interest::Prefix(p.into())
    }

    /// The etcd `(key, range_end)` of this interest.
    pub fn range(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Interest::Key(k) => (k.clone(), Vec::new()),
            Interest::Prefix(p) if p.is_empty() => (vec![0], vec![0]),
            Interest::Prefix(p) => (p.clone(), prefix_end(p)),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            Interest::Key(k) => k == key,
            Interest::Prefix(p) => key.starts_with(p),
        }
    }

    /// Every key of `other` is a key of `self`.
    pub fn covers(&self, other: &Interest) -> bool {
        match (self, other) {
            (Interest::Prefix(p), Interest::Key(k)) => k.starts_with(p),
            (Interest::Prefix(p), Interest::Prefix(q)) => q.starts_with(p),
            (Interest::Key(a), Interest::Key(b)) => a == b,
            (Interest::Key(_), Interest::Prefix(_)) => false,
        }
    }
}

/// etcd's `GetPrefixRangeEnd`: the first key after every key with `p` as
/// a prefix.
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A key's value and metadata, as the store has it at the snapshot's
/// revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// A deleted key is kept as a tombstone (its deletion revision) so that
/// [`Snapshot::changed_since`] can tell a consumer its key went away.
#[derive(Clone, Debug)]
struct Slot {
    entry: Option<Entry>,
    changed: i64,
}

/// Tombstones kept per watched range before they are dropped (and the
/// whole range is reported changed to anyone older than the drop).
const MAX_TOMBSTONES: usize = 10_000;

#[derive(Clone, Debug)]
struct Root {
    interest: Interest,
    slots: BTreeMap<Vec<u8>, Slot>,
    tombstones: usize,
    /// The last revision that changed anything in this range.
    last_changed: i64,
    /// Consumers that read this range before this revision must assume
    /// anything in it changed (a resync or dropped tombstones).
    reset: i64,
}

impl Root {
    fn apply(&mut self, ev: &Event) {
        let Some(kv) = &ev.kv else { return };
        let rev = kv.mod_revision;
        let deleted = ev.r#type == EventType::Delete as i32;
        let entry = (!deleted).then(|| Entry {
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        });
        let was_tombstone = self.slots.get(&kv.key).is_some_and(|s| s.entry.is_none());
        match (was_tombstone, deleted) {
            (false, true) => self.tombstones += 1,
            (true, false) => self.tombstones -= 1,
            _ => {}
        }
        self.slots.insert(
            kv.key.clone(),
            Slot {
                entry,
                changed: rev,
            },
        );
        self.last_changed = self.last_changed.max(rev);
        if self.tombstones > MAX_TOMBSTONES {
            self.slots.retain(|_, s| s.entry.is_some());
            self.tombstones = 0;
            self.reset = rev;
        }
    }
}

/// The view at one revision. Cheap to clone and to hold: ranges that did
/// not change are shared between snapshots.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    revision: i64,
    roots: Vec<Arc<Root>>,
    stale: Option<String>,
}

/// A read of something the view does not watch (yet): the consumer should
/// [`View::want`] it and read again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotWatched(pub Interest);

impl Snapshot {
    /// The store revision every range of this snapshot is at (0 before the
    /// first sync).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Why the view may be behind the store (disconnected, resyncing), or
    /// `None` while it follows the store.
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// Every interest this snapshot answers.
    pub fn covers(&self, interest: &Interest) -> bool {
        self.root_for(interest).is_some()
    }

    fn root_for(&self, interest: &Interest) -> Option<&Root> {
        self.roots
            .iter()
            .find(|r| r.interest.covers(interest))
            .map(|r| &**r)
    }

    /// The key's entry, `Ok(None)` if the key does not exist.
    pub fn get(&self, key: &[u8]) -> Result<Option<&Entry>, NotWatched> {
        let want = Interest::Key(key.to_vec());
        let root = self.root_for(&want).ok_or(NotWatched(want))?;
        Ok(root.slots.get(key).and_then(|s| s.entry.as_ref()))
    }

    /// Every key under `prefix`, in key order.
    pub fn range(&self, prefix: &[u8]) -> Result<Vec<(&[u8], &Entry)>, NotWatched> {
        let want = Interest::Prefix(prefix.to_vec());
        let root = self.root_for(&want).ok_or(NotWatched(want))?;
        Ok(scan(root, prefix)
            .filter_map(|(k, s)| s.entry.as_ref().map(|e| (k.as_slice(), e)))
            .collect())
    }

    /// Whether anything `interest` reads changed after revision `rev`
    /// (a consumer that rendered at `rev` re-renders only then). True for
    /// an interest this snapshot does not cover.
    pub fn changed_since(&self, interest: &Interest, rev: i64) -> bool {
        let Some(root) = self.root_for(interest) else {
            return true;
        };
        if root.reset > rev {
            return true;
        }
        if root.last_changed <= rev {
            return false;
        }
        match interest {
            Interest::Key(k) => root.slots.get(k).is_some_and(|s| s.changed > rev),
            Interest::Prefix(p) => scan(root, p).any(|(_, s)| s.changed > rev),
        }
    }
}

/// A range's keys and values, for [`Snapshot::from_ranges`].
pub type RangeData = (Interest, Vec<(Vec<u8>, Vec<u8>)>);

impl Snapshot {
    /// Every range this snapshot answers (one watcher each on the view's
    /// stream): what a consumer reports to show what it costs the agent.
    pub fn interests(&self) -> impl Iterator<Item = &Interest> {
        self.roots.iter().map(|r| &r.interest)
    }

    /// A synced snapshot at `revision` holding exactly `ranges` (each an
    /// interest and its keys with values), for consumers' tests and tools
    /// that render without an agent. Entries take `revision` as their mod
    /// revision.
    pub fn from_ranges(revision: i64, ranges: Vec<RangeData>) -> Snapshot {
        let roots = ranges
            .into_iter()
            .map(|(interest, kvs)| {
                let slots = kvs
                    .into_iter()
                    .filter(|(k, _)| interest.contains(k))
                    .map(|(k, value)| {
                        let entry = Entry {
                            value,
                            create_revision: revision,
                            mod_revision: revision,
                            version: 1,
                            lease: 0,
                        };
                        (
                            k,
                            Slot {
                                entry: Some(entry),
                                changed: revision,
                            },
                        )
                    })
                    .collect();
                Arc::new(Root {
                    interest,
                    slots,
                    tombstones: 0,
                    last_changed: revision,
                    reset: revision,
                })
            })
            .collect();
        Snapshot {
            revision,
            roots,
            stale: None,
        }
    }
}

fn scan<'a>(root: &'a Root, prefix: &[u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Slot)> {
    root.slots
        .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

enum Cmd {
    Want(Vec<Interest>),
}

/// A handle on the view; cheap to clone. The view runs until every handle
/// is dropped.
#[derive(Clone)]
pub struct View {
    cmds: mpsc::UnboundedSender<Cmd>,
    snaps: watch::Receiver<Arc<Snapshot>>,
    channel: Channel,
}

impl View {
    /// Follows the agent at `endpoint`: `http://host:port` (a client URL)
    /// or `unix:/path` (the local socket). Returns at once; the first
    /// snapshot comes when the view has synced.
    pub fn connect(endpoint: &str) -> anyhow::Result<View> {
        let channel = channel(endpoint)?;
        let (cmds, rx) = mpsc::unbounded_channel();
        let (tx, snaps) = watch::channel(Arc::new(Snapshot {
            stale: Some("not synced yet".into()),
            ..Default::default()
        }));
        tokio::spawn(drive(channel.clone(), rx, tx));
        Ok(View {
            cmds,
            snaps,
            channel,
        })
    }

    /// The latest published snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snaps.borrow().clone()
    }

    /// A receiver that sees every new snapshot (and skips to the newest
    /// when behind).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snaps.clone()
    }

    /// The channel to the agent, for calls the view does not make (lease
    /// TTLs, writes).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Starts watching `interests` (those not yet covered) and waits until a
    /// published snapshot covers all of them, at most `timeout`.
    pub async fn want(
        &self,
        interests: Vec<Interest>,
        timeout: Duration,
    ) -> anyhow::Result<Arc<Snapshot>> {
        let mut snaps = self.snaps.clone();
        let missing: Vec<Interest> = {
            let s = snaps.borrow_and_update();
            interests.into_iter().filter(|i| !s.covers(i)).collect()
        };
        if missing.is_empty() {
            return Ok(self.current());
        }
        self.cmds
            .send(Cmd::Want(missing.clone()))
            .map_err(|_| anyhow::anyhow!("the view has stopped"))?;
        let wait = snaps.wait_for(|s| missing.iter().all(|i| s.covers(i)));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => bail!("the view has stopped"),
            Err(_) => {
                let why = self.current().stale().unwrap_or("no answer").to_string();
                bail!("the view did not sync {missing:?} within {timeout:?}: {why}")
            }
        }
    }
}

/// A lazily connected channel to the agent at `endpoint` (`unix:/path` or
/// a client URL), for the services that write through the etcd API.
pub fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    if let Some(path) = endpoint.strip_prefix("unix:") {
        let path = path.trim_start_matches("//").to_string();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        });
        return Ok(Endpoint::from_static("http://localhost").connect_with_connector_lazy(connector));
    }
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    if url.starts_with("https://") {
        bail!("view endpoint {url}: use the local socket (unix:/path) with a TLS client port");
    }
    Ok(Endpoint::from_shared(url.clone())
        .with_context(|| format!("invalid endpoint {url:?}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// The driver's state across reconnections.
struct Driver {
    channel: Channel,
    /// Every range watched, synced or not, in the order asked.
    roots: Vec<Root>,
    /// Published snapshot's shared copies (reused while a range is unchanged).
    published: Vec<Arc<Root>>,
    out: watch::Sender<Arc<Snapshot>>,
}

async fn drive(
    channel: Channel,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    out: watch::Sender<Arc<Snapshot>>,
) {
    let mut d = Driver {
        channel,
        roots: Vec::new(),
        published: Vec::new(),
        out,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        match d.session(&mut cmds, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "view: serving the last synced data");
                d.out.send_modify(|s| {
                    let mut stale = (**s).clone();
                    stale.stale = Some(format!("{e:#}"));
                    *s = Arc::new(stale);
                });
                // Take wants that came meanwhile, so the next sync has them.
                while let Ok(Cmd::Want(w)) = cmds.try_recv() {
                    d.add_roots(w);
                }
                if d.out.is_closed() && cmds.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Driver {
    /// Adds a root for each interest no root covers; returns their indexes.
    fn add_roots(&mut self, wants: Vec<Interest>) -> Vec<usize> {
        let mut added = Vec::new();
        for w in wants {
            if self.roots.iter().any(|r| r.interest.covers(&w)) {
                continue;
            }
            self.roots.push(Root {
                interest: w,
                slots: BTreeMap::new(),
                tombstones: 0,
                last_changed: 0,
                reset: 0,
            });
            added.push(self.roots.len() - 1);
        }
        added
    }

    /// Ranges root `i` at `rev` (0: now); returns the revision read at.
    async fn load(&mut self, i: usize, rev: i64) -> anyhow::Result<i64> {
        let (key, range_end) = self.roots[i].interest.range();
        let resp = KvClient::new(self.channel.clone())
            .range(RangeRequest {
                key,
                range_end,
                revision: rev,
                ..Default::default()
            })
            .await
            .context("range")?
            .into_inner();
        let at = resp.header.map(|h| h.revision).unwrap_or(rev);
        let root = &mut self.roots[i];
        root.slots.clear();
        root.tombstones = 0;
        for kv in resp.kvs {
            root.slots.insert(
                kv.key,
                Slot {
                    changed: kv.mod_revision,
                    entry: Some(Entry {
                        value: kv.value,
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        version: kv.version,
                        lease: kv.lease,
                    }),
                },
            );
        }
        root.reset = at;
        root.last_changed = at;
        Ok(at)
    }

    fn publish(&mut self, revision: i64, synced: usize) {
        let mut roots = Vec::with_capacity(synced);
        for (i, r) in self.roots[..synced].iter().enumerate() {
            match self.published.get(i) {
                Some(p) if p.last_changed == r.last_changed && p.reset == r.reset => {
                    roots.push(p.clone())
                }
                _ => roots.push(Arc::new(r.clone())),
            }
        }
        self.published = roots.clone();
        let _ = self.out.send(Arc::new(Snapshot {
            revision,
            roots,
            stale: None,
        }));
    }

    /// One watch stream, from a full sync until it breaks. `Ok` only when
    /// every handle is gone.
    async fn session(
        &mut self,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        backoff: &mut Duration,
    ) -> anyhow::Result<()> {
        // Every range at one revision: the first range's.
        let mut rev = 0;
        for i in 0..self.roots.len() {
            rev = self.load(i, rev).await?;
        }
        if self.roots.is_empty() {
            // The current revision, for the first snapshot.
            let resp = KvClient::new(self.channel.clone())
                .range(RangeRequest {
                    key: vec![0],
                    count_only: true,
                    ..Default::default()
                })
                .await
                .context("range")?
                .into_inner();
            rev = resp.header.map(|h| h.revision).unwrap_or(0);
        }
        let (tx, rx) = mpsc::channel::<WatchRequest>(64);
        let mut stream = WatchClient::new(self.channel.clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("watch")?
            .into_inner();
        // Client-chosen watch ids: root i is watcher i + 1.
        let create = |i: usize, root: &Root, from: i64| {
            let (key, range_end) = root.interest.range();
            WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key,
                    range_end,
                    start_revision: from + 1,
                    watch_id: i as i64 + 1,
                    ..Default::default()
                })),
            }
        };
        let progress = WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(Default::default())),
        };
        for (i, r) in self.roots.iter().enumerate() {
            tx.send(create(i, r, rev)).await?;
        }
        self.publish(rev, self.roots.len());
        *backoff = Duration::from_millis(50);
        tracing::info!(revision = rev, ranges = self.roots.len(), "view synced");

        let mut synced = self.roots.len();
        let mut applied = rev;
        let mut asked = false;
        let mut dirty = false;
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(Cmd::Want(w)) = cmd else { return Ok(()) };
                    let added = self.add_roots(w);
                    for i in added {
                        let at = self.load(i, 0).await?;
                        tx.send(create(i, &self.roots[i], at)).await?;
                    }
                    if self.roots.len() > synced && !asked {
                        tx.send(progress.clone()).await?;
                        asked = true;
                    }
                }
                resp = stream.next() => {
                    let resp = match resp {
                        Some(r) => r.context("watch stream")?,
                        None => bail!("the watch stream ended"),
                    };
                    if resp.canceled {
                        bail!(
                            "watcher {} canceled: {} (compacted at {})",
                            resp.watch_id, resp.cancel_reason, resp.compact_revision
                        );
                    }
                    let at = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                    if resp.watch_id == -1 && resp.events.is_empty() && !resp.created {
                        // Progress: every event up to `at` has been sent.
                        asked = false;
                        if applied <= at {
                            if dirty || self.roots.len() > synced {
                                self.publish(at, self.roots.len());
                                synced = self.roots.len();
                                dirty = false;
                            }
                        } else {
                            dirty = true;
                        }
                        if dirty || self.roots.len() > synced {
                            tx.send(progress.clone()).await?;
                            asked = true;
                        }
                        continue;
                    }
                    if resp.events.is_empty() {
                        continue;
                    }
                    let i = (resp.watch_id - 1) as usize;
                    let Some(root) = self.roots.get_mut(i) else { continue };
                    for ev in &resp.events {
                        root.apply(ev);
                        if let Some(kv) = &ev.kv {
                            applied = applied.max(kv.mod_revision);
                        }
                    }
                    dirty = true;
                    if !asked {
                        tx.send(progress.clone()).await?;
                        asked = true;
                    }
                }
            }
        }
    }
}

/// Go's duration syntax, as etcd's flags and consul-template's config:
/// "10m", "500ms", "1h30m", "2s".
pub fn parse_duration(v: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = v.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(num * unit);
        rest = &rest[u..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn put(k: &str, v: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: k.into(),
                value: v.into(),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn del(k: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: k.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn snapshot(interest: Interest, events: &[Event], reset: i64) -> Snapshot {
        let mut root = Root {
            interest,
            slots: BTreeMap::new(),
            tombstones: 0,
            last_changed: reset,
            reset,
        };
        for e in events {
            root.apply(e);
        }
        Snapshot {
            revision: 100,
            roots: vec![Arc::new(root)],
            stale: None,
        }
    }

    #[test]
    fn interests_cover_and_range() {
        let p = Interest::prefix("/a/");
        assert!(p.covers(&Interest::key("/a/x")));
        assert!(p.covers(&Interest::prefix("/a/b/")));
        assert!(!p.covers(&Interest::prefix("/a")));
        assert!(!Interest::key("/a/x").covers(&Interest::prefix("/a/x")));
        assert_eq!(p.range(), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(Interest::prefix("").range(), (vec![0], vec![0]));
        assert_eq!(prefix_end(&[b'a', 0xff]), vec![b'b']);
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
    }

    #[test]
    fn reads_hide_tombstones_and_changes_are_per_key() {
        let s = snapshot(
            Interest::prefix("/a/"),
            &[put("/a/1", "x", 11), put("/a/2", "y", 12), del("/a/1", 13)],
            10,
        );
        assert_eq!(s.get(b"/a/1").unwrap(), None);
        assert_eq!(s.get(b"/a/2").unwrap().unwrap().value, b"y");
        let keys: Vec<_> = s.range(b"/a/").unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![b"/a/2".as_slice()]);
        assert_eq!(
            s.get(b"/b"),
            Err(NotWatched(Interest::key("/b"))),
            "an unwatched key is not 'missing'"
        );
        // /a/2 last changed at 12, /a/1 deleted at 13.
        assert!(s.changed_since(&Interest::key("/a/2"), 11));
        assert!(!s.changed_since(&Interest::key("/a/2"), 12));
        assert!(s.changed_since(&Interest::key("/a/1"), 12));
        assert!(!s.changed_since(&Interest::key("/a/3"), 10));
        assert!(s.changed_since(&Interest::prefix("/a/"), 12));
        assert!(!s.changed_since(&Interest::prefix("/a/"), 13));
        // A resync at 10 means anything read before it may have changed.
        assert!(s.changed_since(&Interest::key("/a/3"), 9));
        assert!(s.changed_since(&Interest::key("/zzz"), 50), "not covered");
    }

    #[test]
    fn too_many_tombstones_reset_the_range() {
        let mut events = Vec::new();
        for i in 0..=MAX_TOMBSTONES as i64 {
            events.push(del(&format!("/t/{i}"), 10 + i));
        }
        let s = snapshot(Interest::prefix("/t/"), &events, 1);
        let last = 10 + MAX_TOMBSTONES as i64;
        assert!(s.changed_since(&Interest::key("/t/x"), last - 1));
        assert!(!s.changed_since(&Interest::key("/t/x"), last));
    }
}
