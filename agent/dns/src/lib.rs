//! DNS answered from keys: the SkyDNS / CoreDNS-etcd layout
//! (`/skydns/local/skydns/web/1` → `1.web.skydns.local.`) served
//! authoritatively over UDP and TCP on hickory-server.
//!
//! - **Never a read per query.** The agent's [`View`] watches the path;
//!   every snapshot it publishes is turned into an [`Index`] (unchanged keys
//!   keep their parsed record) and swapped in behind an `Arc`. A question is
//!   a zone match and one ordered range scan of the index.
//! - **Lease TTLs.** Remaining TTLs are asked with `LeaseTimeToLive` when a
//!   lease first appears and every [`LEASE_REFRESH`], cached with the time
//!   they were asked; an answer's TTL counts down from there.
//! - **Fail static.** A stale view keeps the last index answering; the
//!   index says why it is stale (`GET /v1/dns`).
//! - **Answers** follow CoreDNS's etcd plugin (see [`answer`]).
#![forbid(unsafe_code)]

pub mod answer;
pub mod config;
pub mod index;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use cairn_proto::etcdserverpb::{
    LeaseTimeToLiveRequest, RangeRequest, kv_client::KvClient, lease_client::LeaseClient,
};
use cairn_view::{Interest, Snapshot, View};
use tokio::sync::watch;

pub use config::DnsConfig;
pub use index::{Index, LeaseTtl, Settings};
use server::{Handler, Shared};

/// How often the cached remaining TTLs of leases are asked again (a lease
/// kept alive would otherwise seem to run out).
pub const LEASE_REFRESH: Duration = Duration::from_secs(10);
/// How often the agent is asked whether it can confirm current data.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Idle TCP connections are closed after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Lease TTL requests in flight at once.
const LEASE_CONCURRENCY: usize = 32;

/// A running DNS server.
#[derive(Clone)]
pub struct Dns {
    shared: Arc<Shared>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

impl Dns {
    /// Binds `cfg.listen` (UDP and TCP; an error names the address), then
    /// serves until `stop` turns true. The index follows `view`.
    pub async fn start(
        cfg: &DnsConfig,
        view: View,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Dns> {
        // One UDP socket per core (SO_REUSEPORT): hickory runs one receive
        // loop per socket, and the kernel spreads clients over them. Another
        // cairn already serving this address shares a UDP port that way,
        // but its TCP listener (no SO_REUSEPORT) makes our TCP bind below
        // fail, so a second agent on one address still stops.
        let loops = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let bind_udp = |a: SocketAddr| {
            udp_socket(a).with_context(|| format!("[dns] listen: binding UDP {}", cfg.listen))
        };
        let first = bind_udp(cfg.listen)?;
        let udp_addr = first.local_addr()?;
        let mut udps = vec![first];
        for _ in 1..loops {
            udps.push(bind_udp(udp_addr)?);
        }
        let tcp = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("[dns] listen: binding TCP {}", cfg.listen))?;
        let tcp_addr = tcp.local_addr()?;
        let settings = Arc::new(Settings::from(cfg));
        let shared = Arc::new(Shared {
            index: RwLock::new(Arc::new(Index::empty(settings.clone()))),
            forward: cfg.forward.clone(),
            queries: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let mut server = hickory_server::Server::new(Handler(shared.clone()));
        for u in udps {
            server.register_socket(u);
        }
        server.register_listener(tcp, TCP_IDLE, 64);
        tokio::spawn({
            let mut stop = stop.clone();
            async move {
                tokio::select! {
                    _ = stopped(&mut stop) => { let _ = server.shutdown_gracefully().await; }
                    r = server.block_until_done() => {
                        if let Err(e) = r { tracing::error!(error = %e, "dns server stopped"); }
                    }
                }
            }
        });
        let indexer = Indexer {
            shared: shared.clone(),
            settings,
            view,
        };
        tokio::spawn(async move {
            indexer.run(&mut stop).await;
        });
        tracing::info!(udp = %udp_addr, tcp = %tcp_addr, zones = ?cfg.zones, "dns: serving");
        Ok(Dns {
            shared,
            udp: udp_addr,
            tcp: tcp_addr,
        })
    }

    /// The index answers read now.
    pub fn index(&self) -> Arc<Index> {
        self.shared.index()
    }

    /// `GET /v1/dns`: zones, record counts, the index's revision and
    /// whether (and why) it is stale.
    pub fn router(&self) -> Router {
        let me = self.clone();
        Router::new().route(
            "/v1/dns",
            axum::routing::get(move || {
                let me = me.clone();
                async move { axum::Json(me.status()) }
            }),
        )
    }

    /// Questions answered so far.
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> serde_json::Value {
        let idx = self.index();
        let mut per_zone = serde_json::Map::new();
        for z in &idx.settings.zones {
            let n = idx
                .items
                .keys()
                .filter(|k| index::in_zone(&idx.name_of(k), z))
                .count();
            per_zone.insert(z.clone(), n.into());
        }
        serde_json::json!({
            "listen": { "udp": self.udp.to_string(), "tcp": self.tcp.to_string() },
            "zones": per_zone,
            "records": idx.items.len(),
            "invalid": idx.invalid,
            "leases": idx.leases.len(),
            "revision": idx.revision,
            "stale": idx.stale,
            "queries": self.shared.queries.load(Ordering::Relaxed),
            "forwarded": self.shared.forwarded.load(Ordering::Relaxed),
        })
    }
}

/// A non-blocking UDP socket on `addr` with SO_REUSEPORT (a port another
/// process holds without it still fails to bind).
fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Turns view snapshots into indexes.
struct Indexer {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    view: View,
}

impl Indexer {
    async fn run(self, stop: &mut watch::Receiver<bool>) {
        let prefix = format!("{}/", self.settings.path);
        let interest = Interest::prefix(prefix.clone());
        let mut snaps = self.view.subscribe();
        // Ask for the range; until it is synced the index stays empty (and
        // stale). The want is retried while the agent is unreachable.
        loop {
            match self
                .view
                .want(vec![interest.clone()], Duration::from_secs(5))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "dns: waiting for the view");
                    if *stop.borrow() {
                        return;
                    }
                }
            }
        }
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leases_asked = Instant::now();
        // Why the agent could not confirm the data is current, from the
        // last probe. The view only notices a broken stream; behind a proxy
        // whose upstream is gone, the stream stays open and silent.
        let mut probe: Option<String> = None;
        loop {
            let snap = snaps.borrow_and_update().clone();
            self.apply(&snap, &interest, &prefix, probe.as_deref())
                .await;
            tokio::select! {
                r = snaps.changed() => if r.is_err() { return },
                _ = tick.tick() => {
                    probe = self.probe().await.err().map(|e| format!("{e:#}"));
                    if leases_asked.elapsed() >= LEASE_REFRESH {
                        leases_asked = Instant::now();
                        let idx = self.shared.index();
                        let ids = idx.lease_ids();
                        if !ids.is_empty() && idx.stale.is_none() {
                            let fresh = self.lease_ttls(&ids).await;
                            let mut next = (*self.shared.index()).clone();
                            next.leases.extend(fresh);
                            self.publish(next);
                        }
                    }
                }
                _ = stopped(stop) => return,
            }
        }
    }

    /// A linearizable read of one key through the agent: it answers only
    /// when the agent (or the proxy's upstream) can confirm current data.
    async fn probe(&self) -> anyhow::Result<()> {
        let mut kv = KvClient::new(self.view.channel());
        let req = RangeRequest {
            key: self.settings.path.as_bytes().to_vec(),
            ..Default::default()
        };
        tokio::time::timeout(PROBE_EVERY, kv.range(req))
            .await
            .context("the agent did not answer a read in time")?
            .context("the agent could not answer a read")?;
        Ok(())
    }

    fn publish(&self, index: Index) {
        *self.shared.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
    }

    async fn apply(&self, snap: &Snapshot, interest: &Interest, prefix: &str, probe: Option<&str>) {
        let prev = self.shared.index();
        if !snap.covers(interest) {
            return;
        }
        let stale = snap.stale().or(probe).map(str::to_string);
        if snap.revision() == prev.revision && prev.stale == stale {
            return;
        }
        if snap.revision() == prev.revision {
            // Only staleness changed: keep the records, say why.
            let mut next = (*prev).clone();
            next.stale = stale;
            self.publish(next);
            return;
        }
        let Ok(entries) = snap.range(prefix.as_bytes()) else {
            return;
        };
        let mut next = Index::build(
            self.settings.clone(),
            snap.revision(),
            entries
                .iter()
                .map(|(k, e)| (*k, e.value.as_slice(), e.lease, e.mod_revision)),
            Some(&prev),
        );
        next.stale = stale;
        let unknown: Vec<i64> = next
            .lease_ids()
            .into_iter()
            .filter(|l| !next.leases.contains_key(l))
            .collect();
        if !unknown.is_empty() {
            let fresh = self.lease_ttls(&unknown).await;
            next.leases.extend(fresh);
        }
        tracing::debug!(
            revision = next.revision,
            records = next.items.len(),
            "dns: index"
        );
        self.publish(next);
    }

    /// Remaining TTLs of `ids`, as the agent answers them now. A lease the
    /// agent cannot answer for is left out (its records use their own TTL).
    async fn lease_ttls(&self, ids: &[i64]) -> HashMap<i64, LeaseTtl> {
        use futures::StreamExt;
        let client = LeaseClient::new(self.view.channel());
        futures::stream::iter(ids.iter().copied())
            .map(|id| {
                let mut client = client.clone();
                async move {
                    let fetched = Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false }),
                    )
                    .await;
                    match r {
                        Ok(Ok(resp)) => Some((
                            id,
                            LeaseTtl {
                                ttl: resp.into_inner().ttl,
                                fetched,
                            },
                        )),
                        _ => None,
                    }
                }
            })
            .buffer_unordered(LEASE_CONCURRENCY)
            .filter_map(|x| async move { x })
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests;
