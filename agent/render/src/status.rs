//! What the renderer reports: `GET /v1/render` (JSON) and
//! `GET /v1/render/metrics` (Prometheus text), on the agent's client
//! listeners and its local socket.
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use cairn_view::Interest;
use serde::Serialize;

use crate::config::{Source, Template};

/// One template's state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TemplateStatus {
    pub destination: String,
    pub source: Option<String>,
    /// The keys (`key:`) and prefixes (`prefix:`) its last render read.
    pub interests: Vec<String>,
    /// The revision of its last complete render.
    pub last_render_revision: Option<i64>,
    pub last_written_revision: Option<i64>,
    /// RFC 3339, UTC.
    pub last_written: Option<String>,
    pub last_written_unix: Option<f64>,
    /// The last write was in place (the rename was refused).
    pub in_place: bool,
    /// Why the file was last left as it was (cleared by a good render).
    pub last_error: Option<String>,
    pub last_error_time: Option<String>,
    pub renders: u64,
    pub writes: u64,
    pub errors: u64,
    pub commands: u64,
}

impl TemplateStatus {
    pub fn new(t: &Template) -> TemplateStatus {
        TemplateStatus {
            destination: t.destination.display().to_string(),
            source: match &t.source {
                Source::File(p) => Some(p.display().to_string()),
                Source::Inline(_) => None,
            },
            ..Default::default()
        }
    }

    pub fn fail(&mut self, error: String, now: f64) {
        self.last_error = Some(error);
        self.last_error_time = Some(rfc3339(now));
        self.errors += 1;
    }
}

/// The renderer's state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The revision of the view's latest snapshot.
    pub revision: i64,
    /// Why the data may be behind the store (files are kept as they are:
    /// fail static), or null.
    pub stale: Option<String>,
    /// Ranges the agent's view watches (one watcher each, shared by every
    /// template that reads them).
    pub watched_ranges: usize,
    pub renders_total: u64,
    pub writes_total: u64,
    pub errors_total: u64,
    pub commands_total: u64,
    pub reloads: u64,
    pub reloads_refused: u64,
    pub templates: Vec<TemplateStatus>,
}

/// `key:/a/b` or `prefix:/a/`.
pub fn interest(i: &Interest) -> String {
    match i {
        Interest::Key(k) => format!("key:{}", String::from_utf8_lossy(k)),
        Interest::Prefix(p) => format!("prefix:{}", String::from_utf8_lossy(p)),
    }
}

/// Unix seconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(unix: f64) -> String {
    let ms = (unix * 1000.0) as i64;
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The renderer's counters and gauges, Prometheus text.
pub fn metrics(st: &Status) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    };
    counter(
        "cairn_render_renders_total",
        "Complete template renders.",
        st.renders_total,
    );
    counter(
        "cairn_render_writes_total",
        "Destination files written.",
        st.writes_total,
    );
    counter(
        "cairn_render_errors_total",
        "Renders, checks, writes and commands that failed (the last good file was kept).",
        st.errors_total,
    );
    counter(
        "cairn_render_commands_total",
        "Commands run after a change.",
        st.commands_total,
    );
    out.push_str(&format!(
        "# HELP cairn_render_stale 1 while the data may be behind the store.\n# TYPE cairn_render_stale gauge\ncairn_render_stale {}\n",
        u8::from(st.stale.is_some())
    ));
    out.push_str(&format!(
        "# HELP cairn_render_watched_ranges Ranges the view watches.\n# TYPE cairn_render_watched_ranges gauge\ncairn_render_watched_ranges {}\n",
        st.watched_ranges
    ));
    out
}

/// `GET /v1/render` and `GET /v1/render/metrics`.
pub fn router(status: Arc<Mutex<Status>>) -> Router {
    let s2 = status.clone();
    Router::new()
        .route(
            "/v1/render",
            get(move || {
                let st = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                async move { axum::Json(st) }
            }),
        )
        .route(
            "/v1/render/metrics",
            get(move || {
                let body = metrics(&s2.lock().unwrap_or_else(|e| e.into_inner()));
                async move { ([("content-type", "text/plain; version=0.0.4")], body).into_response() }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00.500Z");
        assert_eq!(rfc3339(1_798_761_599.0), "2026-12-31T23:59:59.000Z");
    }
}
