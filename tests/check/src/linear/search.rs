//! Wing & Gong's depth-first search for a linearization, with Lowe's
//! memoization of (set of linearized ops, model state) pairs.
//!
//! At each point, an op may be linearized next if it is not yet linearized
//! and was invoked no later than the earliest deadline among the required
//! (completed `Ok`) ops not yet linearized: anything invoked after that
//! deadline follows it in real time. Unknown ops have no deadline, so they
//! never constrain others and may be linearized at any later point or not at
//! all; the search succeeds once every required op is linearized.

use std::collections::HashSet;

use super::model::{PartOp, Reject, State};

/// What the search found.
pub(crate) enum Found {
    Linearizable {
        states: u64,
    },
    /// No order works. `prefix` is the longest linearizable prefix found (op
    /// indices, in order), `state` the model state after it and `stuck` the
    /// ops that could have gone next with why each could not.
    Violation {
        states: u64,
        prefix: Vec<usize>,
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
    /// Every op before this index, in invocation order, is linearized.
    first_open: usize,
    /// Every required op before this index, in deadline order, is linearized.
    first_due: usize,
}

struct Bits(Vec<u64>);

/// Searches for a linearization of `ops` (sorted by invocation) from `init`,
/// visiting at most `budget` distinct (linearized set, state) pairs.
pub(crate) fn search(ops: &[PartOp], init: State, budget: u64) -> Found {
    debug_assert!(ops.windows(2).all(|w| w[0].invoke <= w[1].invoke));
    let mut by_deadline: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].required).collect();
    by_deadline.sort_by_key(|&i| ops[i].deadline);
    let mut required_left = by_deadline.len();

    let mut done = Bits::new(ops.len());
    let mut memo: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut states: u64 = 0;
    let mut best: Option<(usize, Vec<usize>, State, Vec<(usize, Reject)>)> = None;
    let mut depth_required = 0usize;

    let root = frame(ops, &by_deadline, &done, init, None, 0, 0);
    let mut stack = vec![root];
    loop {
        if required_left == 0 {
            return Found::Linearizable { states };
        }
        let top = stack
            .last_mut()
            .expect("stack holds the root until it fails");
        if top.next < top.candidates.len() {
            let i = top.candidates[top.next];
            top.next += 1;
            match top.state.step(&ops[i].kind) {
                Err(why) => top.rejected.push((i, why)),
                Ok(next) => {
                    done.set(i);
                    if !memo.insert((done.0.clone(), next.clone())) {
                        done.clear(i);
                        continue;
                    }
                    states += 1;
                    if states > budget {
                        return Found::Inconclusive { states };
                    }
                    if ops[i].required {
                        required_left -= 1;
                        depth_required += 1;
                    }
                    let (fo, fd) = (top.first_open, top.first_due);
                    let child = frame(ops, &by_deadline, &done, next, Some(i), fo, fd);
                    stack.push(child);
                }
            }
            continue;
        }
        // Every candidate tried: remember the deepest dead end, then backtrack.
        let top = stack.pop().expect("non-empty");
        if best.as_ref().is_none_or(|b| depth_required > b.0) {
            let prefix = stack
                .iter()
                .filter_map(|f| f.chosen)
                .chain(top.chosen)
                .collect();
            best = Some((depth_required, prefix, top.state.clone(), top.rejected));
        }
        let Some(i) = top.chosen else {
            let (_, prefix, state, stuck) = best.expect("set just above");
            return Found::Violation {
                states,
                prefix,
                state,
                stuck,
            };
        };
        done.clear(i);
        if ops[i].required {
            required_left += 1;
            depth_required -= 1;
        }
    }
}

fn frame(
    ops: &[PartOp],
    by_deadline: &[usize],
    done: &Bits,
    state: State,
    chosen: Option<usize>,
    mut first_open: usize,
    mut first_due: usize,
) -> Frame {
    while first_open < ops.len() && done.get(first_open) {
        first_open += 1;
    }
    while first_due < by_deadline.len() && done.get(by_deadline[first_due]) {
        first_due += 1;
    }
    let due = by_deadline
        .get(first_due)
        .map_or(u64::MAX, |&i| ops[i].deadline);
    let mut required = Vec::new();
    let mut optional = Vec::new();
    for (i, op) in ops.iter().enumerate().skip(first_open) {
        if op.invoke > due {
            break;
        }
        if done.get(i) {
            continue;
        }
        if op.required {
            required.push(i);
        } else {
            optional.push(i);
        }
    }
    // Ops that must happen are tried before ops that may.
    required.extend(optional);
    Frame {
        state,
        chosen,
        candidates: required,
        next: 0,
        rejected: Vec::new(),
        first_open,
        first_due,
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

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}
