//! Forwarding of the cluster service (owned by the forwarding helper).
