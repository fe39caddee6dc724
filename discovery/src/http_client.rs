//! An HTTP(S) client for the discovery protocols (one request, one
//! answer; a long poll is a request with no timeout). `https` URLs are
//! verified against the CA certificates in `$SSL_CERT_FILE` (as Go's etcd
//! reads them), else the system bundle.
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
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Why https cannot be verified (no CA certificates found), if so.
    no_roots: Option<String>,
}

/// Where the trusted CA certificates are read from when `SSL_CERT_FILE`
/// is not set (Debian's, and Red Hat's bundle).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The trusted roots, or why there are none.
fn roots() -> Result<rustls::RootCertStore, String> {
    let paths: Vec<String> = match std::env::var("SSL_CERT_FILE") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => SYSTEM_BUNDLES.iter().map(|s| s.to_string()).collect(),
    };
    let mut store = rustls::RootCertStore::empty();
    let mut tried = Vec::new();
    for p in &paths {
        let pem = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                tried.push(format!("{p}: {e}"));
                continue;
            }
        };
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = store.add(cert);
        }
        if !store.is_empty() {
            return Ok(store);
        }
        tried.push(format!("{p}: no certificates"));
    }
    Err(format!(
        "no trusted CA certificates to verify an https discovery URL ({}); set SSL_CERT_FILE",
        tried.join("; ")
    ))
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
        conn.enforce_http(false);
        let (store, no_roots) = match roots() {
            Ok(s) => (s, None),
            Err(e) => (rustls::RootCertStore::empty(), Some(e)),
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(https),
            no_roots,
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
        if url.starts_with("https:")
            && let Some(why) = &self.no_roots
        {
            return Err(format!("{method} {url}: {why}"));
        }
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
                .map_err(|e| format!("{method} {url}: {}", chain(&e)))?;
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

/// An error with its causes ("client error (Connect): invalid peer
/// certificate: UnknownIssuer"): hyper's own message names none.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}
