//! The SkyDNS / CoreDNS-etcd key layout, shared by the DNS server, the
//! `services()` template function and service registration.
//!
//! `rails.production.east.skydns.local.` lives under the key
//! `/skydns/local/skydns/east/production/rails` (the path, then the labels
//! reversed); the leaves below it are arbitrary (`…/rails/1`) and each
//! holds one JSON [`Record`] (CoreDNS's `msg.Service`).
use serde::{Deserialize, Serialize};

use crate::{NotWatched, Snapshot};

/// The default key path, as CoreDNS's `path` and SkyDNS.
pub const DEFAULT_PATH: &str = "/skydns";

/// One record, as CoreDNS's etcd plugin reads it (`msg.Service`). Missing
/// fields take CoreDNS's defaults where it has them (see [`Record::ttl`]
/// and [`Record::priority`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub port: u16,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub priority: i32,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub weight: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(skip_serializing_if = "is_false")]
    pub mail: bool,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_zero_i")]
    pub targetstrip: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// cairn's service tags (CoreDNS ignores the field).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}
fn is_zero_i(v: &i32) -> bool {
    *v == 0
}
fn is_zero_u(v: &u32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

impl Record {
    /// Parses a key's value; the error names what is wrong with it.
    pub fn parse(value: &[u8]) -> Result<Record, String> {
        serde_json::from_slice(value).map_err(|e| format!("not a SkyDNS record: {e}"))
    }
}

/// A domain name, lower-cased, without the trailing dot.
fn labels(name: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    name.trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::to_ascii_lowercase)
}

/// The key of a domain name: `web.skydns.local.` under `/skydns` is
/// `/skydns/local/skydns/web`.
pub fn key_of(path: &str, name: &str) -> String {
    let mut key = path.trim_end_matches('/').to_string();
    for l in labels(name).rev() {
        key.push('/');
        key.push_str(&l);
    }
    key
}

/// The domain name of a key (with the trailing dot), `None` outside `path`:
/// `/skydns/local/skydns/web/1` is `1.web.skydns.local.`.
pub fn name_of(path: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(path.trim_end_matches('/'))?;
    let rest = rest.strip_prefix('/')?;
    let mut name: Vec<&str> = rest.split('/').filter(|l| !l.is_empty()).collect();
    if name.is_empty() {
        return None;
    }
    name.reverse();
    Some(format!("{}.", name.join(".")))
}

/// A record found under a name, with the key it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub record: Record,
    pub lease: i64,
}

/// Every record in the subtree of `name` (the name's own key and every key
/// below it), as CoreDNS's lookup without wildcards. Values that are not
/// records are skipped.
pub fn lookup(snapshot: &Snapshot, path: &str, name: &str) -> Result<Vec<Found>, NotWatched> {
    let key = key_of(path, name);
    let mut out = Vec::new();
    if let Some(e) = snapshot.get(key.as_bytes()).ok().flatten()
        && let Ok(record) = Record::parse(&e.value)
    {
        out.push(Found {
            key: key.clone(),
            record,
            lease: e.lease,
        });
    }
    for (k, e) in snapshot.range(format!("{key}/").as_bytes())? {
        if let Ok(record) = Record::parse(&e.value) {
            out.push(Found {
                key: String::from_utf8_lossy(k).into_owned(),
                record,
                lease: e.lease,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names() {
        assert_eq!(
            key_of("/skydns", "rails.production.east.skydns.local."),
            "/skydns/local/skydns/east/production/rails"
        );
        assert_eq!(
            key_of("/skydns/", "Web.SkyDNS.local"),
            "/skydns/local/skydns/web"
        );
        assert_eq!(
            name_of("/skydns", "/skydns/local/skydns/web/1").as_deref(),
            Some("1.web.skydns.local.")
        );
        assert_eq!(name_of("/skydns", "/other/local"), None);
        assert_eq!(name_of("/skydns", "/skydns"), None);
    }

    #[test]
    fn records_parse_as_coredns_writes_them() {
        let r = Record::parse(br#"{"host":"10.0.0.1","port":8080,"ttl":60,"extra":1}"#).unwrap();
        assert_eq!(r.host, "10.0.0.1");
        assert_eq!(r.port, 8080);
        assert_eq!(r.ttl, 60);
        assert_eq!(r.priority, 0);
        assert!(
            Record::parse(b"nope")
                .unwrap_err()
                .contains("not a SkyDNS record")
        );
        let back = serde_json::to_string(&r).unwrap();
        assert_eq!(back, r#"{"host":"10.0.0.1","port":8080,"ttl":60}"#);
    }
}
