//! The sequential specification of one partition: etcd's keys, leases and a
//! lower bound on the global revision, as the Wing–Gong–Lowe search steps it.

use super::history::{Revision, Time};

/// A key's mod revision written by an op whose outcome is unknown: it is some
/// revision above the floor at that point, fixed by the first read that
/// shows it.
pub(crate) const UNKNOWN_REVISION: Revision = -1;

/// An op of one partition, with keys, leases and values interned.
#[derive(Clone, Debug)]
pub(crate) struct PartOp {
    /// Index in the history.
    pub entry: usize,
    pub invoke: Time,
    /// `Time::MAX` for an unknown outcome.
    pub deadline: Time,
    /// Completed `Ok`: must be linearized. Unknown ops may be left out.
    pub required: bool,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Put {
        key: usize,
        value: u32,
        lease: Option<usize>,
        revision: Option<Revision>,
    },
    Get {
        key: usize,
        value: Option<u32>,
        mod_revision: Revision,
        revision: Revision,
    },
    Delete {
        key: usize,
        ret: Option<(u64, Revision)>,
    },
    Cas {
        key: usize,
        compare: Cmp,
        value: u32,
        ret: Option<CasRet>,
    },
    Grant {
        lease: usize,
        revision: Option<Revision>,
    },
    /// Revoke (with a header revision) or expiry (without).
    Revoke {
        lease: usize,
        revision: Option<Revision>,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmp {
    /// `mod_revision == r`; `unknown_may_match` unless `r` is the revision of
    /// a write whose revision is known (then a write with an unknown
    /// revision cannot have it).
    ModRevision {
        r: Revision,
        unknown_may_match: bool,
    },
    Value(u32),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct CasRet {
    pub succeeded: bool,
    pub revision: Revision,
    pub value: Option<u32>,
    pub mod_revision: Revision,
}

/// The model state of a partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct State {
    pub keys: Vec<KeyState>,
    pub alive: Vec<bool>,
    /// A revision the global counter is known to have reached: the last
    /// revision returned by an op linearized. Writes without a returned
    /// revision (unknown outcome, expiry) leave it alone — a weaker bound,
    /// still sound, and it lets the search move an unknown write later
    /// without changing any revision check (see `search.rs`).
    pub floor: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyState {
    pub value: Option<u32>,
    pub mod_revision: Revision,
    pub lease: Option<usize>,
}

/// Why an op cannot be linearized at some point; shown in reports.
pub(crate) type Reject = &'static str;

enum Truth {
    Yes,
    No,
    /// The compare is on a mod revision that an unknown write left unknown.
    Maybe,
}

// === impl State ===

impl State {
    /// Applies `op` if its returned values are possible in this state.
    pub fn step(&self, op: &Kind) -> Result<State, Reject> {
        let mut s = self.clone();
        match *op {
            Kind::Put {
                key,
                value,
                lease,
                revision,
            } => {
                s.put(key, value, lease, revision)?;
            }
            Kind::Get {
                key,
                value,
                mod_revision,
                revision,
            } => s.read(key, value, mod_revision, revision)?,
            Kind::Delete { key, ret } => {
                let exists = s.keys[key].value.is_some();
                match ret {
                    None if !exists => return Err("a delete of an absent key changes nothing"),
                    None => s.keys[key] = KeyState::ABSENT,
                    Some((deleted, revision)) => {
                        if deleted != u64::from(exists) {
                            return Err(if exists {
                                "delete returned 0 deleted but the key exists"
                            } else {
                                "delete returned 1 deleted but the key is absent"
                            });
                        }
                        if exists {
                            s.bump(revision)?;
                            s.keys[key] = KeyState::ABSENT;
                        } else {
                            s.observe(revision)?;
                        }
                    }
                }
            }
            Kind::Cas {
                key,
                compare,
                value,
                ret,
            } => {
                let truth = s.compare(key, compare);
                match ret {
                    None => match truth {
                        Truth::No => return Err("a failed compare-and-swap changes nothing"),
                        Truth::Yes | Truth::Maybe => s.put(key, value, None, None)?,
                    },
                    Some(r) if r.succeeded => match truth {
                        Truth::No => {
                            return Err("compare-and-swap succeeded but its compare is false");
                        }
                        Truth::Yes | Truth::Maybe => s.put(key, value, None, Some(r.revision))?,
                    },
                    Some(r) => match truth {
                        Truth::Yes => {
                            return Err("compare-and-swap failed but its compare is true");
                        }
                        Truth::No | Truth::Maybe => {
                            s.read(key, r.value, r.mod_revision, r.revision)?
                        }
                    },
                }
            }
            Kind::Grant { lease, revision } => {
                if s.alive[lease] {
                    return Err("lease granted while a lease with that ID is alive");
                }
                s.alive[lease] = true;
                if let Some(r) = revision {
                    s.observe(r)?;
                }
            }
            Kind::Revoke { lease, revision } => {
                if !s.alive[lease] {
                    return Err("lease revoked or expired while not alive");
                }
                s.alive[lease] = false;
                let mut deleted = false;
                for k in s.keys.iter_mut() {
                    if k.lease == Some(lease) {
                        *k = KeyState::ABSENT;
                        deleted = true;
                    }
                }
                match revision {
                    Some(r) if deleted => s.bump(r)?,
                    Some(r) => s.observe(r)?,
                    None => {}
                }
            }
        }
        Ok(s)
    }

    fn put(
        &mut self,
        key: usize,
        value: u32,
        lease: Option<usize>,
        revision: Option<Revision>,
    ) -> Result<(), Reject> {
        if let Some(l) = lease
            && !self.alive[l]
        {
            return Err("put attached to a lease that is not alive");
        }
        let mod_revision = match revision {
            Some(r) => {
                self.bump(r)?;
                r
            }
            None => UNKNOWN_REVISION,
        };
        self.keys[key] = KeyState {
            value: Some(value),
            mod_revision,
            lease,
        };
        Ok(())
    }

    fn read(
        &mut self,
        key: usize,
        value: Option<u32>,
        mod_revision: Revision,
        revision: Revision,
    ) -> Result<(), Reject> {
        let k = &mut self.keys[key];
        if k.value != value {
            return Err(match (k.value, value) {
                (None, Some(_)) => "read a value but the key is absent",
                (Some(_), None) => "read nothing but the key holds a value",
                _ => "read a value other than the key's current one",
            });
        }
        if value.is_none() {
            if mod_revision != 0 {
                return Err("read an absent key with a non-zero mod_revision");
            }
        } else if k.mod_revision == UNKNOWN_REVISION {
            if mod_revision <= 0 || mod_revision > revision {
                return Err("mod_revision not in 1..=header revision");
            }
            // The unknown write's revision is now known.
            k.mod_revision = mod_revision;
        } else if k.mod_revision != mod_revision {
            return Err("read the current value with another mod_revision");
        }
        if mod_revision > revision {
            return Err("mod_revision above the header revision");
        }
        self.observe(revision)
    }

    fn compare(&self, key: usize, compare: Cmp) -> Truth {
        let k = &self.keys[key];
        match compare {
            Cmp::Value(v) => truth(k.value == Some(v)),
            Cmp::ModRevision {
                unknown_may_match, ..
            } if k.value.is_some() && k.mod_revision == UNKNOWN_REVISION => {
                if unknown_may_match {
                    Truth::Maybe
                } else {
                    Truth::No
                }
            }
            Cmp::ModRevision { r, .. } => truth(k.mod_revision == r),
        }
    }

    /// A write produced revision `r`: the counter moved past everything seen.
    fn bump(&mut self, r: Revision) -> Result<(), Reject> {
        if r <= self.floor {
            return Err("write revision not above a revision already reached");
        }
        self.floor = r;
        Ok(())
    }

    /// A response carried header revision `r` without writing.
    fn observe(&mut self, r: Revision) -> Result<(), Reject> {
        if r < self.floor {
            return Err("header revision below a revision already reached");
        }
        self.floor = r;
        Ok(())
    }
}

fn truth(b: bool) -> Truth {
    if b { Truth::Yes } else { Truth::No }
}

// === impl KeyState ===

impl KeyState {
    pub const ABSENT: KeyState = KeyState {
        value: None,
        mod_revision: 0,
        lease: None,
    };
}
