//! Member and cluster IDs, derived as etcd derives them (a hash of the peer
//! URLs and cluster token; the cluster ID a hash of the member IDs) and kept
//! in the data directory so that a restart keeps them whatever the flags say.
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    h.update(urls.join("").as_bytes());
    h.update(token.as_bytes());
    nonzero(first_u64(&h.finalize()))
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    nonzero(first_u64(&h.finalize()))
}

fn first_u64(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

fn nonzero(x: u64) -> u64 {
    if x == 0 { 1 } else { x }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_depends_on_urls_and_token_not_order() {
        let a = member_id(&["http://a:1".into(), "http://b:2".into()], "t");
        let b = member_id(&["http://b:2".into(), "http://a:1".into()], "t");
        let c = member_id(&["http://a:1".into(), "http://b:2".into()], "u");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(cluster_id(&[a]), cluster_id(&[c]));
    }
}
