//! The discovery protocol over a registry (etcd's v2 discovery service, or
//! v3 keys under `/_etcd/registry/<token>/`): read the expected size,
//! register this member unless the cluster is already full, then wait
//! until `size` members have registered. The first `size` registrations
//! (by creation index) form the cluster.
use std::future::Future;
use std::time::Duration;

/// etcd's discovery errors, with etcd's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error("discovery: invalid URL")]
    InvalidUrl,
    #[error("discovery: size key is bad")]
    BadSizeKey,
    #[error("discovery: size key not found")]
    SizeNotFound,
    #[error("discovery: found duplicate id")]
    DuplicateId,
    #[error("discovery: found duplicate name")]
    DuplicateName,
    #[error("discovery: cluster is full")]
    FullCluster,
    #[error("discovery: too many retries ({0})")]
    TooManyRetries(String),
    #[error("discovery: bad discovery endpoint ({0})")]
    BadEndpoint(String),
    /// The service did not answer: retried with backoff.
    #[error("discovery: cannot reach the discovery service: {0}")]
    Unreachable(String),
    #[error("discovery: {0}")]
    Other(String),
}

/// One member's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The member ID in hex (the registry key's last segment).
    pub id: String,
    /// `name=peerURL[,name=peerURL2]`.
    pub value: String,
    /// Creation index: the registration order.
    pub created: i64,
}

/// What this member registers.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: String,
    /// `name=peerURL,...` as etcd registers it.
    pub value: String,
    /// Client URLs (cairn's own record, hidden from etcd's view) so that
    /// agents left out of a full cluster can reach it.
    pub client_urls: Vec<String>,
}

/// A discovery registry.
pub trait Registry: Sync {
    fn size(&self) -> impl Future<Output = Result<usize, DiscoveryError>> + Send;
    /// The registrations and the index they were read at.
    fn members(
        &self,
    ) -> impl Future<Output = Result<(Vec<Registration>, i64), DiscoveryError>> + Send;
    /// Creates this member's registration if absent (an identical one is
    /// this member's own, from an earlier attempt); records its clients.
    fn register(&self, me: &Me) -> impl Future<Output = Result<(), DiscoveryError>> + Send;
    /// The first registration created after `index`, and its index; `None`
    /// when the history is gone and the caller must list again.
    fn next_after(
        &self,
        index: i64,
    ) -> impl Future<Output = Result<Option<(Registration, i64)>, DiscoveryError>> + Send;
    /// Client URLs the registered members recorded.
    fn client_urls(&self) -> impl Future<Output = Result<Vec<String>, DiscoveryError>> + Send;
}

/// What the protocol found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// This member is one of the first `size`: the initial cluster.
    Member(Vec<(String, String)>),
    /// The cluster was full without this member; its members.
    Full(Vec<(String, String)>),
}

/// How often and how long to retry an unreachable service (etcd backs off
/// exponentially: 1 s, 2 s, 4 s, ...).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 10,
            first: Duration::from_secs(1),
            max: Duration::from_secs(16),
        }
    }
}

/// Runs `f` again after a backoff while the service is unreachable.
pub async fn retrying<T, F, Fut>(retry: Retry, what: &str, mut f: F) -> Result<T, DiscoveryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DiscoveryError>>,
{
    let mut wait = retry.first;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Err(DiscoveryError::Unreachable(e)) if attempt < retry.attempts => {
                tracing::warn!(step = what, error = %e, retry_in = ?wait, "discovery service unreachable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(retry.max);
            }
            Err(DiscoveryError::Unreachable(e)) => {
                return Err(DiscoveryError::TooManyRetries(format!("{what}: {e}")));
            }
            other => return other,
        }
    }
}

/// The first `size` registrations by creation order, and whether `id` is
/// among them.
fn first(mut regs: Vec<Registration>, size: usize, id: &str) -> (Vec<Registration>, bool) {
    regs.sort_by_key(|r| r.created);
    regs.dedup_by(|a, b| a.id == b.id);
    regs.truncate(size);
    let mine = regs.iter().any(|r| r.id == id);
    (regs, mine)
}

/// `name=url,...` of every registration, checked as etcd checks it.
pub fn cluster_of(
    regs: &[Registration],
    size: usize,
) -> Result<Vec<(String, String)>, DiscoveryError> {
    let mut out = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for r in regs {
        let mut mine = std::collections::BTreeSet::new();
        for part in r.value.split(',').filter(|p| !p.is_empty()) {
            let (name, url) = part.split_once('=').ok_or(DiscoveryError::InvalidUrl)?;
            url::Url::parse(url).map_err(|_| DiscoveryError::InvalidUrl)?;
            mine.insert(name.to_string());
            out.push((name.to_string(), url.to_string()));
        }
        names.extend(mine);
    }
    if names.len() != size {
        return Err(DiscoveryError::DuplicateName);
    }
    Ok(out)
}

/// Joins through `registry` (etcd's `JoinCluster`).
pub async fn join<R: Registry>(
    registry: &R,
    me: &Me,
    retry: Retry,
) -> Result<Found, DiscoveryError> {
    let size = retrying(retry, "reading the cluster size", || registry.size()).await?;
    let (regs, _) = retrying(retry, "listing members", || registry.members()).await?;
    let (firsts, mine) = first(regs, size, &me.id);
    if firsts.len() >= size && !mine {
        return Ok(Found::Full(cluster_of(&firsts, size)?));
    }
    if firsts.len() >= size {
        // Registered in a cluster that is complete: this member was
        // bootstrapped before and has lost its data directory (or crashed
        // before writing it). Starting a new raft node under the old ID
        // could vote twice in a term; etcd refuses, and so does cairn.
        tracing::error!(
            id = %me.id,
            "this member is already registered in a full discovery cluster;              it has been bootstrapped before (remove and re-add it, or use a new token)"
        );
        return Err(DiscoveryError::DuplicateId);
    }
    retrying(retry, "registering", || registry.register(me)).await?;
    let (mut regs, mut index) = retrying(retry, "listing members", || registry.members()).await?;
    loop {
        let (firsts, mine) = first(regs.clone(), size, &me.id);
        if firsts.len() >= size {
            let cluster = cluster_of(&firsts, size)?;
            return Ok(if mine {
                Found::Member(cluster)
            } else {
                Found::Full(cluster)
            });
        }
        tracing::info!(
            found = firsts.len(),
            size,
            "waiting for more members to register"
        );
        match retrying(retry, "waiting for members", || registry.next_after(index)).await? {
            Some((reg, at)) => {
                index = at;
                regs.push(reg);
            }
            None => {
                (regs, index) = retrying(retry, "listing members", || registry.members()).await?;
            }
        }
    }
}

/// Waits, without registering, until `size` members have registered (a
/// learner or proxy started before the voters: etcd's `GetCluster`).
pub async fn wait_full<R: Registry>(registry: &R, retry: Retry) -> Result<(), DiscoveryError> {
    let size = retrying(retry, "reading the cluster size", || registry.size()).await?;
    let (mut regs, mut index) = retrying(retry, "listing members", || registry.members()).await?;
    while first(regs.clone(), size, "").0.len() < size {
        match retrying(retry, "waiting for members", || registry.next_after(index)).await? {
            Some((reg, at)) => {
                index = at;
                regs.push(reg);
            }
            None => {
                (regs, index) = retrying(retry, "listing members", || registry.members()).await?;
            }
        }
    }
    Ok(())
}

/// The client URLs the members recorded.
pub async fn lookup<R: Registry>(
    registry: &R,
    retry: Retry,
) -> Result<Vec<String>, DiscoveryError> {
    retrying(retry, "reading client URLs", || registry.client_urls()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, name: &str, created: i64) -> Registration {
        Registration {
            id: id.into(),
            value: format!("{name}=http://127.0.0.1:{}", 2380 + created),
            created,
        }
    }

    #[test]
    fn first_size_by_creation() {
        let (f, mine) = first(
            vec![reg("c", "n3", 3), reg("a", "n1", 1), reg("b", "n2", 2)],
            2,
            "c",
        );
        assert_eq!(
            f.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!mine);
        assert_eq!(
            cluster_of(&f, 2).unwrap(),
            [
                ("n1".to_string(), "http://127.0.0.1:2381".to_string()),
                ("n2".to_string(), "http://127.0.0.1:2382".to_string())
            ]
        );
        assert_eq!(
            cluster_of(&[reg("a", "n1", 1), reg("b", "n1", 2)], 2),
            Err(DiscoveryError::DuplicateName)
        );
        let bad = Registration {
            id: "x".into(),
            value: "nourl".into(),
            created: 1,
        };
        assert_eq!(cluster_of(&[bad], 1), Err(DiscoveryError::InvalidUrl));
    }
}
