//! Byte layouts of the MVCC tables.
//!
//! `Kv` keys are key-major: `escape(user_key) 00 01 | BE(!revision)`, so the
//! versions of one key are contiguous and newest first, and user-key order is
//! preserved (`00` in a user key is escaped as `00 FF`, which sorts after the
//! `00 01` terminator, so a key sorts before its extensions). A user range
//! `[a, b)` is the table range `[prefix(a), prefix(b))`.
//!
//! `Rev` keys are `BE(revision) | BE(sub)`: the events of a revision in order,
//! for watch replay. `Lease` holds `l | BE(id) -> BE(ttl)` and
//! `k | BE(id) | key -> ()` for attached keys.

/// Tag byte of a `Kv` value / `Rev` value: a live version.
pub const LIVE: u8 = 1;
/// Tag byte of a tombstone (the key was deleted at this revision).
pub const TOMBSTONE: u8 = 0;

const TERM: [u8; 2] = [0x00, 0x01];
const GROUP_END: [u8; 2] = [0x00, 0x02];

/// `escape(key) 00 01`: the common prefix of every version of `key`.
pub fn prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        if b == 0 {
            out.extend_from_slice(&[0x00, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&TERM);
    out
}

/// Exclusive upper bound of the versions sharing `prefix`.
pub fn group_end(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix[..prefix.len() - 2].to_vec();
    out.extend_from_slice(&GROUP_END);
    out
}

/// The `Kv` key of `key` at `rev`.
pub fn version_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = prefix(key);
    out.extend_from_slice(&rev_suffix(rev));
    out
}

pub fn rev_suffix(rev: i64) -> [u8; 8] {
    (!(rev as u64)).to_be_bytes()
}

/// Splits a `Kv` key into (prefix, revision). `None` for a malformed key.
pub fn split_version_key(ik: &[u8]) -> Option<(&[u8], i64)> {
    if ik.len() < 10 {
        return None;
    }
    let (p, r) = ik.split_at(ik.len() - 8);
    if p[p.len() - 2..] != TERM {
        return None;
    }
    let rev = !u64::from_be_bytes(r.try_into().ok()?);
    Some((p, rev as i64))
}

/// The user key of a prefix.
pub fn unescape(prefix: &[u8]) -> Vec<u8> {
    let body = &prefix[..prefix.len().saturating_sub(2)];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        if body[i] == 0 {
            i += 1; // skip the FF escape
        }
        i += 1;
    }
    out
}

pub fn rev_key(rev: i64, sub: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&(rev as u64).to_be_bytes());
    out.extend_from_slice(&sub.to_be_bytes());
    out
}

pub fn rev_start(rev: i64) -> Vec<u8> {
    (rev.max(0) as u64).to_be_bytes().to_vec()
}

pub fn split_rev_key(k: &[u8]) -> Option<i64> {
    Some(u64::from_be_bytes(k.get(..8)?.try_into().ok()?) as i64)
}

pub fn lease_key(id: i64) -> Vec<u8> {
    let mut out = vec![b'l'];
    out.extend_from_slice(&(id as u64).to_be_bytes());
    out
}

pub fn lease_attach_prefix(id: i64) -> Vec<u8> {
    let mut out = vec![b'k'];
    out.extend_from_slice(&(id as u64).to_be_bytes());
    out
}

pub fn lease_attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = lease_attach_prefix(id);
    out.extend_from_slice(key);
    out
}

/// Smallest byte string greater than every string starting with `p`
/// (`None`: no bound, `p` is all 0xFF).
pub fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = p.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn version_keys_preserve_order(a in proptest::collection::vec(0u8..4, 0..6),
                                       b in proptest::collection::vec(0u8..4, 0..6),
                                       ra in 1i64..1000, rb in 1i64..1000) {
            let ka = version_key(&a, ra);
            let kb = version_key(&b, rb);
            let want = a.cmp(&b).then(rb.cmp(&ra));
            prop_assert_eq!(ka.cmp(&kb), want);
            let (p, r) = split_version_key(&ka).unwrap();
            prop_assert_eq!(unescape(p), a.clone());
            prop_assert_eq!(r, ra);
            // every version of a lies in [prefix(a), group_end(prefix(a)))
            prop_assert!(ka >= prefix(&a) && ka < group_end(&prefix(&a)));
            // and b's versions are inside the user range [a, end) iff a <= b < end
            if b < a { prop_assert!(kb < prefix(&a)); }
            if b > a { prop_assert!(kb >= group_end(&prefix(&a))); }
        }
    }
}
