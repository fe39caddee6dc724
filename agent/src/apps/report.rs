//! What the applications add to the agent's `/health` and `/metrics`: a
//! template that keeps its last good file because of an error, a stale
//! view, a DNS index that cannot follow the store. The store's own health
//! (etcd's `{"health":"true"}` and its status code) is left as it is: an
//! application's problem is listed under `"apps"`, it does not make the
//! member unhealthy.
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

/// One application's report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Problems now, one line each (`render: /etc/x.conf: ...`).
    pub problems: Vec<String>,
    /// Prometheus text appended to `/metrics`.
    pub metrics: String,
}

/// Produces an application's report when `/health` or `/metrics` is asked.
pub type Probe = Arc<dyn Fn() -> Report + Send + Sync>;

/// The largest body of `/health` or `/metrics` the layer rewrites.
const MAX_BODY: usize = 64 << 20;

/// Adds the probes' problems to `/health` (as `"apps": [...]`) and their
/// metrics to `/metrics` (before OpenMetrics' `# EOF`).
pub async fn layer(State(probes): State<Arc<Vec<Probe>>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if probes.is_empty() || (path != "/health" && path != "/metrics") {
        return resp;
    }
    let reports: Vec<Report> = probes.iter().map(|p| p()).collect();
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let out = if path == "/health" {
        let problems: Vec<String> = reports.into_iter().flat_map(|r| r.problems).collect();
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(mut doc)) if !problems.is_empty() => {
                doc.insert("apps".into(), problems.into());
                serde_json::to_vec(&doc).unwrap_or_else(|_| bytes.to_vec())
            }
            _ => bytes.to_vec(),
        }
    } else {
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        let extra: String = reports.into_iter().map(|r| r.metrics).collect();
        let at = text.rfind("# EOF").unwrap_or(text.len());
        text.insert_str(at, &extra);
        text.into_bytes()
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}
