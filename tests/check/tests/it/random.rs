//! Random histories from a sequential model with random concurrency windows:
//! valid ones must pass; with one returned value mutated they must fail.
//!
//! The seed is printed; `CAIRN_CHECK_SEED=<n>` replays one.

use std::collections::HashMap;

use cairn_check::{History, Op, Outcome, Ret, check};

use crate::rng::Rng;

/// One generated op, before it becomes part of a [`History`].
#[derive(Clone, Debug)]
pub struct Rec {
    pub client: u64,
    pub op: Op,
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

pub struct Shape {
    pub ops: usize,
    pub keys: usize,
    /// An op's invocation and completion are each up to this far from its
    /// linearization point; points are 10 apart.
    pub window: u64,
    pub unknown_percent: u64,
}

#[derive(Default)]
struct Model {
    kv: HashMap<String, (String, i64, Option<i64>)>,
    leases: HashMap<i64, bool>,
    revision: i64,
}

impl Model {
    fn get(&self, k: &str) -> (Option<String>, i64) {
        match self.kv.get(k) {
            Some((v, m, _)) => (Some(v.clone()), *m),
            None => (None, 0),
        }
    }

    fn put(&mut self, k: &str, v: &str, lease: Option<i64>) -> i64 {
        self.revision += 1;
        self.kv
            .insert(k.to_string(), (v.to_string(), self.revision, lease));
        self.revision
    }

    fn revoke(&mut self, id: i64) {
        self.leases.insert(id, false);
        let before = self.kv.len();
        self.kv.retain(|_, (_, _, l)| *l != Some(id));
        if self.kv.len() != before {
            self.revision += 1;
        }
    }
}

/// A history that is linearizable by construction: each op takes effect at
/// its own point, in order, on a model of etcd.
pub fn generate(seed: u64, shape: &Shape) -> Vec<Rec> {
    let mut rng = Rng::new(seed);
    let mut m = Model {
        revision: 1,
        ..Model::default()
    };
    let mut out = Vec::with_capacity(shape.ops);
    for i in 0..shape.ops {
        let at = 1_000 + 10 * i as u64;
        let key = format!("k{}", rng.below(shape.keys as u64));
        let value = format!("v{i}");
        let pick = rng.below(100);
        let write = matches!(pick, 0..=29 | 40..=74);
        // An unknown write took effect (at its point) or not, at random.
        let unknown = write && rng.chance(shape.unknown_percent);
        let failed = write && !unknown && rng.chance(2);
        let applies = !failed && (!unknown || rng.chance(50));
        let (op, ret) = match pick {
            0..=29 => {
                let lease = if rng.chance(15) {
                    let id = 1 + rng.below(3) as i64;
                    m.leases.get(&id).copied().unwrap_or(false).then_some(id)
                } else {
                    None
                };
                let op = match lease {
                    Some(l) => Op::put_with_lease(key.as_str(), value.as_str(), l),
                    None => Op::put(key.as_str(), value.as_str()),
                };
                let ret = applies.then(|| Ret::Put {
                    revision: m.put(&key, &value, lease),
                });
                (op, ret)
            }
            30..=39 => {
                let (v, mr) = m.get(&key);
                (Op::get(key.as_str()), Some(Ret::get(v, mr, m.revision)))
            }
            40..=49 => {
                let exists = m.kv.contains_key(&key);
                let ret = applies.then(|| {
                    if exists {
                        m.kv.remove(&key);
                        m.revision += 1;
                    }
                    Ret::Delete {
                        deleted: u64::from(exists),
                        revision: m.revision,
                    }
                });
                (Op::delete(key.as_str()), ret)
            }
            50..=64 => {
                let (cur, mr) = m.get(&key);
                let expected = if rng.chance(60) {
                    mr
                } else {
                    rng.below(5) as i64
                };
                let op = Op::cas_mod_revision(key.as_str(), expected, value.as_str());
                let ret = applies.then(|| {
                    if mr == expected {
                        Ret::cas_succeeded(m.put(&key, &value, None))
                    } else {
                        Ret::cas_failed(cur, mr, m.revision)
                    }
                });
                (op, ret)
            }
            65..=74 => {
                let (cur, mr) = m.get(&key);
                let expected = match (&cur, rng.chance(60)) {
                    (Some(c), true) => c.clone(),
                    _ => format!("v{}", rng.below(i as u64 + 1)),
                };
                let op = Op::cas_value(key.as_str(), expected.as_str(), value.as_str());
                let ret = applies.then(|| {
                    if cur.as_deref() == Some(expected.as_str()) {
                        Ret::cas_succeeded(m.put(&key, &value, None))
                    } else {
                        Ret::cas_failed(cur, mr, m.revision)
                    }
                });
                (op, ret)
            }
            75..=84 => {
                // Leases are granted and revoked by ops with known outcomes.
                let id = 1 + rng.below(3) as i64;
                let alive = m.leases.get(&id).copied().unwrap_or(false);
                let (op, ret) = if !alive {
                    m.leases.insert(id, true);
                    (
                        Op::lease_grant(id, 5),
                        Ret::Lease {
                            revision: m.revision,
                        },
                    )
                } else if rng.chance(70) {
                    m.revoke(id);
                    (
                        Op::lease_revoke(id),
                        Ret::Lease {
                            revision: m.revision,
                        },
                    )
                } else {
                    m.revoke(id);
                    (Op::lease_expire(id), Ret::Done)
                };
                (op, Some(ret))
            }
            _ => {
                let (v, mr) = m.get(&key);
                (Op::get(key.as_str()), Some(Ret::get(v, mr, m.revision)))
            }
        };
        let outcome = match ret {
            _ if unknown => Outcome::Unknown,
            _ if failed => Outcome::Failed,
            Some(r) => Outcome::Ok(r),
            None => unreachable!("known outcomes apply"),
        };
        out.push(Rec {
            client: rng.below(5),
            op,
            invoke: at - rng.below(shape.window + 1),
            complete: at + rng.below(shape.window + 1),
            outcome,
        });
    }
    out
}

pub fn history(recs: &[Rec]) -> History {
    let mut h = History::new();
    for r in recs {
        h.record(
            r.client,
            r.op.clone(),
            r.invoke,
            r.complete,
            r.outcome.clone(),
        );
    }
    h
}

/// Changes one returned value so that no linearization exists; says what.
fn mutate(rng: &mut Rng, recs: &mut [Rec]) -> String {
    // Values written by ops that completed Ok, by key, with their revision.
    let mut written: HashMap<Vec<u8>, Vec<(Vec<u8>, i64)>> = HashMap::new();
    let mut revisions: Vec<i64> = Vec::new();
    for r in recs.iter() {
        let rev = match &r.outcome {
            Outcome::Ok(Ret::Put { revision }) => *revision,
            Outcome::Ok(Ret::Cas {
                succeeded: true,
                revision,
                ..
            }) => *revision,
            _ => continue,
        };
        revisions.push(rev);
        if let Op::Put { key, value, .. } | Op::Cas { key, value, .. } = &r.op {
            written
                .entry(key.clone())
                .or_default()
                .push((value.clone(), rev));
        }
    }
    loop {
        let i = rng.below(recs.len() as u64) as usize;
        let r = &mut recs[i];
        let key = r.op.key().map(<[u8]>::to_vec);
        match (&mut r.outcome, rng.below(3)) {
            (Outcome::Ok(Ret::Get { value, .. }), 0) => {
                *value = Some(b"never-written".to_vec());
                return format!("op {i}: a get returns a value never written");
            }
            (
                Outcome::Ok(Ret::Get {
                    value: Some(v),
                    mod_revision,
                    ..
                }),
                1,
            ) => {
                let others: Vec<_> = written
                    .get(&key.expect("get has a key"))
                    .into_iter()
                    .flatten()
                    .filter(|(w, _)| w != v)
                    .cloned()
                    .collect();
                if others.is_empty() {
                    continue;
                }
                let (w, _) = others[rng.below(others.len() as u64) as usize].clone();
                *v = w;
                return format!(
                    "op {i}: a get returns another written value with mod_revision {mod_revision}"
                );
            }
            (Outcome::Ok(Ret::Put { revision }), 2) => {
                let other = revisions[rng.below(revisions.len() as u64) as usize];
                if other == *revision {
                    continue;
                }
                *revision = other;
                return format!("op {i}: a put returns revision {other}, another write's");
            }
            _ => continue,
        }
    }
}

fn base_seed() -> u64 {
    std::env::var("CAIRN_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00ca_1257)
}

#[test]
fn random_histories_pass_and_mutants_fail() {
    let base = base_seed();
    let runs = if std::env::var("CAIRN_CHECK_SEED").is_ok() {
        1
    } else {
        40
    };
    let shape = Shape {
        ops: 400,
        keys: 6,
        window: 25,
        unknown_percent: 4,
    };
    let mut states = 0;
    for seed in base..base + runs {
        println!("seed {seed} (replay: CAIRN_CHECK_SEED={seed})");
        let mut recs = generate(seed, &shape);
        match check(&history(&recs)) {
            Ok(r) => states += r.states,
            Err(v) => panic!("seed {seed}: a valid history failed:\n{v}"),
        }
        let mut rng = Rng::new(seed ^ 0x5eed);
        let what = mutate(&mut rng, &mut recs);
        if let Ok(r) = check(&history(&recs)) {
            panic!("seed {seed}: mutant passed ({what}): {r:?}");
        }
    }
    println!("{runs} histories of {} ops: {states} states", shape.ops);
}

/// Hot keys, wide windows and many unknown outcomes: what the search's
/// pruning rules must never turn into a false violation.
#[test]
fn random_hot_histories_with_many_unknowns_pass() {
    let base = base_seed();
    let shapes = [
        Shape {
            ops: 150,
            keys: 1,
            window: 40,
            unknown_percent: 15,
        },
        Shape {
            ops: 200,
            keys: 2,
            window: 60,
            unknown_percent: 10,
        },
        Shape {
            ops: 200,
            keys: 3,
            window: 30,
            unknown_percent: 12,
        },
    ];
    for (n, shape) in shapes.iter().enumerate() {
        for seed in base..base + 12 {
            let recs = generate(seed, shape);
            if let Err(v) = check(&history(&recs)) {
                panic!(
                    "shape {n}, seed {seed} (CAIRN_CHECK_SEED={seed}): a valid history failed:\n{v}"
                );
            }
        }
    }
}
