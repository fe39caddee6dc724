//! The local HTTP API of this host's services (Consul's agent API, in
//! short), served on the agent's client listeners and its local socket:
//!
//! | request | what it does |
//! |---|---|
//! | `GET /v1/services` | this agent's services with their check state |
//! | `PUT /v1/service/register` (JSON [`ServiceDef`]) | starts or replaces a service |
//! | `PUT /v1/service/deregister/<id>` | stops it and removes its record now |
//! | `PUT /v1/service/<id>/pass` or `/fail` (body: a note) | a TTL check's report |
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

use crate::{Registry, ServiceDef};

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

pub fn router(reg: Registry) -> Router {
    Router::new()
        .route("/v1/services", get(list))
        .route("/v1/service/register", put(register))
        .route("/v1/service/deregister/{id}", put(deregister))
        .route("/v1/service/{id}/{verdict}", put(report))
        .with_state(reg)
}

async fn list(State(reg): State<Registry>) -> Response {
    Json(reg.list()).into_response()
}

async fn register(State(reg): State<Registry>, body: axum::body::Bytes) -> Response {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let def: ServiceDef = match serde_path_to_error::deserialize(&mut de) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad service: {e}")),
    };
    let service = match def.validate() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    match reg.register(service) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn deregister(State(reg): State<Registry>, Path(id): Path<String>) -> Response {
    if reg.deregister(&id).await {
        StatusCode::OK.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no service {id:?} on this agent"),
        )
    }
}

async fn report(
    State(reg): State<Registry>,
    Path((id, verdict)): Path<(String, String)>,
    body: String,
) -> Response {
    let pass = match verdict.as_str() {
        "pass" => true,
        "fail" => false,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown report {other:?}: use pass or fail"),
            );
        }
    };
    match reg.report(&id, pass, body) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) if e.starts_with("no service") => error(StatusCode::NOT_FOUND, e),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}
