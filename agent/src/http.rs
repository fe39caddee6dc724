//! Plain HTTP on the client port: `/health`, `/livez`, `/readyz`,
//! `/version`, `/metrics`, and the `/v3/*` JSON gateway in grpc-gateway's
//! dialect (int64 as strings, bytes as base64, proto field names), as etcd
//! serves it. The gateway calls the same methods as the gRPC services.
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_proto::etcdserverpb::{self as pb, watch_request::RequestUnion};
use cairn_proto::service::StreamCalls;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use crate::api::Api;
use crate::server::ETCD_VERSION;

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route(
            "/v3/cluster/member/demote",
            post(
                |State(api): State<Api>, headers: axum::http::HeaderMap, body: Bytes| async move {
                    unary(body, |r: pb::MemberRemoveRequest| async move {
                        let who = api.caller(&metadata(&headers), None).await?;
                        api.check_admin(&who)?;
                        api.member_demote_req(r.id).await
                    })
                    .await
                },
            ),
        )
        .with_state(api.clone())
        .merge(cairn_discovery::v2::router(
            api.clone(),
            api.settings.enable_v2,
        ))
        .merge(gateway(api))
}

/// The `/v3/*` JSON gateway over any role's services: the member's own
/// (`Api`) or the proxy's. Each route calls the same trait method the gRPC
/// service does.
pub fn gateway<S>(svc: S) -> Router
where
    S: pb::kv_server::Kv
        + pb::lease_server::Lease
        + pb::maintenance_server::Maintenance
        + pb::cluster_server::Cluster
        + pb::auth_server::Auth
        + cairn_proto::v3lockpb::lock_server::Lock
        + cairn_proto::v3electionpb::election_server::Election
        + StreamCalls,
{
    use cairn_proto::v3electionpb::election_server::Election;
    use cairn_proto::v3lockpb::lock_server::Lock;
    use pb::auth_server::Auth;
    use pb::cluster_server::Cluster;
    use pb::kv_server::Kv;
    use pb::lease_server::Lease;
    use pb::maintenance_server::Maintenance;
    macro_rules! rpc {
        ($t:ident :: $m:ident) => {
            post(
                |State(s): State<S>, headers: axum::http::HeaderMap, body: Bytes| async move {
                    unary(body, |r| async move {
                        let mut req = tonic::Request::new(r);
                        *req.metadata_mut() = metadata(&headers);
                        $t::$m(&s, req).await.map(tonic::Response::into_inner)
                    })
                    .await
                },
            )
        };
    }
    Router::new()
        .route("/v3/kv/range", rpc!(Kv::range))
        .route("/v3/kv/put", rpc!(Kv::put))
        .route("/v3/kv/deleterange", rpc!(Kv::delete_range))
        .route("/v3/kv/txn", rpc!(Kv::txn))
        .route("/v3/kv/compaction", rpc!(Kv::compact))
        .route("/v3/lease/grant", rpc!(Lease::lease_grant))
        .route("/v3/lease/revoke", rpc!(Lease::lease_revoke))
        .route("/v3/kv/lease/revoke", rpc!(Lease::lease_revoke))
        .route("/v3/lease/timetolive", rpc!(Lease::lease_time_to_live))
        .route("/v3/kv/lease/timetolive", rpc!(Lease::lease_time_to_live))
        .route("/v3/lease/leases", rpc!(Lease::lease_leases))
        .route("/v3/kv/lease/leases", rpc!(Lease::lease_leases))
        .route(
            "/v3/lease/keepalive",
            post(
                |State(s): State<S>, headers: axum::http::HeaderMap, body: Bytes| async move {
                    streamed_once(body, |r: pb::LeaseKeepAliveRequest| async move {
                        s.keep_alive_once(metadata(&headers), r).await
                    })
                    .await
                },
            ),
        )
        .route("/v3/maintenance/alarm", rpc!(Maintenance::alarm))
        .route("/v3/maintenance/defragment", rpc!(Maintenance::defragment))
        .route("/v3/maintenance/hashkv", rpc!(Maintenance::hash_kv))
        .route(
            "/v3/maintenance/status",
            post(
                |State(s): State<S>, headers: axum::http::HeaderMap, body: Bytes| async move {
                    unary(body, |_r: pb::StatusRequest| async move {
                        s.status_now(metadata(&headers)).await
                    })
                    .await
                },
            ),
        )
        .route("/v3/cluster/member/list", rpc!(Cluster::member_list))
        .route("/v3/cluster/member/add", rpc!(Cluster::member_add))
        .route("/v3/cluster/member/remove", rpc!(Cluster::member_remove))
        .route("/v3/cluster/member/update", rpc!(Cluster::member_update))
        .route("/v3/cluster/member/promote", rpc!(Cluster::member_promote))
        .route("/v3/auth/enable", rpc!(Auth::auth_enable))
        .route("/v3/auth/disable", rpc!(Auth::auth_disable))
        .route("/v3/auth/status", rpc!(Auth::auth_status))
        .route("/v3/auth/authenticate", rpc!(Auth::authenticate))
        .route("/v3/auth/user/add", rpc!(Auth::user_add))
        .route("/v3/auth/user/get", rpc!(Auth::user_get))
        .route("/v3/auth/user/list", rpc!(Auth::user_list))
        .route("/v3/auth/user/delete", rpc!(Auth::user_delete))
        .route("/v3/auth/user/changepw", rpc!(Auth::user_change_password))
        .route("/v3/auth/user/grant", rpc!(Auth::user_grant_role))
        .route("/v3/auth/user/revoke", rpc!(Auth::user_revoke_role))
        .route("/v3/auth/role/add", rpc!(Auth::role_add))
        .route("/v3/auth/role/get", rpc!(Auth::role_get))
        .route("/v3/auth/role/list", rpc!(Auth::role_list))
        .route("/v3/auth/role/delete", rpc!(Auth::role_delete))
        .route("/v3/auth/role/grant", rpc!(Auth::role_grant_permission))
        .route("/v3/auth/role/revoke", rpc!(Auth::role_revoke_permission))
        .route("/v3/watch", post(watch::<S>))
        .route("/v3/lock/lock", rpc!(Lock::lock))
        .route("/v3/lock/unlock", rpc!(Lock::unlock))
        .route("/v3/election/campaign", rpc!(Election::campaign))
        .route("/v3/election/proclaim", rpc!(Election::proclaim))
        .route("/v3/election/leader", rpc!(Election::leader))
        .route("/v3/election/resign", rpc!(Election::resign))
        .route("/v3/election/observe", post(observe::<S>))
        .with_state(svc)
}

async fn health(
    State(api): State<Api>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let serializable = q.get("serializable").is_some_and(|v| v == "true");
    // etcd reports the first raised alarm unless `?exclude=` names its type.
    let alarm = crate::alarms::health_alarm(&api.mvcc.alarms(), q.get("exclude"));
    let reason = if let Some(a) = alarm.as_deref() {
        Some(a)
    } else if !api.has_leader() {
        Some("RAFT NO LEADER")
    } else if !serializable {
        // etcd checks that a linearizable read goes through.
        match tokio::time::timeout(Duration::from_secs(2), api.linearizable_barrier()).await {
            Ok(Ok(())) => None,
            _ => Some("QGET ERROR"),
        }
    } else {
        None
    };
    let (code, body) = match reason {
        None => (StatusCode::OK, serde_json::json!({"health": "true"})),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": r}),
        ),
    };
    (code, axum::Json(body)).into_response()
}

async fn readyz(State(api): State<Api>) -> Response {
    if api.has_leader() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader").into_response()
    }
}

async fn version() -> Response {
    axum::Json(serde_json::json!({"etcdserver": ETCD_VERSION, "etcdcluster": cluster_version()}))
        .into_response()
}

fn cluster_version() -> String {
    let mut parts = ETCD_VERSION.split('.');
    format!(
        "{}.{}.0",
        parts.next().unwrap_or("3"),
        parts.next().unwrap_or("6")
    )
}

async fn metrics(State(api): State<Api>) -> Response {
    let st = api.node.status();
    let m = &api.metrics;
    m.has_leader.set(i64::from(st.leader_id != 0));
    m.is_leader
        .set(i64::from(st.leader_id != 0 && st.leader_id == st.id));
    m.proposals_committed.set(st.commit_index as i64);
    m.proposals_applied.set(st.applied_index as i64);
    m.db_size
        .set(cairn_mvcc::Backend::size_bytes(api.mvcc.backend()) as i64);
    m.current_revision.set(api.mvcc.current_revision());
    m.compact_revision.set(api.mvcc.compact_revision());
    m.is_learner.set(i64::from(st.learners.contains(&st.id)));
    let behind = api.behind();
    m.behind_revisions.set(behind.revisions);
    m.behind_ms.set(behind.ms as i64);
    let mut text = m.encode();
    // Before OpenMetrics' closing "# EOF".
    let at = text.rfind("# EOF").unwrap_or(text.len());
    text.insert_str(at, &api.prefix_stats.render());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The gRPC metadata grpc-gateway would pass on: the `Authorization`
/// header (a token from `/v3/auth/authenticate`, optionally `Bearer `).
pub fn metadata(headers: &axum::http::HeaderMap) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        md.insert("authorization", v);
    }
    md
}

#[allow(clippy::result_large_err)] // the error is the finished HTTP reply
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        error_response(&Status::invalid_argument(format!(
            "invalid request body: {e}"
        )))
    })
}

async fn unary<Req, Resp, F, Fut>(body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, Status>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match f(req).await {
        Ok(resp) => axum::Json(resp).into_response(),
        Err(s) => error_response(&s),
    }
}

/// A streaming RPC called with one request: one `{"result": ...}` line.
async fn streamed_once<Req, Resp, F, Fut>(body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, Status>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match f(req).await {
        Ok(resp) => axum::Json(serde_json::json!({ "result": resp })).into_response(),
        Err(s) => error_response(&s),
    }
}

/// `POST /v3/watch` with one WatchRequest: the events stream back as
/// newline-delimited `{"result": WatchResponse}` objects until the client
/// hangs up, as grpc-gateway streams them.
async fn watch<S: StreamCalls>(
    State(svc): State<S>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse::<pb::WatchRequest>(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !matches!(req.request_union, Some(RequestUnion::CreateRequest(_))) {
        return error_response(&Status::invalid_argument("expected a create_request"));
    }
    let input = futures::stream::iter([Ok(req)]).chain(futures::stream::pending());
    let responses = svc.watch_stream(metadata(&headers), Box::pin(input));
    json_lines(responses)
}

/// `POST /v3/election/observe`: the leader and its proclamations stream
/// back as `{"result": LeaderResponse}` lines until the client hangs up.
async fn observe<S: cairn_proto::v3electionpb::election_server::Election>(
    State(svc): State<S>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let req = match parse::<cairn_proto::v3electionpb::LeaderRequest>(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut req = tonic::Request::new(req);
    *req.metadata_mut() = metadata(&headers);
    match svc.observe(req).await {
        Ok(stream) => json_lines(stream.into_inner()),
        Err(s) => error_response(&s),
    }
}

/// A stream of answers as newline-delimited `{"result": ...}` objects (an
/// error as grpc-gateway's error object), as grpc-gateway streams them.
fn json_lines<T: Serialize + Send + 'static>(
    responses: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let lines = responses.map(|r| {
        let v = match r {
            Ok(resp) => serde_json::json!({ "result": resp }),
            Err(s) => error_json(&s),
        };
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    let mut resp = axum::body::Body::from_stream(lines).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_json(s: &Status) -> serde_json::Value {
    serde_json::json!({"error": s.message(), "code": s.code() as i32, "message": s.message()})
}

/// grpc-gateway's error document and its HTTP status for a gRPC code.
pub fn error_response(s: &Status) -> Response {
    use tonic::Code::*;
    let http = match s.code() {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::REQUEST_TIMEOUT,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        // grpc-gateway v1 (etcd's): 412, as etcd 3.4 answers.
        FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (http, axum::Json(error_json(s))).into_response()
}
