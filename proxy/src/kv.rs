//! Forwarding of the kv service (owned by the forwarding helper).
