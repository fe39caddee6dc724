//! Every answer a client got is what the store's history holds at the
//! answer's revision: a response's header revision is the store revision it
//! reflects (etcd's `ResponseHeader.revision`), so a put at revision `r`
//! left its value at `r`, a get answered at `r` saw the value the key had
//! at `r`, and so on. Checked once the run has converged, against a
//! member's full version history (the simulator never compacts).
//!
//! This does not replace the linearizability check (it says nothing about
//! real-time order); it pins what each answer claims to what was committed.

use cairn_proto::etcdserverpb::RangeRequest;

use crate::disk::SimBackend;
use crate::workload::{Outcome, Record, Req};

type Kv = Option<(String, i64)>;

fn at(mvcc: &cairn_mvcc::Mvcc<SimBackend>, key: &str, revision: i64) -> Result<Kv, String> {
    let r = mvcc
        .range(&RangeRequest {
            key: key.as_bytes().to_vec(),
            revision,
            ..Default::default()
        })
        .map_err(|e| format!("answers: reading {key} at {revision}: {e}"))?;
    Ok(r.kvs.first().map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    }))
}

pub fn check(history: &[Record], mvcc: &cairn_mvcc::Mvcc<SimBackend>) -> Result<usize, String> {
    let mut checked = 0;
    for r in history {
        let bad = |held: &Kv, what: &str| {
            Err(format!(
                "answers: {r:?} {what}, but the store holds {held:?} there"
            ))
        };
        match (&r.req, &r.outcome) {
            (Req::Put { key, value, .. }, Outcome::Put { revision }) => {
                let held = at(mvcc, key, *revision)?;
                if held != Some((value.clone(), *revision)) {
                    return bad(&held, "wrote at its revision");
                }
            }
            (
                Req::Get { key },
                Outcome::Get {
                    value,
                    mod_revision,
                    revision,
                },
            ) => {
                let held = at(mvcc, key, *revision)?;
                let seen = value.clone().map(|v| (v, *mod_revision));
                if held != seen {
                    return bad(&held, "read at its revision");
                }
            }
            (Req::Delete { key }, Outcome::Delete { deleted, revision }) => {
                let held = at(mvcc, key, *revision)?;
                if held.is_some() {
                    return bad(&held, "deleted");
                }
                if *deleted == 1 && at(mvcc, key, revision - 1)?.is_none() {
                    return bad(&None, "deleted an existing key one revision before");
                }
            }
            (
                Req::Cas {
                    key, value: new, ..
                },
                Outcome::Cas {
                    succeeded,
                    revision,
                    value,
                    mod_revision,
                },
            ) => {
                let held = at(mvcc, key, *revision)?;
                let want = if *succeeded {
                    Some((new.clone(), *revision))
                } else {
                    value.clone().map(|v| (v, *mod_revision))
                };
                if held != want {
                    return bad(&held, "compared and swapped or read");
                }
            }
            _ => continue,
        }
        checked += 1;
    }
    Ok(checked)
}
