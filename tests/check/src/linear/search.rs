//! Wing & Gong's depth-first search for a linearization, with Lowe's
//! memoization of (set of linearized ops, model state) pairs.
//!
//! At each point, an op may be linearized next if it is not yet linearized
//! and was invoked no later than the earliest deadline among the required
//! (completed `Ok`) ops not yet linearized: anything invoked after that
//! deadline follows it in real time. Unknown ops have no deadline, so they
//! never constrain others and may be linearized at any later point or not at
//! all; the search succeeds once every required op is linearized.
//!
//! Pruning, each rule skipping only configurations dominated by one that is
//! explored anyway (see [`search`] and `undoes`):
//! - the memo (Lowe 2017) with dominance: same required ops and state, a
//!   floor no higher and a subset of the unknown ops used;
//! - an unknown op followed by an op that undoes or overwrites its effect;
//! - an unknown op after which nothing can usefully go next.
//!
//! Required ops are tried before unknown ones, so a valid history with few
//! unknown outcomes is found almost without backtracking.

use std::collections::HashMap;

use super::history::Revision;
use super::model::{PartOp, Reject, State};

/// How many ops of the longest linearizable prefix a violation shows.
pub(crate) const TAIL: usize = 8;

/// What the search found.
pub(crate) enum Found {
    Linearizable {
        states: u64,
    },
    /// No order works. The longest linearizable prefix found has
    /// `prefix_len` ops, the last of which are `prefix_tail` (op indices, in
    /// order); `state` is the model state after it and `stuck` the ops that
    /// could have gone next with why each could not.
    Violation {
        states: u64,
        prefix_len: usize,
        prefix_tail: Vec<usize>,
        state: State,
        stuck: Vec<(usize, Reject)>,
    },
    /// The budget ran out first: neither verdict.
    Inconclusive {
        states: u64,
    },
}

struct Frame {
    state: State,
    /// The op linearized to reach this frame (none for the root).
    chosen: Option<usize>,
    candidates: Vec<usize>,
    next: usize,
    rejected: Vec<(usize, Reject)>,
    /// Every required op before this index, in deadline order, is linearized.
    first_due: usize,
    /// Every required op before this index, in invocation order, is linearized.
    first_required: usize,
    /// The earliest deadline of a required op not linearized.
    due: u64,
}

struct Bits(Vec<u64>);

/// The ops of a partition, indexed three ways.
struct Index<'a> {
    ops: &'a [PartOp],
    /// Required ops by deadline.
    by_deadline: Vec<usize>,
    /// Required ops in invocation order.
    required: Vec<usize>,
    /// Unknown ops in invocation order.
    unknown: Vec<usize>,
    /// Each unknown op's bit in the set of unknown ops used.
    unknown_bit: Vec<usize>,
    unknowns: usize,
}

/// Memo key: the linearized required ops, as the index of the first one not
/// linearized (in invocation order) plus a bit window after it — every
/// linearized required op was invoked by the current deadline, so the window
/// is about as wide as the concurrency — and the model state without its
/// revision floor.
type MemoKey = (usize, Vec<u64>, State);

/// The deepest dead end so far: required ops linearized, prefix length, the
/// prefix's tail, the state and the candidates rejected there.
type DeadEnd = (usize, usize, Vec<usize>, State, Vec<(usize, Reject)>);

/// What the memo keeps per key: the revision floor and the unknown ops used.
type Seen = Vec<(Revision, Bits)>;

/// Searches for a linearization of `ops` (sorted by invocation) from `init`,
/// visiting at most `budget` distinct configurations.
///
/// Lowe's memo records each (linearized set, state) configuration visited,
/// split into the required ops and the unknown ones. A configuration is
/// skipped if one was visited that *dominates* it: the same required ops,
/// the same state except for a revision floor no higher, and a subset of its
/// unknown ops. That is sound: an unknown op not yet used can still be used
/// later or never, so fewer used unknowns leave at least the same ways to
/// finish (the candidates depend on the required ops only), and a lower
/// floor passes every revision check a higher one passes and ends up at the
/// same floor after any op with a revision. Without the subset rule, each
/// unknown write overwritten before it is read would double the search;
/// without the floor rule, each unknown write used needlessly would (it
/// raises the floor by one).
pub(crate) fn search(ops: &[PartOp], init: State, budget: u64) -> Found {
    debug_assert!(ops.windows(2).all(|w| w[0].invoke <= w[1].invoke));
    let required: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].required).collect();
    let mut by_deadline = required.clone();
    by_deadline.sort_by_key(|&i| ops[i].deadline);
    let mut unknown_bit = vec![usize::MAX; ops.len()];
    let mut unknowns = 0;
    for (i, op) in ops.iter().enumerate() {
        if !op.required {
            unknown_bit[i] = unknowns;
            unknowns += 1;
        }
    }
    let ix = Index {
        ops,
        by_deadline,
        required,
        unknown: (0..ops.len()).filter(|&i| !ops[i].required).collect(),
        unknown_bit,
        unknowns,
    };
    let mut required_left = ix.required.len();

    let mut done = Bits::new(ops.len());
    let mut used = Bits::new(ix.unknowns);
    let mut memo: HashMap<MemoKey, Seen> = HashMap::new();
    let mut states: u64 = 0;
    let mut best: Option<DeadEnd> = None;
    let mut depth_required = 0usize;

    let root = ix.frame(&done, init, None, (0, 0));
    let mut stack = vec![root];
    loop {
        if required_left == 0 {
            return Found::Linearizable { states };
        }
        let n = stack.len();
        let (below, top) = stack.split_at_mut(n - 1);
        let top = &mut top[0];
        if top.next < top.candidates.len() {
            let i = top.candidates[top.next];
            top.next += 1;
            match top.state.step(&ops[i].kind) {
                Err(why) => top.rejected.push((i, why)),
                Ok(next) => {
                    if let (Some(u), Some(g)) = (top.chosen, below.last())
                        && !ops[u].required
                        && undoes(&g.state, &ops[i], &next)
                    {
                        continue;
                    }
                    ix.mark(&mut done, &mut used, i, true);
                    let child = if ops[i].required {
                        ix.frame(&done, next, Some(i), (top.first_due, top.first_required))
                    } else {
                        // The required ops and so the deadline are unchanged:
                        // the same candidates.
                        Frame {
                            state: next,
                            chosen: Some(i),
                            candidates: top
                                .candidates
                                .iter()
                                .copied()
                                .filter(|&x| x != i)
                                .collect(),
                            next: 0,
                            rejected: Vec::new(),
                            first_due: top.first_due,
                            first_required: top.first_required,
                            due: top.due,
                        }
                    };
                    if !ops[i].required {
                        // Only if something can follow: an unknown op that
                        // leads nowhere costs no state.
                        let useful = child.candidates.iter().any(|&x| {
                            child
                                .state
                                .step(&ops[x].kind)
                                .is_ok_and(|s| !undoes(&top.state, &ops[x], &s))
                        });
                        if !useful {
                            ix.mark(&mut done, &mut used, i, false);
                            continue;
                        }
                    }
                    let floor = child.state.floor;
                    let seen = memo.entry(ix.key(&done, &child)).or_default();
                    if seen.iter().any(|(f, u)| *f <= floor && u.subset_of(&used)) {
                        ix.mark(&mut done, &mut used, i, false);
                        continue;
                    }
                    seen.push((floor, Bits(used.0.clone())));
                    states += 1;
                    if states > budget {
                        return Found::Inconclusive { states };
                    }
                    if ops[i].required {
                        required_left -= 1;
                        depth_required += 1;
                    }
                    stack.push(child);
                }
            }
            continue;
        }
        // Every candidate tried: remember the deepest dead end, then backtrack.
        let top = stack.pop().expect("non-empty");
        if best.as_ref().is_none_or(|b| depth_required > b.0) {
            // Only a tail: copying whole prefixes would be quadratic.
            let mut tail: Vec<usize> = stack
                .iter()
                .rev()
                .filter_map(|f| f.chosen)
                .take(TAIL - usize::from(top.chosen.is_some()))
                .collect();
            tail.reverse();
            tail.extend(top.chosen);
            let len = stack.len().saturating_sub(1) + usize::from(top.chosen.is_some());
            best = Some((depth_required, len, tail, top.state.clone(), top.rejected));
        }
        let Some(i) = top.chosen else {
            let (_, prefix_len, prefix_tail, state, stuck) = best.expect("set just above");
            return Found::Violation {
                states,
                prefix_len,
                prefix_tail,
                state,
                stuck,
            };
        };
        ix.mark(&mut done, &mut used, i, false);
        if ops[i].required {
            required_left += 1;
            depth_required -= 1;
        }
    }
}

/// Whether `next`, reached from `g` by an unknown op and then `x`, is
/// dominated by `g` itself or by `g` then `x` alone: `x` undid or
/// overwrote everything the unknown op did. Both are configurations with
/// the same required ops and fewer unknown ops used, explored from `g`.
fn undoes(g: &State, x: &PartOp, next: &State) -> bool {
    let dominated_by =
        |s: &State| s.floor <= next.floor && s.keys == next.keys && s.alive == next.alive;
    // `g` itself has the same required ops only if `x` is not required.
    (!x.required && dominated_by(g)) || g.step(&x.kind).is_ok_and(|s| dominated_by(&s))
}

// === impl Index ===

impl Index<'_> {
    fn mark(&self, done: &mut Bits, used: &mut Bits, i: usize, on: bool) {
        done.put(i, on);
        if !self.ops[i].required {
            used.put(self.unknown_bit[i], on);
        }
    }

    fn frame(
        &self,
        done: &Bits,
        state: State,
        chosen: Option<usize>,
        (mut first_due, mut first_required): (usize, usize),
    ) -> Frame {
        let ops = self.ops;
        while first_due < self.by_deadline.len() && done.get(self.by_deadline[first_due]) {
            first_due += 1;
        }
        while first_required < self.required.len() && done.get(self.required[first_required]) {
            first_required += 1;
        }
        let due = self
            .by_deadline
            .get(first_due)
            .map_or(u64::MAX, |&i| ops[i].deadline);
        // Ops that must happen are tried before ops that may.
        let open = |&&i: &&usize| !done.get(i);
        let due_by = |&&i: &&usize| ops[i].invoke <= due;
        let required: Vec<usize> = self.required[first_required..]
            .iter()
            .take_while(due_by)
            .chain(self.unknown.iter().take_while(due_by))
            .filter(open)
            .copied()
            .collect();
        Frame {
            state,
            chosen,
            candidates: required,
            next: 0,
            rejected: Vec::new(),
            first_due,
            first_required,
            due,
        }
    }

    fn key(&self, done: &Bits, f: &Frame) -> MemoKey {
        let mut window = Bits(Vec::new());
        for (w, &i) in self.required[f.first_required..].iter().enumerate() {
            if self.ops[i].invoke > f.due {
                break;
            }
            if done.get(i) {
                if window.0.len() <= w / 64 {
                    window.0.resize(w / 64 + 1, 0);
                }
                window.put(w, true);
            }
        }
        let mut state = f.state.clone();
        state.floor = 0;
        (f.first_required, window.0, state)
    }
}

// === impl Bits ===

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn put(&mut self, i: usize, on: bool) {
        if on {
            self.0[i / 64] |= 1 << (i % 64);
        } else {
            self.0[i / 64] &= !(1 << (i % 64));
        }
    }

    fn subset_of(&self, other: &Bits) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
}
