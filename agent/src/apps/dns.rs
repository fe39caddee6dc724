//! Starts the DNS server (`cairn-dns`) when the config has a `[dns]`
//! table.
use axum::Router;

use super::Ctx;
use super::report::{Probe, Report};

/// Starts the DNS server if `[dns]` is configured; returns its HTTP routes
/// (`GET /v1/dns`). A bad table or an address that cannot be bound is an
/// error: the agent stops with it.
pub async fn start(ctx: &Ctx) -> anyhow::Result<Option<(Router, Probe)>> {
    let Some(cfg) = cairn_dns::DnsConfig::from_doc(&ctx.doc)? else {
        return Ok(None);
    };
    let dns = cairn_dns::Dns::start(&cfg, ctx.view()?, ctx.stop.clone()).await?;
    let probe_dns = dns.clone();
    // Read per /health and /metrics request: the index's own fields, not
    // the per-zone counts of `status()`.
    let probe: Probe = std::sync::Arc::new(move || {
        let idx = probe_dns.index();
        let problems = idx
            .stale
            .iter()
            .map(|why| format!("dns: stale, answering from the last index: {why}"))
            .collect();
        let metric = |name: &str, kind: &str, help: &str, v: u64| {
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n")
        };
        let metrics = [
            metric(
                "cairn_dns_records",
                "gauge",
                "Records the DNS index holds.",
                idx.items.len() as u64,
            ),
            metric(
                "cairn_dns_stale",
                "gauge",
                "1 while the DNS index may be behind the store.",
                u64::from(idx.stale.is_some()),
            ),
            metric(
                "cairn_dns_queries_total",
                "counter",
                "DNS queries answered.",
                probe_dns.queries(),
            ),
        ]
        .concat();
        Report { problems, metrics }
    });
    Ok(Some((dns.router(), probe)))
}
