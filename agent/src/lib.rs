//! The cairn agent: configuration, the node, and the servers in front of it.
#![forbid(unsafe_code)]

pub mod alarms;
pub mod api;
pub mod apps;
pub mod auth;
pub mod compactor;
pub mod config;
pub mod discovery_cli;
pub mod health_cli;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod prefix_stats;
pub mod proxy_role;
pub mod render_cli;
pub mod serve;
pub mod server;
pub mod service_cli;
pub mod snapshot_cli;
pub mod staleness;
pub mod tenants;
pub mod top;
pub mod watch_hub;
