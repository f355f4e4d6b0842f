//! Rebuilding state from the changelog ([`Restore`]), for the whole store
//! or some partitions, and dropping partitions given away.

use ledger_core::domain::AccountId;
use ledger_core::hash::HashMap;

use super::keys::{ids_key_seq, key_partition, IDS_PREFIX, RESTORING_KEY, SEQ_KEY};
use super::{Store, StoreError};

/// A restore in progress: changelog records applied in the order read,
/// the last write of a key winning as it did when they were written.
/// Nothing is durable until [`Restore::finish`].
#[derive(Debug)]
pub struct Restore<'a> {
    store: &'a mut Store,
    /// Whether anything was applied yet: until then the store is empty,
    /// and a removal has nothing to remove.
    applied: bool,
}

impl Store {
    /// Starts replacing everything in the store by the state the changelog
    /// rebuilds: the store is emptied first (its pending record too; the
    /// changelog holds committed batches only).
    pub fn restore(&mut self) -> Result<Restore<'_>, StoreError> {
        self.db.clear().map_err(|e| self.sled_error(e))?;
        self.db
            .insert(RESTORING_KEY, &[])
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.evicted.clear();
        Ok(Restore {
            store: self,
            applied: false,
        })
    }

    /// Starts replacing the state of `partitions` alone by what the
    /// changelog rebuilds (a partition taken over from another shard): their
    /// keys are removed first, the other partitions' state stays. Their
    /// batches must be resolved: no pending record.
    pub fn restore_partitions(
        &mut self,
        partitions: &[i32],
        partition_of: impl Fn(&AccountId) -> i32,
    ) -> Result<Restore<'_>, StoreError> {
        self.drop_partitions(partitions, partition_of)?;
        self.db
            .insert(RESTORING_KEY, &[])
            .map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        Ok(Restore {
            store: self,
            applied: false,
        })
    }

    /// Removes the state of `partitions` (partitions given away), every key
    /// that [`key_partition`] maps to one of them, in one flushed batch.
    /// Their batches must be resolved: no pending record.
    pub fn drop_partitions(
        &mut self,
        partitions: &[i32],
        partition_of: impl Fn(&AccountId) -> i32,
    ) -> Result<(), StoreError> {
        assert!(
            self.pending.is_none(),
            "invariant violated: partitions are dropped only with every batch resolved"
        );
        if partitions.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in self.db.iter() {
            let (key, _) = item.map_err(|e| self.sled_error(e))?;
            if key_partition(&key, &partition_of).is_some_and(|p| partitions.contains(&p)) {
                batch.remove(key);
            }
        }
        self.db.apply_batch(batch).map_err(|e| self.sled_error(e))?;
        self.db.flush().map_err(|e| self.sled_error(e))?;
        self.load()
    }
}

impl Restore<'_> {
    /// Applies the last write of each key among records read so far; a map,
    /// so that its keys are distinct and a removal can be skipped while
    /// nothing was written before it.
    pub fn apply(&mut self, changes: HashMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in changes {
            match value {
                Some(value) => batch.insert(key, value),
                None if self.applied => batch.remove(key),
                None => {}
            }
        }
        self.applied = true;
        let store = &mut *self.store;
        store.db.apply_batch(batch).map_err(|e| store.sled_error(e))
    }

    /// Makes the restored state durable and loads it. Batch numbers go on
    /// after the newest restored one (and this store's own), so that new
    /// ids are the newest and no batch key is written twice.
    pub fn finish(self) -> Result<(), StoreError> {
        let store = self.store;
        let newest = match store.db.scan_prefix(IDS_PREFIX).next_back() {
            Some(item) => {
                let (key, _) = item.map_err(|e| store.sled_error(e))?;
                ids_key_seq(&key).ok_or_else(|| store.corrupt("bad id batch key"))?
            }
            None => 0,
        };
        let next = (newest + 1).max(store.next_seq);
        store
            .db
            .insert(SEQ_KEY, &next.to_be_bytes())
            .map_err(|e| store.sled_error(e))?;
        // Everything restored is on disk before the marker goes.
        store.db.flush().map_err(|e| store.sled_error(e))?;
        store
            .db
            .remove(RESTORING_KEY)
            .map_err(|e| store.sled_error(e))?;
        store.db.flush().map_err(|e| store.sled_error(e))?;
        store.load()
    }
}
