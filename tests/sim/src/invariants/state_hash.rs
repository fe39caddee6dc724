//! The applied state is identical on every member at the same log index:
//! etcd's HashKV, which its corruption check compares across members
//! (etcd's `--experimental-corrupt-check-time`). Taken every few entries by
//! the state machine (`machine::HASH_EVERY`) and compared across nodes and
//! across restarts of the same node.

use std::collections::BTreeMap;

use crate::machine::Applied;

#[derive(Default)]
pub struct StateHash {
    by_index: BTreeMap<u64, (u32, u64)>,
    pub compared: u64,
}

impl StateHash {
    pub fn applied(&mut self, a: &Applied) -> Result<(), String> {
        let Some(h) = a.state_hash else {
            return Ok(());
        };
        match self.by_index.get(&a.index) {
            Some(&(hash, node)) if hash != h => Err(format!(
                "state hash: after entry {} node {} hashes {h:08x}, node {node} hashed {hash:08x}",
                a.index, a.node
            )),
            Some(_) => {
                self.compared += 1;
                Ok(())
            }
            None => {
                self.by_index.insert(a.index, (h, a.node));
                Ok(())
            }
        }
    }
}
