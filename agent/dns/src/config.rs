//! The `[dns]` table of the agent's `--config` file.
use std::net::SocketAddr;

use anyhow::{Context, bail};
use hickory_proto::rr::Name;
use serde::Deserialize;

/// CoreDNS's `defaultTTL`: a record with no `ttl` and no lease.
pub const DEFAULT_TTL: u32 = 300;
/// CoreDNS's `min-lease-ttl`: a lease's remaining TTL is never answered
/// lower (clients would re-ask in a tight loop near the end of a lease).
pub const DEFAULT_MIN_TTL: u32 = 30;
/// CoreDNS's `max-lease-ttl`.
pub const DEFAULT_MAX_TTL: u32 = 86_400;

/// What `[dns]` says, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Served on UDP and TCP.
    pub listen: SocketAddr,
    /// Lower-case, fully qualified (`skydns.local.`), longest first.
    pub zones: Vec<String>,
    /// The key prefix (CoreDNS's `path`), without a trailing `/`.
    pub path: String,
    pub ttl: u32,
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// Upstream resolvers for names outside `zones`; empty: REFUSED.
    pub forward: Vec<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: String,
    zones: Vec<String>,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_ttl")]
    ttl: u32,
    #[serde(default = "default_min_ttl")]
    min_ttl: u32,
    #[serde(default = "default_max_ttl")]
    max_ttl: u32,
    #[serde(default)]
    forward: Vec<String>,
}

fn default_path() -> String {
    cairn_view::skydns::DEFAULT_PATH.to_string()
}
fn default_ttl() -> u32 {
    DEFAULT_TTL
}
fn default_min_ttl() -> u32 {
    DEFAULT_MIN_TTL
}
fn default_max_ttl() -> u32 {
    DEFAULT_MAX_TTL
}

impl DnsConfig {
    /// The `[dns]` table of `doc`, `None` without one. Errors name the key.
    pub fn from_doc(doc: &toml::Table) -> anyhow::Result<Option<DnsConfig>> {
        let Some(v) = doc.get("dns") else {
            return Ok(None);
        };
        let raw: Raw = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("[dns]: {}", e.message().trim()))?;
        let listen: SocketAddr = raw.listen.parse().with_context(|| {
            format!(
                "[dns] listen = {:?}: expected ip:port, e.g. \"127.0.0.1:8053\"",
                raw.listen
            )
        })?;
        if raw.zones.is_empty() {
            bail!("[dns] zones: give at least one zone, e.g. [\"skydns.local.\"]");
        }
        let mut zones = Vec::new();
        for z in &raw.zones {
            let fq = format!("{}.", z.trim().trim_end_matches('.')).to_ascii_lowercase();
            if fq == "." || Name::from_ascii(&fq).is_err() {
                bail!("[dns] zones: {z:?} is not a domain name");
            }
            if !zones.contains(&fq) {
                zones.push(fq);
            }
        }
        zones.sort_by_key(|z: &String| std::cmp::Reverse(z.len()));
        if !raw.path.starts_with('/') || raw.path.trim_end_matches('/').is_empty() {
            bail!(
                "[dns] path = {:?}: a key prefix such as \"/skydns\"",
                raw.path
            );
        }
        if raw.min_ttl > raw.max_ttl {
            bail!(
                "[dns] min_ttl = {} is above max_ttl = {}",
                raw.min_ttl,
                raw.max_ttl
            );
        }
        let mut forward = Vec::new();
        for f in &raw.forward {
            let a = f
                .parse::<SocketAddr>()
                .or_else(|_| format!("{f}:53").parse::<SocketAddr>())
                .with_context(|| format!("[dns] forward: {f:?} is not ip:port"))?;
            forward.push(a);
        }
        Ok(Some(DnsConfig {
            listen,
            zones,
            path: raw.path.trim_end_matches('/').to_string(),
            ttl: raw.ttl,
            min_ttl: raw.min_ttl,
            max_ttl: raw.max_ttl,
            forward,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Option<DnsConfig>> {
        DnsConfig::from_doc(&toml::from_str(text).unwrap())
    }

    #[test]
    fn defaults_follow_coredns() {
        let c = parse("[dns]\nlisten = \"127.0.0.1:8053\"\nzones = [\"SkyDNS.local\", \"0.10.in-addr.arpa.\"]\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:8053".parse().unwrap());
        assert_eq!(c.zones, ["0.10.in-addr.arpa.", "skydns.local."]);
        assert_eq!(c.path, "/skydns");
        assert_eq!((c.ttl, c.min_ttl, c.max_ttl), (300, 30, 86_400));
        assert!(c.forward.is_empty());
        assert_eq!(parse("role = \"voter\"\n").unwrap(), None);
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            "[dns]\nlisten = \"127.0.0.1:53\"\nzones = [\"a.\"]\npath = \"/dns/\"\nttl = 60\nmin_ttl = 5\nmax_ttl = 600\nforward = [\"127.0.0.1:5300\", \"10.0.0.1\"]\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.path, "/dns");
        assert_eq!((c.ttl, c.min_ttl, c.max_ttl), (60, 5, 600));
        assert_eq!(
            c.forward,
            vec![
                "127.0.0.1:5300".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e =
            parse("[dns]\nlisten = \"127.0.0.1:53\"\nzones = [\"a.\"]\nzone = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("zone"), "{e:#}");
        assert!(format!("{e:#}").contains("[dns]"), "{e:#}");
        let e = parse("[dns]\nlisten = \"localhost\"\nzones = [\"a.\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("listen"), "{e:#}");
        let e = parse("[dns]\nlisten = \"127.0.0.1:53\"\nzones = []\n").unwrap_err();
        assert!(format!("{e:#}").contains("zones"), "{e:#}");
        let e = parse("[dns]\nzones = [\"a.\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("listen"), "{e:#}");
        let e = parse("[dns]\nlisten = \"127.0.0.1:53\"\nzones = [\"a.\"]\nforward = [\"x\"]\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("forward"), "{e:#}");
        let e = parse(
            "[dns]\nlisten = \"127.0.0.1:53\"\nzones = [\"a.\"]\nmin_ttl = 10\nmax_ttl = 5\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("min_ttl"), "{e:#}");
    }
}
