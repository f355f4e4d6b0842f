//! The batch in flight: its pending record (with the undo that takes it
//! back), what readers hide while its commit is in doubt, and how it is
//! resolved: committed, cleared, or undone.

use ledger_core::hash::HashMap;
use ledger_core::machine::Offsets;

use super::keys::PENDING_KEY;
use super::write::sled_batch;
use super::{write_lock, Change, Store, StoreError};

/// The record of the batch written to sled but not yet known to be
/// committed in Kafka: enough to decide after a crash whether it happened,
/// and to take it back if it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    pub offsets_before: Offsets,
    pub offsets_after: Offsets,
    /// The changes that take the batch back: every key it wrote, with its
    /// prior value (`None`: the key was absent).
    pub undo: Vec<Change>,
}

/// The batch in flight, as readers must not see it: prior values by key.
#[derive(Debug)]
pub(super) struct InDoubt {
    pub(super) seq: u64,
    pub(super) prior: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl InDoubt {
    pub(super) fn of(pending: &Pending) -> InDoubt {
        InDoubt {
            seq: pending.seq,
            prior: pending.undo.iter().cloned().collect(),
        }
    }
}

impl Store {
    /// The undo of `changes`: each key with its value before them.
    pub(super) fn undo_of(&self, changes: &[Change]) -> Result<Vec<Change>, StoreError> {
        let mut undo = Vec::with_capacity(changes.len());
        for (key, _) in changes {
            let prior = self.db.get(key).map_err(|e| self.sled_error(e))?;
            undo.push((key.clone(), prior.map(|v| v.to_vec())));
        }
        Ok(undo)
    }

    /// The batch in flight is committed in Kafka: readers may see it. Its
    /// pending record stays on disk until the next write replaces it (or
    /// `clear_pending`), which saves a flush per batch; recovery resolves it.
    pub fn mark_committed(&mut self) {
        *write_lock(&self.shared.in_doubt) = None;
    }

    /// Removes the pending record of a batch known to be committed.
    pub fn clear_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_none() {
            return Ok(());
        }
        self.db
            .remove(PENDING_KEY)
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.pending = None;
        self.mark_committed();
        Ok(())
    }

    /// Takes back the pending batch (its Kafka transaction aborted): restores
    /// every key it wrote and removes the record, in one atomic flushed
    /// batch, then reloads the in-memory state from disk.
    pub fn undo_pending(&mut self) -> Result<(), StoreError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let mut batch = sled_batch(&pending.undo);
        batch.remove(PENDING_KEY);
        self.db.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.load()?;
        debug_assert_eq!(self.offsets, pending.offsets_before);
        Ok(())
    }
}
