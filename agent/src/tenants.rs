//! Tenant QoS: request-rate limits and stored-bytes quotas by key prefix or
//! user, so that one tenant's flood or growth cannot take the cluster from
//! the others.
//!
//! ```text
//! --tenant-rate-limit '/team-a/=500:1000,user:bob=50'   # requests/s[:burst]
//! --tenant-quota-bytes '/team-a/=1GiB,/team-b/=100MiB'
//! ```
//!
//! - A rate rule is a token bucket per member (each member limits what it
//!   serves). A request is counted against the rule of its caller's user
//!   and against the longest prefix rule its key falls under; over either,
//!   it is refused with `ResourceExhausted` naming the tenant and the limit.
//! - A quota rule caps the live bytes (keys plus values) under a prefix, as
//!   `prefix_stats.rs` counts them exactly. A put or txn that would take the
//!   tenant past it is refused before it is proposed; deletes are always
//!   allowed, so a tenant over its quota can clean up.
use std::sync::Mutex;
use std::time::Instant;

use tonic::Status;

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Prefix(Vec<u8>),
    User(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Prefix(p) => write!(f, "{}", String::from_utf8_lossy(p)),
            Selector::User(u) => write!(f, "user:{u}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateRule {
    pub who: Selector,
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuotaRule {
    pub prefix: Vec<u8>,
    pub bytes: u64,
}

fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mul) = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(s, m)| v.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((v, 1));
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// `--tenant-rate-limit`: `selector=rate[:burst]`, comma-separated.
pub fn parse_rates(spec: &str) -> Result<Vec<RateRule>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (sel, lim) = part
            .rsplit_once('=')
            .ok_or_else(|| format!("{part:?} is not selector=rate[:burst]"))?;
        let (rate, burst) = match lim.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (lim, None),
        };
        let rate: f64 = rate
            .parse()
            .ok()
            .filter(|r: &f64| *r > 0.0)
            .ok_or_else(|| format!("{part:?}: rate {rate:?} is not a positive number"))?;
        let burst =
            match burst {
                Some(b) => b.parse().ok().filter(|b: &f64| *b >= 1.0).ok_or_else(|| {
                    format!("{part:?}: burst {b:?} is not a number of at least 1")
                })?,
                None => rate.max(1.0),
            };
        out.push(RateRule {
            who: selector(sel)?,
            rate,
            burst,
        });
    }
    Ok(out)
}

/// `--tenant-quota-bytes`: `prefix=bytes` (suffixes KiB, MiB, GiB, TiB).
pub fn parse_quotas(spec: &str) -> Result<Vec<QuotaRule>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (sel, b) = part
            .rsplit_once('=')
            .ok_or_else(|| format!("{part:?} is not prefix=bytes"))?;
        let Selector::Prefix(prefix) = selector(sel)? else {
            return Err(format!(
                "{part:?}: a space quota is by key prefix, not user"
            ));
        };
        let bytes =
            parse_bytes(b).ok_or_else(|| format!("{part:?}: {b:?} is not a size like 100MiB"))?;
        out.push(QuotaRule { prefix, bytes });
    }
    Ok(out)
}

fn selector(s: &str) -> Result<Selector, String> {
    let s = s.trim();
    match s.strip_prefix("user:") {
        Some(u) if !u.is_empty() => Ok(Selector::User(u.to_string())),
        Some(_) => Err("user: needs a name".into()),
        None if s.is_empty() => Err("an empty key prefix would hold every key".into()),
        None => Ok(Selector::Prefix(s.as_bytes().to_vec())),
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct Tenants {
    rates: Vec<(RateRule, Mutex<Bucket>)>,
    pub quotas: Vec<QuotaRule>,
}

impl Tenants {
    pub fn new(rates: Vec<RateRule>, quotas: Vec<QuotaRule>) -> Tenants {
        let now = Instant::now();
        Tenants {
            rates: rates
                .into_iter()
                .map(|r| {
                    let b = Bucket {
                        tokens: r.burst,
                        last: now,
                    };
                    (r, Mutex::new(b))
                })
                .collect(),
            quotas,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.quotas.is_empty()
    }

    /// The prefixes whose bytes must be counted exactly.
    pub fn quota_prefixes(&self) -> Vec<Vec<u8>> {
        self.quotas.iter().map(|q| q.prefix.clone()).collect()
    }

    /// Takes one token from the user's rule and the longest prefix rule of
    /// `key`; refuses when either is empty.
    pub fn admit(&self, key: &[u8], user: &str) -> Result<(), Status> {
        if self.rates.is_empty() {
            return Ok(());
        }
        let by_user = self
            .rates
            .iter()
            .find(|(r, _)| matches!(&r.who, Selector::User(u) if u == user));
        let by_prefix = self
            .rates
            .iter()
            .filter(|(r, _)| matches!(&r.who, Selector::Prefix(p) if key.starts_with(p)))
            .max_by_key(|(r, _)| match &r.who {
                Selector::Prefix(p) => p.len(),
                Selector::User(_) => 0,
            });
        let now = Instant::now();
        for (rule, bucket) in by_user.into_iter().chain(by_prefix) {
            let mut b = bucket.lock().expect("bucket lock");
            let refill = now.duration_since(b.last).as_secs_f64() * rule.rate;
            b.tokens = (b.tokens + refill).min(rule.burst);
            b.last = now;
            if b.tokens < 1.0 {
                return Err(Status::resource_exhausted(format!(
                    "cairn: tenant {} is over its rate limit of {} requests/s",
                    rule.who, rule.rate
                )));
            }
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Refuses writes that would take a tenant past its space quota:
    /// `growth` is (key, bytes added), `used` the tenant's live bytes now.
    pub fn check_space(
        &self,
        growth: &[(Vec<u8>, i64)],
        used: impl Fn(&[u8]) -> i64,
    ) -> Result<(), Status> {
        for q in &self.quotas {
            let add: i64 = growth
                .iter()
                .filter(|(k, _)| k.starts_with(&q.prefix))
                .map(|(_, b)| *b)
                .sum();
            if add > 0 && used(&q.prefix) + add > q.bytes as i64 {
                return Err(Status::resource_exhausted(format!(
                    "cairn: tenant {} is over its space quota of {} bytes",
                    String::from_utf8_lossy(&q.prefix),
                    q.bytes
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_parsed_and_bad_ones_named() {
        let r = parse_rates("/a/=10:20, user:bob=5").unwrap();
        assert_eq!(r[0].who, Selector::Prefix(b"/a/".to_vec()));
        assert_eq!((r[0].rate, r[0].burst), (10.0, 20.0));
        assert_eq!(r[1].who, Selector::User("bob".into()));
        assert_eq!(r[1].burst, 5.0);
        assert!(parse_rates("/a/").unwrap_err().contains("selector=rate"));
        assert!(parse_rates("/a/=0").unwrap_err().contains("positive"));
        assert!(parse_rates("=5").unwrap_err().contains("every key"));
        let q = parse_quotas("/a/=1MiB,/b/=300").unwrap();
        assert_eq!(q[0].bytes, 1 << 20);
        assert_eq!(q[1].bytes, 300);
        assert!(
            parse_quotas("user:bob=1MiB")
                .unwrap_err()
                .contains("by key prefix")
        );
        assert!(parse_quotas("/a/=lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn a_bucket_admits_its_burst_then_refuses_naming_the_tenant() {
        let t = Tenants::new(parse_rates("/a/=1:3,/a/b/=1000").unwrap(), vec![]);
        for _ in 0..3 {
            t.admit(b"/a/x", "").unwrap();
        }
        let e = t.admit(b"/a/x", "").unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message()
                .contains("tenant /a/ is over its rate limit of 1 requests/s")
        );
        // The longest prefix decides: /a/b/ has its own bucket.
        t.admit(b"/a/b/x", "").unwrap();
        // Other keys are not limited.
        t.admit(b"/c", "").unwrap();
    }

    #[test]
    fn space_is_refused_past_the_quota_but_shrinking_is_allowed() {
        let t = Tenants::new(vec![], parse_quotas("/a/=100").unwrap());
        let used = |_: &[u8]| 90;
        assert!(t.check_space(&[(b"/a/k".to_vec(), 10)], used).is_ok());
        let e = t.check_space(&[(b"/a/k".to_vec(), 11)], used).unwrap_err();
        assert!(
            e.message()
                .contains("tenant /a/ is over its space quota of 100 bytes")
        );
        assert!(t.check_space(&[(b"/a/k".to_vec(), -50)], used).is_ok());
        assert!(t.check_space(&[(b"/b/k".to_vec(), 1000)], used).is_ok());
    }
}
