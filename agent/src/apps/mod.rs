//! The applications' side of the agent: services registered under leases
//! (`cairn-services`), DNS answered from keys (`dns.rs`, `cairn-dns`) and
//! files rendered from keys (`render.rs`, `cairn-render`). Each reads its
//! tables of the TOML `--config` (see [`crate::config::SECTIONS`]) and is
//! a client of this agent's own etcd API (its local socket, or a plain
//! client URL), never of raft: the same code runs on a voter, a learner and
//! a proxy. They share one [`View`] (one watch stream for the agent).
use std::path::PathBuf;

use anyhow::Context;
use axum::Router;
use cairn_view::View;
use tokio::sync::watch;

use crate::config::{Config, ListenAddr};

pub mod dns;
pub mod render;
pub mod report;

/// What every application gets to start with.
pub struct Ctx {
    /// The agent's own etcd API: `unix:/path` or `http://127.0.0.1:port`.
    pub endpoint: String,
    /// The whole `--config` document (empty without one).
    pub doc: toml::Table,
    /// The directory relative paths of the config are taken from.
    pub base_dir: PathBuf,
    /// The `--config` file (re-read on SIGHUP), if any.
    pub config_path: Option<PathBuf>,
    /// This host's name (`--name`).
    pub node: String,
    /// Turns true when the agent stops.
    pub stop: watch::Receiver<bool>,
    /// What the applications need before the agent tells systemd it is
    /// ready (the first full render).
    pub ready: std::sync::Mutex<Vec<crate::notify::Condition>>,
    view: std::sync::OnceLock<View>,
}

impl Ctx {
    /// The agent's one view, connected on first use.
    pub fn view(&self) -> anyhow::Result<View> {
        if let Some(v) = self.view.get() {
            return Ok(v.clone());
        }
        let v = View::connect(&self.endpoint)?;
        Ok(self.view.get_or_init(|| v).clone())
    }
}

/// The running applications: their HTTP routes (merged into the client
/// port's and the socket's) and what must happen when the agent stops.
pub struct Apps {
    pub router: Router,
    /// Conditions for systemd's `READY=1` (see [`crate::notify`]).
    pub ready: std::sync::Mutex<Vec<crate::notify::Condition>>,
    services: Option<cairn_services::Registry>,
    probes: std::sync::Arc<Vec<report::Probe>>,
}

impl Apps {
    /// `http` (a role's own HTTP routes) with the applications' routes, and
    /// their problems and metrics added to its `/health` and `/metrics`.
    pub fn wrap(&self, http: Router) -> Router {
        http.merge(self.router.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.probes.clone(),
                report::layer,
            ))
    }

    /// Stops what must be undone before the agent goes: services revoke
    /// their leases so their records vanish now, not a TTL later.
    pub async fn shutdown(&self) {
        if let Some(s) = &self.services {
            s.shutdown().await;
        }
    }
}

/// The endpoint the applications use to reach this agent: the local
/// socket, else a plain client URL (a wildcard address becomes loopback).
pub fn local_endpoint(cfg: &Config) -> Option<String> {
    if let Some(p) = &cfg.socket {
        return Some(format!("unix:{}", p.display()));
    }
    for u in &cfg.listen_client_urls {
        match &u.addr {
            ListenAddr::Unix(p) => return Some(format!("unix:{}", p.display())),
            ListenAddr::Tcp(a) if !u.tls => {
                let ip = if a.ip().is_unspecified() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    a.ip()
                };
                return Some(format!(
                    "http://{}",
                    std::net::SocketAddr::new(ip, a.port())
                ));
            }
            ListenAddr::Tcp(_) => {}
        }
    }
    None
}

/// Reads the `--config` document for the applications' tables.
pub fn read_doc(cfg: &Config) -> anyhow::Result<(toml::Table, PathBuf)> {
    let Some(path) = &cfg.config_path else {
        return Ok((toml::Table::new(), std::env::current_dir()?));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config {}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing the config {}", path.display()))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or(std::env::current_dir()?);
    Ok((doc, base))
}

/// Checks the applications' tables before the agent touches anything (a
/// bad `[[service]]`, `[dns]` or `[[template]]` stops it at once, naming
/// the problem).
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    let (doc, base_dir) = read_doc(cfg)?;
    cairn_services::parse(&doc)?;
    cairn_render::RenderConfig::from_doc(&doc, &base_dir)?;
    cairn_dns::DnsConfig::from_doc(&doc)?;
    Ok(())
}

/// Starts every application the config asks for. An error (a bad table)
/// stops the agent before it serves anything.
pub async fn start(cfg: &Config, stop: watch::Receiver<bool>) -> anyhow::Result<Apps> {
    let (doc, base_dir) = read_doc(cfg)?;
    let services = cairn_services::parse(&doc)?;
    let wants_any = !services.is_empty()
        || crate::config::SECTIONS
            .iter()
            .any(|s| *s != "service" && doc.contains_key(*s));
    let endpoint = match local_endpoint(cfg) {
        Some(e) => e,
        None if wants_any => anyhow::bail!(
            "[[service]], [dns] and [[template]] reach this agent through its local socket or a plain http client URL; give --socket"
        ),
        // Nothing configured: the service API still answers, registering
        // would fail with a clear error.
        None => "unix:/nonexistent/cairn.sock".to_string(),
    };
    let ctx = Ctx {
        endpoint,
        doc,
        base_dir,
        config_path: cfg.config_path.clone(),
        node: cfg.name.clone(),
        stop,
        ready: Default::default(),
        view: std::sync::OnceLock::new(),
    };
    let registry = cairn_services::Registry::start(&ctx.endpoint, &ctx.node, services)
        .context("[[service]]")?;
    tokio::spawn(reload_services_on_sighup(
        cfg.config_path.clone(),
        registry.clone(),
        ctx.stop.clone(),
    ));
    let mut router = cairn_services::http::router(registry.clone());
    let mut probes = Vec::new();
    if let Some((r, p)) = dns::start(&ctx).await.context("[dns]")? {
        router = router.merge(r);
        probes.push(p);
    }
    if let Some((r, p)) = render::start(&ctx).await.context("[[template]]")? {
        router = router.merge(r);
        probes.push(p);
    }
    Ok(Apps {
        router,
        ready: std::sync::Mutex::new(std::mem::take(&mut *ctx.ready.lock().unwrap())),
        services: Some(registry),
        probes: std::sync::Arc::new(probes),
    })
}

/// SIGHUP (systemd's `ExecReload`): the `[[service]]` blocks are read
/// again; a config that does not parse is refused (logged) and the running
/// services are kept.
async fn reload_services_on_sighup(
    path: Option<PathBuf>,
    registry: cairn_services::Registry,
    mut stop: watch::Receiver<bool>,
) {
    // Installed whatever the config, so that SIGHUP never kills the agent.
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.changed() => return,
        }
        let Some(path) = &path else {
            tracing::info!("SIGHUP: no --config file to reload");
            continue;
        };
        let parsed = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|t| {
                toml::from_str::<toml::Table>(&t)
                    .with_context(|| format!("parsing {}", path.display()))
            })
            .and_then(|doc| cairn_services::parse(&doc));
        match parsed {
            Ok(services) => {
                let (started, stopped) = registry.reload(services).await;
                tracing::info!(?started, ?stopped, "services reloaded (SIGHUP)");
            }
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "SIGHUP: the new [[service]] config is refused; the running services are kept"
            ),
        }
    }
}
