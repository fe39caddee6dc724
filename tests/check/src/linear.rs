//! Linearizability of etcd client histories.
//!
//! # What is checked
//!
//! A history is linearizable (Herlihy & Wing 1990, "Linearizability: a
//! correctness condition for concurrent objects") if its ops can be put in
//! one order that respects real time (an op that completed before another was
//! invoked comes first) and in which every op's returned values are what
//! etcd's sequential specification gives. Ops that completed `Ok` must be in
//! the order; `Failed` ops are left out; `Unknown` ops may be in it, anywhere
//! after their invocation, or left out.
//!
//! The specification, per key: a put sets the value and the key's mod
//! revision to the put's revision (and attaches or detaches a lease); a get
//! returns the value and mod revision; a delete of an existing key returns 1
//! and makes it absent, of an absent key returns 0; a compare-and-swap
//! compares the mod revision or value and then puts or reads. Leases: a grant
//! needs the ID free, a revoke or expiry needs it alive and deletes every key
//! attached to it in one revision. Revisions: one global counter; each op's
//! header revision is the counter after it; a write that changes something
//! bumps it by exactly one and every other op leaves it alone.
//!
//! # How: partitions plus a revision check
//!
//! The search is Wing & Gong's (1993) depth-first search for a linearization,
//! with Lowe's memoization of (set of linearized ops, model state) pairs
//! (Lowe 2017, "Testing for linearizability"): a pair already explored is
//! never explored again. That search is exponential in the number of
//! concurrent ops, so the history is cut into partitions that are checked
//! independently — P-compositionality (Horn & Kroening 2015, "Faster
//! linearizability checking via P-compositionality"): a history of an object
//! made of independent parts is linearizable iff each part's sub-history is.
//!
//! Keys are independent except for two things, handled so that a reported
//! violation is always a real one (the checker is sound; see "not checked"
//! for where it is incomplete):
//!
//! - **Leases** tie keys together (a revoke deletes several). Keys ever put
//!   with a lease are in the same partition as that lease and its grant,
//!   revoke and expiry ops (union-find), so a partition's model holds
//!   everything a revoke touches — while that partition has at most
//!   [`Config::lease_group_keys_max`] keys. Past that (a lease shared by many
//!   keys would merge them all into one slow partition), the lease's ops are
//!   *copied* into the partition of each of its keys, whose model then sees
//!   the revoke delete just that key. Still sound: projecting a global
//!   linearization onto such a partition gives a valid sequence for it (the
//!   revoke deletes the key there exactly when it did globally, and a revoke
//!   that deleted something elsewhere only raised the revision, which the
//!   partition's floor tolerates). What is lost is that the copies must sit
//!   at one point: the atomicity of a revoke across keys is then only
//!   checked through revisions.
//! - **The global revision**. Each partition's model keeps a *floor*: the
//!   largest revision the global counter is known to have reached at that
//!   point. Projecting a global linearization onto a partition keeps every
//!   constraint the partition model checks true — writes in the partition
//!   get revisions above the floor, reads see at least the floor, a read's
//!   mod revision is the last write's revision — so a partition that has no
//!   linearization proves the whole history has none. Across partitions,
//!   `revision.rs` checks what projections lose: every write that changed
//!   something has a revision no other write has; header revisions never go
//!   back in real time (if `a` completed before `b` was invoked,
//!   `rev(a) <= rev(b)`, strictly if `b` wrote); a read's mod revision is
//!   not another key's write revision.
//!
//! Lease expiry: the checker never expires a lease by itself (letting any
//! lease vanish at any time would excuse every lost leased key). The feeder
//! records an [`Op::LeaseExpire`]: `Ok(Ret::Done)` when it saw the lease
//! gone within a window, or `Unknown`, invoked at the earliest moment the
//! lease could have expired, to allow an expiry at any later point.
//!
//! Unknown ops return no revision, so the model gives an unknown write's
//! mod revision as "unknown" (fixed by the first read that shows it) and
//! does not raise the floor for it.
//!
//! A partition whose search exceeds [`Config::states_max`] is reported as a
//! [`ViolationKind::Inconclusive`] error, never as a pass. The search's
//! memo and pruning are described in `linear/search.rs`; each rule only
//! skips configurations dominated by one already or still being explored.
//!
//! # Not checked
//!
//! - Jointly satisfying all partitions with *one* revision order: each
//!   partition and the real-time revision check are necessary conditions,
//!   not together sufficient (two partitions could each need an order of
//!   concurrent writes that conflicts with the other's revisions). Dense
//!   revisions (no revision skipped) are not checked either: unknown writes
//!   and lease expiries make gaps legitimate.
//! - Why an op `Failed`: failed ops are dropped, so a server that refuses
//!   a valid request is not caught here.
//! - Lease TTLs: expiry happens only where a [`Op::LeaseExpire`] says.
//! - Serializable reads: feed only linearizable reads.
//! - create_revision and version are not modelled.
//! - Multi-key txns: the compare-and-swap here is on one key.
//! - Cost: the search is exponential in the worst case. Many unknown writes
//!   on a few hot keys (hundreds in one partition) can exhaust the budget;
//!   the result is then `Inconclusive`, not a pass.

mod history;
mod model;
mod revision;
mod search;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use history::show;
pub use history::{
    ClientId, Compare, Entry, History, LeaseId, Op, OpId, Outcome, Ret, Revision, Time,
};
use model::{CasRet, Cmp, KeyState, Kind, PartOp, State, UNKNOWN_REVISION};
use search::Found;

/// Limits on the search.
#[derive(Clone, Debug)]
pub struct Config {
    /// A lease and the keys it is attached to are checked as one partition
    /// while that partition has at most this many keys; past that, the
    /// lease's grant, revoke and expiry ops are copied into the partition of
    /// each of its keys instead (sound, but a revoke is then not required to
    /// happen at one point for all its keys; see the module doc).
    pub lease_group_keys_max: usize,
    /// Distinct (linearized set, state) pairs one partition may visit before
    /// its verdict is "inconclusive". Each costs about 100–200 bytes.
    pub states_max: u64,
}

/// What a passing check looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub ops: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub partitions: usize,
    /// Ops in the largest partition.
    pub largest_partition: usize,
    /// (linearized set, state) pairs visited, over all partitions.
    pub states: u64,
}

/// Why a history is not (shown to be) linearizable.
#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    /// The keys (and leases) of the failing partition, or the key of the
    /// ops involved.
    pub partition: String,
    /// Ops in the failing partition (0 for the global revision checks).
    pub partition_ops: usize,
    /// What went wrong, several lines.
    pub detail: String,
    /// The ops involved.
    pub ops: Vec<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViolationKind {
    /// No order of a partition's ops explains what they returned.
    NotLinearizable,
    /// Two writes got the same revision.
    RevisionReused,
    /// A revision lower than one already returned, in real time.
    RevisionWentBack,
    /// The search budget ran out: neither pass nor fail.
    Inconclusive,
}

/// One partition being built.
#[derive(Default)]
struct Part {
    keys: Vec<Vec<u8>>,
    key_index: HashMap<Vec<u8>, usize>,
    leases: Vec<LeaseId>,
    lease_index: HashMap<LeaseId, usize>,
    values: Vec<Vec<u8>>,
    value_index: HashMap<Vec<u8>, u32>,
    ops: Vec<PartOp>,
}

/// Union-find over keys and leases.
struct Groups {
    parent: Vec<usize>,
    /// Keys in the set, at its root.
    keys: Vec<usize>,
    node: HashMap<Node, usize>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    Key(Vec<u8>),
    Lease(LeaseId),
}

/// Checks `h` with the default [`Config`].
pub fn check(h: &History) -> Result<Report, Violation> {
    check_with(h, &Config::default())
}

/// Checks `h`: `Ok` only if every partition was shown linearizable and the
/// global revision checks hold; otherwise the violation in the smallest
/// failing partition (or, if none failed, an inconclusive one).
pub fn check_with(h: &History, config: &Config) -> Result<Report, Violation> {
    let entries = h.entries();
    let mut report = Report {
        ops: entries.len(),
        ..Report::default()
    };
    for e in entries {
        match e.outcome() {
            Outcome::Ok(_) => report.ok += 1,
            Outcome::Failed => report.failed += 1,
            Outcome::Unknown => report.unknown += 1,
        }
    }
    revision::check(h)?;

    let parts = partition(h, config);
    report.partitions = parts.len();
    let mut failures: Vec<Violation> = Vec::new();
    let mut inconclusive: Vec<Violation> = Vec::new();
    for mut part in parts {
        report.largest_partition = report.largest_partition.max(part.ops.len());
        let init = part.initial_state(h);
        match search::search(&part.ops, init, config.states_max) {
            Found::Linearizable { states } => report.states += states,
            Found::Inconclusive { states } => {
                report.states += states;
                inconclusive.push(Violation {
                    kind: ViolationKind::Inconclusive,
                    partition: part.name(),
                    partition_ops: part.ops.len(),
                    detail: format!(
                        "gave up after {states} states (Config::states_max); too many concurrent or unknown ops in one partition"
                    ),
                    ops: Vec::new(),
                });
            }
            Found::Violation {
                states,
                prefix_len,
                prefix_tail,
                state,
                stuck,
            } => {
                report.states += states;
                failures.push(part.violation(entries, prefix_len, &prefix_tail, &state, &stuck));
            }
        }
    }
    let worst = failures
        .into_iter()
        .min_by_key(|v| v.partition_ops)
        .or_else(|| inconclusive.into_iter().min_by_key(|v| v.partition_ops));
    match worst {
        Some(v) => Err(v),
        None => Ok(report),
    }
}

fn partition(h: &History, config: &Config) -> Vec<Part> {
    let mut groups = Groups {
        parent: Vec::new(),
        keys: Vec::new(),
        node: HashMap::new(),
    };
    let relevant = |e: &&Entry| match e.outcome() {
        Outcome::Failed => false,
        // An unknown read changes nothing and constrains nothing.
        Outcome::Unknown => !matches!(e.op, Op::Get { .. }),
        Outcome::Ok(_) => true,
    };
    // Which keys each lease is ever attached to.
    let mut attached: BTreeMap<LeaseId, Vec<usize>> = BTreeMap::new();
    for e in h.entries().iter().filter(relevant) {
        let k = e.op.key().map(|k| groups.find_node(Node::Key(k.to_vec())));
        let l = e.op.lease();
        if let Some(l) = l {
            groups.find_node(Node::Lease(l));
        }
        let keys = l.map(|l| attached.entry(l).or_default());
        if let (Some(k), Some(keys)) = (k, keys)
            && !keys.contains(&k)
        {
            keys.push(k);
        }
    }
    // A lease joins its keys' partition while that stays small; otherwise
    // its ops are copied into each of its keys' partitions.
    let mut copied: HashMap<LeaseId, Vec<usize>> = HashMap::new();
    for (l, keys) in &attached {
        let ln = groups.node[&Node::Lease(*l)];
        let mut roots: Vec<usize> = keys.iter().map(|&k| groups.root(k)).collect();
        roots.push(groups.root(ln));
        roots.sort_unstable();
        roots.dedup();
        let total: usize = roots.iter().map(|&r| groups.keys[r]).sum();
        if total <= config.lease_group_keys_max {
            for &r in &roots[1..] {
                groups.union(roots[0], r);
            }
        } else {
            copied.insert(*l, keys.clone());
        }
    }
    let known: HashSet<Revision> = h.entries().iter().filter_map(revision::written).collect();
    let mut by_root: BTreeMap<usize, Part> = BTreeMap::new();
    for e in h.entries().iter().filter(relevant) {
        let roots: Vec<usize> = match (e.op.key(), e.op.lease()) {
            (Some(k), _) => vec![groups.root(groups.node[&Node::Key(k.to_vec())])],
            (None, Some(l)) => match copied.get(&l) {
                Some(keys) => {
                    let mut r: Vec<usize> = keys.iter().map(|&k| groups.root(k)).collect();
                    r.sort_unstable();
                    r.dedup();
                    r
                }
                None => vec![groups.root(groups.node[&Node::Lease(l)])],
            },
            (None, None) => unreachable!("every op names a key or a lease"),
        };
        for r in roots {
            let part = by_root.entry(r).or_default();
            let op = part.intern(e, &known);
            part.ops.push(op);
        }
    }
    by_root
        .into_values()
        .map(|mut p| {
            p.ops.sort_by_key(|o| (o.invoke, o.entry));
            p
        })
        .collect()
}

// === impl Config ===

impl Default for Config {
    fn default() -> Config {
        Config {
            lease_group_keys_max: 8,
            states_max: 500_000,
        }
    }
}

// === impl Groups ===

impl Groups {
    fn find_node(&mut self, n: Node) -> usize {
        let next = self.parent.len();
        let is_key = matches!(n, Node::Key(_));
        let i = *self.node.entry(n).or_insert(next);
        if i == next {
            self.parent.push(next);
            self.keys.push(usize::from(is_key));
        }
        i
    }

    fn root(&self, mut i: usize) -> usize {
        while self.parent[i] != i {
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            // The smaller index stays root, so roots are deterministic.
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo;
            self.keys[lo] += self.keys[hi];
        }
    }
}

// === impl Part ===

impl Part {
    fn key(&mut self, k: &[u8]) -> usize {
        if let Some(&i) = self.key_index.get(k) {
            return i;
        }
        self.key_index.insert(k.to_vec(), self.keys.len());
        self.keys.push(k.to_vec());
        self.keys.len() - 1
    }

    fn lease(&mut self, l: LeaseId) -> usize {
        *self.lease_index.entry(l).or_insert_with(|| {
            self.leases.push(l);
            self.leases.len() - 1
        })
    }

    fn value(&mut self, v: &[u8]) -> u32 {
        if let Some(&i) = self.value_index.get(v) {
            return i;
        }
        let i = u32::try_from(self.values.len()).expect("fewer than 2^32 values");
        self.values.push(v.to_vec());
        self.value_index.insert(v.to_vec(), i);
        i
    }

    fn intern(&mut self, e: &Entry, known: &HashSet<Revision>) -> PartOp {
        let ret = e.ret();
        let kind = match &e.op {
            Op::Put { key, value, lease } => Kind::Put {
                key: self.key(key),
                value: self.value(value),
                lease: lease.map(|l| self.lease(l)),
                revision: ret.and_then(Ret::revision),
            },
            Op::Get { key } => {
                let Some(Ret::Get {
                    value,
                    mod_revision,
                    revision,
                }) = ret
                else {
                    unreachable!("unknown gets are dropped; Ret kind checked on complete")
                };
                Kind::Get {
                    key: self.key(key),
                    value: value.as_deref().map(|v| self.value(v)),
                    mod_revision: *mod_revision,
                    revision: *revision,
                }
            }
            Op::Delete { key } => Kind::Delete {
                key: self.key(key),
                ret: match ret {
                    Some(Ret::Delete { deleted, revision }) => Some((*deleted, *revision)),
                    _ => None,
                },
            },
            Op::Cas {
                key,
                compare,
                value,
            } => Kind::Cas {
                key: self.key(key),
                compare: match compare {
                    Compare::ModRevision(r) => Cmp::ModRevision {
                        r: *r,
                        unknown_may_match: !known.contains(r),
                    },
                    Compare::Value(v) => Cmp::Value(self.value(v)),
                },
                value: self.value(value),
                ret: match ret {
                    Some(Ret::Cas {
                        succeeded,
                        revision,
                        value,
                        mod_revision,
                    }) => Some(CasRet {
                        succeeded: *succeeded,
                        revision: *revision,
                        value: value.as_deref().map(|v| self.value(v)),
                        mod_revision: *mod_revision,
                    }),
                    _ => None,
                },
            },
            Op::LeaseGrant { id, .. } => Kind::Grant {
                lease: self.lease(*id),
                revision: ret.and_then(Ret::revision),
            },
            Op::LeaseRevoke { id } | Op::LeaseExpire { id } => Kind::Revoke {
                lease: self.lease(*id),
                revision: ret.and_then(Ret::revision),
            },
        };
        PartOp {
            entry: e.id.0,
            invoke: e.invoke,
            deadline: e.deadline(),
            required: ret.is_some(),
            kind,
        }
    }

    fn initial_state(&mut self, h: &History) -> State {
        let mut keys = vec![KeyState::ABSENT; self.keys.len()];
        for (k, v, r) in h.initial() {
            if let Some(&i) = self.key_index.get(k) {
                let value = Some(self.value(v));
                keys[i] = KeyState {
                    value,
                    mod_revision: *r,
                    lease: None,
                };
            }
        }
        // A lease the history never grants was granted before it began.
        let mut alive = vec![true; self.leases.len()];
        for op in &self.ops {
            if let Kind::Grant { lease, .. } = op.kind {
                alive[lease] = false;
            }
        }
        State {
            keys,
            alive,
            floor: h.initial_revision(),
        }
    }

    fn name(&self) -> String {
        let mut parts: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("key {}", show(k)))
            .collect();
        parts.extend(self.leases.iter().map(|l| format!("lease {l:x}")));
        parts.join(", ")
    }

    fn describe(&self, s: &State) -> String {
        let mut out = Vec::new();
        for (k, ks) in self.keys.iter().zip(&s.keys) {
            let v = match ks.value {
                None => "absent".to_string(),
                Some(v) => {
                    let m = if ks.mod_revision == UNKNOWN_REVISION {
                        "unknown (written by an op with unknown outcome)".to_string()
                    } else {
                        ks.mod_revision.to_string()
                    };
                    let l = ks
                        .lease
                        .map(|l| format!(", lease {:x}", self.leases[l]))
                        .unwrap_or_default();
                    format!("{} (mod_revision {m}{l})", show(&self.values[v as usize]))
                }
            };
            out.push(format!("    key {} = {v}", show(k)));
        }
        for (l, alive) in self.leases.iter().zip(&s.alive) {
            let a = if *alive { "alive" } else { "not alive" };
            out.push(format!("    lease {l:x} {a}"));
        }
        out.push(format!("    store revision >= {}", s.floor));
        out.join("\n")
    }

    fn violation(
        &self,
        entries: &[Entry],
        prefix_len: usize,
        prefix_tail: &[usize],
        state: &State,
        stuck: &[(usize, &'static str)],
    ) -> Violation {
        let mut d = String::new();
        d.push_str(&format!(
            "longest linearizable prefix: {} of {} ops{}\n",
            prefix_len,
            self.ops.len(),
            if prefix_len > prefix_tail.len() {
                format!(" (last {} shown)", prefix_tail.len())
            } else {
                String::new()
            }
        ));
        let mut ops = Vec::new();
        for &i in prefix_tail {
            let e = &entries[self.ops[i].entry];
            d.push_str(&format!("    {e}\n"));
            ops.push(e.clone());
        }
        d.push_str("state after it:\n");
        d.push_str(&self.describe(state));
        d.push_str("\nnone of the ops that could go next fits:\n");
        let mut shown = 0;
        for &(i, why) in stuck {
            let e = &entries[self.ops[i].entry];
            d.push_str(&format!("    {e}\n        -> {why}\n"));
            ops.push(e.clone());
            shown += 1;
        }
        if shown == 0 {
            d.push_str("    (every remaining op leads to a dead end further on)\n");
        }
        Violation {
            kind: ViolationKind::NotLinearizable,
            partition: self.name(),
            partition_ops: self.ops.len(),
            detail: d,
            ops,
        }
    }
}

// === impl Violation ===

impl Violation {
    pub(crate) fn new(
        kind: ViolationKind,
        key: Option<&[u8]>,
        detail: String,
        ops: Vec<Entry>,
    ) -> Violation {
        Violation {
            kind,
            partition: key.map(|k| format!("key {}", show(k))).unwrap_or_default(),
            partition_ops: 0,
            detail,
            ops,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ViolationKind::NotLinearizable => "not linearizable",
            ViolationKind::RevisionReused => "revision reused",
            ViolationKind::RevisionWentBack => "revision went back in real time",
            ViolationKind::Inconclusive => "inconclusive",
        };
        write!(f, "{what}")?;
        if !self.partition.is_empty() {
            write!(f, ": {}", self.partition)?;
        }
        if self.partition_ops > 0 {
            write!(f, " ({} ops in the partition)", self.partition_ops)?;
        }
        writeln!(f)?;
        writeln!(f, "{}", self.detail.trim_end())?;
        if self.kind != ViolationKind::NotLinearizable && !self.ops.is_empty() {
            writeln!(f, "ops:")?;
            for e in &self.ops {
                writeln!(f, "    {e}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}
