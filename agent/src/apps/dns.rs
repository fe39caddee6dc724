//! Starts the DNS server (`cairn-dns`) when the config has a `[dns]`
//! table.
use axum::Router;

use super::Ctx;

/// Starts the DNS server if `[dns]` is configured; returns its HTTP routes.
pub async fn start(_ctx: &Ctx) -> anyhow::Result<Option<Router>> {
    Ok(None)
}
