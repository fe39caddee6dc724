//! The v2 data model on the v3 store, pure: v2 paths, the v3 keys they live
//! at, what a v3 value holds for a v2 node, and the JSON etcd v2 answers with.
//!
//! A v2 node `/a/b` is the v3 key `\0cairn/v2/a/b`: a leading NUL keeps the
//! space out of every v3 prefix a client would ask for by accident. Every
//! directory is a key of its own (written when something is created beneath
//! it), so a directory listing never has to guess. The v3 value starts with
//! a header ([`Entry`]): file or directory, which v2 action wrote it (watch
//! events report it), the absolute expiration of a TTL node (the lease
//! attached to the key deletes it; readers hide it from the moment it is
//! due), and the v2 `createdIndex` when it differs from the v3
//! `mod_revision` of that version (an `update` keeps the node's creation
//! index, a v3 put would not). Indexes are v3 revisions: `modifiedIndex`
//! is the key's `mod_revision`, `X-Etcd-Index` the header revision.
use serde::Serialize;

/// The v3 key prefix of the v2 key space.
pub const PREFIX: &[u8] = b"\0cairn/v2";

const HEADER_LEN: usize = 18;

/// Which v2 action wrote a version (kept in the value for watch events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A directory created because something was created beneath it.
    Implicit = 0,
    Set = 1,
    Create = 2,
    Update = 3,
    CompareAndSwap = 4,
    /// `refresh=true`: a new TTL, nothing watchers are told about.
    Refresh = 5,
}

impl WriteKind {
    fn from_byte(b: u8) -> WriteKind {
        match b {
            1 => WriteKind::Set,
            2 => WriteKind::Create,
            3 => WriteKind::Update,
            4 => WriteKind::CompareAndSwap,
            5 => WriteKind::Refresh,
            _ => WriteKind::Implicit,
        }
    }

    /// The `action` of the v2 event.
    pub fn action(self) -> &'static str {
        match self {
            WriteKind::Set | WriteKind::Refresh | WriteKind::Implicit => "set",
            WriteKind::Create => "create",
            WriteKind::Update => "update",
            WriteKind::CompareAndSwap => "compareAndSwap",
        }
    }
}

/// What one v3 value holds for a v2 node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dir: bool,
    pub kind: WriteKind,
    /// Unix nanoseconds at which the node expires; 0: never.
    pub expires_ns: i64,
    /// The node's `createdIndex`; 0: the revision this version was written at.
    pub created: i64,
    pub value: String,
}

// === impl Entry ===

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.value.len());
        out.push(if self.dir { b'D' } else { b'F' });
        out.push(self.kind as u8);
        out.extend_from_slice(&self.expires_ns.to_be_bytes());
        out.extend_from_slice(&self.created.to_be_bytes());
        out.extend_from_slice(self.value.as_bytes());
        out
    }

    /// `None` for a value no v2 write produced.
    pub fn decode(raw: &[u8]) -> Option<Entry> {
        if raw.len() < HEADER_LEN || !matches!(raw[0], b'D' | b'F') {
            return None;
        }
        let int = |r: &[u8]| i64::from_be_bytes(r.try_into().unwrap_or([0; 8]));
        Some(Entry {
            dir: raw[0] == b'D',
            kind: WriteKind::from_byte(raw[1]),
            expires_ns: int(&raw[2..10]),
            created: int(&raw[10..18]),
            value: String::from_utf8_lossy(&raw[HEADER_LEN..]).into_owned(),
        })
    }

    pub fn expired(&self, now_ns: i64) -> bool {
        self.expires_ns != 0 && self.expires_ns <= now_ns
    }
}

/// A v2 path made canonical as etcd makes it (`path.Join("/", p)`):
/// `//a/./b/../c/` is `/a/c`; the root is `/`.
pub fn clean(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The ancestors of a clean path, outermost first, without the root:
/// `/a/b/c` has `/a` and `/a/b`.
pub fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = path[at + 1..].find('/') {
        at += i + 1;
        out.push(path[..at].to_string());
    }
    out
}

/// The v3 key of a v2 path.
pub fn key(path: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(path.as_bytes());
    k
}

/// The v2 path of a v3 key in the v2 space.
pub fn path_of(key: &[u8]) -> Option<String> {
    key.strip_prefix(PREFIX)
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// The v3 range `[start, end)` of everything beneath a path.
pub fn subtree(path: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = key(path);
    if path != "/" {
        start.push(b'/');
    }
    let mut end = start.clone();
    *end.last_mut().expect("non-empty") = b'0';
    (start, end)
}

/// A name beginning with `_` is hidden from listings and recursive
/// watches of its parents (etcd's hidden nodes).
pub fn hidden_below(parent: &str, path: &str) -> bool {
    let rest = path.get(parent.len()..).unwrap_or("");
    format!("/{rest}").contains("/_")
}

/// One node of a v2 answer, fields in etcd's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<Node>>,
    #[serde(rename = "modifiedIndex", skip_serializing_if = "is_zero")]
    pub modified_index: i64,
    #[serde(rename = "createdIndex", skip_serializing_if = "is_zero")]
    pub created_index: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A v2 event: the answer to a write or a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub action: String,
    pub node: Node,
    #[serde(rename = "prevNode", skip_serializing_if = "Option::is_none")]
    pub prev_node: Option<Node>,
}

// === impl Node ===

impl Node {
    /// A node as stored at `mod_revision`, without children.
    pub fn of(path: &str, e: &Entry, mod_revision: i64, now_ns: i64) -> Node {
        let mut n = Node {
            key: Some(path.to_string()),
            value: (!e.dir).then(|| e.value.clone()),
            dir: e.dir,
            modified_index: mod_revision,
            created_index: if e.created == 0 {
                mod_revision
            } else {
                e.created
            },
            ..Node::default()
        };
        if e.expires_ns != 0 {
            n.expiration = Some(rfc3339_nanos(e.expires_ns));
            // Go omits a zero ttl.
            n.ttl = Some(ttl_secs(e.expires_ns, now_ns)).filter(|t| *t > 0);
        }
        n
    }
}

/// Seconds left, rounded up, as etcd reports `ttl`.
pub fn ttl_secs(expires_ns: i64, now_ns: i64) -> i64 {
    let left = expires_ns - now_ns;
    if left <= 0 {
        return 0;
    }
    (left + 999_999_999) / 1_000_000_000
}

/// Go's `time.RFC3339Nano` in UTC: trailing zeros of the fraction dropped.
pub fn rfc3339_nanos(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000) as u32;
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Wall-clock Unix nanoseconds (TTL expirations are absolute, as in etcd v2).
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Builds a directory's children from the kvs beneath it (sorted by key):
/// direct children only, or the whole tree with `recursive`. Hidden and
/// expired nodes are left out.
pub fn children(
    dir: &str,
    below: &[(String, Entry, i64)],
    recursive: bool,
    now_ns: i64,
) -> Vec<Node> {
    let base = if dir == "/" {
        String::new()
    } else {
        dir.to_string()
    };
    let mut out = Vec::new();
    for (path, e, rev) in below {
        let Some(rest) = path.strip_prefix(&format!("{base}/")) else {
            continue;
        };
        if rest.contains('/') || rest.starts_with('_') || e.expired(now_ns) {
            continue;
        }
        let mut n = Node::of(path, e, *rev, now_ns);
        if e.dir && recursive {
            let mine = children(path, below, true, now_ns);
            n.nodes = (!mine.is_empty()).then_some(mine);
        }
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_like_path_join() {
        assert_eq!(clean(""), "/");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("//a//b/"), "/a/b");
        assert_eq!(clean("a/./b/../c"), "/a/c");
        assert_eq!(clean("/../.."), "/");
        assert_eq!(ancestors("/a/b/c"), ["/a", "/a/b"]);
        assert!(ancestors("/a").is_empty());
    }

    #[test]
    fn subtree_ranges() {
        let (s, e) = subtree("/a");
        assert_eq!(s, b"\0cairn/v2/a/");
        assert_eq!(e, b"\0cairn/v2/a0");
        let (s, e) = subtree("/");
        assert_eq!(s, b"\0cairn/v2/");
        assert_eq!(e, b"\0cairn/v20");
    }

    #[test]
    fn entry_roundtrip() {
        let e = Entry {
            dir: false,
            kind: WriteKind::CompareAndSwap,
            expires_ns: 1_700_000_000_123_000_000,
            created: 42,
            value: "héllo".into(),
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        assert_eq!(Entry::decode(b"plain v3 value"), None);
    }

    #[test]
    fn json_like_etcd() {
        let e = Entry {
            dir: false,
            kind: WriteKind::Set,
            expires_ns: 0,
            created: 0,
            value: "Hello".into(),
        };
        let ev = Event {
            action: "set".into(),
            node: Node::of("/message", &e, 4, 0),
            prev_node: None,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"action":"set","node":{"key":"/message","value":"Hello","modifiedIndex":4,"createdIndex":4}}"#
        );
        assert_eq!(
            rfc3339_nanos(1_795_599_526_735_788_370),
            "2026-11-25T09:38:46.73578837Z"
        );
        assert_eq!(
            rfc3339_nanos(1_795_599_526_000_000_000),
            "2026-11-25T09:38:46Z"
        );
        assert_eq!(ttl_secs(5_000_000_001, 0), 6);
        assert_eq!(ttl_secs(5_000_000_000, 0), 5);
    }

    #[test]
    fn hidden() {
        assert!(hidden_below("/d", "/d/_config/size"));
        assert!(!hidden_below("/d", "/d/abc"));
        assert!(hidden_below("/", "/_x"));
        assert!(!hidden_below("/d/_config", "/d/_config/size"));
    }
}
