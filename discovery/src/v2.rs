//! etcd's v2 keys API emulated on the v3 API. See `node.rs` for how v2
//! nodes live in v3 keys and `store.rs` for how each v2 write becomes one
//! guarded v3 txn.
pub mod error;
pub mod expiry;
pub mod http;
pub mod node;
pub mod request;
pub mod store;
pub mod watch;

pub use error::{Code, V2Error};
pub use http::router;
pub use store::{Backend, Store};
