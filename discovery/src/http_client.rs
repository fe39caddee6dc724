//! A plain-HTTP client for the discovery protocols (one request, one
//! answer; a long poll is a request with no timeout).
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP answer: status, `X-Etcd-Index`, body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub etcd_index: i64,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(conn),
        }
    }

    /// `method url` with `form` as a form body; `timeout` None waits as
    /// long as the server does (a watch).
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        form: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Reply, String> {
        let mut b = http::Request::builder().method(method).uri(url);
        if form.is_some() {
            b = b.header("Content-Type", "application/x-www-form-urlencoded");
        }
        let req = b
            .body(Full::new(Bytes::from(form.unwrap_or("").to_string())))
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = resp.status().as_u16();
            let etcd_index = resp
                .headers()
                .get("X-Etcd-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
                .to_bytes();
            Ok(Reply {
                status,
                etcd_index,
                body,
            })
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| format!("{method} {url}: no answer within {t:?}"))?,
            None => call.await,
        }
    }
}
