//! Watch streams checked against the committed write history.
//!
//! etcd's API guarantees (<https://etcd.io/docs/v3.5/learning/api_guarantees/>,
//! "Watch APIs") are what this module enforces, for each stream:
//!
//! - **Ordered**: events are ordered by revision; an event never appears
//!   before one it follows in the committed history (within one revision, a
//!   txn's events come in the committed order), and never at or below a
//!   progress notification's revision received earlier.
//! - **Unique**: an event (revision, key) is delivered at most once.
//! - **Reliable**: no gaps. Every committed event matching the watched range,
//!   from the start revision up to the last event received, appears; and up
//!   to any progress notification's revision by the time it arrives.
//! - **Atomic**: a revision's events are complete — a stream that has an
//!   event of revision R has every matching event of R.
//! - **Resumable**/start revision: nothing from before the requested start
//!   revision; nothing after the watch was canceled or compacted.
//! - **Correct**: each event is the committed one (kind, key, value,
//!   create/mod revision, version, lease), and `prev_kv`, when requested, is
//!   the key's value before that revision (absent if the key did not
//!   exist); when not requested it is not sent.
//!
//! The committed history may also be partial ([`Committed::since`]): events
//! before its first revision are not checked, nor the `prev_kv` of a key's
//! first event in it unless the committed event carries one.
//!
//! Not checked: watch filters (NOPUT/NODELETE; feed only unfiltered streams),
//! fragmentation, whether a compaction notice was justified, and events
//! beyond the last one received (a stream may simply have been stopped).

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::linear::{LeaseId, Revision};

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: LeaseId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// etcd's `mvccpb.Event`; its revision is `kv.mod_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// The committed write events, in revision order.
#[derive(Clone, Debug)]
pub struct Committed {
    events: Vec<Event>,
    /// Events before this revision are unknown.
    since: Revision,
}

/// The keys a watch asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchRange {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
    /// `[start, end)`; an empty `end` means every key from `start` (etcd's
    /// `range_end = "\0"`).
    Span {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// What a watch stream delivered, in order (responses flattened).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    Event(Event),
    /// A progress notification (or an empty response) at this header revision.
    Progress {
        revision: Revision,
    },
    /// Canceled because `compact_revision` was compacted.
    Compacted {
        compact_revision: Revision,
    },
    Canceled,
}

/// One watch stream.
#[derive(Clone, Debug)]
pub struct Stream {
    pub range: WatchRange,
    /// The first revision the stream covers: the requested start revision,
    /// or the creation response's header revision + 1 if none was requested.
    pub start_revision: Revision,
    pub prev_kv: bool,
    pub received: Vec<Received>,
}

/// What a passing check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchReport {
    pub streams: usize,
    pub events: usize,
    pub committed: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchViolationKind {
    /// The committed history contradicts itself (a bug in what was fed).
    CommittedInconsistent,
    OutOfOrder,
    Duplicate,
    Gap,
    BeforeStart,
    OutOfRange,
    /// An event that is not in the committed history, or differs from it.
    NotCommitted,
    WrongPrevKv,
    AfterCancel,
}

/// Why a stream is wrong.
#[derive(Clone, Debug)]
pub struct WatchViolation {
    pub kind: WatchViolationKind,
    /// Index of the stream in the slice given to [`check`].
    pub stream: usize,
    /// Index in the stream's `received` where it went wrong, if at an item.
    pub at: Option<usize>,
    pub detail: String,
    /// A description of the stream (range, start, prev_kv).
    pub watch: String,
}

/// What is known of a key before a committed event.
#[derive(Clone, Debug)]
enum Prior {
    Unknown,
    Absent,
    Present(KeyValue),
}

/// Checks every stream against `committed`.
pub fn check(committed: &Committed, streams: &[Stream]) -> Result<WatchReport, WatchViolation> {
    let priors = committed.replay()?;
    let index: HashMap<(Revision, &[u8]), usize> = committed
        .events
        .iter()
        .enumerate()
        .map(|(p, e)| ((e.kv.mod_revision, e.kv.key.as_slice()), p))
        .collect();
    let mut report = WatchReport {
        streams: streams.len(),
        events: 0,
        committed: committed.events.len(),
    };
    for (n, s) in streams.iter().enumerate() {
        report.events += check_stream(committed, &priors, &index, n, s)?;
    }
    Ok(report)
}

fn check_stream(
    committed: &Committed,
    priors: &[Prior],
    index: &HashMap<(Revision, &[u8]), usize>,
    n: usize,
    s: &Stream,
) -> Result<usize, WatchViolation> {
    let fail = |kind, at: Option<usize>, detail: String| WatchViolation {
        kind,
        stream: n,
        at,
        detail,
        watch: s.describe(),
    };
    let from = s.start_revision.max(committed.since);
    // Positions of the committed events this stream must deliver.
    let matching: Vec<usize> = committed
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kv.mod_revision >= from && s.range.contains(&e.kv.key))
        .map(|(p, _)| p)
        .collect();
    let mut next = 0usize; // index in `matching` of the next event due
    let mut last: Option<(Revision, usize, usize)> = None; // revision, position, received index
    let mut seen: HashSet<(Revision, Vec<u8>)> = HashSet::new();
    let mut progress: Option<(Revision, usize)> = None;
    let mut ended: Option<usize> = None;
    let mut events = 0;
    let missing = |next: usize| {
        let e = &committed.events[matching[next]];
        format!("missing committed event {}", show_event(e))
    };
    // A due event not delivered by item `i`: out of order if it comes later,
    // a gap if it never does.
    let late_or_missing = |next: usize, i: usize| {
        let due = &committed.events[matching[next]].kv;
        let later = s.received[i + 1..].iter().position(|r| {
            matches!(r, Received::Event(e) if e.kv.mod_revision == due.mod_revision && e.kv.key == due.key)
        });
        match later {
            Some(j) => (
                WatchViolationKind::OutOfOrder,
                format!(
                    "committed event {} arrives late, at item {}",
                    show_event(&committed.events[matching[next]]),
                    i + 1 + j
                ),
            ),
            None => (WatchViolationKind::Gap, missing(next)),
        }
    };

    for (i, item) in s.received.iter().enumerate() {
        if let Some(j) = ended {
            return Err(fail(
                WatchViolationKind::AfterCancel,
                Some(i),
                format!("{item:?} received after the watch ended at item {j}"),
            ));
        }
        let e = match item {
            Received::Event(e) => e,
            Received::Progress { revision } => {
                if next < matching.len()
                    && committed.events[matching[next]].kv.mod_revision <= *revision
                {
                    let (kind, what) = late_or_missing(next, i);
                    return Err(fail(
                        kind,
                        Some(i),
                        format!("progress notification at revision {revision}, {what}"),
                    ));
                }
                if progress.is_none_or(|(r, _)| *revision > r) {
                    progress = Some((*revision, i));
                }
                continue;
            }
            Received::Compacted { .. } | Received::Canceled => {
                ended = Some(i);
                continue;
            }
        };
        events += 1;
        let rev = e.kv.mod_revision;
        let key = e.kv.key.as_slice();
        if !s.range.contains(key) {
            return Err(fail(
                WatchViolationKind::OutOfRange,
                Some(i),
                format!(
                    "event for a key outside the watched range: {}",
                    show_event(e)
                ),
            ));
        }
        if rev < s.start_revision {
            return Err(fail(
                WatchViolationKind::BeforeStart,
                Some(i),
                format!(
                    "event at revision {rev}, before the start revision {}: {}",
                    s.start_revision,
                    show_event(e)
                ),
            ));
        }
        if !seen.insert((rev, key.to_vec())) {
            return Err(fail(
                WatchViolationKind::Duplicate,
                Some(i),
                format!("event delivered twice: {}", show_event(e)),
            ));
        }
        if let Some((r, j)) = progress
            && rev <= r
        {
            return Err(fail(
                WatchViolationKind::OutOfOrder,
                Some(i),
                format!(
                    "event at revision {rev} after a progress notification at revision {r} (item {j}): {}",
                    show_event(e)
                ),
            ));
        }
        if let Some((r, _, j)) = last
            && rev < r
        {
            return Err(fail(
                WatchViolationKind::OutOfOrder,
                Some(i),
                format!(
                    "event at revision {rev} after one at revision {r} (item {j}): {}",
                    show_event(e)
                ),
            ));
        }
        if rev < committed.since {
            // Before what is known: order and uniqueness only.
            continue;
        }
        let Some(&p) = index.get(&(rev, key)) else {
            return Err(fail(
                WatchViolationKind::NotCommitted,
                Some(i),
                format!("event not in the committed history: {}", show_event(e)),
            ));
        };
        let c = &committed.events[p];
        if let Some(why) = differs(c, e) {
            return Err(fail(
                WatchViolationKind::NotCommitted,
                Some(i),
                format!(
                    "event differs from the committed one ({why}):\n    received  {}\n    committed {}",
                    show_event(e),
                    show_event(c)
                ),
            ));
        }
        if let Some((_, q, j)) = last
            && p < q
        {
            return Err(fail(
                WatchViolationKind::OutOfOrder,
                Some(i),
                format!(
                    "event committed before the one at item {j} in the same revision: {}",
                    show_event(e)
                ),
            ));
        }
        check_prev_kv(s, &priors[p], e)
            .map_err(|d| fail(WatchViolationKind::WrongPrevKv, Some(i), d))?;
        let k = matching
            .binary_search(&p)
            .expect("a committed event in range at or after the start matches");
        if k > next {
            let (kind, what) = late_or_missing(next, i);
            return Err(fail(
                kind,
                Some(i),
                format!("{what} before {}", show_event(e)),
            ));
        }
        next = k + 1;
        last = Some((rev, p, i));
    }
    // Atomic: the last revision delivered is delivered whole.
    if let Some((r, _, j)) = last
        && next < matching.len()
        && committed.events[matching[next]].kv.mod_revision == r
    {
        return Err(fail(
            WatchViolationKind::Gap,
            Some(j),
            format!("revision {r} delivered partially: {}", missing(next)),
        ));
    }
    Ok(events)
}

fn check_prev_kv(s: &Stream, prior: &Prior, e: &Event) -> Result<(), String> {
    if !s.prev_kv {
        return match &e.prev_kv {
            None => Ok(()),
            Some(p) => Err(format!(
                "prev_kv {} sent though not requested: {}",
                show_kv(p),
                show_event(e)
            )),
        };
    }
    let expected = match prior {
        Prior::Unknown => return Ok(()),
        Prior::Absent => None,
        Prior::Present(kv) => Some(kv),
    };
    if e.prev_kv.as_ref() == expected {
        return Ok(());
    }
    Err(format!(
        "wrong prev_kv for {}:\n    received {}\n    expected {}",
        show_event(e),
        e.prev_kv.as_ref().map_or("<none>".to_string(), show_kv),
        expected.map_or("<none> (key absent before)".to_string(), show_kv)
    ))
}

/// Why `e` is not the committed event `c` (same revision and key).
fn differs(c: &Event, e: &Event) -> Option<&'static str> {
    if c.kind != e.kind {
        return Some("kind");
    }
    if c.kind == EventKind::Delete {
        return None;
    }
    let (a, b) = (&c.kv, &e.kv);
    if a.value != b.value {
        Some("value")
    } else if a.create_revision != b.create_revision {
        Some("create_revision")
    } else if a.version != b.version {
        Some("version")
    } else if a.lease != b.lease {
        Some("lease")
    } else {
        None
    }
}

// === impl Committed ===

impl Committed {
    /// The complete history: every committed event from revision 1.
    pub fn new(events: Vec<Event>) -> Committed {
        Committed { events, since: 1 }
    }

    /// Events from revision `since` on; what came before is unknown.
    pub fn since(since: Revision, events: Vec<Event>) -> Committed {
        Committed { events, since }
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Checks the history against itself and returns, for each event, what
    /// the key held before it.
    fn replay(&self) -> Result<Vec<Prior>, WatchViolation> {
        let fail = |p: usize, detail: String| WatchViolation {
            kind: WatchViolationKind::CommittedInconsistent,
            stream: usize::MAX,
            at: Some(p),
            detail,
            watch: "the committed history".to_string(),
        };
        let complete = self.since <= 1;
        let mut state: HashMap<&[u8], Option<&KeyValue>> = HashMap::new();
        let mut seen: HashSet<(Revision, &[u8])> = HashSet::new();
        let mut priors = Vec::with_capacity(self.events.len());
        let mut last_rev = 0;
        for (p, e) in self.events.iter().enumerate() {
            let rev = e.kv.mod_revision;
            let key = e.kv.key.as_slice();
            if rev < last_rev || rev < self.since {
                return Err(fail(
                    p,
                    format!("event at revision {rev} out of order: {}", show_event(e)),
                ));
            }
            if !seen.insert((rev, key)) {
                return Err(fail(
                    p,
                    format!("two events for one key in one revision: {}", show_event(e)),
                ));
            }
            last_rev = rev;
            let prior = match state.get(key) {
                Some(Some(kv)) => Prior::Present((*kv).clone()),
                Some(None) => Prior::Absent,
                None if complete => Prior::Absent,
                None => match &e.prev_kv {
                    Some(kv) => Prior::Present(kv.clone()),
                    None => Prior::Unknown,
                },
            };
            match (&prior, &e.prev_kv) {
                (Prior::Present(kv), Some(given)) if kv != given => {
                    return Err(fail(
                        p,
                        format!(
                            "prev_kv {} is not the key's previous value {}",
                            show_kv(given),
                            show_kv(kv)
                        ),
                    ));
                }
                (Prior::Absent, Some(given)) => {
                    return Err(fail(
                        p,
                        format!(
                            "prev_kv {} but the key was absent: {}",
                            show_kv(given),
                            show_event(e)
                        ),
                    ));
                }
                _ => {}
            }
            if e.kind == EventKind::Delete && matches!(prior, Prior::Absent) {
                return Err(fail(
                    p,
                    format!("delete of an absent key: {}", show_event(e)),
                ));
            }
            if e.kind == EventKind::Put {
                let (version, create) = match &prior {
                    Prior::Present(kv) => (kv.version + 1, kv.create_revision),
                    Prior::Absent => (1, rev),
                    Prior::Unknown => (e.kv.version, e.kv.create_revision),
                };
                if e.kv.version != version || e.kv.create_revision != create {
                    return Err(fail(
                        p,
                        format!(
                            "put should have version {version} and create_revision {create}: {}",
                            show_event(e)
                        ),
                    ));
                }
            }
            state.insert(key, (e.kind == EventKind::Put).then_some(&e.kv));
            priors.push(prior);
        }
        Ok(priors)
    }
}

// === impl Event ===

impl Event {
    /// A put event; `lease` 0 and no `prev_kv`.
    pub fn put(
        revision: Revision,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        create_revision: Revision,
        version: i64,
    ) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                value: value.into(),
                create_revision,
                mod_revision: revision,
                version,
                lease: 0,
            },
            prev_kv: None,
        }
    }

    /// A delete event as etcd sends it: only key and mod revision set.
    pub fn delete(revision: Revision, key: impl Into<Vec<u8>>) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.into(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv: None,
        }
    }

    pub fn with_prev_kv(mut self, prev: Option<KeyValue>) -> Event {
        self.prev_kv = prev;
        self
    }

    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

// === impl WatchRange ===

impl WatchRange {
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            WatchRange::Key(k) => k == key,
            WatchRange::Prefix(p) => key.starts_with(p),
            WatchRange::Span { start, end } => {
                key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
            }
        }
    }
}

// === impl Stream ===

impl Stream {
    /// A stream on `range` from `start_revision`, nothing received yet.
    pub fn new(range: WatchRange, start_revision: Revision, prev_kv: bool) -> Stream {
        Stream {
            range,
            start_revision,
            prev_kv,
            received: Vec::new(),
        }
    }

    fn describe(&self) -> String {
        let r = match &self.range {
            WatchRange::Key(k) => format!("key {}", show(k)),
            WatchRange::Prefix(p) => format!("prefix {}", show(p)),
            WatchRange::Span { start, end } => format!("range [{}, {})", show(start), show(end)),
        };
        format!(
            "{r} from revision {}{}",
            self.start_revision,
            if self.prev_kv { ", prev_kv" } else { "" }
        )
    }
}

// === impl WatchViolation ===

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            WatchViolationKind::CommittedInconsistent => "inconsistent committed history",
            WatchViolationKind::OutOfOrder => "out of order",
            WatchViolationKind::Duplicate => "duplicate event",
            WatchViolationKind::Gap => "gap",
            WatchViolationKind::BeforeStart => "event before the start revision",
            WatchViolationKind::OutOfRange => "event outside the watched range",
            WatchViolationKind::NotCommitted => "event not as committed",
            WatchViolationKind::WrongPrevKv => "wrong prev_kv",
            WatchViolationKind::AfterCancel => "event after cancel",
        };
        if self.kind == WatchViolationKind::CommittedInconsistent {
            write!(f, "{what}")?;
        } else {
            write!(f, "{what}: watch {} ({})", self.stream, self.watch)?;
        }
        if let Some(i) = self.at {
            write!(f, " at item {i}")?;
        }
        writeln!(f)?;
        writeln!(f, "    {}", self.detail)
    }
}

impl std::error::Error for WatchViolation {}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn show_kv(kv: &KeyValue) -> String {
    format!(
        "{}={} (create {}, mod {}, version {}{})",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        if kv.lease != 0 {
            format!(", lease {:x}", kv.lease)
        } else {
            String::new()
        }
    )
}

fn show_event(e: &Event) -> String {
    match e.kind {
        EventKind::Put => format!("rev {} PUT {}", e.kv.mod_revision, show_kv(&e.kv)),
        EventKind::Delete => format!("rev {} DELETE {}", e.kv.mod_revision, show(&e.kv.key)),
    }
}
