//! Test tool: silently changes the stored value of one key in a stopped
//! member's data directory, the way a disk or a bug could, so that the
//! corruption checks have something to find.
//!
//! `cairn-corrupt <data-dir> <key> <new value>`
//!
//! It rewrites the newest version of `key` in the MVCC `kv` table through
//! the store crate, so fjall's own checksums stay valid and nothing but a
//! comparison with the other members (HashKV) can notice. Revisions, the
//! applied index and the raft log are left as they are.
use cairn_mvcc::{Backend, Batch, Mvcc, Table, keys};
use cairn_proto::etcdserverpb::RangeRequest;
use cairn_proto::mvccpb::KeyValue;
use prost::Message;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, key, value] = args.as_slice() else {
        return Err("usage: cairn-corrupt <data-dir> <key> <new value>".into());
    };
    let db = cairn_store::Db::open(std::path::Path::new(dir)).map_err(|e| e.to_string())?;
    let mvcc = Mvcc::open(db.mvcc_backend()).map_err(|e| e.to_string())?;
    let found = mvcc
        .range(&RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable: true,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let Some(kv) = found.kvs.into_iter().next() else {
        return Err(format!("{key:?} is not in {dir}"));
    };
    // The stored form of a version: the LIVE tag, then the KeyValue
    // without its key (see cairn_mvcc::store).
    let changed = KeyValue {
        key: Vec::new(),
        value: value.as_bytes().to_vec(),
        ..kv.clone()
    };
    let mut raw = vec![keys::LIVE];
    changed.encode(&mut raw).map_err(|e| e.to_string())?;
    let mut batch = Batch::default();
    batch.put(Table::Kv, keys::version_key(&kv.key, kv.mod_revision), raw);
    mvcc.backend()
        .commit(batch, true)
        .map_err(|e| e.to_string())?;
    println!("{key} at revision {} now reads {value:?}", kv.mod_revision);
    Ok(())
}
