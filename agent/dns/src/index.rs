//! The in-memory index queries read: every SkyDNS record under the path,
//! parsed once, keyed by its etcd key (the name's labels reversed), so a
//! name's subtree is one ordered range scan and a query never reaches the
//! store.
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use cairn_view::skydns::Record;

use crate::config::DnsConfig;

/// One parsed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub record: Record,
    pub lease: i64,
    pub mod_revision: i64,
}

/// A lease's remaining TTL as the agent answered it, and when.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTtl {
    /// Seconds left at `fetched`; -1 when the lease had expired.
    pub ttl: i64,
    pub fetched: Instant,
}

/// What answers need from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub zones: Vec<String>,
    pub path: String,
    pub ttl: u32,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub forward: bool,
}

impl From<&DnsConfig> for Settings {
    fn from(c: &DnsConfig) -> Self {
        Settings {
            zones: c.zones.clone(),
            path: c.path.clone(),
            ttl: c.ttl,
            min_ttl: c.min_ttl,
            max_ttl: c.max_ttl,
            forward: !c.forward.is_empty(),
        }
    }
}

/// The records at one revision. Immutable: a new snapshot builds a new
/// index (reusing the parsed items of keys that did not change) and the
/// server swaps the `Arc`.
#[derive(Clone, Debug)]
pub struct Index {
    pub settings: Arc<Settings>,
    pub revision: i64,
    /// Why the index may be behind the store (fail static: still answered).
    pub stale: Option<String>,
    pub items: BTreeMap<String, Arc<Item>>,
    pub leases: HashMap<i64, LeaseTtl>,
    /// Keys whose value is not a SkyDNS record (skipped, as CoreDNS would
    /// fail the query that reads them).
    pub invalid: usize,
}

/// The services of a name, as CoreDNS's `Records` + `msg.Group` return
/// them: `None` is "no such key" (NXDOMAIN).
pub type Services<'a> = Option<Vec<&'a Item>>;

impl Index {
    pub fn empty(settings: Arc<Settings>) -> Index {
        Index {
            settings,
            revision: 0,
            stale: Some("not synced yet".into()),
            items: BTreeMap::new(),
            leases: HashMap::new(),
            invalid: 0,
        }
    }

    /// Builds the index of `entries` (key, value, lease, mod revision),
    /// reusing `prev`'s parsed item for a key whose revision is the same.
    pub fn build<'a>(
        settings: Arc<Settings>,
        revision: i64,
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64, i64)>,
        prev: Option<&Index>,
    ) -> Index {
        let mut items = BTreeMap::new();
        let mut invalid = 0;
        for (k, v, lease, rev) in entries {
            let Ok(key) = std::str::from_utf8(k) else {
                invalid += 1;
                continue;
            };
            if let Some(old) = prev.and_then(|p| p.items.get(key))
                && old.mod_revision == rev
                && old.lease == lease
            {
                items.insert(key.to_string(), old.clone());
                continue;
            }
            match Record::parse(v) {
                Ok(record) => {
                    items.insert(
                        key.to_string(),
                        Arc::new(Item {
                            key: key.to_string(),
                            record,
                            lease,
                            mod_revision: rev,
                        }),
                    );
                }
                Err(_) => invalid += 1,
            }
        }
        let mut leases = HashMap::new();
        if let Some(p) = prev {
            for it in items.values() {
                if let Some(l) = p.leases.get(&it.lease) {
                    leases.insert(it.lease, *l);
                }
            }
        }
        Index {
            settings,
            revision,
            stale: None,
            items,
            leases,
            invalid,
        }
    }

    /// Lease ids the records use.
    pub fn lease_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .items
            .values()
            .map(|i| i.lease)
            .filter(|l| *l != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The configured zone `name` (lower case, fully qualified) is in,
    /// the longest one.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        self.settings
            .zones
            .iter()
            .find(|z| in_zone(name, z))
            .map(String::as_str)
    }

    /// The key of a name (CoreDNS's `msg.Path`).
    pub fn key_of(&self, name: &str) -> String {
        cairn_view::skydns::key_of(&self.settings.path, name)
    }

    /// The name of a key (CoreDNS's `msg.Domain`), fully qualified.
    pub fn name_of(&self, key: &str) -> String {
        cairn_view::skydns::name_of(&self.settings.path, key).unwrap_or_else(|| ".".into())
    }

    fn subtree<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a Arc<Item>> + 'a {
        let below = format!("{key}/");
        self.items
            .range::<String, _>((Bound::Included(below.clone()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&below))
            .map(|(_, v)| v)
    }

    /// Whether any key is at or below `name`: the name exists (NODATA
    /// rather than NXDOMAIN when it has nothing of the asked type).
    pub fn exists(&self, name: &str) -> bool {
        let key = self.key_of(name);
        self.items.contains_key(&key) || self.subtree(&key).next().is_some()
    }

    /// CoreDNS's `Records` (+ `Group`): every record below the name (the
    /// prefix `key/`), else the exact key; `*` and `any` labels match any
    /// label. `qtxt`: the question is TXT (text-only records count).
    pub fn services(&self, name: &str, qtxt: bool) -> Services<'_> {
        let labels: Vec<&str> = name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .collect();
        // CoreDNS's `PathWithWildcard`: the scan starts at the key of the
        // labels right of the wildcard nearest the zone; every key found is
        // then matched label by label.
        let star = labels.iter().rposition(|l| *l == "*" || *l == "any");
        let scan_name = match star {
            Some(i) => labels[i + 1..].join("."),
            None => labels.join("."),
        };
        let star = star.is_some();
        let key = self.key_of(&scan_name);
        let mut found: Vec<&Item> = self.subtree(&key).map(|a| &**a).collect();
        if found.is_empty() {
            match self.items.get(&key) {
                Some(i) => found.push(i),
                None => return None,
            }
        }
        if star {
            let want: Vec<String> = self.key_of(name).split('/').map(str::to_string).collect();
            found.retain(|it| {
                let parts: Vec<&str> = it.key.split('/').collect();
                want.len() <= parts.len()
                    && want
                        .iter()
                        .zip(&parts)
                        .all(|(w, p)| w == "*" || w == "any" || w == p)
            });
        }
        found.retain(|it| !it.record.host.is_empty() || (qtxt && !it.record.text.is_empty()));
        Some(group(found))
    }

    /// The exact key's records only (CoreDNS's non-recursive get: PTR and
    /// CNAME questions).
    pub fn exact(&self, name: &str) -> Services<'_> {
        let key = self.key_of(name);
        let it = self.items.get(&key)?;
        Some(if it.record.host.is_empty() {
            Vec::new()
        } else {
            vec![&**it]
        })
    }

    /// The TTL of a record now: the record's `ttl` (else the default),
    /// lowered to its lease's remaining TTL (clamped to `[min_ttl,
    /// max_ttl]`, as CoreDNS's `min-lease-ttl`/`max-lease-ttl`).
    pub fn ttl(&self, item: &Item, now: Instant) -> u32 {
        let s = &self.settings;
        let lease = (item.lease != 0)
            .then(|| self.leases.get(&item.lease))
            .flatten()
            .map(|l| {
                let gone = now.saturating_duration_since(l.fetched).as_secs() as i64;
                (l.ttl - gone).clamp(s.min_ttl as i64, s.max_ttl as i64) as u32
            });
        match (lease, item.record.ttl) {
            (None, 0) => s.ttl,
            (None, r) => r,
            (Some(l), 0) => l,
            (Some(l), r) => l.min(r),
        }
    }
}

/// `name` is `zone` or below it (both lower case, fully qualified).
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

/// CoreDNS's `msg.Group`: the shortest keys with a `group` set it; then
/// only records of that group, or of none, are answered. Shortest keys that
/// disagree cancel grouping.
pub fn group(sx: Vec<&Item>) -> Vec<&Item> {
    let Some(first) = sx.first() else {
        return sx;
    };
    let depth = |i: &Item| i.key.matches('/').count();
    let mut group = first.record.group.as_str();
    let mut slashes = depth(first);
    for s in &sx {
        let x = depth(s);
        if x < slashes {
            if s.record.group.is_empty() {
                break;
            }
            slashes = x;
            group = s.record.group.as_str();
        }
    }
    if group.is_empty() {
        return sx;
    }
    let mut out = Vec::new();
    for s in &sx {
        if s.record.group.is_empty() {
            out.push(*s);
            continue;
        }
        if depth(s) == slashes && s.record.group != group {
            return sx;
        }
        if s.record.group == group {
            out.push(*s);
        }
    }
    out
}
