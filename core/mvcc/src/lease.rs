//! Lease deadlines. A lease's existence, TTL and keys are replicated state in
//! the store; when it expires is local, volatile knowledge kept here, as in
//! etcd's lessor. After a restart every lease gets its full TTL again.
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

    /// Re-arms every stored lease with its full TTL.
    pub fn restore(&mut self, leases: &[LeaseInfo], now_ms: u64) {
        for l in leases {
            self.grant(l.id, l.ttl, now_ms);
        }
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
}
