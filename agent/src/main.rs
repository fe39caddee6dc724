//! `cairn`: runs the agent. Takes etcd's flags, `ETCD_*` variables and
//! `--config-file`, so etcd's documented commands work with `cairn` in place
//! of `etcd`.
use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use cairn_agent::api::Api;
use std::sync::Arc;

use cairn_agent::api::forward::StoreSnapshots;
use cairn_agent::config::{ClusterState, Command, Config, ListenAddr, Role};
use cairn_agent::peer::Peers;
use cairn_agent::server::{NodeSettings, Server};
use cairn_agent::{api, serve};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("snapshot") {
        return cairn_agent::snapshot_cli::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("health") {
        return cairn_agent::health_cli::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("service") {
        return cairn_agent::service_cli::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("render") {
        return cairn_agent::render_cli::main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("top") {
        return cairn_agent::top::main(&args[2..]);
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    if std::env::args().nth(1).as_deref() == Some("discovery") {
        return cairn_agent::discovery_cli::main(std::env::args().skip(2).collect());
    }
    let cfg = match Config::from_args_env(std::env::args(), &env) {
        Ok(Command::Run(cfg)) => *cfg,
        Ok(Command::Version) => {
            println!(
                "cairn {} (etcd API {})",
                env!("CARGO_PKG_VERSION"),
                cairn_agent::server::ETCD_VERSION
            );
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("cairn: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = cairn_agent::apps::check(&cfg) {
        eprintln!("cairn: {e:#}");
        return ExitCode::from(2);
    }
    init_tracing(&cfg.log_level, cfg.log_json);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // tokio's LIFO slot runs a task woken by the running one right after
    // it. A put's answer wakes its HTTP/2 connection's task, which then
    // writes that one answer (a `writev` each) before the next answer's
    // task runs; the raft thread finishes a dozen puts at a time. Without
    // the slot the connection task queues behind the other answers and
    // writes them in one go: a third of the `writev`s per put, about 5 %
    // less CPU per put (ARCHITECTURE.md, "Threads").
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: text, or one JSON object per line with
/// `--log-format json` (etcd 3.5's flag) for log shippers.
fn init_tracing(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| {
        // hickory's server logs every DNS query at info: a busy
        // resolver would flood the log. Its warnings and errors stay.
        tracing_subscriber::EnvFilter::new(format!("{level},hickory_server=warn"))
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.init();
    }
}

/// The discovery bootstrap the configuration asks for, if any.
fn bootstrap(cfg: &Config) -> Option<cairn_discovery::Bootstrap> {
    let method = cfg.discovery.clone()?;
    Some(cairn_discovery::Bootstrap {
        method,
        requested: match cfg.role {
            Role::Voter => cairn_discovery::Requested::Voter,
            Role::Learner => cairn_discovery::Requested::Learner,
            Role::Proxy => cairn_discovery::Requested::Proxy,
        },
        fallback: cfg.discovery_fallback,
        name: cfg.name.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
        retry: cairn_discovery::Retry::default(),
        initial_cluster_token: cfg.initial_cluster_token.clone(),
    })
}

async fn run(mut cfg: Config) -> anyhow::Result<()> {
    // Bind everything before touching the data directory, so that an
    // unusable port fails fast and leaves nothing behind.
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for url in &cfg.listen_client_urls {
        match &url.addr {
            ListenAddr::Tcp(addr) => tcp.push((
                TcpListener::bind(addr).await.with_context(|| {
                    format!("listen tcp {addr} (--listen-client-urls {})", url.original)
                })?,
                url.tls,
            )),
            ListenAddr::Unix(path) => unix.push(serve::bind_unix(
                path,
                cfg.socket_mode,
                cfg.socket_group.as_deref(),
            )?),
        }
    }
    if let Some(path) = &cfg.socket {
        unix.push(serve::bind_unix(
            path,
            cfg.socket_mode,
            cfg.socket_group.as_deref(),
        )?);
    }

    // Client TLS is checked before the data directory is touched, like
    // the ports.
    let client_tls = if tcp.iter().any(|(_, tls)| *tls) {
        let hosts: Vec<String> = cfg
            .advertise_client_urls
            .iter()
            .filter_map(|u| cairn_agent::peer::host_port(u).map(|(h, _)| h))
            .collect();
        Some(
            cfg.client_tls
                .server_config(&cfg.data_dir, &hosts)
                .context("client TLS")?,
        )
    } else {
        None
    };

    if cfg.role == Role::Proxy {
        if let Some(b) = bootstrap(&cfg).filter(|_| cfg.endpoints.is_empty()) {
            match b.run("").await? {
                cairn_discovery::Decision::Proxy { endpoints } => cfg.endpoints = endpoints,
                other => anyhow::bail!("discovery: unexpected decision for a proxy: {other:?}"),
            }
        }
        return cairn_agent::proxy_role::run(cfg, tcp, client_tls, unix).await;
    }

    let peer_addr = match cfg.listen_peer_urls.first().map(|u| (&u.addr, &u.original)) {
        Some((ListenAddr::Tcp(a), _)) => *a,
        Some((ListenAddr::Unix(_), url)) => {
            anyhow::bail!(
                "--listen-peer-urls {url}: peers talk over UDP (QUIC); a unix socket cannot be used"
            )
        }
        None => anyhow::bail!("--listen-peer-urls is empty"),
    };
    let hosts: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .filter_map(|u| cairn_agent::peer::host_port(u).map(|(h, _)| h))
        .collect();
    let tls = cfg
        .peer_tls
        .configs(&cfg.data_dir, &hosts)
        .context("peer TLS")?;
    if !tls.verified {
        tracing::info!(
            "peer traffic is encrypted with a generated certificate; members are not authenticated (give --peer-trusted-ca-file to authenticate them)"
        );
    }
    let peers = Peers::bind(
        peer_addr,
        tls,
        0,
        0,
        cfg.data_dir.join("snap"),
        cfg.quota_backend_bytes.saturating_mul(2),
    )?;

    let settings = NodeSettings {
        name: cfg.name.clone(),
        data_dir: cfg.data_dir.clone(),
        peer_urls: cfg.initial_advertise_peer_urls.clone(),
        client_urls: cfg.advertise_client_urls.clone(),
        cluster_token: cfg.initial_cluster_token.clone(),
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops,
        heartbeat_ms: cfg.heartbeat_interval_ms,
        election_ms: cfg.election_timeout_ms,
        snapshot_count: cfg.snapshot_count,
        progress_notify_interval: cfg.watch_progress_notify_interval,
        initial_cluster: cfg.initial_cluster.clone(),
        join_existing: cfg.initial_cluster_state == ClusterState::Existing,
        strict_reconfig_check: cfg.strict_reconfig_check,
        lease_checkpoint_interval: cfg.lease_checkpoint_interval,
        max_stale: cfg.max_stale,
        max_learners: cfg.max_learners,
        add_self_via: if cfg.role == Role::Learner && cfg.initial_cluster_state == ClusterState::New
        {
            cfg.endpoints.clone()
        } else {
            Vec::new()
        },
        add_self_tls: cfg.endpoints_tls.clone(),
        auth_token: cfg.auth_token.clone(),
        auth_token_ttl: cfg.auth_token_ttl,
        bcrypt_cost: cfg.bcrypt_cost,
        quota_bytes: cfg.quota_backend_bytes,
        disk_reserve_bytes: cfg.disk_reserve_bytes,
        prefix_depth: cfg.metrics_prefix_depth,
        prefix_max: cfg.metrics_prefix_max,
        tenant_rates: cfg.tenant_rates.clone(),
        tenant_quotas: cfg.tenant_quotas.clone(),
        enable_v2: cfg.enable_v2,
        discovery: bootstrap(&cfg),
    };
    let server = match Server::start(settings, peers.clone()).await {
        Ok(s) => s,
        Err(cairn_agent::server::StartError::FallbackProxy(endpoints)) => {
            tracing::warn!(
                endpoints = %endpoints.join(","),
                "discovery: cluster is full; running as a proxy (--discovery-fallback proxy)"
            );
            peers.close();
            cfg.role = Role::Proxy;
            cfg.endpoints = endpoints;
            return cairn_agent::proxy_role::run(cfg, tcp, client_tls, unix).await;
        }
        Err(e) => return Err(e.into()),
    };
    let api = Api(server.clone());
    peers.attach(
        server.node.clone(),
        Arc::new(api.clone()),
        Arc::new(StoreSnapshots(server.mvcc.clone())),
    );
    tokio::spawn(peers.clone().serve());
    tracing::info!(addr = %peers.local_addr()?, "serving peers (QUIC)");
    if cfg.initial_corrupt_check {
        // As etcd: before serving any client, a member whose data differs
        // from its peers' refuses to start.
        cairn_agent::alarms::initial_check(&api)
            .await
            .map_err(|e| anyhow::anyhow!("initial corruption check: {e}"))?;
    }
    tracing::info!(
        name = %server.identity.name,
        member_id = format_args!("{:x}", server.identity.member_id),
        cluster_id = format_args!("{:x}", server.identity.cluster_id),
        data_dir = %cfg.data_dir.display(),
        "cairn started"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let apps = cairn_agent::apps::start(&cfg, stop_rx.clone()).await?;
    serve::spawn_listeners(
        &mut tasks,
        || serve::routes(&api, &apps),
        tcp,
        client_tls,
        unix,
        &stop_rx,
    )?;
    let mut ready = std::mem::take(&mut *apps.ready.lock().unwrap());
    ready.insert(
        0,
        (
            "catching up with the cluster".to_string(),
            Box::pin(caught_up(api.clone())),
        ),
    );
    tokio::spawn(cairn_agent::notify::ready_when(ready));
    tokio::spawn(cairn_agent::notify::watchdog(stop_rx.clone()));
    tokio::spawn(api::lease::expiry_loop(api.clone(), stop_rx.clone()));
    if let Some(auto) = cfg.auto_compaction.clone() {
        tokio::spawn(cairn_agent::compactor::run(
            api.clone(),
            auto,
            stop_rx.clone(),
        ));
    }
    if let Some(every) = cfg.lease_checkpoint_interval {
        tokio::spawn(api::lease::checkpoint_loop(
            api.clone(),
            every,
            stop_rx.clone(),
        ));
    }
    if let Some(every) = cfg.corrupt_check_time {
        tokio::spawn(cairn_agent::alarms::periodic_check_loop(
            api.clone(),
            every,
            stop_rx.clone(),
        ));
    }
    tokio::spawn(cairn_agent::server::on_leadership(server.clone()));
    tokio::spawn(cairn_agent::server::publish_attributes(server.clone()));
    tokio::spawn(cairn_agent::staleness::probe_loop(
        api.clone(),
        cairn_agent::staleness::probe_interval(cfg.max_stale),
        stop_rx.clone(),
    ));

    // The raft node stops itself when its log cannot be written; the
    // process must not go on serving stale reads.
    // A member learns it was removed from its own log, or, when it was down
    // then, from the other members refusing it.
    let mut node_status = server.node.subscribe();
    let mut refused = peers.removed_from_cluster();
    let fatal = async move {
        let from_log = async {
            match node_status
                .wait_for(|s| s.fatal.is_some() || s.removed)
                .await
            {
                Ok(s) if s.removed => None,
                Ok(s) => Some(s.fatal.clone().unwrap_or_default()),
                Err(_) => std::future::pending().await,
            }
        };
        let from_peers = async {
            match refused.wait_for(|r| *r).await {
                Ok(_) => None,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            r = from_log => r,
            r = from_peers => r,
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        msg = fatal => match msg {
            Some(msg) => Err(anyhow::anyhow!("the raft log cannot be written: {msg}")),
            None => {
                tracing::warn!("this member has been permanently removed from the cluster; stopping");
                Ok(())
            }
        },
        Some(r) = tasks.join_next() => r.context("server task").and_then(|r| r),
    };
    tracing::info!("shutting down");
    cairn_agent::notify::send("STOPPING=1");
    if cfg.lease_checkpoint_interval.is_some() && api.is_leader() {
        // The next leader starts leases from what is recorded now.
        if let Err(e) = api::lease::checkpoint_leases(&api, 1).await {
            tracing::warn!(error = %e, "lease checkpoint before stopping failed");
        }
    }
    apps.shutdown().await;
    cairn_agent::server::hand_over_leadership(&server).await;
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    server.node.shutdown();
    peers.close();
    if let Some(path) = &cfg.socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// A member serves once it has a leader and has applied what was committed
/// when it found one (a restarted or new member has caught up).
async fn caught_up(api: Api) {
    let target = loop {
        if api.has_leader() {
            break api.node.status().commit_index;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    while api.node.status().applied_index < target {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    /// `.cargo/config.toml` sets the cfg; without it the runtime keeps
    /// tokio's LIFO slot and writes an HTTP/2 answer at a time.
    #[test]
    #[allow(
        clippy::assertions_on_constants,
        reason = "the constant is the build's configuration, which is what is checked"
    )]
    fn built_with_tokio_unstable() {
        assert!(
            cfg!(tokio_unstable),
            "built without --cfg tokio_unstable (.cargo/config.toml missing, or RUSTFLAGS set)"
        );
    }
}
