//! The black-box conformance suite: one binary, one module per API area.
//!
//! Every case runs against the subject chosen by `CONFORMANCE_SUBJECT`
//! (`cairn`, the default, or `etcd` for Debian's etcd 3.4 as the oracle).
//! Each case starts its own single-member server on loopback ports.
//!
//! ```text
//! # against real etcd (the oracle; about 20 s on 2 cores):
//! CONFORMANCE_SUBJECT=etcd cargo test -p cairn-tests
//! # against cairn (the binary next to the test, or CAIRN_BIN=/path/to/cairn):
//! cargo build -p cairn-agent && cargo test -p cairn-tests
//! # replay a crash round:
//! CRASH_SEED=<seed printed by the failing run> cargo test -p cairn-tests crash
//! # replay a torn-journal round (disk.rs; the full-disk case mounts a tmpfs: root):
//! CRASH_SEED=<seed printed by the failing run> cargo test -p cairn-tests disk
//! ```

mod alarms;
mod apps;
mod auth;
mod cluster;
mod compaction;
mod config;
mod container;
mod crash;
mod discovery;
mod disk;
mod dns_server;
mod docs;
mod etcdctl;
mod history;
mod http;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod pki;
mod render;
mod roles;
mod services;
mod snapshot;
mod systemd;
mod tenants;
mod tls;
mod v2;
mod watch;

use cairn_tests::Subject;
use etcd_client::{Client, Error};

/// A fresh subject and a client for it.
pub async fn start() -> (Subject, Client) {
    let subject = Subject::start().await;
    let client = subject.client().await;
    (subject, client)
}

/// The gRPC status of a failed call, panicking on success or a non-gRPC error.
#[track_caller]
pub fn status_of<T: std::fmt::Debug>(result: Result<T, Error>) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected a gRPC error, got Ok({v:?})"),
        Err(Error::GRpcStatus(status)) => status,
        Err(other) => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// Asserts a call failed with exactly this gRPC code and message.
#[track_caller]
pub fn assert_grpc_error<T: std::fmt::Debug>(
    result: Result<T, Error>,
    code: tonic::Code,
    message: &str,
) {
    let status = status_of(result);
    assert_eq!(
        (status.code(), status.message()),
        (code, message),
        "unexpected gRPC status {status:?}"
    );
}

/// The header revision of a response.
pub fn rev(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("response header").revision()
}
