//! Watch coalescing (owned by the watch helper).
use std::sync::Arc;

use crate::{ProxyConfig, Stats, namespace::Namespace, upstream::Upstream};

pub(crate) struct Watches {}

impl Watches {
    pub(crate) fn new(
        _config: &ProxyConfig,
        _upstream: Upstream,
        _ns: Namespace,
        _stats: Arc<Stats>,
    ) -> Watches {
        Watches {}
    }
}
