//! Bootstrap by discovery: runs the configured method and decides the
//! agent's role (`role.rs`).
use crate::registry::{self, DiscoveryError, Me, Registry, Retry};
use crate::role::{self, Decision, Fallback, Requested};
use crate::url::UrlRegistry;
use crate::v3::V3Registry;

/// Where the cluster is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `--discovery <url>`.
    Url(String),
    /// `--discovery-token` with `--discovery-endpoints`.
    V3 {
        token: String,
        endpoints: Vec<String>,
        /// TLS to `https://` endpoints (`--discovery-cacert`, ...).
        tls: crate::tls::ClientTls,
    },
    /// `--discovery-srv` (with `--discovery-srv-name`).
    Srv(crate::srv::Srv),
}

/// A bootstrap by discovery, from the configuration.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub method: Method,
    pub requested: Requested,
    pub fallback: Fallback,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub retry: Retry,
    /// `--initial-cluster-token` (the token of a DNS SRV bootstrap).
    pub initial_cluster_token: String,
}

impl Bootstrap {
    /// The cluster token member IDs are derived with: the discovery URL
    /// (as etcd does) or the v3 token.
    pub fn cluster_token(&self) -> String {
        match &self.method {
            Method::Url(u) => u.clone(),
            Method::V3 { token, .. } => token.clone(),
            Method::Srv(_) => self.initial_cluster_token.clone(),
        }
    }

    /// Finds the cluster; `member_id` is this agent's ID (hex) under
    /// [`Bootstrap::cluster_token`].
    pub async fn run(&self, member_id: &str) -> Result<Decision, DiscoveryError> {
        match &self.method {
            Method::Url(u) => self.with(&UrlRegistry::new(u)?, member_id).await,
            Method::V3 {
                token,
                endpoints,
                tls,
            } => {
                self.with(&V3Registry::new(token, endpoints, tls.clone())?, member_id)
                    .await
            }
            Method::Srv(srv) => self.srv(srv).await,
        }
    }

    async fn srv(&self, srv: &crate::srv::Srv) -> Result<Decision, DiscoveryError> {
        let mine = if self.requested == Requested::Voter {
            srv.cluster(&self.name, &self.peer_urls).await?
        } else {
            None
        };
        let found = match mine {
            Some(initial_cluster) => role::Found::Member { initial_cluster },
            None => {
                if self.requested == Requested::Voter {
                    tracing::warn!(
                        domain = %srv.domain,
                        "no DNS SRV server record is this agent's (by --initial-advertise-peer-urls)"
                    );
                }
                role::Found::Full {
                    client_urls: srv.client_urls().await.unwrap_or_default(),
                }
            }
        };
        let decision = role::decide(self.requested, &found, self.fallback);
        tracing::info!(?decision, "DNS SRV discovery decided this agent's role");
        Ok(decision)
    }

    async fn with<R: Registry>(
        &self,
        reg: &R,
        member_id: &str,
    ) -> Result<Decision, DiscoveryError> {
        let found = if self.requested == Requested::Voter {
            let me = Me {
                id: member_id.to_string(),
                value: self
                    .peer_urls
                    .iter()
                    .map(|u| format!("{}={u}", self.name))
                    .collect::<Vec<_>>()
                    .join(","),
                client_urls: self.client_urls.clone(),
            };
            match registry::join(reg, &me, self.retry).await? {
                registry::Found::Member(initial_cluster) => role::Found::Member { initial_cluster },
                registry::Found::Full(_) => role::Found::Full {
                    client_urls: registry::lookup(reg, self.retry).await?,
                },
            }
        } else {
            // A learner or proxy never registers: it waits for the voters,
            // then reaches them through their client URLs.
            registry::wait_full(reg, self.retry).await?;
            role::Found::Full {
                client_urls: registry::lookup(reg, self.retry).await?,
            }
        };
        let decision = role::decide(self.requested, &found, self.fallback);
        tracing::info!(?decision, "discovery decided this agent's role");
        Ok(decision)
    }
}
