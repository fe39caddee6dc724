//! Starts the DNS server (`cairn-dns`) when the config has a `[dns]`
//! table.
use axum::Router;

use super::Ctx;

/// Starts the DNS server if `[dns]` is configured; returns its HTTP routes
/// (`GET /v1/dns`). A bad table or an address that cannot be bound is an
/// error: the agent stops with it.
pub async fn start(ctx: &Ctx) -> anyhow::Result<Option<Router>> {
    let Some(cfg) = cairn_dns::DnsConfig::from_doc(&ctx.doc)? else {
        return Ok(None);
    };
    let dns = cairn_dns::Dns::start(&cfg, ctx.view()?, ctx.stop.clone()).await?;
    Ok(Some(dns.router()))
}
