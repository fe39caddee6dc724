//! Starts rendering (`cairn-render`) when the config has `[[template]]`
//! blocks.
use axum::Router;

use super::Ctx;

/// Starts the renderer if templates are configured; returns its HTTP routes.
pub async fn start(_ctx: &Ctx) -> anyhow::Result<Option<Router>> {
    Ok(None)
}
