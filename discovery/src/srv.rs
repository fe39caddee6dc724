//! DNS SRV bootstrap (etcd's `--discovery-srv`): the members are the
//! targets of `_etcd-server-ssl[-<name>]._tcp.<domain>` (https) and
//! `_etcd-server[-<name>]._tcp.<domain>` (http); clients, learners and
//! proxies reach the cluster through `_etcd-client-ssl[-<name>]._tcp` and
//! `_etcd-client[-<name>]._tcp`. An agent finds itself among the targets
//! by its advertised peer URLs (the same URL, or the same address once
//! both are resolved).
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use crate::registry::DiscoveryError;

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub domain: String,
    /// `--discovery-srv-name`: a suffix of the service names.
    pub service_name: String,
    /// The DNS server to ask (`--discovery-srv-nameserver`); the system's
    /// when unset.
    pub nameserver: Option<SocketAddr>,
}

/// One SRV target as a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Srv {
    fn resolver(&self) -> Result<TokioResolver, DiscoveryError> {
        let err = |e: hickory_resolver::net::NetError| {
            DiscoveryError::Other(format!("DNS resolver: {e}"))
        };
        let builder = match self.nameserver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => Resolver::builder_tokio().map_err(err)?,
        };
        builder.build().map_err(err)
    }

    fn service(&self, base: &str) -> String {
        let suffix = if self.service_name.is_empty() {
            String::new()
        } else {
            format!("-{}", self.service_name)
        };
        format!(
            "_{base}{suffix}._tcp.{}.",
            self.domain.trim_end_matches('.')
        )
    }

    /// The targets of `_<base>-ssl` (https) then `_<base>` (http). No
    /// record at all is an error naming both services.
    async fn targets(&self, base: &str) -> Result<Vec<Target>, DiscoveryError> {
        let resolver = self.resolver()?;
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (svc, scheme) in [(format!("{base}-ssl"), "https"), (base.to_string(), "http")] {
            let name = self.service(&svc);
            match resolver.srv_lookup(name.as_str()).await {
                Ok(lookup) => {
                    for r in lookup.answers() {
                        if let RData::SRV(srv) = &r.data {
                            let host = srv.target.to_ascii().trim_end_matches('.').to_string();
                            out.push(Target {
                                url: format!("{scheme}://{host}:{}", srv.port),
                                host,
                                port: srv.port,
                            });
                        }
                    }
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        if out.is_empty() {
            return Err(DiscoveryError::Other(format!(
                "error querying DNS SRV records for {}: {}",
                self.domain,
                errors.join("; ")
            )));
        }
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out.dedup();
        Ok(out)
    }

    async fn addrs(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return vec![SocketAddr::new(ip, port)];
        }
        let Ok(resolver) = self.resolver() else {
            return Vec::new();
        };
        match resolver.lookup_ip(format!("{host}.")).await {
            Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The initial cluster the server records give, as etcd's `GetCluster`
    /// builds it: this agent's entry under `name` with the URL of the
    /// record that is its own, the others under temporary names (they
    /// publish their own once running). `None` when no record is this
    /// agent's.
    pub async fn cluster(
        &self,
        name: &str,
        peer_urls: &[String],
    ) -> Result<Option<Vec<(String, String)>>, DiscoveryError> {
        let targets = self.targets("etcd-server").await?;
        let mut mine = Vec::new();
        for u in peer_urls {
            if let Ok(p) = url::Url::parse(u)
                && let (Some(h), Some(port)) = (p.host_str(), p.port_or_known_default())
            {
                mine.push((
                    u.clone(),
                    self.addrs(h.trim_matches(['[', ']']), port).await,
                ));
            }
        }
        let mut out = Vec::new();
        let mut found = false;
        let mut temp = 0;
        for t in &targets {
            let resolved = self.addrs(&t.host, t.port).await;
            let me = mine
                .iter()
                .any(|(u, addrs)| *u == t.url || addrs.iter().any(|a| resolved.contains(a)));
            if me {
                found = true;
                out.push((name.to_string(), t.url.clone()));
            } else {
                out.push((temp.to_string(), t.url.clone()));
                temp += 1;
            }
        }
        Ok(found.then_some(out))
    }

    /// Client URLs from the client records (for learners and proxies).
    pub async fn client_urls(&self) -> Result<Vec<String>, DiscoveryError> {
        Ok(self
            .targets("etcd-client")
            .await?
            .into_iter()
            .map(|t| t.url)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        let s = Srv {
            domain: "example.com".into(),
            service_name: String::new(),
            nameserver: None,
        };
        assert_eq!(
            s.service("etcd-server-ssl"),
            "_etcd-server-ssl._tcp.example.com."
        );
        let s = Srv {
            service_name: "foo".into(),
            ..s
        };
        assert_eq!(
            s.service("etcd-client"),
            "_etcd-client-foo._tcp.example.com."
        );
    }
}
