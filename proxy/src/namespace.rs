//! An optional key prefix that confines every client to one part of the
//! keyspace (etcd grpc-proxy's `--namespace`): keys and range ends are
//! prefixed on the way up, stripped on the way down.

/// A key prefix; an empty prefix changes nothing.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    prefix: Vec<u8>,
}

impl Namespace {
    pub fn new(prefix: Vec<u8>) -> Namespace {
        Namespace { prefix }
    }

    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty()
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// A client's key as the cluster stores it.
    pub fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// A client's range end as the cluster must see it. An empty end (one
    /// key) stays empty; `"\0"` (every key from `key` on) becomes the end
    /// of the namespace, so a client never reads past its prefix.
    pub fn range_end(&self, end: &[u8]) -> Vec<u8> {
        if self.prefix.is_empty() || end.is_empty() {
            return end.to_vec();
        }
        if end == [0] {
            return prefix_end(&self.prefix);
        }
        self.key(end)
    }

    /// A key from the cluster as the client knows it. Keys outside the
    /// namespace cannot reach a client: every request is confined to it.
    pub fn strip(&self, key: &mut Vec<u8>) {
        if !self.prefix.is_empty() && key.starts_with(&self.prefix) {
            key.drain(..self.prefix.len());
        }
    }
}

/// The smallest key greater than every key starting with `prefix`
/// (etcd's `GetPrefixRangeEnd`); `"\0"` when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ends_are_confined_to_the_prefix() {
        let ns = Namespace::new(b"a/".to_vec());
        assert_eq!(ns.key(b"k"), b"a/k");
        assert_eq!(ns.range_end(b""), b"");
        assert_eq!(ns.range_end(b"\0"), b"a0");
        assert_eq!(ns.range_end(b"z"), b"a/z");
        let mut k = b"a/k".to_vec();
        ns.strip(&mut k);
        assert_eq!(k, b"k");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        let none = Namespace::default();
        assert_eq!(none.range_end(b"\0"), b"\0");
    }
}
