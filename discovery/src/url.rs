//! etcd's v2 discovery service, as any cairn or etcd serving the v2 keys
//! API provides it: `<url>/_config/size`, one key per member under
//! `<url>/` created with `prevExist=false`, waits with `wait=true`.
//! cairn also records each member's client URLs under `<url>/_clients/`
//! (a hidden directory, invisible to etcd's members).
use std::time::Duration;

use serde_json::Value;

use crate::http_client::{HttpClient, Reply};
use crate::registry::{DiscoveryError, Me, Registration, Registry};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A discovery URL: `http://host:port/v2/keys/<dir>/<token>`.
#[derive(Clone)]
pub struct UrlRegistry {
    /// The URL without a trailing slash.
    url: String,
    http: HttpClient,
}

impl UrlRegistry {
    pub fn new(url: &str) -> Result<Self, DiscoveryError> {
        let u = url::Url::parse(url).map_err(|_| DiscoveryError::InvalidUrl)?;
        match u.scheme() {
            "http" | "https" => {}
            _ => return Err(DiscoveryError::InvalidUrl),
        }
        if u.host_str().is_none() || u.path().trim_matches('/').is_empty() {
            return Err(DiscoveryError::InvalidUrl);
        }
        Ok(UrlRegistry {
            url: url.trim_end_matches('/').to_string(),
            http: HttpClient::new(),
        })
    }

    async fn call(
        &self,
        method: &str,
        rest: &str,
        form: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(Reply, Value), DiscoveryError> {
        let url = format!("{}{rest}", self.url);
        let reply = self
            .http
            .request(method, &url, form, timeout)
            .await
            .map_err(DiscoveryError::Unreachable)?;
        if reply.status >= 500 {
            return Err(DiscoveryError::Unreachable(format!(
                "{method} {url}: HTTP {}",
                reply.status
            )));
        }
        let v: Value = serde_json::from_slice(&reply.body).map_err(|_| {
            DiscoveryError::BadEndpoint(format!(
                "{method} {url}: HTTP {} {:?}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ))
        })?;
        Ok((reply, v))
    }
}

fn base(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn registration(n: &Value) -> Option<Registration> {
    let key = n["key"].as_str()?;
    let id = base(key);
    if id.starts_with('_') || n["dir"].as_bool() == Some(true) {
        return None;
    }
    Some(Registration {
        id: id.to_string(),
        value: n["value"].as_str()?.to_string(),
        created: n["createdIndex"].as_i64()?,
    })
}

fn form(value: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("value", value)
        .finish()
}

impl Registry for UrlRegistry {
    async fn size(&self) -> Result<usize, DiscoveryError> {
        let (reply, v) = self
            .call("GET", "/_config/size", None, Some(REQUEST_TIMEOUT))
            .await?;
        if reply.status == 404 {
            return Err(DiscoveryError::SizeNotFound);
        }
        v["node"]["value"]
            .as_str()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or(DiscoveryError::BadSizeKey)
    }

    async fn members(&self) -> Result<(Vec<Registration>, i64), DiscoveryError> {
        let (reply, v) = self.call("GET", "", None, Some(REQUEST_TIMEOUT)).await?;
        if reply.status == 404 {
            return Err(DiscoveryError::Other(format!(
                "{}: token not found",
                self.url
            )));
        }
        let regs = v["node"]["nodes"]
            .as_array()
            .map(|ns| ns.iter().filter_map(registration).collect())
            .unwrap_or_default();
        Ok((regs, reply.etcd_index))
    }

    async fn register(&self, me: &Me) -> Result<(), DiscoveryError> {
        let (reply, v) = self
            .call(
                "PUT",
                &format!("/{}?prevExist=false", me.id),
                Some(&form(&me.value)),
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        match reply.status {
            200 | 201 => {}
            412 if v["errorCode"] == 105 => {
                // Registered before (a restart before the data directory
                // was written) or another member with this ID.
                let (_, cur) = self
                    .call("GET", &format!("/{}", me.id), None, Some(REQUEST_TIMEOUT))
                    .await?;
                if cur["node"]["value"].as_str() != Some(me.value.as_str()) {
                    return Err(DiscoveryError::DuplicateId);
                }
            }
            s => {
                return Err(DiscoveryError::Other(format!(
                    "registering {}: HTTP {s} {v}",
                    me.id
                )));
            }
        }
        if !me.client_urls.is_empty() {
            self.call(
                "PUT",
                &format!("/_clients/{}", me.id),
                Some(&form(&me.client_urls.join(","))),
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        }
        Ok(())
    }

    async fn next_after(&self, index: i64) -> Result<Option<(Registration, i64)>, DiscoveryError> {
        let mut index = index;
        loop {
            let (reply, v) = self
                .call(
                    "GET",
                    &format!("?wait=true&recursive=true&waitIndex={}", index + 1),
                    None,
                    None,
                )
                .await?;
            if v["errorCode"] == 401 {
                return Ok(None);
            }
            if reply.status != 200 {
                return Err(DiscoveryError::Other(format!("watching: {v}")));
            }
            let at = v["node"]["modifiedIndex"].as_i64().unwrap_or(index + 1);
            let action = v["action"].as_str().unwrap_or("");
            // A direct child created or set is a registration.
            let direct = v["node"]["key"]
                .as_str()
                .and_then(|k| k.strip_prefix(&token_key(&self.url)))
                .is_some_and(|rest| rest.matches('/').count() == 1);
            if direct
                && matches!(action, "create" | "set")
                && let Some(r) = registration(&v["node"])
            {
                return Ok(Some((r, at)));
            }
            index = at;
        }
    }

    async fn client_urls(&self) -> Result<Vec<String>, DiscoveryError> {
        let (reply, v) = self
            .call("GET", "/_clients", None, Some(REQUEST_TIMEOUT))
            .await?;
        if reply.status == 404 {
            return Ok(Vec::new());
        }
        let mut urls: Vec<String> = v["node"]["nodes"]
            .as_array()
            .map(|ns| {
                ns.iter()
                    .filter_map(|n| n["value"].as_str())
                    .flat_map(|s| s.split(',').map(str::to_string))
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }
}

/// The v2 key of the token directory (`/discovery/<token>` of
/// `http://host/v2/keys/discovery/<token>`).
fn token_key(url: &str) -> String {
    let path = url::Url::parse(url)
        .map(|u| u.path().to_string())
        .unwrap_or_default();
    path.strip_prefix("/v2/keys")
        .unwrap_or(&path)
        .trim_end_matches('/')
        .to_string()
}

/// Creates a token with `size` on a v2 keys endpoint and returns its URL
/// (`cairn discovery new`).
pub async fn new_token(endpoint: &str, token: &str, size: usize) -> Result<String, DiscoveryError> {
    let url = format!(
        "{}/v2/keys/discovery/{token}",
        endpoint.trim_end_matches('/')
    );
    let reg = UrlRegistry::new(&url)?;
    let (reply, v) = reg
        .call(
            "PUT",
            "/_config/size?prevExist=false",
            Some(&form(&size.to_string())),
            Some(REQUEST_TIMEOUT),
        )
        .await?;
    if !matches!(reply.status, 200 | 201) {
        return Err(DiscoveryError::Other(format!(
            "creating the token at {url}: HTTP {} {v}",
            reply.status
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Retry, join};

    #[tokio::test]
    async fn a_dead_endpoint_is_retried_then_reported() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let reg =
            UrlRegistry::new(&format!("http://127.0.0.1:{port}/v2/keys/discovery/t")).unwrap();
        let me = Me {
            id: "1".into(),
            value: "n1=http://127.0.0.1:2380".into(),
            client_urls: vec![],
        };
        let retry = Retry {
            attempts: 3,
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        match join(&reg, &me, retry).await {
            Err(DiscoveryError::TooManyRetries(m)) => {
                assert!(
                    m.starts_with("reading the cluster size: GET http://127.0.0.1:"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            token_key("http://127.0.0.1:2379/v2/keys/discovery/abc"),
            "/discovery/abc"
        );
        assert!(UrlRegistry::new("http://h:1/v2/keys/discovery/abc/").is_ok());
        assert!(matches!(
            UrlRegistry::new("not a url"),
            Err(DiscoveryError::InvalidUrl)
        ));
        assert!(matches!(
            UrlRegistry::new("http://h:1"),
            Err(DiscoveryError::InvalidUrl)
        ));
    }
}
