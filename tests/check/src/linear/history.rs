//! What a client history is made of, and the builder that records one.

use std::fmt;

/// Who issued an operation. Only used in reports: the checker never assumes
/// that one client's operations are sequential (a client may pipeline).
pub type ClientId = u64;
/// Ticks or nanoseconds; only the order matters.
pub type Time = u64;
/// etcd's store revision.
pub type Revision = i64;
/// etcd's lease ID.
pub type LeaseId = i64;

/// Index of an operation in its [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub usize);

/// The guard of a compare-and-swap transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Compare {
    /// `mod_revision(key) == r`; a missing key has mod revision 0.
    ModRevision(Revision),
    /// `value(key) == v`; false for a missing key, as in etcd.
    Value(Vec<u8>),
}

/// One client request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `Put`; `lease` attaches the key to a lease (etcd: `--lease`), `None`
    /// detaches it.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// A linearizable (not serializable) single-key `Range`.
    Get { key: Vec<u8> },
    /// A single-key `DeleteRange`.
    Delete { key: Vec<u8> },
    /// `Txn { compare: [compare], success: [put(key, value)], failure: [get(key)] }`.
    Cas {
        key: Vec<u8>,
        compare: Compare,
        value: Vec<u8>,
    },
    /// `LeaseGrant` with an explicit ID.
    LeaseGrant { id: LeaseId, ttl_secs: i64 },
    /// `LeaseRevoke`: deletes every key attached to the lease, in one revision.
    LeaseRevoke { id: LeaseId },
    /// The server expired the lease (same effect as a revoke). The checker
    /// never expires a lease on its own: record this op, invoked at the
    /// earliest moment the lease could have expired, completed `Ok(Ret::Done)`
    /// when the test saw it gone, or `Unknown` if it may or may not have
    /// happened.
    LeaseExpire { id: LeaseId },
}

/// What an operation returned when it succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ret {
    /// `PutResponse.header.revision`.
    Put { revision: Revision },
    /// `value` is `None` (and `mod_revision` 0) when the key is absent;
    /// `revision` is the response header's.
    Get {
        value: Option<Vec<u8>>,
        mod_revision: Revision,
        revision: Revision,
    },
    /// `deleted` keys (0 or 1) and the header revision.
    Delete { deleted: u64, revision: Revision },
    /// `succeeded` and the header revision; when not succeeded, `value` and
    /// `mod_revision` are what the failure branch's get returned (ignored
    /// when succeeded).
    Cas {
        succeeded: bool,
        revision: Revision,
        value: Option<Vec<u8>>,
        mod_revision: Revision,
    },
    /// Header revision of a lease grant or revoke.
    Lease { revision: Revision },
    /// Nothing returned (a [`Op::LeaseExpire`] that was observed).
    Done,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect, between invocation and completion, and returned this.
    Ok(Ret),
    /// It definitely did not take effect (refused before proposing, or an
    /// error from apply such as "lease not found"). Not checked further.
    Failed,
    /// Timeout or lost connection: it may have taken effect at any moment
    /// after its invocation, with no upper bound, or never.
    Unknown,
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: OpId,
    pub client: ClientId,
    pub op: Op,
    pub invoke: Time,
    /// `None` while pending; only meaningful for `Ok` and `Failed`.
    pub complete: Option<Time>,
    /// `None` while pending: checked as [`Outcome::Unknown`].
    pub outcome: Option<Outcome>,
}

/// A client history, recorded as operations are invoked and completed.
///
/// ```
/// use cairn_check::{History, Op, Outcome, Ret};
/// let mut h = History::new();
/// let w = h.invoke(1, 10, Op::put("k", "v1"));
/// let r = h.invoke(2, 12, Op::get("k"));
/// h.complete(w, 20, Outcome::Ok(Ret::Put { revision: 2 }));
/// h.complete(r, 25, Outcome::Ok(Ret::get(Some("v1"), 2, 2)));
/// cairn_check::check(&h).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct History {
    entries: Vec<Entry>,
    initial: Vec<(Vec<u8>, Vec<u8>, Revision)>,
    initial_revision: Revision,
}

// === impl Op ===

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_with_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Op {
        Op::Get { key: key.into() }
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete { key: key.into() }
    }

    /// `if mod_revision(key) == expected { put(key, value) } else { get(key) }`.
    pub fn cas_mod_revision(
        key: impl Into<Vec<u8>>,
        expected: Revision,
        value: impl Into<Vec<u8>>,
    ) -> Op {
        Op::Cas {
            key: key.into(),
            compare: Compare::ModRevision(expected),
            value: value.into(),
        }
    }

    /// `if value(key) == expected { put(key, value) } else { get(key) }`.
    pub fn cas_value(
        key: impl Into<Vec<u8>>,
        expected: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Op {
        Op::Cas {
            key: key.into(),
            compare: Compare::Value(expected.into()),
            value: value.into(),
        }
    }

    pub fn lease_grant(id: LeaseId, ttl_secs: i64) -> Op {
        Op::LeaseGrant { id, ttl_secs }
    }

    pub fn lease_revoke(id: LeaseId) -> Op {
        Op::LeaseRevoke { id }
    }

    pub fn lease_expire(id: LeaseId) -> Op {
        Op::LeaseExpire { id }
    }

    /// The key this op reads or writes, if it names one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Delete { key } | Op::Cas { key, .. } => {
                Some(key)
            }
            Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } | Op::LeaseExpire { .. } => None,
        }
    }

    /// The lease this op names, if any.
    pub fn lease(&self) -> Option<LeaseId> {
        match self {
            Op::Put { lease, .. } => *lease,
            Op::LeaseGrant { id, .. } | Op::LeaseRevoke { id } | Op::LeaseExpire { id } => {
                Some(*id)
            }
            Op::Get { .. } | Op::Delete { .. } | Op::Cas { .. } => None,
        }
    }

    fn accepts(&self, ret: &Ret) -> bool {
        matches!(
            (self, ret),
            (Op::Put { .. }, Ret::Put { .. })
                | (Op::Get { .. }, Ret::Get { .. })
                | (Op::Delete { .. }, Ret::Delete { .. })
                | (Op::Cas { .. }, Ret::Cas { .. })
                | (Op::LeaseGrant { .. }, Ret::Lease { .. })
                | (Op::LeaseRevoke { .. }, Ret::Lease { .. })
                | (Op::LeaseExpire { .. }, Ret::Done)
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put {
                key,
                value,
                lease: None,
            } => write!(f, "put({}, {})", show(key), show(value)),
            Op::Put {
                key,
                value,
                lease: Some(l),
            } => write!(f, "put({}, {}, lease {l:x})", show(key), show(value)),
            Op::Get { key } => write!(f, "get({})", show(key)),
            Op::Delete { key } => write!(f, "delete({})", show(key)),
            Op::Cas {
                key,
                compare: Compare::ModRevision(r),
                value,
            } => write!(
                f,
                "cas({k}: if mod_revision == {r} then put {v} else get)",
                k = show(key),
                v = show(value)
            ),
            Op::Cas {
                key,
                compare: Compare::Value(e),
                value,
            } => write!(
                f,
                "cas({k}: if value == {e} then put {v} else get)",
                k = show(key),
                e = show(e),
                v = show(value)
            ),
            Op::LeaseGrant { id, ttl_secs } => write!(f, "lease_grant({id:x}, ttl {ttl_secs}s)"),
            Op::LeaseRevoke { id } => write!(f, "lease_revoke({id:x})"),
            Op::LeaseExpire { id } => write!(f, "lease_expire({id:x})"),
        }
    }
}

// === impl Ret ===

impl Ret {
    /// A get's result: `value` (None when absent), its mod revision and the
    /// header revision.
    pub fn get(
        value: Option<impl Into<Vec<u8>>>,
        mod_revision: Revision,
        revision: Revision,
    ) -> Ret {
        Ret::Get {
            value: value.map(Into::into),
            mod_revision,
            revision,
        }
    }

    /// A compare-and-swap that succeeded at `revision`.
    pub fn cas_succeeded(revision: Revision) -> Ret {
        Ret::Cas {
            succeeded: true,
            revision,
            value: None,
            mod_revision: 0,
        }
    }

    /// A compare-and-swap that failed; its failure branch read `value` at
    /// `mod_revision`; header revision `revision`.
    pub fn cas_failed(
        value: Option<impl Into<Vec<u8>>>,
        mod_revision: Revision,
        revision: Revision,
    ) -> Ret {
        Ret::Cas {
            succeeded: false,
            revision,
            value: value.map(Into::into),
            mod_revision,
        }
    }

    /// The header revision, if the op returned one.
    pub fn revision(&self) -> Option<Revision> {
        match self {
            Ret::Put { revision }
            | Ret::Get { revision, .. }
            | Ret::Delete { revision, .. }
            | Ret::Cas { revision, .. }
            | Ret::Lease { revision } => Some(*revision),
            Ret::Done => None,
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Put { revision } => write!(f, "revision {revision}"),
            Ret::Get {
                value,
                mod_revision,
                revision,
            } => write!(
                f,
                "{} mod_revision {mod_revision}, revision {revision}",
                show_opt(value)
            ),
            Ret::Delete { deleted, revision } => {
                write!(f, "deleted {deleted}, revision {revision}")
            }
            Ret::Cas {
                succeeded: true,
                revision,
                ..
            } => write!(f, "succeeded, revision {revision}"),
            Ret::Cas {
                succeeded: false,
                revision,
                value,
                mod_revision,
            } => write!(
                f,
                "failed, read {} mod_revision {mod_revision}, revision {revision}",
                show_opt(value)
            ),
            Ret::Lease { revision } => write!(f, "revision {revision}"),
            Ret::Done => write!(f, "done"),
        }
    }
}

// === impl Outcome ===

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(ret) => write!(f, "ok: {ret}"),
            Outcome::Failed => write!(f, "failed (not applied)"),
            Outcome::Unknown => write!(f, "unknown (may or may not have taken effect)"),
        }
    }
}

// === impl Entry ===

impl Entry {
    /// The outcome, a pending op counting as unknown.
    pub fn outcome(&self) -> &Outcome {
        self.outcome.as_ref().unwrap_or(&Outcome::Unknown)
    }

    /// The returned values, if the op completed `Ok`.
    pub fn ret(&self) -> Option<&Ret> {
        match self.outcome() {
            Outcome::Ok(ret) => Some(ret),
            Outcome::Failed | Outcome::Unknown => None,
        }
    }

    /// When the op's effect can no longer happen: its completion if it
    /// completed `Ok` or `Failed`, never if unknown.
    pub fn deadline(&self) -> Time {
        match (self.outcome(), self.complete) {
            (Outcome::Ok(_) | Outcome::Failed, Some(t)) => t,
            _ => Time::MAX,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match (self.outcome(), self.complete) {
            (Outcome::Unknown, _) | (_, None) => "…".to_string(),
            (_, Some(t)) => t.to_string(),
        };
        write!(
            f,
            "op {id} client {c} [{inv}..{end}] {op} -> {out}",
            id = self.id.0,
            c = self.client,
            inv = self.invoke,
            op = self.op,
            out = self.outcome()
        )
    }
}

// === impl History ===

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Records that `client` sent `op` at time `at`.
    pub fn invoke(&mut self, client: ClientId, at: Time, op: Op) -> OpId {
        let id = OpId(self.entries.len());
        self.entries.push(Entry {
            id,
            client,
            op,
            invoke: at,
            complete: None,
            outcome: None,
        });
        id
    }

    /// Records how `id` ended, at time `at`.
    ///
    /// Panics (a bug in the test feeding the history) if the op already
    /// completed, if `at` is before its invocation, or if `Ret` is not the
    /// kind of result `Op` returns.
    pub fn complete(&mut self, id: OpId, at: Time, outcome: Outcome) {
        let e = &mut self.entries[id.0];
        assert!(e.outcome.is_none(), "op {} completed twice", id.0);
        assert!(
            at >= e.invoke,
            "op {} completed at {at} before its invocation at {}",
            id.0,
            e.invoke
        );
        if let Outcome::Ok(ret) = &outcome {
            assert!(
                e.op.accepts(ret),
                "op {} ({}) cannot return {ret:?}",
                id.0,
                e.op
            );
        }
        e.complete = Some(at);
        e.outcome = Some(outcome);
    }

    /// Invokes and completes in one call.
    pub fn record(
        &mut self,
        client: ClientId,
        op: Op,
        invoke: Time,
        complete: Time,
        outcome: Outcome,
    ) -> OpId {
        let id = self.invoke(client, invoke, op);
        self.complete(id, complete, outcome);
        id
    }

    /// Declares that `key` held `value` at `mod_revision` before the history
    /// began (keys not declared are absent). Keys must be unique.
    pub fn with_initial(
        mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        mod_revision: Revision,
    ) -> History {
        self.initial_revision = self.initial_revision.max(mod_revision);
        self.initial.push((key.into(), value.into(), mod_revision));
        self
    }

    /// The store revision before the history began (default: the largest
    /// initial mod revision, or 0).
    pub fn with_initial_revision(mut self, revision: Revision) -> History {
        self.initial_revision = self.initial_revision.max(revision);
        self
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn initial(&self) -> &[(Vec<u8>, Vec<u8>, Revision)] {
        &self.initial
    }

    pub(crate) fn initial_revision(&self) -> Revision {
        self.initial_revision
    }
}

/// Bytes as a quoted string, lossy.
pub(crate) fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn show_opt(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(v) => show(v),
        None => "<none>".to_string(),
    }
}
