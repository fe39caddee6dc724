//! Writes the seed corpus of `fuzz/corpus/` from real encodings: requests
//! as etcdctl and the JSON gateway send them, data directories the store
//! wrote. Run after a format change, then commit what changed:
//!
//! ```text
//! cargo test -p cairn-fuzzing --test seeds -- --ignored
//! ```
//! (The config seeds are files written by hand.)
// protobuf 2 messages are built field by field.
#![allow(clippy::field_reassign_with_default)]

use std::path::{Path, PathBuf};

use cairn_mvcc::Backend as _;
use cairn_proto::cairnpb::command::Op;
use cairn_proto::cairnpb::{Command, Member};
use cairn_proto::etcdserverpb::{
    AlarmRequest, AuthUserAddRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, TxnRequest, WatchRequest,
};
use cairn_store::Db;
use prost::Message;
use raft::Storage as _;
use raft::eraftpb::{ConfState, Entry, HardState};

fn corpus(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
}

/// The selector byte `request` reads: message number, then JSON or not.
fn selector(message: &str, json: bool) -> u8 {
    let n = cairn_fuzzing::MESSAGES
        .iter()
        .position(|m| *m == message)
        .expect("a known message");
    ((n as u8) << 1) | json as u8
}

/// Both encodings of a request given as the gateway's JSON.
fn both<M>(dir: &Path, message: &str, name: &str, json: &str)
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    let m: M = serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut pb = vec![selector(message, false)];
    pb.extend(m.encode_to_vec());
    write(dir, &format!("{name}.pb"), &pb);
    let mut js = vec![selector(message, true)];
    js.extend(json.as_bytes());
    write(dir, &format!("{name}.json"), &js);
}

#[test]
#[ignore = "writes the seed corpus"]
fn write_request_seeds() {
    let d = &corpus("request");
    // keys: "a" YQ==, "b" Yg==, "c/" Yy8=, "c0" YzA=, "\0" AA==, "foo" Zm9v
    both::<RangeRequest>(d, "RangeRequest", "range-key", r#"{"key":"YQ=="}"#);
    both::<RangeRequest>(
        d,
        "RangeRequest",
        "range-prefix-sorted",
        r#"{"key":"Yy8=","range_end":"YzA=","limit":"2","sort_order":"DESCEND","sort_target":"MOD","keys_only":true}"#,
    );
    both::<RangeRequest>(
        d,
        "RangeRequest",
        "range-all-at-revision",
        r#"{"key":"AA==","range_end":"AA==","revision":"3","count_only":true,"min_mod_revision":"2","max_create_revision":"5"}"#,
    );
    both::<PutRequest>(d, "PutRequest", "put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    both::<PutRequest>(
        d,
        "PutRequest",
        "put-lease-prev",
        r#"{"key":"Yg==","value":"eA==","lease":"7","prev_kv":true}"#,
    );
    both::<PutRequest>(
        d,
        "PutRequest",
        "put-ignore",
        r#"{"key":"YQ==","ignore_value":true,"ignore_lease":true}"#,
    );
    both::<DeleteRangeRequest>(
        d,
        "DeleteRangeRequest",
        "delete-prefix",
        r#"{"key":"Yy8=","range_end":"YzA=","prev_kv":true}"#,
    );
    both::<TxnRequest>(
        d,
        "TxnRequest",
        "txn-cas",
        r#"{"compare":[{"result":"EQUAL","target":"MOD","key":"YQ==","mod_revision":"4"}],"success":[{"request_put":{"key":"YQ==","value":"NQ=="}}],"failure":[{"request_range":{"key":"YQ=="}}]}"#,
    );
    both::<TxnRequest>(
        d,
        "TxnRequest",
        "txn-nested",
        r#"{"compare":[{"result":"GREATER","target":"VERSION","key":"Yg==","version":"0"},{"target":"VALUE","key":"Yw==","range_end":"ZA==","value":"eA=="}],"success":[{"request_txn":{"success":[{"request_put":{"key":"aw==","value":"MQ=="}}],"failure":[{"request_put":{"key":"aw==","value":"Mg=="}}]}},{"request_delete_range":{"key":"eg=="}}],"failure":[]}"#,
    );
    both::<CompactionRequest>(
        d,
        "CompactionRequest",
        "compact",
        r#"{"revision":"4","physical":true}"#,
    );
    both::<LeaseGrantRequest>(
        d,
        "LeaseGrantRequest",
        "lease-grant",
        r#"{"TTL":"30","ID":"0"}"#,
    );
    both::<LeaseRevokeRequest>(d, "LeaseRevokeRequest", "lease-revoke", r#"{"ID":"7"}"#);
    both::<WatchRequest>(
        d,
        "WatchRequest",
        "watch-create",
        r#"{"create_request":{"key":"YQ==","range_end":"Yg==","start_revision":"2","prev_kv":true,"filters":["NODELETE"],"watch_id":"3","progress_notify":true}}"#,
    );
    both::<WatchRequest>(
        d,
        "WatchRequest",
        "watch-cancel",
        r#"{"cancel_request":{"watch_id":"3"}}"#,
    );
    both::<AlarmRequest>(
        d,
        "AlarmRequest",
        "alarm-activate",
        r#"{"action":"ACTIVATE","memberID":"1","alarm":"NOSPACE"}"#,
    );
    both::<AuthUserAddRequest>(
        d,
        "AuthUserAddRequest",
        "user-add",
        r#"{"name":"root","password":"pw","options":{"no_password":false}}"#,
    );
    let commands = [
        (
            "command-put",
            Command {
                op: Some(Op::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
                username: "alice".into(),
                auth_revision: 1,
            },
        ),
        (
            "command-member",
            Command {
                op: Some(Op::MemberSet(Member {
                    id: 42,
                    name: "infra1".into(),
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                    client_urls: vec!["http://127.0.0.1:2379".into()],
                    is_learner: false,
                })),
                ..Default::default()
            },
        ),
        (
            "command-member-remove",
            Command {
                op: Some(Op::MemberRemove(42)),
                ..Default::default()
            },
        ),
    ];
    for (name, cmd) in commands {
        let mut v = vec![selector("Command", false)];
        v.extend(cmd.encode_to_vec());
        write(d, &format!("{name}.pb"), &v);
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

/// A data directory as the agent leaves it: entries with the hard and
/// configuration states, optionally compacted, and a few MVCC writes.
fn data_dir(entries: u64, compact_to: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let mut log = db.raft_log();
    let mut cs = ConfState::default();
    cs.voters = vec![1];
    cairn_raft::LogStore::set_conf_state(&mut log, &cs).unwrap();
    let mut hs = HardState::default();
    hs.term = 2;
    hs.vote = 1;
    hs.commit = entries;
    let ents: Vec<Entry> = (1..=entries)
        .map(|i| {
            let cmd = Command {
                op: Some(Op::Put(PutRequest {
                    key: format!("key{i}").into_bytes(),
                    value: format!("value{i}").into_bytes(),
                    ..Default::default()
                })),
                ..Default::default()
            };
            entry(i, 1 + i / 3, &cmd.encode_to_vec())
        })
        .collect();
    cairn_raft::LogStore::append(&mut log, &ents, Some(&hs), true).unwrap();
    if compact_to > 0 {
        cairn_raft::LogStore::compact(&mut log, compact_to).unwrap();
    }
    assert_eq!(log.last_index().unwrap(), entries);
    let mut b = cairn_mvcc::Batch::default();
    b.put(cairn_mvcc::Table::Kv, b"key1".to_vec(), b"value1".to_vec());
    db.mvcc_backend().commit(b, true).unwrap();
    dir
}

#[test]
#[ignore = "writes the seed corpus"]
fn write_log_recovery_seeds() {
    let d = &corpus("log_recovery");
    for (name, entries, compact) in [("empty", 0, 0), ("five", 5, 0), ("compacted", 8, 3)] {
        let dir = data_dir(entries, compact);
        write(
            d,
            &format!("files-{name}"),
            &cairn_store::fuzzing::pack(dir.path()).unwrap(),
        );
        let db = Db::open(dir.path()).unwrap();
        write(
            d,
            &format!("records-{name}"),
            &cairn_store::fuzzing::dump_records(&db),
        );
    }
}
