//! The clients' history, checked for linearizability by `cairn-check`.

use cairn_check::{History, Op, Outcome as Checked, Ret};

use crate::workload::{Outcome, Record, Req};

/// SIM_HISTORY=<file>: writes the whole history there, one request a line
/// (debugging a seed).
pub fn dump_if_asked(history: &[Record]) {
    if let Ok(path) = std::env::var("SIM_HISTORY") {
        let lines: Vec<String> = history.iter().map(|r| format!("{r:?}")).collect();
        let _ = std::fs::write(path, lines.join("\n") + "\n");
    }
}

/// Checks the history; returns the number of (linearized set, state) pairs
/// the checker explored.
///
/// Times: within one simulated millisecond the clients send before they
/// read answers, so a request sent at `t` is concurrent with one answered
/// at `t`, and one answered at `t` precedes one sent at `t + 1`.
pub fn check(history: &[Record]) -> Result<u64, String> {
    let mut h = History::new();
    // SIM_DUMP=<key>: print every request on that key (debugging a seed).
    let dump = std::env::var("SIM_DUMP").ok();
    for r in history {
        if let Some(k) = &dump
            && match &r.req {
                Req::Put { key, .. }
                | Req::Get { key }
                | Req::Delete { key }
                | Req::Cas { key, .. } => key == k,
                _ => false,
            }
        {
            eprintln!("{r:?}");
        }
        let op = match &r.req {
            Req::Put {
                key,
                value,
                lease: 0,
            } => Op::put(key.as_str(), value.as_str()),
            Req::Put { key, value, lease } => {
                Op::put_with_lease(key.as_str(), value.as_str(), *lease)
            }
            Req::Get { key } => Op::get(key.as_str()),
            Req::Delete { key } => Op::delete(key.as_str()),
            Req::Cas { key, expect, value } => {
                Op::cas_mod_revision(key.as_str(), *expect, value.as_str())
            }
            Req::LeaseGrant { id } => Op::lease_grant(*id, 3600),
            Req::LeaseRevoke { id } => Op::lease_revoke(*id),
        };
        let outcome = match &r.outcome {
            Outcome::Put { revision } => Checked::Ok(Ret::Put {
                revision: *revision,
            }),
            Outcome::Get {
                value,
                mod_revision,
                revision,
            } => Checked::Ok(Ret::get(value.as_deref(), *mod_revision, *revision)),
            Outcome::Delete { deleted, revision } => Checked::Ok(Ret::Delete {
                deleted: *deleted as u64,
                revision: *revision,
            }),
            Outcome::Cas {
                succeeded: true,
                revision,
                ..
            } => Checked::Ok(Ret::cas_succeeded(*revision)),
            Outcome::Cas {
                succeeded: false,
                revision,
                value,
                mod_revision,
            } => Checked::Ok(Ret::cas_failed(value.as_deref(), *mod_revision, *revision)),
            Outcome::LeaseGrant { revision } | Outcome::LeaseRevoke { revision } => {
                Checked::Ok(Ret::Lease {
                    revision: *revision,
                })
            }
            Outcome::Failed(_) => Checked::Failed,
            Outcome::Unknown => Checked::Unknown,
        };
        h.record(
            r.client as u64,
            op,
            2 * r.invoked,
            2 * r.completed + 1,
            outcome,
        );
    }
    // Keys share a partition only through leases; with every key put under
    // some lease sooner or later, long runs would make one partition of
    // everything, too big to search. Lease operations are copied into each
    // key's partition instead (sound; a revoke's atomicity across keys is
    // then checked through revisions only).
    let cfg = cairn_check::Config {
        lease_group_keys_max: 1,
        ..cairn_check::Config::default()
    };
    match cairn_check::check_with(&h, &cfg) {
        Ok(report) => Ok(report.states),
        Err(v) => Err(format!("linearizability: {v}")),
    }
}
