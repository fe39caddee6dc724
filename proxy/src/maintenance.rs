//! Forwarding of the maintenance service (owned by the forwarding helper).
