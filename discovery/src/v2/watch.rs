//! v2 watches (`?wait=true`) on a v3 watch of the whole v2 space: each v3
//! revision there is one v2 write, turned back into its v2 event and
//! matched against the watched path as etcd's watcher hub matches it.
use cairn_proto::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion,
};
use cairn_proto::mvccpb::{self, event::EventType};
use cairn_proto::service::BoxStream;
use futures::StreamExt;
use std::time::Duration;

use super::error::{Code, V2Error};
use super::node::{self, Entry, Event, Node, WriteKind};
use super::request::KeyRequest;
use super::store::{Backend, internal};

/// A started watch: `X-Etcd-Index` and the matching events, oldest first.
pub struct Watching {
    pub index: i64,
    pub events: futures::stream::BoxStream<'static, Event>,
}

/// Starts a watch at `waitIndex` (or the next index). An index older than
/// the compacted history is etcd's error 401.
pub async fn start<S: Backend>(svc: &S, r: &KeyRequest) -> Result<Watching, V2Error> {
    let current = current_revision(svc).await?;
    let since = if r.wait_index == 0 {
        current + 1
    } else {
        r.wait_index as i64
    };
    let (start, end) = node::subtree("/");
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: start,
            range_end: end,
            start_revision: since,
            prev_kv: true,
            ..WatchCreateRequest::default()
        })),
    };
    let input = futures::stream::iter([Ok(create)]).chain(futures::stream::pending());
    let mut responses: BoxStream<WatchResponse> =
        svc.watch_stream(Default::default(), Box::pin(input));
    if since <= current && compacted(svc, since).await? {
        // The v3 watch is canceled with the compaction point.
        let oldest = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(w)) = responses.next().await {
                if w.canceled {
                    return w.compact_revision;
                }
            }
            since
        })
        .await
        .unwrap_or(since);
        return Err(V2Error::new(
            Code::EventIndexCleared,
            format!("the requested history has been cleared [{oldest}/{since}]"),
            current,
        ));
    }
    let path = r.path.clone();
    let recursive = r.recursive;
    let events = responses
        .take_while(|w| {
            let go = matches!(w, Ok(w) if !w.canceled);
            async move { go }
        })
        .flat_map(move |w| {
            let w = w.expect("errors end the stream above");
            let evs = translate(&w.events, node::now_ns());
            let path = path.clone();
            // etcd hides hidden nodes from live notifications only, not
            // from events found in its history.
            futures::stream::iter(evs.into_iter().filter(move |e| {
                let live = e.node.modified_index > current;
                matches(&path, recursive, live, e)
            }))
        })
        .boxed();
    Ok(Watching {
        index: current,
        events,
    })
}

async fn current_revision<S: Backend>(svc: &S) -> Result<i64, V2Error> {
    let req = RangeRequest {
        key: node::PREFIX.to_vec(),
        serializable: true,
        count_only: true,
        ..RangeRequest::default()
    };
    let resp = cairn_proto::etcdserverpb::kv_server::Kv::range(svc, tonic::Request::new(req))
        .await
        .map_err(|s| internal(&s))?
        .into_inner();
    Ok(resp.header.map(|h| h.revision).unwrap_or(0))
}

async fn compacted<S: Backend>(svc: &S, rev: i64) -> Result<bool, V2Error> {
    let req = RangeRequest {
        key: node::PREFIX.to_vec(),
        revision: rev,
        serializable: true,
        count_only: true,
        ..RangeRequest::default()
    };
    match cairn_proto::etcdserverpb::kv_server::Kv::range(svc, tonic::Request::new(req)).await {
        Ok(_) => Ok(false),
        Err(s) if s.message().contains("compacted") => Ok(true),
        Err(s) => Err(internal(&s)),
    }
}

/// The v2 events of a run of v3 events, one per revision: the write's own
/// node (not the directories it created on the way), or the topmost node
/// a delete removed. Refreshes are not reported, as in etcd.
pub fn translate(events: &[mvccpb::Event], now: i64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let rev = events[i].kv.as_ref().map(|k| k.mod_revision).unwrap_or(0);
        let mut j = i;
        while j < events.len() && events[j].kv.as_ref().map(|k| k.mod_revision).unwrap_or(0) == rev
        {
            j += 1;
        }
        if let Some(e) = one_revision(&events[i..j], now) {
            out.push(e);
        }
        i = j;
    }
    out
}

fn one_revision(events: &[mvccpb::Event], now: i64) -> Option<Event> {
    let prev_node = |ev: &mvccpb::Event, path: &str| -> Option<(Node, Entry, i64)> {
        let p = ev.prev_kv.as_ref()?;
        let e = Entry::decode(&p.value)?;
        Some((Node::of(path, &e, p.mod_revision, now), e, p.lease))
    };
    // A put that is the write itself.
    for ev in events {
        if ev.r#type != EventType::Put as i32 {
            continue;
        }
        let kv = ev.kv.as_ref()?;
        let (Some(path), Some(entry)) = (node::path_of(&kv.key), Entry::decode(&kv.value)) else {
            continue;
        };
        match entry.kind {
            WriteKind::Implicit => continue,
            WriteKind::Refresh => return None,
            k => {
                return Some(Event {
                    action: k.action().into(),
                    node: Node::of(&path, &entry, kv.mod_revision, now),
                    prev_node: prev_node(ev, &path).map(|(n, _, _)| n),
                });
            }
        }
    }
    // Else the topmost delete.
    let ev = events
        .iter()
        .filter(|e| e.r#type == EventType::Delete as i32)
        .filter_map(|e| Some((e, node::path_of(&e.kv.as_ref()?.key)?)))
        .min_by_key(|(_, p)| p.len())?;
    let (ev, path) = ev;
    let kv = ev.kv.as_ref()?;
    let (prev, entry, lease) = prev_node(ev, &path)?;
    let expired = lease != 0 && entry.expires_ns != 0 && entry.expires_ns <= now;
    Some(Event {
        action: if expired { "expire" } else { "delete" }.into(),
        node: Node {
            key: Some(path),
            dir: entry.dir,
            modified_index: kv.mod_revision,
            created_index: prev.created_index,
            ..Node::default()
        },
        prev_node: Some(prev),
    })
}

/// Whether a watcher of `watch` hears of `e` (etcd's watcher hub): its own
/// path; beneath it when recursive (hidden nodes excepted with `hide`);
/// and the delete
/// of a directory above it.
pub fn matches(watch: &str, recursive: bool, hide: bool, e: &Event) -> bool {
    let key = e.node.key.as_deref().unwrap_or("/");
    if key == watch {
        return true;
    }
    let under = |parent: &str, child: &str| {
        parent == "/"
            || child
                .strip_prefix(parent)
                .is_some_and(|r| r.starts_with('/'))
    };
    if recursive && under(watch, key) && !(hide && node::hidden_below(watch, key)) {
        return true;
    }
    let deleted_dir = matches!(e.action.as_str(), "delete" | "expire")
        && e.prev_node.as_ref().is_some_and(|p| p.dir);
    deleted_dir && under(key, watch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, key: &str, dir: bool) -> Event {
        Event {
            action: action.into(),
            node: Node {
                key: Some(key.into()),
                ..Node::default()
            },
            prev_node: Some(Node {
                key: Some(key.into()),
                dir,
                ..Node::default()
            }),
        }
    }

    #[test]
    fn matching_as_etcd() {
        let set = ev("set", "/a/b/c", false);
        assert!(matches("/a/b/c", false, true, &set));
        assert!(!matches("/a", false, true, &set));
        assert!(matches("/a", true, true, &set));
        assert!(matches("/", true, true, &set));
        assert!(!matches("/a/b/c/d", true, true, &set));
        assert!(!matches("/a/bb", true, true, &ev("set", "/a/b", false)));
        let hidden = ev("set", "/d/_config/size", false);
        assert!(!matches("/d", true, true, &hidden));
        assert!(matches("/d", true, false, &hidden));
        assert!(matches("/d/_config", true, true, &hidden));
        assert!(matches("/d/_config/size", false, true, &hidden));
        let rmdir = ev("delete", "/a", true);
        assert!(matches("/a/b/c", false, true, &rmdir));
        assert!(!matches("/ab", false, true, &rmdir));
        assert!(!matches("/a/b/c", false, true, &ev("delete", "/a", false)));
    }

    fn put(path: &str, e: &Entry, rev: i64) -> mvccpb::Event {
        mvccpb::Event {
            r#type: EventType::Put as i32,
            kv: Some(mvccpb::KeyValue {
                key: node::key(path),
                value: e.encode(),
                mod_revision: rev,
                create_revision: rev,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn one_event_per_revision() {
        let dir = Entry {
            dir: true,
            kind: WriteKind::Implicit,
            expires_ns: 0,
            created: 0,
            value: String::new(),
        };
        let file = Entry {
            dir: false,
            kind: WriteKind::Create,
            expires_ns: 0,
            created: 0,
            value: "v".into(),
        };
        let refresh = Entry {
            kind: WriteKind::Refresh,
            ..file.clone()
        };
        let events = [
            put("/a", &dir, 5),
            put("/a/b", &file, 5),
            put("/a/b", &refresh, 6),
            mvccpb::Event {
                r#type: EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: node::key("/a/b"),
                    mod_revision: 7,
                    ..Default::default()
                }),
                prev_kv: Some(mvccpb::KeyValue {
                    key: node::key("/a/b"),
                    value: file.encode(),
                    mod_revision: 5,
                    ..Default::default()
                }),
            },
        ];
        let out = translate(&events, 0);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].action, "create");
        assert_eq!(out[0].node.key.as_deref(), Some("/a/b"));
        assert_eq!(out[1].action, "delete");
        assert_eq!(out[1].node.modified_index, 7);
        assert_eq!(out[1].node.created_index, 5);
        assert_eq!(out[1].node.value, None);
    }
}
