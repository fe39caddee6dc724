//! The proxy role (`--role proxy --endpoints ...`): no raft and no data
//! directory. The etcd API on every client URL and the local socket is
//! answered by `cairn_proxy::Proxy` (forwarding, watch and keep-alive
//! coalescing, read cache); this module adds the proxy's own plain-HTTP
//! routes (`/health`, `/readyz`, `/livez`, `/version`, `/metrics`) and runs
//! the listeners.
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_proto::etcdserverpb::{RangeRequest, kv_server::Kv};
use cairn_proxy::{Proxy, ProxyConfig};
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::serve;
use crate::server::ETCD_VERSION;

pub fn proxy_config(cfg: &Config) -> ProxyConfig {
    ProxyConfig {
        endpoints: cfg.endpoints.clone(),
        namespace: cfg.namespace.clone().into_bytes(),
        cache_entries: cfg.proxy_cache_entries,
        max_stale: cfg.max_stale,
        refresh_interval: cfg.endpoints_auto_sync_interval,
        tls: cfg.endpoints_tls.clone(),
        ..ProxyConfig::default()
    }
}

/// Runs the proxy until SIGINT or SIGTERM.
pub async fn run(
    cfg: Config,
    tcp: Vec<(TcpListener, bool)>,
    client_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    unix: Vec<UnixListener>,
) -> anyhow::Result<()> {
    let proxy = Proxy::new(proxy_config(&cfg)).context("starting the proxy")?;
    tracing::info!(
        endpoints = %proxy.upstream().endpoints().join(","),
        namespace = %cfg.namespace,
        "cairn started as a proxy"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let apps = crate::apps::start(&cfg, stop_rx.clone()).await?;
    let http = apps.wrap(router(proxy.clone(), cfg.enable_v2));
    let routes =
        || serve::service_routes(proxy.clone(), cfg.max_request_bytes as usize, http.clone());
    let mut tasks = tokio::task::JoinSet::new();
    serve::spawn_listeners(&mut tasks, routes, tcp, client_tls, unix, &stop_rx)?;
    let mut ready = std::mem::take(&mut *apps.ready.lock().unwrap());
    let probe_proxy = proxy.clone();
    ready.insert(
        0,
        (
            "connecting to the cluster".to_string(),
            Box::pin(async move {
                while !answers(&probe_proxy).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }),
        ),
    );
    tokio::spawn(crate::notify::ready_when(ready));
    tokio::spawn(crate::notify::watchdog(stop_rx.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        Some(r) = tasks.join_next() => r.context("server task").and_then(|r| r),
    };
    tracing::info!("shutting down");
    crate::notify::send("STOPPING=1");
    apps.shutdown().await;
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    if let Some(path) = &cfg.socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn router(proxy: Proxy, enable_v2: bool) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(proxy.clone())
        .merge(cairn_discovery::v2::router(proxy.clone(), enable_v2))
        .merge(crate::http::gateway(proxy))
}

/// Whether the cluster answers a serializable read through the proxy.
async fn answers(proxy: &Proxy) -> bool {
    let probe = RangeRequest {
        key: b"health".to_vec(),
        serializable: true,
        count_only: true,
        ..Default::default()
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            Kv::range(proxy, tonic::Request::new(probe))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Healthy when the cluster answers a serializable read through the proxy.
async fn health(State(proxy): State<Proxy>) -> Response {
    let ok = answers(&proxy).await;
    let (code, body) = if ok {
        (StatusCode::OK, serde_json::json!({"health": "true"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": "no endpoint of the cluster answers"}),
        )
    };
    (code, axum::Json(body)).into_response()
}

async fn version() -> Response {
    axum::Json(serde_json::json!({"etcdserver": ETCD_VERSION, "role": "proxy"})).into_response()
}

/// The proxy's counters in Prometheus' text format.
async fn metrics(State(proxy): State<Proxy>) -> Response {
    let s = proxy.stats();
    let behind = proxy.behind();
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, v: i64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    put(
        "cairn_proxy_client_watchers",
        "gauge",
        "Client watchers open on the proxy.",
        s.client_watchers.load(Ordering::Relaxed),
    );
    put(
        "cairn_proxy_upstream_watches",
        "gauge",
        "Watches the proxy holds open on the cluster.",
        s.upstream_watches.load(Ordering::Relaxed),
    );
    put(
        "cairn_proxy_endpoints",
        "gauge",
        "Cluster endpoints the proxy knows (from --endpoints and MemberList).",
        proxy.upstream().endpoints().len() as i64,
    );
    put(
        "cairn_proxy_cache_hits_total",
        "counter",
        "Serializable reads answered from the proxy's cache.",
        s.cache_hits.load(Ordering::Relaxed) as i64,
    );
    put(
        "cairn_proxy_cache_misses_total",
        "counter",
        "Serializable reads forwarded to the cluster.",
        s.cache_misses.load(Ordering::Relaxed) as i64,
    );
    put(
        "cairn_proxy_keepalives_client_total",
        "counter",
        "Lease keep-alive requests from clients.",
        s.keepalives_client.load(Ordering::Relaxed) as i64,
    );
    put(
        "cairn_proxy_keepalives_upstream_total",
        "counter",
        "Lease renewals the proxy sent to the cluster.",
        s.keepalives_upstream.load(Ordering::Relaxed) as i64,
    );
    put(
        "cairn_behind_revisions",
        "gauge",
        "Revisions the proxy's cache is behind the newest revision it has seen.",
        behind.0,
    );
    put(
        "cairn_behind_milliseconds",
        "gauge",
        "Milliseconds since the proxy's cache was last known to be current.",
        behind.1 as i64,
    );
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
