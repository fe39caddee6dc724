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
    let probe: Probe = std::sync::Arc::new(move || {
        let st = probe_dns.status();
        let mut problems = Vec::new();
        if let Some(why) = st["stale"].as_str() {
            problems.push(format!("dns: stale, answering from the last index: {why}"));
        }
        let gauge = |name: &str, help: &str, v: i64| {
            format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n")
        };
        let metrics = [
            gauge("cairn_dns_records", "Records the DNS index holds.", st["records"].as_i64().unwrap_or(0)),
            gauge("cairn_dns_stale", "1 while the DNS index may be behind the store.", i64::from(st["stale"].is_string())),
            format!(
                "# HELP cairn_dns_queries_total DNS queries answered.\n# TYPE cairn_dns_queries_total counter\ncairn_dns_queries_total {}\n",
                st["queries"].as_u64().unwrap_or(0)
            ),
        ]
        .concat();
        Report { problems, metrics }
    });
    Ok(Some((dns.router(), probe)))
}
