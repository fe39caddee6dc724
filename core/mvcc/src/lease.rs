//! Lease deadlines. A lease's existence, TTL and keys are replicated state in
//! the store; when it expires is local, volatile knowledge kept here, as in
//! etcd's lessor. The leader checkpoints remaining TTLs through the log
//! (etcd's lease checkpoints); a new leader starts each lease from its
//! checkpointed remaining TTL, or from its full TTL when it has none.
use std::collections::HashMap;

use crate::LeaseInfo;

/// etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's minimum lease TTL: one and a half election timeouts, rounded up to
/// whole seconds (2 s with the default 100 ms / 1000 ms timing).
pub fn min_lease_ttl(election_ms: u64, heartbeat_ms: u64) -> i64 {
    let heartbeat_ms = heartbeat_ms.max(1);
    let ticks = election_ms / heartbeat_ms;
    let ms = (3 * ticks / 2) * heartbeat_ms;
    (ms.div_ceil(1000) as i64).max(1)
}

#[derive(Debug, Clone, Copy)]
struct Deadline {
    ttl: i64,
    at_ms: u64,
    /// The remaining TTL recorded in the store (0: none, the full TTL).
    checkpointed: i64,
}

#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, Deadline>,
}

impl Lessor {
    pub fn new() -> Lessor {
        Lessor::default()
    }

    pub fn grant(&mut self, id: i64, ttl: i64, now_ms: u64) {
        self.leases.insert(
            id,
            Deadline {
                ttl,
                at_ms: deadline(now_ms, ttl),
                checkpointed: 0,
            },
        );
    }

    pub fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// Restarts the lease's TTL; `None` when it is unknown or already past
    /// its deadline (etcd refuses to renew an expired lease).
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Option<i64> {
        let d = self.leases.get_mut(&id)?;
        if d.at_ms <= now_ms {
            return None;
        }
        d.at_ms = deadline(now_ms, d.ttl);
        Some(d.ttl)
    }

    /// Whole seconds left (0 once expired).
    pub fn remaining(&self, id: i64, now_ms: u64) -> Option<i64> {
        let d = self.leases.get(&id)?;
        Some((d.at_ms.saturating_sub(now_ms) / 1000) as i64)
    }

    /// Up to `max` leases past their deadline, earliest first. They stay
    /// here until their revocation is applied.
    pub fn expired(&self, now_ms: u64, max: usize) -> Vec<i64> {
        let mut due: Vec<(u64, i64)> = self
            .leases
            .iter()
            .filter(|(_, d)| d.at_ms <= now_ms)
            .map(|(id, d)| (d.at_ms, *id))
            .collect();
        due.sort_unstable();
        due.into_iter().take(max).map(|(_, id)| id).collect()
    }

    /// Re-arms every stored lease from its checkpointed remaining TTL, or
    /// its full TTL when it has none.
    pub fn restore(&mut self, leases: &[LeaseInfo], now_ms: u64) {
        for l in leases {
            let from = if l.remaining_ttl > 0 {
                l.remaining_ttl.min(l.ttl)
            } else {
                l.ttl
            };
            self.leases.insert(
                l.id,
                Deadline {
                    ttl: l.ttl,
                    at_ms: deadline(now_ms, from),
                    checkpointed: l.remaining_ttl,
                },
            );
        }
    }

    /// A checkpoint was applied: the store now records `remaining`.
    pub fn checkpointed(&mut self, id: i64, remaining: i64) {
        if let Some(d) = self.leases.get_mut(&id) {
            d.checkpointed = remaining;
        }
    }

    /// True when the store records a remaining TTL for the lease: after a
    /// renewal it must be reset, or a new leader would cut the lease short.
    pub fn has_checkpoint(&self, id: i64) -> bool {
        self.leases.get(&id).is_some_and(|d| d.checkpointed > 0)
    }

    /// Leases whose remaining TTL fell at least `drift_s` seconds below what
    /// the store records (the full TTL when it records none), with their
    /// remaining TTL: what a leader checkpoints. At most `max`.
    pub fn checkpoints_due(&self, now_ms: u64, drift_s: i64, max: usize) -> Vec<(i64, i64)> {
        let mut due: Vec<(i64, i64)> = self
            .leases
            .iter()
            .filter_map(|(id, d)| {
                let remaining = (d.at_ms.saturating_sub(now_ms) / 1000) as i64;
                let recorded = if d.checkpointed > 0 {
                    d.checkpointed
                } else {
                    d.ttl
                };
                (remaining > 0 && recorded - remaining >= drift_s.max(1))
                    .then_some((*id, remaining))
            })
            .collect();
        due.sort_unstable();
        due.truncate(max);
        due
    }
}

fn deadline(now_ms: u64, ttl: i64) -> u64 {
    now_ms.saturating_add((ttl.max(0) as u64).saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_matches_etcd_defaults() {
        assert_eq!(min_lease_ttl(1000, 100), 2);
        assert_eq!(min_lease_ttl(5000, 500), 8);
    }

    #[test]
    fn deadlines_expire_and_renew() {
        let mut l = Lessor::new();
        l.grant(7, 10, 0);
        l.grant(8, 5, 0);
        assert_eq!(l.remaining(7, 1500), Some(8));
        assert!(l.expired(4999, 10).is_empty());
        assert_eq!(l.expired(5000, 10), vec![8]);
        assert_eq!(l.renew(8, 6000), None, "expired lease cannot be renewed");
        assert_eq!(l.renew(7, 6000), Some(10));
        assert_eq!(l.remaining(7, 6000), Some(10));
        assert_eq!(l.expired(20_000, 1), vec![8]);
        l.revoke(8);
        assert_eq!(l.expired(20_000, 10), vec![7]);
        assert_eq!(l.remaining(99, 0), None);
    }

    #[test]
    fn checkpoints_are_due_once_a_lease_drifted_and_restore_uses_them() {
        let mut l = Lessor::new();
        l.grant(1, 60, 0);
        l.grant(2, 60, 0);
        assert!(l.checkpoints_due(4_000, 5, 10).is_empty());
        l.renew(2, 5_000);
        // Lease 1 has 54 s left, 6 below its full TTL; lease 2 was renewed.
        assert_eq!(l.checkpoints_due(6_000, 5, 10), vec![(1, 54)]);
        l.checkpointed(1, 54);
        assert!(l.has_checkpoint(1) && !l.has_checkpoint(2));
        assert!(l.checkpoints_due(8_000, 5, 10).is_empty());
        assert_eq!(l.checkpoints_due(11_000, 5, 10), vec![(1, 49), (2, 54)]);
        // A new leader starts from the checkpoint, or the full TTL.
        let mut n = Lessor::new();
        n.restore(
            &[
                LeaseInfo {
                    id: 1,
                    ttl: 60,
                    remaining_ttl: 54,
                },
                LeaseInfo {
                    id: 2,
                    ttl: 60,
                    remaining_ttl: 0,
                },
            ],
            100_000,
        );
        assert_eq!(n.remaining(1, 100_000), Some(54));
        assert_eq!(n.remaining(2, 100_000), Some(60));
        assert!(n.has_checkpoint(1));
    }
}
