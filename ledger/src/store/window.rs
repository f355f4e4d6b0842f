//! The idempotency window: the decided and credited ids of the newest
//! batches, served from memory, loaded from the `i:` keys at start and
//! evicted by the same rule while the shard runs.

use std::collections::{BTreeMap, VecDeque};

use ledger_core::domain::{Decision, RejectReason, TransferId};
use ledger_core::hash::HashMap;

use super::codec::{entry_id, ID_ENTRY_LEN, TAG_ACCEPTED, TAG_CREDITED};
use super::keys::{ids_key_seq, ids_prefix, IDS_PREFIX};
use super::{write_lock, Change, Store, StoreError};

/// The ids remembered for idempotency, with the batch that wrote each, so a
/// reader can ignore the batch that is not yet committed.
#[derive(Debug, Default)]
pub(super) struct IdWindow {
    limit: usize,
    pub(super) decided: HashMap<TransferId, (Decision, u64)>,
    pub(super) credited: HashMap<TransferId, u64>,
    /// (seq, number of ids) per batch, oldest first.
    batches: VecDeque<(u64, usize)>,
    total: usize,
}

impl IdWindow {
    fn insert(&mut self, seq: u64, entries: &[u8]) {
        for entry in entries.chunks_exact(ID_ENTRY_LEN) {
            let id = entry_id(entry);
            match entry[16] {
                TAG_CREDITED => {
                    self.credited.insert(id, seq);
                }
                TAG_ACCEPTED => {
                    self.decided.insert(id, (Decision::Accepted, seq));
                }
                byte => {
                    // Unknown reasons cannot be written by this version; the
                    // id is still decided, which is what idempotency needs.
                    let reason = RejectReason::from_u8(byte).unwrap_or(RejectReason::UnknownSchema);
                    self.decided.insert(id, (Decision::Rejected(reason), seq));
                }
            }
        }
    }

    fn remove(&mut self, seq: u64, entries: &[u8]) {
        for entry in entries.chunks_exact(ID_ENTRY_LEN) {
            let id = entry_id(entry);
            if entry[16] == TAG_CREDITED {
                if self.credited.get(&id) == Some(&seq) {
                    self.credited.remove(&id);
                }
            } else if self.decided.get(&id).map(|(_, s)| *s) == Some(seq) {
                self.decided.remove(&id);
            }
        }
    }

    /// Whether the oldest batch falls out of the window: the rule is "a batch
    /// is remembered while the batches newer than it hold fewer than `limit`
    /// ids", applied the same way here and when loading from disk.
    fn oldest_is_out(&self) -> bool {
        match self.batches.front() {
            Some((_, count)) => self.batches.len() > 1 && self.total - count >= self.limit,
            None => false,
        }
    }
}

impl Store {
    /// The idempotency window: the ids of the newest batches, up to
    /// `window_limit` ids.
    pub(super) fn load_window(&self, window_limit: usize) -> Result<IdWindow, StoreError> {
        let mut window = IdWindow {
            limit: window_limit,
            ..IdWindow::default()
        };
        let mut newer = 0usize;
        for item in self.db.scan_prefix(IDS_PREFIX).rev() {
            let (key, entries) = item.map_err(|e| self.sled_error(e))?;
            let seq = ids_key_seq(&key).ok_or_else(|| self.corrupt("bad id batch key"))?;
            // A batch (all its partitions' keys) is taken whole or not at all.
            if window.batches.front().map(|(newest, _)| *newest) != Some(seq) {
                if newer >= window_limit {
                    break;
                }
                window.batches.push_front((seq, 0));
            }
            if entries.len() % ID_ENTRY_LEN != 0 {
                return Err(self.corrupt(format!("id batch {seq} has a partial entry")));
            }
            let count = entries.len() / ID_ENTRY_LEN;
            // Scanning newest first, an id seen again in an older batch
            // must not replace the newer entry.
            for entry in entries.chunks_exact(ID_ENTRY_LEN) {
                let id = entry_id(entry);
                let known = if entry[16] == TAG_CREDITED {
                    window.credited.contains_key(&id)
                } else {
                    window.decided.contains_key(&id)
                };
                if !known {
                    window.insert(seq, entry);
                }
            }
            if let Some((_, batch)) = window.batches.front_mut() {
                *batch += count;
            }
            window.total += count;
            newer += count;
        }
        Ok(window)
    }

    /// Adds a written batch's ids to the idempotency window, and drops the
    /// oldest batches beyond it (their keys are removed with the next write).
    pub(super) fn remember_ids(
        &mut self,
        seq: u64,
        ids: &BTreeMap<i32, Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut window = write_lock(&self.shared.window);
        let count: usize = ids
            .values()
            .map(|entries| entries.len() / ID_ENTRY_LEN)
            .sum();
        for entries in ids.values() {
            window.insert(seq, entries);
        }
        window.batches.push_back((seq, count));
        window.total += count;
        while window.oldest_is_out() {
            let Some((old, count)) = window.batches.pop_front() else {
                break;
            };
            window.total -= count;
            for item in self.db.scan_prefix(ids_prefix(old)) {
                let (_, entries) = item.map_err(|e| self.sled_error(e))?;
                window.remove(old, &entries);
            }
            self.evicted.push(old);
        }
        Ok(())
    }

    /// Id batches out of the window go with the batch being written (the
    /// one that evicted them is committed by then), and come back with it
    /// if it is undone.
    pub(super) fn evicted_changes(&mut self, changes: &mut Vec<Change>) -> Result<(), StoreError> {
        for old in std::mem::take(&mut self.evicted) {
            for item in self.db.scan_prefix(ids_prefix(old)) {
                let (key, _) = item.map_err(|e| self.sled_error(e))?;
                changes.push((key.to_vec(), None));
            }
        }
        Ok(())
    }
}
