//! Starts rendering (`cairn-render`) when the config has `[[template]]`
//! blocks or a `[render]` table.
use axum::Router;
use cairn_render::{Options, RenderConfig, Renderer};

use super::Ctx;

/// Starts the renderer if templates are configured; returns its HTTP routes
/// (`GET /v1/render`, `GET /v1/render/metrics`). A bad table stops the
/// agent before it serves; everything after that is reported, never fatal.
pub async fn start(ctx: &Ctx) -> anyhow::Result<Option<Router>> {
    let Some(cfg) = RenderConfig::from_doc(&ctx.doc, &ctx.base_dir)? else {
        return Ok(None);
    };
    let view = ctx.view()?;
    tracing::info!(templates = cfg.templates.len(), "render: starting");
    let renderer = Renderer::spawn(
        view,
        cfg,
        Options {
            config_file: ctx.config_path.clone(),
            stop: ctx.stop.clone(),
            notify_systemd: true,
        },
    );
    Ok(Some(cairn_render::status::router(renderer.status())))
}
