//! Hot keys and space by prefix: requests, stored bytes and live keys per
//! key prefix (the first `--metrics-prefix-depth` `/`-separated segments,
//! e.g. `/registry/pods/` at depth 2), so that an operator can find who
//! loads or fills the cluster. At most `--metrics-prefix-max` prefixes are
//! tracked; the rest count under `(other)`.
//!
//! Requests are counted by the member that serves them. Bytes and keys are
//! the store's: a scan at start (at one revision) plus the events applied
//! after it, so they are exact and every member reports the same.
//! Shown in `/metrics` (`cairn_prefix_requests_total`, `cairn_prefix_bytes`,
//! `cairn_prefix_keys`) and by `cairn top`.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use cairn_proto::mvccpb::Event;
use cairn_proto::mvccpb::event::EventType;

const OTHER: &[u8] = b"(other)";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub requests: u64,
    pub bytes: i64,
    pub keys: i64,
}

pub struct PrefixStats {
    depth: usize,
    max: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<Vec<u8>, Entry>,
    /// Exact live bytes under each tenant quota prefix (`tenants.rs`).
    extra: Vec<(Vec<u8>, i64)>,
    /// Events up to this revision are in the start scan (i64::MAX until it
    /// begins: nothing is counted twice).
    base_rev: i64,
}

/// The prefix of `key` at `depth` segments: up to and including the
/// `depth`-th `/` after the first byte; the whole key when it has fewer.
pub fn prefix_of(key: &[u8], depth: usize) -> &[u8] {
    let mut seen = 0;
    for (i, b) in key.iter().enumerate() {
        if *b == b'/' && i > 0 {
            seen += 1;
            if seen == depth {
                return &key[..=i];
            }
        }
    }
    key
}

impl PrefixStats {
    pub fn new(depth: usize, max: usize, extra: Vec<Vec<u8>>) -> PrefixStats {
        PrefixStats {
            depth,
            max: max.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                extra: extra.into_iter().map(|p| (p, 0)).collect(),
                base_rev: i64::MAX,
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.depth > 0
    }

    /// Counting bytes at all: by depth, or for tenant quotas.
    pub fn tracking(&self) -> bool {
        self.enabled()
            || !self
                .inner
                .lock()
                .expect("prefix stats lock")
                .extra
                .is_empty()
    }

    /// Live bytes under one tenant quota prefix (0 for an unknown one).
    pub fn bytes_under(&self, prefix: &[u8]) -> i64 {
        let g = self.inner.lock().expect("prefix stats lock");
        g.extra
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, b)| *b)
            .unwrap_or(0)
    }

    /// Adds a change of `bytes`/`keys` under `key`.
    fn add(&self, inner: &mut Inner, key: &[u8], bytes: i64, keys: i64) {
        for (p, b) in inner.extra.iter_mut() {
            if key.starts_with(p) {
                *b += bytes;
            }
        }
        if self.enabled() {
            let e = self.entry(&mut inner.map, key);
            e.bytes += bytes;
            e.keys += keys;
        }
    }

    fn entry<'a>(&self, map: &'a mut HashMap<Vec<u8>, Entry>, key: &[u8]) -> &'a mut Entry {
        let p = prefix_of(key, self.depth);
        if !map.contains_key(p) && map.len() >= self.max {
            return map.entry(OTHER.to_vec()).or_default();
        }
        map.entry(p.to_vec()).or_default()
    }

    /// One request touching `key`.
    pub fn request(&self, key: &[u8]) {
        if !self.enabled() {
            return;
        }
        let mut g = self.inner.lock().expect("prefix stats lock");
        let inner = &mut *g;
        self.entry(&mut inner.map, key).requests += 1;
    }

    /// The events of one applied revision (with `prev_kv`).
    pub fn applied(&self, revision: i64, events: &[Event]) {
        let mut g = self.inner.lock().expect("prefix stats lock");
        if revision <= g.base_rev || (!self.enabled() && g.extra.is_empty()) {
            return;
        }
        let inner = &mut *g;
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            let prev = ev.prev_kv.as_ref();
            let (bytes, keys) = if ev.r#type == EventType::Delete as i32 {
                match prev {
                    Some(p) => (-((p.key.len() + p.value.len()) as i64), -1),
                    None => continue,
                }
            } else {
                match prev {
                    None => ((kv.key.len() + kv.value.len()) as i64, 1),
                    Some(p) => (kv.value.len() as i64 - p.value.len() as i64, 0),
                }
            };
            self.add(inner, &kv.key, bytes, keys);
        }
    }

    /// Counts the store's live keys at `current()` (read under the lock, so
    /// that events applied later are counted by [`Self::applied`] and
    /// earlier ones by the scan). `scan(rev, from)` returns a page of
    /// (key, value size) from `from` on at `rev`, empty at the end.
    pub fn initial_scan(
        &self,
        current: impl FnOnce() -> i64,
        mut scan: impl FnMut(i64, &[u8]) -> Result<Vec<(Vec<u8>, usize)>, String>,
    ) -> Result<(), String> {
        if !self.tracking() {
            return Ok(());
        }
        let rev = {
            let mut g = self.inner.lock().expect("prefix stats lock");
            let rev = current();
            g.base_rev = rev;
            rev
        };
        let mut from = vec![0u8];
        loop {
            let page = scan(rev, &from)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            from = last.clone();
            from.push(0);
            let mut g = self.inner.lock().expect("prefix stats lock");
            let inner = &mut *g;
            for (k, vlen) in &page {
                self.add(inner, k, (k.len() + vlen) as i64, 1);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<(Vec<u8>, Entry)> {
        let g = self.inner.lock().expect("prefix stats lock");
        let mut v: Vec<_> = g.map.iter().map(|(k, e)| (k.clone(), *e)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The Prometheus text of the three families.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.enabled() {
            return out;
        }
        let rows = self.snapshot();
        let label = |p: &[u8]| {
            String::from_utf8_lossy(p)
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        for (name, kind, help, get) in [
            (
                "cairn_prefix_requests_total",
                "counter",
                "Requests served by this member, by key prefix.",
                (|e: &Entry| e.requests as i64) as fn(&Entry) -> i64,
            ),
            (
                "cairn_prefix_bytes",
                "gauge",
                "Bytes of live keys and values stored, by key prefix.",
                |e: &Entry| e.bytes,
            ),
            (
                "cairn_prefix_keys",
                "gauge",
                "Live keys stored, by key prefix.",
                |e: &Entry| e.keys,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (p, e) in &rows {
                let _ = writeln!(out, "{name}{{prefix=\"{}\"}} {}", label(p), get(e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    #[test]
    fn prefixes_follow_the_segments() {
        assert_eq!(prefix_of(b"/registry/pods/ns/x", 2), b"/registry/pods/");
        assert_eq!(prefix_of(b"/registry/pods/ns/x", 1), b"/registry/");
        assert_eq!(prefix_of(b"app/x/y", 1), b"app/");
        assert_eq!(prefix_of(b"flat", 1), b"flat");
        assert_eq!(prefix_of(b"a/b", 3), b"a/b");
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bytes_and_keys_follow_puts_and_deletes_after_the_scan() {
        let s = PrefixStats::new(1, 2, vec![b"a/".to_vec()]);
        s.initial_scan(
            || 10,
            |_, from| {
                Ok(if from == [0] {
                    vec![(b"a/1".to_vec(), 5)]
                } else {
                    vec![]
                })
            },
        )
        .unwrap();
        let put = |k: &str, v: &str, prev: Option<KeyValue>| Event {
            r#type: EventType::Put as i32,
            kv: Some(kv(k, v)),
            prev_kv: prev,
        };
        s.applied(9, &[put("a/zz", "x", None)]); // in the scan already
        s.applied(
            11,
            &[
                put("a/2", "12", None),
                put("a/1", "1", Some(kv("a/1", "12345"))),
            ],
        );
        s.applied(
            12,
            &[Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv("a/2", "")),
                prev_kv: Some(kv("a/2", "12")),
            }],
        );
        s.applied(13, &[put("b/1", "v", None), put("c/1", "v", None)]);
        s.request(b"a/1");
        let rows: HashMap<_, _> = s.snapshot().into_iter().collect();
        let a = rows[&b"a/".to_vec()];
        assert_eq!((a.keys, a.bytes, a.requests), (1, 4, 1)); // "a/1" + "1"
        assert_eq!(s.bytes_under(b"a/"), 4);
        assert_eq!(rows[&b"b/".to_vec()].keys, 1);
        assert_eq!(rows[&OTHER.to_vec()].keys, 1, "beyond the maximum");
        assert!(s.render().contains("cairn_prefix_keys{prefix=\"a/\"} 1"));
    }
}
