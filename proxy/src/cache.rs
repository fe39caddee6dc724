//! The serializable-read cache: a bounded LRU of serializable Range
//! answers (revision 0 only), kept coherent by one upstream watch over the
//! namespace. Every event invalidates the entries whose range holds its
//! key; an answer is cached only if it is at least as new as everything
//! the watch has already passed and every write this proxy acknowledged;
//! while the watch is down the cache is empty and bypassed.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::etcdserverpb::{
    RangeRequest, RangeResponse, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use futures::StreamExt;
use prost::Message;

use crate::namespace::{Namespace, prefix_end};
use crate::upstream::Upstream;
use crate::{ProxyConfig, Stats};

pub(crate) struct Cache {
    cap: usize,
    max_stale: Option<Duration>,
    stats: Arc<Stats>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    live: bool,
    /// The revision the watch has passed.
    watched: i64,
    /// The newest revision of a write this proxy acknowledged.
    written: i64,
    tick: u64,
    entries: HashMap<Vec<u8>, Entry>,
    lru: BTreeMap<u64, Vec<u8>>,
}

struct Entry {
    key: Vec<u8>,
    end: Vec<u8>,
    resp: RangeResponse,
    tick: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether two ranges share a key.
fn overlaps(a: (&[u8], &[u8]), b: (&[u8], &[u8])) -> bool {
    let hi = |(k, e): (&[u8], &[u8])| -> Option<Vec<u8>> {
        match e {
            [] => {
                let mut x = k.to_vec();
                x.push(0);
                Some(x)
            }
            [0] => None,
            e => Some(e.to_vec()),
        }
    };
    let a_below_b = hi(a).is_some_and(|h| h.as_slice() <= b.0);
    let b_below_a = hi(b).is_some_and(|h| h.as_slice() <= a.0);
    !a_below_b && !b_below_a
}

fn cacheable(req: &RangeRequest) -> bool {
    req.serializable && req.revision == 0
}

/// The entry a request's answer lives under: the serializable form of the
/// whole request, so a linearizable read's answer may serve later
/// serializable ones.
fn entry_id(req: &RangeRequest) -> Vec<u8> {
    RangeRequest {
        serializable: true,
        ..req.clone()
    }
    .encode_to_vec()
}

impl State {
    fn clear(&mut self) {
        self.entries.clear();
        self.lru.clear();
    }

    fn invalidate(&mut self, key: &[u8], end: &[u8]) {
        let gone: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, e)| overlaps((&e.key, &e.end), (key, end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(e) = self.entries.remove(&k) {
                self.lru.remove(&e.tick);
            }
        }
    }
}

impl State {
    /// One answer of the cache's upstream watch (not a cancel): its events
    /// invalidate, its revision is passed.
    fn on_watch_answer(&mut self, ns: &Namespace, stats: &Stats, r: &WatchResponse) {
        let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        for e in &r.events {
            if let Some(kv) = &e.kv {
                let mut k = kv.key.clone();
                ns.strip(&mut k);
                self.invalidate(&k, &[]);
            }
        }
        self.watched = self.watched.max(rev);
        self.live = true;
        stats.cache_revision.store(self.watched, Ordering::Relaxed);
        let seen = stats
            .upstream_revision
            .fetch_max(rev, Ordering::Relaxed)
            .max(rev);
        if self.watched >= seen || r.events.is_empty() {
            // A created or progress answer: the watch has everything up
            // to the member's current revision.
            stats.cache_current_at_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The watch broke: nothing it covered can be trusted until it is back.
    fn lost_watch(&mut self) {
        self.live = false;
        self.clear();
    }
}

impl Cache {
    fn detached(config: &ProxyConfig, stats: Arc<Stats>) -> Cache {
        Cache {
            cap: config.cache_entries,
            max_stale: config.max_stale,
            stats,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    pub(crate) fn new(
        config: &ProxyConfig,
        upstream: Upstream,
        ns: Namespace,
        stats: Arc<Stats>,
    ) -> Cache {
        let cache = Cache::detached(config, stats.clone());
        if cache.cap > 0 {
            let every = config
                .max_stale
                .map(|m| (m / 4).clamp(Duration::from_millis(20), Duration::from_secs(1)))
                .unwrap_or(Duration::from_secs(1));
            let state = Arc::downgrade(&cache.state);
            tokio::spawn(watch_loop(upstream, ns, stats, state, every));
        }
        cache
    }

    fn fresh_enough(&self) -> bool {
        match self.max_stale {
            None => true,
            Some(max) => {
                let at = self.stats.cache_current_at_ms.load(Ordering::Relaxed);
                at > 0 && now_ms() - at <= max.as_millis() as i64
            }
        }
    }

    /// A cached answer to `req`, if there is one.
    pub(crate) fn get(&self, req: &RangeRequest) -> Option<RangeResponse> {
        if self.cap == 0 || !cacheable(req) {
            return None;
        }
        let mut st = self.state.lock().unwrap();
        let hit = if st.live && self.fresh_enough() {
            let id = entry_id(req);
            st.tick += 1;
            let tick = st.tick;
            let (old, resp) = match st.entries.get_mut(&id) {
                Some(e) => {
                    let old = e.tick;
                    e.tick = tick;
                    (Some(old), Some(e.resp.clone()))
                }
                None => (None, None),
            };
            if let Some(old) = old {
                st.lru.remove(&old);
                st.lru.insert(tick, id);
            }
            resp
        } else {
            None
        };
        let counter = if hit.is_some() {
            &self.stats.cache_hits
        } else {
            &self.stats.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Offers a forwarded answer (serializable or linearizable) to the
    /// cache.
    pub(crate) fn put(&self, req: &RangeRequest, resp: &RangeResponse) {
        if self.cap == 0 || req.revision != 0 {
            return;
        }
        let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let mut st = self.state.lock().unwrap();
        if !st.live || rev < st.watched || rev < st.written {
            return;
        }
        st.tick += 1;
        let tick = st.tick;
        let id = entry_id(req);
        if let Some(old) = st.entries.insert(
            id.clone(),
            Entry {
                key: req.key.clone(),
                end: req.range_end.clone(),
                resp: resp.clone(),
                tick,
            },
        ) {
            st.lru.remove(&old.tick);
        }
        st.lru.insert(tick, id);
        while st.entries.len() > self.cap {
            let Some((_, oldest)) = st.lru.pop_first() else {
                break;
            };
            st.entries.remove(&oldest);
        }
    }

    /// A write through this proxy changed [key, end): forget what it
    /// touched before the client hears back.
    pub(crate) fn wrote(&self, key: &[u8], end: &[u8], header: &Option<ResponseHeader>) {
        let mut st = self.state.lock().unwrap();
        st.invalidate(key, end);
        if let Some(h) = header {
            st.written = st.written.max(h.revision);
        }
    }

    /// A write whose keys are not worked out (a txn): forget everything.
    pub(crate) fn clear_after(&self, header: &Option<ResponseHeader>) {
        let mut st = self.state.lock().unwrap();
        st.clear();
        if let Some(h) = header {
            st.written = st.written.max(h.revision);
        }
    }
}

/// Keeps one upstream watch over the namespace and applies its events,
/// until the cache is dropped.
async fn watch_loop(
    upstream: Upstream,
    ns: Namespace,
    stats: Arc<Stats>,
    state: Weak<Mutex<State>>,
    every: Duration,
) {
    let (key, range_end) = if ns.is_empty() {
        (vec![0], vec![0])
    } else {
        (ns.prefix().to_vec(), prefix_end(ns.prefix()))
    };
    loop {
        let (picked, channel) = upstream.pick();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.clone(),
                range_end: range_end.clone(),
                progress_notify: true,
                ..Default::default()
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.send(create).await;
        // A progress answer says every event up to the member's current
        // revision has been delivered: the cache is current as of then.
        let ticker = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let progress = WatchRequest {
                    request_union: Some(RequestUnion::ProgressRequest(Default::default())),
                };
                if ticker.send(progress).await.is_err() {
                    return;
                }
            }
        });
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        match WatchClient::new(channel).watch(requests).await {
            Ok(resp) => {
                let mut events = resp.into_inner();
                stats.upstream_watches.fetch_add(1, Ordering::Relaxed);
                while let Some(Ok(r)) = events.next().await {
                    let Some(state) = state.upgrade() else { break };
                    if r.canceled {
                        break;
                    }
                    state.lock().unwrap().on_watch_answer(&ns, &stats, &r);
                }
                stats.upstream_watches.fetch_sub(1, Ordering::Relaxed);
                drop(tx);
            }
            Err(e) => tracing::debug!(error = %e, "cache watch failed"),
        }
        let Some(state) = state.upgrade() else {
            return;
        };
        state.lock().unwrap().lost_watch();
        drop(state);
        upstream.failed(&picked);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(key: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            serializable: true,
            ..Default::default()
        }
    }

    fn answer(rev: i64, value: &[u8]) -> RangeResponse {
        RangeResponse {
            header: Some(ResponseHeader {
                revision: rev,
                ..Default::default()
            }),
            kvs: vec![cairn_proto::mvccpb::KeyValue {
                key: b"k".to_vec(),
                value: value.to_vec(),
                mod_revision: rev,
                ..Default::default()
            }],
            count: 1,
            ..Default::default()
        }
    }

    fn header(rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        })
    }

    fn event(key: &[u8], rev: i64) -> WatchResponse {
        WatchResponse {
            header: header(rev),
            events: vec![cairn_proto::mvccpb::Event {
                kv: Some(cairn_proto::mvccpb::KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A cache whose watch was created at `rev`.
    fn live_cache(cap: usize, rev: i64) -> Cache {
        let config = ProxyConfig {
            cache_entries: cap,
            ..ProxyConfig::default()
        };
        let cache = Cache::detached(&config, Arc::new(Stats::default()));
        let created = WatchResponse {
            header: header(rev),
            created: true,
            ..Default::default()
        };
        cache
            .state
            .lock()
            .unwrap()
            .on_watch_answer(&Namespace::default(), &cache.stats, &created);
        cache
    }

    fn value(cache: &Cache, req: &RangeRequest) -> Option<Vec<u8>> {
        cache.get(req).map(|r| r.kvs[0].value.clone())
    }

    #[test]
    fn a_write_acknowledged_through_the_proxy_is_never_hidden_by_the_cache() {
        let cache = live_cache(16, 10);
        let k = range(b"k", b"");
        let all = range(b"a", b"z");
        cache.put(&k, &answer(10, b"old"));
        cache.put(&all, &answer(10, b"old"));
        assert_eq!(value(&cache, &k).as_deref(), Some(&b"old"[..]));
        // The write is acknowledged at 11, before its event reaches the
        // watch: both entries holding k are gone already.
        cache.wrote(b"k", b"", &header(11));
        assert_eq!(cache.get(&k), None);
        assert_eq!(cache.get(&all), None);
        // A read that was answered before the write is not stored.
        cache.put(&k, &answer(10, b"old"));
        assert_eq!(cache.get(&k), None);
        cache.put(&k, &answer(11, b"new"));
        assert_eq!(value(&cache, &k).as_deref(), Some(&b"new"[..]));
        // A txn forgets everything.
        cache.clear_after(&header(12));
        assert_eq!(cache.get(&k), None);
        cache.put(&k, &answer(11, b"new"));
        assert_eq!(cache.get(&k), None);
    }

    #[test]
    fn events_invalidate_and_older_answers_are_refused() {
        let cache = live_cache(16, 10);
        let k = range(b"k", b"");
        let from_j = range(b"j", b"\0");
        let other = range(b"a", b"b");
        for r in [&k, &from_j, &other] {
            cache.put(r, &answer(10, b"v"));
        }
        let ns = Namespace::default();
        cache
            .state
            .lock()
            .unwrap()
            .on_watch_answer(&ns, &cache.stats, &event(b"k", 12));
        assert_eq!(cache.get(&k), None);
        assert_eq!(cache.get(&from_j), None);
        assert!(cache.get(&other).is_some());
        assert_eq!(cache.stats.cache_revision.load(Ordering::Relaxed), 12);
        // An answer older than what the watch has passed may miss an
        // event the watch will not repeat.
        cache.put(&k, &answer(11, b"v"));
        assert_eq!(cache.get(&k), None);
        cache.put(&k, &answer(12, b"v"));
        assert!(cache.get(&k).is_some());
        // A linearizable read's answer serves later serializable reads.
        let lin = RangeRequest {
            serializable: false,
            ..range(b"m", b"")
        };
        cache.put(&lin, &answer(12, b"m"));
        assert!(cache.get(&range(b"m", b"")).is_some());
        assert_eq!(
            cache.get(&lin),
            None,
            "a linearizable read is always forwarded"
        );
    }

    #[test]
    fn a_lost_watch_empties_and_bypasses_the_cache() {
        let cache = live_cache(16, 10);
        let k = range(b"k", b"");
        cache.put(&k, &answer(10, b"v"));
        cache.state.lock().unwrap().lost_watch();
        assert_eq!(cache.get(&k), None);
        cache.put(&k, &answer(20, b"v"));
        assert_eq!(cache.get(&k), None);
        // Requests at a revision are never cached.
        let cache = live_cache(16, 10);
        let at = RangeRequest {
            revision: 10,
            ..range(b"k", b"")
        };
        cache.put(&at, &answer(10, b"v"));
        assert_eq!(cache.get(&at), None);
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let cache = live_cache(2, 10);
        let (a, b, c) = (range(b"a", b""), range(b"b", b""), range(b"c", b""));
        cache.put(&a, &answer(10, b"a"));
        cache.put(&b, &answer(10, b"b"));
        assert!(cache.get(&a).is_some());
        cache.put(&c, &answer(10, b"c"));
        assert!(cache.get(&a).is_some());
        assert_eq!(cache.get(&b), None);
        assert!(cache.get(&c).is_some());
        assert_eq!(cache.state.lock().unwrap().entries.len(), 2);
    }

    #[test]
    fn ranges_overlap_as_etcd_defines_them() {
        assert!(overlaps((b"a", b""), (b"a", b"")));
        assert!(!overlaps((b"a", b""), (b"b", b"")));
        assert!(overlaps((b"a", b"c"), (b"b", b"")));
        assert!(!overlaps((b"a", b"b"), (b"b", b"")));
        assert!(overlaps((b"a", b"\0"), (b"z", b"")));
        assert!(!overlaps((b"m", b"\0"), (b"a", b"b")));
    }
}
