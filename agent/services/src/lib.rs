//! Services registered under leases: Consul's agent services, written in
//! the SkyDNS layout so that every host's DNS and templates see them.
//!
//! Each service of this host (a `[[service]]` block of the `--config`
//! file, or one registered at run time through `PUT /v1/service/register`)
//! has one task ([`run_service`]). While the service's check passes, the
//! task holds a lease (`ttl`, default 10 s) and keeps the SkyDNS record
//! `<path>/<domain reversed>/<name>/<node>-<id>` under it alive. When the
//! check fails it revokes the lease, so the record vanishes at once; when
//! the agent dies the lease expires and the record goes with it; when the
//! check passes again the service is registered again under a new lease.
//!
//! Like render and DNS, this is a client of the agent's own etcd API (its
//! local socket or client URL), so it works on every role.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, kv_client::KvClient,
    lease_client::LeaseClient,
};
use cairn_view::skydns::{self, Record};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::Channel;

mod check;
pub mod http;

pub use check::{Check, CheckDef, CheckKind};

/// A service as configured: a `[[service]]` block, or the JSON body of
/// `PUT /v1/service/register`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    /// The DNS label the service answers under (`web` → `web.<domain>`).
    pub name: String,
    /// Unique on this host; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// An IP (A/AAAA records) or a host name (CNAME / SRV target).
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub priority: i32,
    /// The zone the name is in (default `skydns.local.`).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The SkyDNS key path (default `/skydns`, as CoreDNS).
    #[serde(default = "default_path")]
    pub path: String,
    /// Lease TTL: how long the record outlives this agent (default "10s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<check::CheckDef>,
}

fn default_domain() -> String {
    "skydns.local.".into()
}

fn default_path() -> String {
    skydns::DEFAULT_PATH.into()
}

/// The lease TTL when a service does not give one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// A validated service.
#[derive(Clone, Debug)]
pub struct Service {
    pub def: ServiceDef,
    pub id: String,
    pub ttl: Duration,
    pub check: Option<Check>,
}

fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ServiceDef {
    /// Checks every field; the error names the service and the field.
    pub fn validate(self) -> anyhow::Result<Service> {
        let id = self.id.clone().unwrap_or_else(|| self.name.clone());
        let what = format!("service {id:?}");
        if !label_ok(&self.name) {
            bail!(
                "{what}: name {:?} must be one DNS label (letters, digits, '-', '_')",
                self.name
            );
        }
        if !label_ok(&id) {
            bail!("{what}: id must be letters, digits, '-' or '_'");
        }
        if self.address.trim().is_empty() {
            bail!("{what}: address is empty");
        }
        if self.domain.trim_matches('.').is_empty() {
            bail!("{what}: domain is empty");
        }
        if !self.path.starts_with('/') {
            bail!("{what}: path {:?} must start with '/'", self.path);
        }
        let ttl = match &self.ttl {
            None => DEFAULT_TTL,
            Some(t) => cairn_view::parse_duration(t)
                .filter(|d| d.as_secs() >= 1)
                .ok_or_else(|| {
                    anyhow::anyhow!("{what}: ttl {t:?} is not a duration of at least 1s")
                })?,
        };
        let check = match &self.check {
            None => None,
            Some(c) => Some(c.validate().with_context(|| format!("{what}: check"))?),
        };
        Ok(Service {
            def: self,
            id,
            ttl,
            check,
        })
    }
}

/// The `[[service]]` blocks of a `--config` document.
pub fn parse(doc: &toml::Table) -> anyhow::Result<Vec<Service>> {
    let Some(v) = doc.get("service") else {
        return Ok(Vec::new());
    };
    // Deserialized from text, so that an error shows the offending line
    // (a `Value` carries no positions).
    #[derive(Deserialize)]
    struct Blocks {
        service: Vec<ServiceDef>,
    }
    let mut only = toml::Table::new();
    only.insert("service".into(), v.clone());
    let text = toml::to_string(&only).context("[[service]]")?;
    let defs = toml::from_str::<Blocks>(&text)
        .map_err(|e| anyhow::anyhow!("[[service]]: {}", e.to_string().trim_end()))?
        .service;
    let mut out: Vec<Service> = Vec::new();
    for d in defs {
        let s = d.validate()?;
        if out.iter().any(|o| o.id == s.id) {
            bail!(
                "[[service]]: two services with id {:?} (give one an id)",
                s.id
            );
        }
        out.push(s);
    }
    Ok(out)
}

impl Service {
    /// The record's key: one leaf per host and service id under the name.
    pub fn key(&self, node: &str) -> String {
        let node: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!(
            "{}/{}-{}",
            skydns::key_of(
                &self.def.path,
                &format!("{}.{}", self.def.name, self.def.domain)
            ),
            node,
            self.id.to_ascii_lowercase()
        )
    }

    pub fn record(&self) -> Record {
        Record {
            host: self.def.address.clone(),
            port: self.def.port,
            priority: self.def.priority,
            weight: self.def.weight,
            ttl: self.ttl.as_secs() as u32,
            tags: self.def.tags.clone(),
            ..Default::default()
        }
    }
}

/// What a service's task reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The check passes (always, without a check).
    pub passing: bool,
    /// The record is in the store under a live lease.
    pub registered: bool,
    /// The lease holding the record (0 when not registered).
    pub lease: i64,
    /// The last check's output or error, or the last registration error.
    pub output: String,
}

/// A TTL check's report from the application (`PUT /v1/service/<id>/pass`).
#[derive(Clone, Debug)]
struct Report {
    pass: bool,
    at: Instant,
    note: String,
}

struct Running {
    service: Service,
    status: watch::Receiver<Status>,
    reports: watch::Sender<Option<Report>>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

/// This host's services; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    channel: Channel,
    node: String,
    running: Arc<Mutex<BTreeMap<String, Running>>>,
    /// The ids that came from the config file (a reload replaces these and
    /// leaves those registered through the API alone).
    from_config: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

/// One service as listed by `GET /v1/services`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub key: String,
    pub service: ServiceDef,
    pub passing: bool,
    pub registered: bool,
    pub lease: i64,
    pub output: String,
}

impl Registry {
    /// Registers `services` through the agent at `endpoint` (`unix:/path`
    /// or a client URL), as host `node`.
    pub fn start(endpoint: &str, node: &str, services: Vec<Service>) -> anyhow::Result<Registry> {
        let reg = Registry {
            channel: cairn_view::channel(endpoint)?,
            node: node.to_string(),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            from_config: Arc::default(),
        };
        for s in services {
            reg.from_config.lock().unwrap().insert(s.id.clone());
            reg.register(s)?;
        }
        Ok(reg)
    }

    /// A reloaded config's services: new ones start, changed ones restart,
    /// those no longer configured stop (their records go now). Services
    /// registered through the API are left alone. Returns (started,
    /// stopped) ids.
    pub async fn reload(&self, services: Vec<Service>) -> (Vec<String>, Vec<String>) {
        let old: Vec<String> = self.from_config.lock().unwrap().iter().cloned().collect();
        let mut stopped = Vec::new();
        for id in &old {
            if !services.iter().any(|s| &s.id == id) {
                self.deregister(id).await;
                stopped.push(id.clone());
            }
        }
        let mut started = Vec::new();
        for s in services {
            let same = self
                .running
                .lock()
                .unwrap()
                .get(&s.id)
                .is_some_and(|r| r.service.def == s.def);
            if !same {
                started.push(s.id.clone());
                let _ = self.register(s);
            }
        }
        let mut ids = self.from_config.lock().unwrap();
        ids.retain(|id| !stopped.contains(id));
        ids.extend(started.iter().cloned());
        (started, stopped)
    }

    /// Starts (or replaces) a service.
    pub fn register(&self, service: Service) -> anyhow::Result<()> {
        let replaced = self.running.lock().unwrap().remove(&service.id);
        if let Some(old) = replaced {
            let _ = old.stop.send(true);
        }
        let (status_tx, status) = watch::channel(Status::default());
        let (reports, reports_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let done = tokio::spawn(run_service(
            self.channel.clone(),
            self.node.clone(),
            service.clone(),
            status_tx,
            reports_rx,
            stop_rx,
        ));
        tracing::info!(service = %service.id, key = %service.key(&self.node), "service registered");
        self.running.lock().unwrap().insert(
            service.id.clone(),
            Running {
                service,
                status,
                reports,
                stop,
                done,
            },
        );
        Ok(())
    }

    /// Stops a service and removes its record (revokes its lease). False
    /// if there is no such service.
    pub async fn deregister(&self, id: &str) -> bool {
        let Some(r) = self.running.lock().unwrap().remove(id) else {
            return false;
        };
        let _ = r.stop.send(true);
        let _ = r.done.await;
        tracing::info!(service = %id, "service deregistered");
        true
    }

    /// An application's report for a TTL check. `Err` names why it was not
    /// taken (no such service, or its check is not a TTL check).
    pub fn report(&self, id: &str, pass: bool, note: String) -> Result<(), String> {
        let running = self.running.lock().unwrap();
        let Some(r) = running.get(id) else {
            return Err(format!("no service {id:?} on this agent"));
        };
        if !matches!(
            r.service.check.as_ref().map(|c| &c.kind),
            Some(CheckKind::Ttl(_))
        ) {
            return Err(format!("service {id:?} has no ttl check"));
        }
        let _ = r.reports.send(Some(Report {
            pass,
            at: Instant::now(),
            note,
        }));
        Ok(())
    }

    pub fn list(&self) -> Vec<Listed> {
        self.running
            .lock()
            .unwrap()
            .values()
            .map(|r| {
                let st = r.status.borrow().clone();
                Listed {
                    id: r.service.id.clone(),
                    key: r.service.key(&self.node),
                    service: r.service.def.clone(),
                    passing: st.passing,
                    registered: st.registered,
                    lease: st.lease,
                    output: st.output,
                }
            })
            .collect()
    }

    /// Stops every service (their leases are revoked: the records go now,
    /// not a TTL later).
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        for id in ids {
            self.deregister(&id).await;
        }
    }
}

async fn grant(channel: &Channel, ttl: Duration) -> anyhow::Result<i64> {
    let r = LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest {
            ttl: ttl.as_secs() as i64,
            id: 0,
        })
        .await
        .context("lease grant")?
        .into_inner();
    if !r.error.is_empty() {
        bail!("lease grant: {}", r.error);
    }
    Ok(r.id)
}

async fn revoke(channel: &Channel, lease: i64) {
    if let Err(e) = LeaseClient::new(channel.clone())
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
    {
        tracing::debug!(lease, error = %e, "lease revoke");
    }
}

/// Renews `lease` once; false when it is gone (expired or revoked).
async fn keep_alive(channel: &Channel, lease: i64) -> anyhow::Result<bool> {
    let req = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
    let mut answers = LeaseClient::new(channel.clone())
        .lease_keep_alive(req)
        .await
        .context("lease keep-alive")?
        .into_inner();
    match answers.message().await.context("lease keep-alive")? {
        Some(a) => Ok(a.ttl > 0),
        None => bail!("lease keep-alive: no answer"),
    }
}

/// The life of one service: check, register under a lease while passing,
/// renew, revoke when failing or stopped.
async fn run_service(
    channel: Channel,
    node: String,
    service: Service,
    status: watch::Sender<Status>,
    mut reports: watch::Receiver<Option<Report>>,
    mut stop: watch::Receiver<bool>,
) {
    let key = service.key(&node);
    let value = serde_json::to_vec(&service.record()).expect("a record serializes");
    let renew_every = (service.ttl / 3).max(Duration::from_millis(300));
    let mut lease: Option<i64> = None;
    let mut passing = service.check.is_none();
    let mut output = String::new();
    let mut next_check = Instant::now();
    let mut next_renew = Instant::now();
    loop {
        let now = Instant::now();
        if let Some(c) = &service.check
            && now >= next_check
        {
            let (ok, out) = match &c.kind {
                CheckKind::Ttl(ttl) => match &*reports.borrow_and_update() {
                    Some(r) if r.pass && r.at.elapsed() < *ttl => (true, r.note.clone()),
                    Some(r) if r.pass => (false, format!("TTL expired ({ttl:?} without a pass)")),
                    Some(r) => (false, r.note.clone()),
                    None => (false, "no report yet".into()),
                },
                _ => c.run().await,
            };
            if ok != passing {
                tracing::info!(service = %service.id, passing = ok, output = %out, "service check changed");
            }
            passing = ok;
            output = out;
            next_check = Instant::now() + c.interval;
        }
        match (passing, lease) {
            (true, None) => match register(&channel, &key, &value, service.ttl).await {
                Ok(id) => {
                    lease = Some(id);
                    next_renew = Instant::now() + renew_every;
                }
                Err(e) => {
                    output = format!("{e:#}");
                    tracing::warn!(service = %service.id, error = %output, "service registration failed");
                }
            },
            (true, Some(id)) if Instant::now() >= next_renew => {
                match keep_alive(&channel, id).await {
                    Ok(true) => next_renew = Instant::now() + renew_every,
                    Ok(false) => {
                        tracing::warn!(service = %service.id, lease = id, "service lease lost; registering again");
                        lease = None;
                        continue;
                    }
                    Err(e) => {
                        // Keep trying until the lease would have expired;
                        // the next renewal finds out whether it did.
                        output = format!("{e:#}");
                        next_renew = Instant::now() + Duration::from_millis(500);
                    }
                }
            }
            (false, Some(id)) => {
                revoke(&channel, id).await;
                lease = None;
            }
            _ => {}
        }
        status.send_replace(Status {
            passing,
            registered: lease.is_some(),
            lease: lease.unwrap_or(0),
            output: output.clone(),
        });
        let wake = if lease.is_some() {
            next_renew.min(next_check)
        } else if passing {
            // Registration failed: retry soon.
            Instant::now() + Duration::from_millis(500)
        } else {
            next_check
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            r = reports.changed() => {
                if r.is_ok() {
                    next_check = Instant::now();
                }
            }
            _ = stop.changed() => {
                if let Some(id) = lease {
                    revoke(&channel, id).await;
                }
                return;
            }
        }
    }
}

async fn register(
    channel: &Channel,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> anyhow::Result<i64> {
    let lease = grant(channel, ttl).await?;
    KvClient::new(channel.clone())
        .put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {key}"))?;
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn parses_blocks_with_defaults() {
        let s = parse(&doc(r#"
name = "ignored"
[[service]]
name = "web"
address = "10.0.0.5"
port = 8080
tags = ["v1"]
check = { http = "http://127.0.0.1:8080/health", interval = "2s", timeout = "1s" }
[[service]]
name = "web"
id = "web2"
address = "10.0.0.6"
ttl = "30s"
check = { ttl = "5s" }
"#))
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].id, "web");
        assert_eq!(s[0].ttl, DEFAULT_TTL);
        assert_eq!(s[0].key("host-1"), "/skydns/local/skydns/web/host-1-web");
        assert_eq!(s[1].key("Host.A"), "/skydns/local/skydns/web/host-a-web2");
        assert_eq!(s[1].ttl, Duration::from_secs(30));
        let r = s[0].record();
        assert_eq!((r.host.as_str(), r.port, r.ttl), ("10.0.0.5", 8080, 10));
        assert_eq!(r.tags, vec!["v1".to_string()]);
        assert!(matches!(
            s[1].check.as_ref().unwrap().kind,
            CheckKind::Ttl(_)
        ));
    }

    #[test]
    fn bad_blocks_name_the_problem() {
        let cases = [
            ("[[service]]\nname = \"web\"", "address"),
            (
                "[[service]]\nname = \"a.b\"\naddress = \"x\"",
                "one DNS label",
            ),
            (
                "[[service]]\nname = \"web\"\naddress = \"x\"\nport = 70000",
                "port",
            ),
            (
                "[[service]]\nname = \"web\"\naddress = \"x\"\nprot = 1",
                "prot",
            ),
            (
                "[[service]]\nname = \"web\"\naddress = \"x\"\nttl = \"soon\"",
                "ttl",
            ),
            (
                "[[service]]\nname = \"web\"\naddress = \"x\"\n[[service]]\nname = \"web\"\naddress = \"y\"",
                "two services",
            ),
            (
                "[[service]]\nname = \"web\"\naddress = \"x\"\ncheck = { tcp = \"a:1\", http = \"http://b\" }",
                "exactly one",
            ),
            (
                "[[service]]\nname = \"web\"\naddress = \"x\"\ncheck = { interval = \"1s\" }",
                "exactly one",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(&doc(text)).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
