//! The cairn agent: configuration, the node, and the servers in front of it.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod peer;
pub mod proxy_role;
pub mod serve;
pub mod server;
pub mod staleness;
pub mod watch_hub;
