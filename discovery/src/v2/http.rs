//! The v2 HTTP endpoints: `/v2/keys`, `/v2/members`, `/v2/machines`,
//! `/v2/stats/self`, with etcd's headers and bodies.
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use cairn_proto::etcdserverpb::{MemberListRequest, StatusResponse};
use futures::StreamExt;

use super::error::V2Error;
use super::node;
use super::request;
use super::store::{Backend, Store};
use super::watch;

#[derive(Clone)]
struct V2<S> {
    store: Store<S>,
    started: SystemTime,
}

/// The v2 routes over a role's services; with `enabled` false, every
/// `/v2/` path answers 404 as etcd without `--enable-v2` does.
pub fn router<S: Backend>(svc: S, enabled: bool) -> Router {
    if !enabled {
        return Router::new().route(
            "/v2/{*rest}",
            any(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") }),
        );
    }
    let state = V2 {
        store: Store::new(svc),
        started: SystemTime::now(),
    };
    Router::new()
        .route("/v2/keys", any(keys::<S>))
        .route("/v2/keys/", any(keys::<S>))
        .route("/v2/keys/{*path}", any(keys::<S>))
        .route("/v2/members", get(members::<S>))
        .route("/v2/members/leader", get(leader::<S>))
        .route("/v2/machines", get(machines::<S>))
        .route("/v2/stats/self", get(stats_self::<S>))
        .with_state(state)
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        "Access-Control-Allow-Methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("Access-Control-Allow-Origin", HeaderValue::from_static("*"));
    h.insert(
        "Access-Control-Allow-Headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

fn json_line<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

fn hv(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

async fn status<S: Backend>(svc: &S) -> Option<StatusResponse> {
    svc.status_now(Default::default()).await.ok()
}

fn error_response(e: &V2Error, cluster_id: Option<u64>) -> Response {
    let mut resp = (
        StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        json_line(e),
    )
        .into_response();
    let h = resp.headers_mut();
    cors(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = cluster_id {
        h.insert("X-Etcd-Cluster-Id", hv(format!("{id:x}")));
    }
    h.insert("X-Etcd-Index", hv(e.index));
    resp
}

/// Headers of a successful answer.
fn answer_headers(h: &mut HeaderMap, st: &Option<StatusResponse>, index: i64) {
    cors(h);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(st) = st {
        if let Some(hd) = &st.header {
            h.insert("X-Etcd-Cluster-Id", hv(format!("{:x}", hd.cluster_id)));
        }
        h.insert("X-Raft-Index", hv(st.raft_index));
        h.insert("X-Raft-Term", hv(st.raft_term));
    }
    h.insert("X-Etcd-Index", hv(index));
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

async fn keys<S: Backend>(
    State(v2): State<V2<S>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let svc = &v2.store.svc;
    let m = method.as_str();
    if !matches!(m, "GET" | "HEAD" | "PUT" | "POST" | "DELETE") {
        let mut resp = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"),
        );
        cors(resp.headers_mut());
        return resp;
    }
    let form_body = matches!(m, "PUT" | "POST")
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let form = request::parse_form(
        uri.query().unwrap_or(""),
        if form_body { &body } else { &[] },
    );
    let raw = uri.path().strip_prefix("/v2/keys").unwrap_or("/");
    let req = match request::parse(m, &percent_decode(raw), &form) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    let cluster_id = |st: &Option<StatusResponse>| {
        st.as_ref()
            .and_then(|s| s.header.as_ref())
            .map(|h| h.cluster_id)
    };
    if req.wait {
        return match watch::start(svc, &req).await {
            Ok(w) => {
                let st = status(svc).await;
                let stream = req.stream;
                let events = w.events;
                let events = if stream {
                    events
                } else {
                    events.take(1).boxed()
                };
                let body =
                    events.map(|e| Ok::<_, std::convert::Infallible>(Bytes::from(json_line(&e))));
                let mut resp = Body::from_stream(body).into_response();
                answer_headers(resp.headers_mut(), &st, w.index);
                resp
            }
            Err(e) => error_response(&e, cluster_id(&status(svc).await)),
        };
    }
    let out = match m {
        "GET" | "HEAD" => v2.store.get(&req).await,
        _ => v2.store.write(m, &req).await,
    };
    let st = status(svc).await;
    match out {
        Ok(a) => {
            let code = if a.created() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let quiet = req.no_value_on_success
                && matches!(
                    a.event.action.as_str(),
                    "set" | "compareAndSwap" | "create" | "update"
                );
            let body = if quiet {
                json_line(&serde_json::json!({"action": a.event.action}))
            } else {
                json_line(&a.event)
            };
            let mut resp = (code, body).into_response();
            answer_headers(resp.headers_mut(), &st, a.index);
            resp
        }
        Err(e) => error_response(&e, cluster_id(&st)),
    }
}

async fn member_list<S: Backend>(
    svc: &S,
) -> Result<Vec<cairn_proto::etcdserverpb::Member>, Response> {
    cairn_proto::etcdserverpb::cluster_server::Cluster::member_list(
        svc,
        tonic::Request::new(MemberListRequest {
            linearizable: false,
        }),
    )
    .await
    .map(|r| r.into_inner().members)
    .map_err(|s| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"message\":{:?}}}\n", s.message()),
        )
            .into_response()
    })
}

fn json_response<T: serde::Serialize>(v: &T) -> Response {
    let mut resp = json_line(v).into_response();
    cors(resp.headers_mut());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A member as `/v2/members` shows it, fields in etcd's order.
#[derive(serde::Serialize)]
struct MemberJson {
    id: String,
    name: String,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    client_urls: Vec<String>,
}

impl From<cairn_proto::etcdserverpb::Member> for MemberJson {
    fn from(m: cairn_proto::etcdserverpb::Member) -> Self {
        MemberJson {
            id: format!("{:x}", m.id),
            name: m.name,
            peer_urls: m.peer_ur_ls,
            client_urls: m.client_ur_ls,
        }
    }
}

#[derive(serde::Serialize)]
struct MembersJson {
    members: Vec<MemberJson>,
}

async fn members<S: Backend>(State(v2): State<V2<S>>) -> Response {
    let ms = match member_list(&v2.store.svc).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    json_response(&MembersJson {
        members: ms.into_iter().map(MemberJson::from).collect(),
    })
}

async fn leader<S: Backend>(State(v2): State<V2<S>>) -> Response {
    let svc = &v2.store.svc;
    let leader = status(svc).await.map(|s| s.leader).unwrap_or(0);
    let ms = match member_list(svc).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match ms.into_iter().find(|m| m.id == leader && leader != 0) {
        Some(m) => json_response(&MemberJson::from(m)),
        None => (StatusCode::SERVICE_UNAVAILABLE, "During Leader Election\n").into_response(),
    }
}

async fn machines<S: Backend>(State(v2): State<V2<S>>) -> Response {
    let ms = match member_list(&v2.store.svc).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let urls: Vec<String> = ms.into_iter().flat_map(|m| m.client_ur_ls).collect();
    let mut resp = urls.join(", ").into_response();
    cors(resp.headers_mut());
    resp
}

async fn stats_self<S: Backend>(State(v2): State<V2<S>>) -> Response {
    let svc = &v2.store.svc;
    let Some(st) = status(svc).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n").into_response();
    };
    let id = st.header.as_ref().map(|h| h.member_id).unwrap_or(0);
    let name = member_list(svc)
        .await
        .ok()
        .and_then(|ms| ms.into_iter().find(|m| m.id == id))
        .map(|m| m.name)
        .unwrap_or_default();
    let started_ns = v2
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64;
    let uptime = v2.started.elapsed().unwrap_or_default();
    json_response(&SelfStats {
        name,
        id: format!("{id:x}"),
        state: if st.leader == id && id != 0 {
            "StateLeader"
        } else {
            "StateFollower"
        },
        start_time: node::rfc3339_nanos(started_ns),
        leader_info: LeaderInfo {
            leader: format!("{:x}", st.leader),
            uptime: go_duration(uptime),
            start_time: node::rfc3339_nanos(started_ns),
        },
        recv_append_request_cnt: 0,
        send_append_request_cnt: 0,
    })
}

/// `/v2/stats/self`, fields in etcd's order. cairn keeps no per-member
/// append counters; they are 0.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SelfStats {
    name: String,
    id: String,
    state: &'static str,
    start_time: String,
    leader_info: LeaderInfo,
    recv_append_request_cnt: u64,
    send_append_request_cnt: u64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaderInfo {
    leader: String,
    uptime: String,
    start_time: String,
}

/// Go's `Duration.String` for durations over a second: `14m7.064440526s`.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        out.push('.');
        out.push_str(format!("{frac:09}").trim_end_matches('0'));
    }
    out.push('s');
    out
}
