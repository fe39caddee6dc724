//! Lease forwarding and keep-alive coalescing (owned by the forwarding helper).
use std::sync::Arc;

use crate::{ProxyConfig, Stats, upstream::Upstream};

pub(crate) struct Leases {}

impl Leases {
    pub(crate) fn new(_config: &ProxyConfig, _upstream: Upstream, _stats: Arc<Stats>) -> Leases {
        Leases {}
    }
}
