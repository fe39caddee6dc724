//! Starts rendering (`cairn-render`) when the config has `[[template]]`
//! blocks or a `[render]` table.
use std::path::PathBuf;

use axum::Router;
use cairn_render::{Options, RenderConfig, Renderer};

use super::Ctx;

/// The `--config` file the agent was started with (`--config FILE`,
/// `-config=FILE`, …, else `$CAIRN_CONFIG`), for SIGHUP reloads: the same
/// rule as `Config::from_args_env`, whose result the context does not keep.
fn config_file() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].trim_start_matches('-');
        if args[i].starts_with('-') {
            if a == "config" {
                found = args.get(i + 1).cloned();
                i += 1;
            } else if let Some(v) = a.strip_prefix("config=") {
                found = Some(v.to_string());
            }
        }
        i += 1;
    }
    found
        .or_else(|| std::env::var("CAIRN_CONFIG").ok())
        .map(PathBuf::from)
}

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
            config_file: config_file(),
            stop: ctx.stop.clone(),
            notify_systemd: true,
        },
    );
    Ok(Some(cairn_render::status::router(renderer.status())))
}
