//! Starts rendering (`cairn-render`) when the config has `[[template]]`
//! blocks or a `[render]` table.
use axum::Router;
use cairn_render::{Options, RenderConfig, Renderer};

use super::Ctx;
use super::report::{Probe, Report};

/// Starts the renderer if templates are configured; returns its HTTP routes
/// (`GET /v1/render`, `GET /v1/render/metrics`). A bad table stops the
/// agent before it serves; everything after that is reported, never fatal.
pub async fn start(ctx: &Ctx) -> anyhow::Result<Option<(Router, Probe)>> {
    let Some(cfg) = RenderConfig::from_doc(&ctx.doc, &ctx.base_dir)? else {
        return Ok(None);
    };
    let view = ctx.view()?;
    tracing::info!(templates = cfg.templates.len(), "render: starting");
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    ctx.ready.lock().unwrap().push((
        "waiting for the first full render".into(),
        Box::pin(async move {
            let _ = first_rx.await;
        }),
    ));
    let renderer = Renderer::spawn(
        view,
        cfg,
        Options {
            config_file: ctx.config_path.clone(),
            stop: ctx.stop.clone(),
            first_render: Some(first_tx),
        },
    );
    let status = renderer.status();
    let probe_status = status.clone();
    let probe: Probe = std::sync::Arc::new(move || {
        let st = probe_status.lock().unwrap_or_else(|e| e.into_inner());
        let mut problems = Vec::new();
        if let Some(why) = &st.stale {
            problems.push(format!("render: stale, files kept as they are: {why}"));
        }
        for t in &st.templates {
            if let Some(e) = &t.last_error {
                problems.push(format!("render: {}: {e}", t.destination));
            }
        }
        Report {
            problems,
            metrics: cairn_render::status::metrics(&st),
        }
    });
    Ok(Some((cairn_render::status::router(status), probe)))
}
