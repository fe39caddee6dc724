//! How a cairn agent finds its cluster and its role: static
//! `--initial-cluster`, a discovery URL (etcd's v2 discovery protocol,
//! served by any cairn or etcd through the v2 keys API, which this crate
//! also emulates on the v3 API), v3 discovery, or DNS SRV records; and the
//! role decision (voter, learner or proxy) from what bootstrap found.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod http_client;
pub mod registry;
pub mod role;
pub mod srv;
pub mod tls;
pub mod url;
pub mod v2;
pub mod v3;

pub use bootstrap::{Bootstrap, Method};
pub use registry::{DiscoveryError, Retry};
pub use role::{Decision, Fallback, Requested};
