//! The cluster's client endpoints: one lazily connected tonic channel per
//! endpoint, a current endpoint every request starts with, and failover to
//! the next one when it is unreachable.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;

use crate::tls::ClientTls;

/// A handle on the endpoint pool; cheap to clone.
#[derive(Clone)]
pub struct Upstream(Arc<Mutex<State>>);

struct State {
    dial_timeout: Duration,
    tls: ClientTls,
    endpoints: Vec<(String, Channel)>,
    current: usize,
}

/// Which endpoint a channel came from, so that a failure moves the pool on
/// only once however many requests saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picked {
    pub url: String,
}

fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

fn channel(url: &str, dial_timeout: Duration, tls: &ClientTls) -> anyhow::Result<Channel> {
    let ep = tls
        .endpoint(url, dial_timeout)?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(ep.connect_lazy())
}

impl Upstream {
    pub fn new(
        urls: &[String],
        dial_timeout: Duration,
        tls: ClientTls,
    ) -> anyhow::Result<Upstream> {
        if urls.is_empty() {
            anyhow::bail!("the proxy needs at least one cluster endpoint (--endpoints)");
        }
        let mut endpoints = Vec::new();
        for u in urls {
            let u = normalize(u);
            let c = channel(&u, dial_timeout, &tls)?;
            endpoints.push((u, c));
        }
        Ok(Upstream(Arc::new(Mutex::new(State {
            dial_timeout,
            tls,
            endpoints,
            current: 0,
        }))))
    }

    /// The endpoint requests go to now.
    pub fn pick(&self) -> (Picked, Channel) {
        let s = self.0.lock().unwrap();
        let (url, c) = &s.endpoints[s.current % s.endpoints.len()];
        (Picked { url: url.clone() }, c.clone())
    }

    /// `picked` failed: move on to the next endpoint, unless another
    /// request already did.
    pub fn failed(&self, picked: &Picked) {
        let mut s = self.0.lock().unwrap();
        let n = s.endpoints.len();
        if s.endpoints[s.current % n].0 == picked.url {
            s.current = (s.current + 1) % n;
            tracing::warn!(endpoint = %picked.url, next = %s.endpoints[s.current].0, "upstream endpoint failed; trying the next");
        }
    }

    /// Every endpoint with its channel, current first: what one call may
    /// try, each endpoint at most once.
    pub fn candidates(&self) -> Vec<(Picked, Channel)> {
        let s = self.0.lock().unwrap();
        let n = s.endpoints.len();
        (0..n)
            .map(|i| {
                let (url, c) = &s.endpoints[(s.current + i) % n];
                (Picked { url: url.clone() }, c.clone())
            })
            .collect()
    }

    /// Every endpoint, current first.
    pub fn endpoints(&self) -> Vec<String> {
        let s = self.0.lock().unwrap();
        let n = s.endpoints.len();
        (0..n)
            .map(|i| s.endpoints[(s.current + i) % n].0.clone())
            .collect()
    }

    /// Replaces the endpoint list (from `MemberList`), keeping the channels
    /// of endpoints that stay and the current endpoint if it stays. An
    /// empty list changes nothing.
    pub fn set_endpoints(&self, urls: &[String]) {
        let mut s = self.0.lock().unwrap();
        let urls: Vec<String> = urls.iter().map(|u| normalize(u)).collect();
        if urls.is_empty() {
            return;
        }
        let current = s.endpoints[s.current % s.endpoints.len()].0.clone();
        let mut next = Vec::new();
        for u in urls {
            if next.iter().any(|(x, _): &(String, Channel)| *x == u) {
                continue;
            }
            if let Some((_, c)) = s.endpoints.iter().find(|(x, _)| *x == u) {
                next.push((u, c.clone()));
            } else if let Ok(c) = channel(&u, s.dial_timeout, &s.tls) {
                next.push((u, c));
            }
        }
        if next.is_empty() {
            return;
        }
        s.current = next.iter().position(|(u, _)| *u == current).unwrap_or(0);
        s.endpoints = next;
    }
}
