//! Which events a watcher receives, and in what shape.
use cairn_proto::etcdserverpb::WatchCreateRequest;
use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::mvccpb::Event;
use cairn_proto::mvccpb::event::EventType;

#[derive(Debug, Clone)]
pub struct WatchFilter {
    key: Vec<u8>,
    /// `None`: the single key; `Some(None)`: every key >= `key`;
    /// `Some(Some(end))`: `[key, end)`.
    end: Option<Option<Vec<u8>>>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

impl WatchFilter {
    pub fn from_request(r: &WatchCreateRequest) -> WatchFilter {
        let end = if r.range_end.is_empty() {
            None
        } else if r.range_end == [0] {
            Some(None)
        } else {
            Some(Some(r.range_end.clone()))
        };
        WatchFilter {
            key: r.key.clone(),
            end,
            no_put: r.filters.contains(&(FilterType::Noput as i32)),
            no_delete: r.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: r.prev_kv,
        }
    }

    /// The event's key is watched (filters aside).
    pub fn matches(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        let k = kv.key.as_slice();
        match &self.end {
            None => k == self.key.as_slice(),
            Some(None) => k >= self.key.as_slice(),
            Some(Some(end)) => k >= self.key.as_slice() && k < end.as_slice(),
        }
    }

    /// The event as this watcher gets it: `None` when filtered out, else
    /// with `prev_kv` only if requested.
    pub fn shape(&self, e: &Event) -> Option<Event> {
        let is_put = e.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let mut e = e.clone();
        if !self.prev_kv {
            e.prev_kv = None;
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn ev(k: &str, put: bool) -> Event {
        Event {
            r#type: if put { 0 } else { 1 },
            kv: Some(KeyValue {
                key: k.into(),
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    #[test]
    fn ranges_and_filters() {
        let f = WatchFilter::from_request(&WatchCreateRequest {
            key: "a".into(),
            range_end: "c".into(),
            filters: vec![FilterType::Nodelete as i32],
            ..Default::default()
        });
        assert!(f.matches(&ev("a", true)) && f.matches(&ev("bz", true)));
        assert!(!f.matches(&ev("c", true)));
        assert!(f.shape(&ev("b", false)).is_none());
        assert!(f.shape(&ev("b", true)).unwrap().prev_kv.is_none());
        let all = WatchFilter::from_request(&WatchCreateRequest {
            key: "b".into(),
            range_end: vec![0],
            prev_kv: true,
            ..Default::default()
        });
        assert!(all.matches(&ev("zzz", true)) && !all.matches(&ev("a", true)));
        assert!(all.shape(&ev("b", false)).unwrap().prev_kv.is_some());
        let one = WatchFilter::from_request(&WatchCreateRequest {
            key: "b".into(),
            ..Default::default()
        });
        assert!(one.matches(&ev("b", true)) && !one.matches(&ev("ba", true)));
    }
}
