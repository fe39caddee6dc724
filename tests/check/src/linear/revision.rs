//! Checks on the global revision that per-key partitions cannot see.
//!
//! etcd's revision is one counter for the whole store, bumped once by each
//! write that changes something. In any linearization the counter never goes
//! down, so for two ops `a` and `b` that returned header revisions, if `a`
//! completed before `b` was invoked then `rev(a) <= rev(b)`, and
//! `rev(a) < rev(b)` when `b` wrote (it bumped the counter after `a`'s point).
//! Two writes never share a revision (this crate's txns touch one key), and a
//! read's `mod_revision` is the revision of the write it shows, so it cannot
//! be the revision of a write on another key.

use std::collections::HashMap;

use super::history::{Entry, History, Ret, Revision};
use super::{Violation, ViolationKind};

/// The revision a write of `e` produced, if `e` is a write that completed Ok
/// and changed the store.
pub(crate) fn written(e: &Entry) -> Option<Revision> {
    match e.ret()? {
        Ret::Put { revision } => Some(*revision),
        Ret::Delete { deleted, revision } if *deleted > 0 => Some(*revision),
        Ret::Cas {
            succeeded: true,
            revision,
            ..
        } => Some(*revision),
        _ => None,
    }
}

/// The mod revision a read of `e` showed, for a key that exists.
fn read_mod_revision(e: &Entry) -> Option<Revision> {
    match e.ret()? {
        Ret::Get {
            value: Some(_),
            mod_revision,
            ..
        }
        | Ret::Cas {
            succeeded: false,
            value: Some(_),
            mod_revision,
            ..
        } => Some(*mod_revision),
        _ => None,
    }
}

pub(crate) fn check(h: &History) -> Result<(), Violation> {
    let entries = h.entries();
    let floor = h.initial_revision();

    // Unique write revisions, above the initial revision.
    let mut writer: HashMap<Revision, usize> = HashMap::new();
    for e in entries {
        let Some(r) = written(e) else { continue };
        if r <= floor {
            return Err(Violation::new(
                ViolationKind::RevisionWentBack,
                e.op.key(),
                format!("a write got revision {r}, not above the initial revision {floor}"),
                vec![e.clone()],
            ));
        }
        if let Some(&other) = writer.get(&r) {
            return Err(Violation::new(
                ViolationKind::RevisionReused,
                e.op.key(),
                format!("two writes both got revision {r}"),
                vec![entries[other].clone(), e.clone()],
            ));
        }
        writer.insert(r, e.id.0);
    }
    for e in entries {
        let Some(m) = read_mod_revision(e) else {
            continue;
        };
        let Some(&w) = writer.get(&m) else { continue };
        if entries[w].op.key() != e.op.key() {
            return Err(Violation::new(
                ViolationKind::RevisionReused,
                e.op.key(),
                format!(
                    "a read shows mod_revision {m}, which is the revision of a write to another key"
                ),
                vec![entries[w].clone(), e.clone()],
            ));
        }
    }

    // Header revisions never go back in real time.
    let mut done: Vec<(u64, Revision, usize)> = entries
        .iter()
        .filter_map(|e| {
            let r = e.ret()?.revision()?;
            Some((e.complete?, r, e.id.0))
        })
        .collect();
    done.sort_unstable();
    let mut max_so_far: Vec<(Revision, usize)> = Vec::with_capacity(done.len());
    for &(_, r, i) in &done {
        let best = match max_so_far.last() {
            Some(&(m, j)) if m >= r => (m, j),
            _ => (r, i),
        };
        max_so_far.push(best);
    }
    for e in entries {
        let Some(r) = e.ret().and_then(Ret::revision) else {
            continue;
        };
        if r < floor {
            return Err(Violation::new(
                ViolationKind::RevisionWentBack,
                e.op.key(),
                format!("header revision {r} below the initial revision {floor}"),
                vec![e.clone()],
            ));
        }
        let before = done.partition_point(|&(c, _, _)| c < e.invoke);
        let Some(&(m, a)) = before.checked_sub(1).map(|k| &max_so_far[k]) else {
            continue;
        };
        let wrote = written(e).is_some();
        if r < m || (wrote && r == m) {
            let what = if wrote {
                format!(
                    "a write got revision {r}, not above revision {m} returned by an op that completed before it was invoked"
                )
            } else {
                format!(
                    "header revision {r} is below revision {m} returned by an op that completed before this one was invoked"
                )
            };
            return Err(Violation::new(
                ViolationKind::RevisionWentBack,
                e.op.key(),
                what,
                vec![entries[a].clone(), e.clone()],
            ));
        }
    }
    Ok(())
}
