//! The watch checker: correct streams pass, each anomaly is caught.

use std::collections::HashMap;

use cairn_check::watch::{
    Committed, Event, KeyValue, Received, Stream, WatchRange, WatchViolationKind, check,
};

/// rev 2 put a=1; rev 3 put b=1; rev 4 put a=2; rev 5 delete a;
/// rev 6 txn { put a=3, put c=1 }; rev 7 put b=2; rev 8 put ab=1.
fn committed() -> Vec<Event> {
    vec![
        Event::put(2, "a", "1", 2, 1),
        Event::put(3, "b", "1", 3, 1),
        Event::put(4, "a", "2", 2, 2),
        Event::delete(5, "a"),
        Event::put(6, "a", "3", 6, 1),
        Event::put(6, "c", "1", 6, 1),
        Event::put(7, "b", "2", 3, 2),
        Event::put(8, "ab", "1", 8, 1),
    ]
}

/// What a correct server sends for `range` from `start`.
fn correct(range: WatchRange, start: i64, prev_kv: bool) -> Stream {
    let mut state: HashMap<Vec<u8>, KeyValue> = HashMap::new();
    let mut s = Stream::new(range, start, prev_kv);
    for e in committed() {
        let prev = state.get(&e.kv.key).cloned();
        match e.kind {
            cairn_check::watch::EventKind::Put => state.insert(e.kv.key.clone(), e.kv.clone()),
            cairn_check::watch::EventKind::Delete => state.remove(&e.kv.key),
        };
        if e.revision() >= start && s.range.contains(&e.kv.key) {
            let prev = if prev_kv { prev } else { None };
            s.received.push(Received::Event(e.with_prev_kv(prev)));
        }
    }
    s
}

fn all() -> WatchRange {
    WatchRange::Span {
        start: b"\0".to_vec(),
        end: Vec::new(),
    }
}

#[track_caller]
fn passes(streams: &[Stream]) {
    if let Err(v) = check(&Committed::new(committed()), streams) {
        panic!("expected to pass, got:\n{v}");
    }
}

#[track_caller]
fn fails(stream: Stream, kind: WatchViolationKind) {
    match check(&Committed::new(committed()), &[stream]) {
        Ok(r) => panic!("expected {kind:?}, passed: {r:?}"),
        Err(v) => {
            println!("{v}");
            assert_eq!(v.kind, kind, "{v}");
        }
    }
}

fn event_mut(s: &mut Stream, i: usize) -> &mut Event {
    match &mut s.received[i] {
        Received::Event(e) => e,
        other => panic!("item {i} is {other:?}"),
    }
}

// === streams that must pass ===

#[test]
fn correct_streams_pass() {
    let streams = [
        correct(all(), 1, true),
        correct(all(), 1, false),
        correct(WatchRange::Key(b"a".to_vec()), 1, true),
        correct(WatchRange::Prefix(b"a".to_vec()), 3, true),
        correct(WatchRange::Key(b"b".to_vec()), 5, true),
        correct(all(), 6, true),
        correct(WatchRange::Key(b"zzz".to_vec()), 1, true),
    ];
    passes(&streams);
    let r = check(&Committed::new(committed()), &streams).unwrap();
    assert_eq!(r.streams, 7);
}

#[test]
fn stopped_early_with_progress_and_compaction() {
    let mut s = correct(all(), 1, true);
    s.received.truncate(4); // through revision 5
    s.received.push(Received::Progress { revision: 5 });
    s.received.push(Received::Compacted {
        compact_revision: 7,
    });
    passes(&[s]);
}

#[test]
fn partial_committed_history() {
    // Only revisions 4.. are known; the first event of each key there carries
    // its prev_kv (or not), and earlier events are not checked.
    let events: Vec<Event> = committed()
        .into_iter()
        .filter(|e| e.revision() >= 4)
        .collect();
    let c = Committed::since(4, events);
    let s = correct(all(), 4, true);
    check(&c, &[s]).unwrap();
}

// === streams that must fail ===

#[test]
fn watch_gap() {
    let mut s = correct(all(), 1, true);
    s.received.remove(2);
    fails(s, WatchViolationKind::Gap);
}

#[test]
fn watch_gap_revealed_by_progress() {
    let mut s = correct(all(), 1, true);
    s.received.truncate(3);
    s.received.push(Received::Progress { revision: 6 });
    fails(s, WatchViolationKind::Gap);
}

#[test]
fn watch_revision_split() {
    // Stops after a=3 at revision 6 without c=1 of the same revision.
    let mut s = correct(all(), 1, true);
    s.received.truncate(5);
    fails(s, WatchViolationKind::Gap);
}

#[test]
fn watch_duplicate() {
    let mut s = correct(all(), 1, true);
    let again = s.received[3].clone();
    s.received.insert(4, again);
    fails(s, WatchViolationKind::Duplicate);
}

#[test]
fn watch_out_of_order() {
    let mut s = correct(all(), 1, true);
    s.received.swap(1, 2);
    fails(s, WatchViolationKind::OutOfOrder);
}

#[test]
fn watch_out_of_order_within_a_revision() {
    let mut s = correct(all(), 1, true);
    s.received.swap(4, 5);
    fails(s, WatchViolationKind::OutOfOrder);
}

#[test]
fn watch_event_after_progress_at_its_revision() {
    let mut s = correct(all(), 1, true);
    s.received.insert(6, Received::Progress { revision: 7 });
    fails(s, WatchViolationKind::OutOfOrder);
}

#[test]
fn wrong_prev_kv() {
    let mut s = correct(all(), 1, true);
    event_mut(&mut s, 2).prev_kv.as_mut().unwrap().value = b"9".to_vec();
    fails(s, WatchViolationKind::WrongPrevKv);
}

#[test]
fn prev_kv_missing() {
    let mut s = correct(all(), 1, true);
    event_mut(&mut s, 3).prev_kv = None;
    fails(s, WatchViolationKind::WrongPrevKv);
}

#[test]
fn prev_kv_not_requested() {
    let mut s = correct(all(), 1, false);
    event_mut(&mut s, 2).prev_kv = Some(committed()[0].kv.clone());
    fails(s, WatchViolationKind::WrongPrevKv);
}

#[test]
fn event_before_start_revision() {
    let mut s = correct(all(), 4, true);
    s.received
        .insert(0, Received::Event(committed()[1].clone()));
    fails(s, WatchViolationKind::BeforeStart);
}

#[test]
fn event_outside_the_range() {
    let mut s = correct(WatchRange::Key(b"a".to_vec()), 1, false);
    s.received
        .insert(1, Received::Event(committed()[1].clone()));
    fails(s, WatchViolationKind::OutOfRange);
}

#[test]
fn event_with_another_value() {
    let mut s = correct(all(), 1, true);
    event_mut(&mut s, 6).kv.value = b"other".to_vec();
    fails(s, WatchViolationKind::NotCommitted);
}

#[test]
fn event_never_committed() {
    let mut s = correct(all(), 1, false);
    event_mut(&mut s, 0).kv.key = b"ghost".to_vec();
    fails(s, WatchViolationKind::NotCommitted);
}

#[test]
fn event_after_cancel() {
    let mut s = correct(all(), 1, false);
    s.received.insert(2, Received::Canceled);
    fails(s, WatchViolationKind::AfterCancel);
}

#[test]
fn inconsistent_committed_history_is_reported() {
    let mut events = committed();
    events[2].kv.version = 5;
    let v = check(&Committed::new(events), &[]).unwrap_err();
    assert_eq!(v.kind, WatchViolationKind::CommittedInconsistent, "{v}");
}
